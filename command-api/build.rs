//! Rebuilds the command API when a migration is added: `sqlx::migrate!`
//! embeds `migrations/` at compile time but only watches the files that
//! already existed, so a new one would otherwise be missing from an
//! incremental build (its `migrate` step would not apply it).

fn main() {
    println!("cargo:rerun-if-changed=../migrations");
}
