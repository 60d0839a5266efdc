//! Rebuilds the crate when a migration is added: `sqlx::migrate!` embeds
//! `migrations/` but watches only the files that existed, so a new one is missed.

fn main() {
    println!("cargo:rerun-if-changed=../migrations");
}
