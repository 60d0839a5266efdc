//! Projector settings: every one a flag with an environment twin and a default.

use std::{net::SocketAddr, time::Duration};

use clap::{Args, CommandFactory, FromArgMatches, Parser, Subcommand};

/// The projector: PostgreSQL logical replication (pgoutput) in, Redis views out.
#[derive(Debug, Parser)]
#[command(name = "projector", version, about, long_about = None)]
pub struct Cli {
    #[command(flatten)]
    pub config: Config,
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub log: service::LogArgs,
}

impl Cli {
    /// Parses `args` with every shared setting accepted before or after
    /// the subcommand (`projector status --database-url ...` as well as
    /// `projector --database-url ... status`).
    pub fn try_parse_args<I, T>(args: I) -> Result<Self, clap::Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        let command = Self::command().mut_args(|arg| {
            if arg.is_positional() {
                arg
            } else {
                arg.global(true)
            }
        });
        let mut matches = command.try_get_matches_from(args)?;
        Self::from_arg_matches_mut(&mut matches)
    }

    /// The process's arguments, parsed as [`Cli::try_parse_args`] does;
    /// exits with clap's message when they are wrong.
    pub fn parse_args() -> Self {
        Self::try_parse_args(std::env::args_os()).unwrap_or_else(|err| err.exit())
    }
}

/// What to do; the daemon (`run`) when none is given.
#[derive(Debug, Clone, Copy, Subcommand)]
pub enum Command {
    /// Run the daemon: build views if needed, then stream changes (default).
    Run,
    /// Build a fresh generation and switch readers to it (the active daemon
    /// does it within a second; the live generation serves meanwhile).
    Rebuild,
    /// Print the slot, its lag, retained WAL and WAL limit, the active instance, the live generation and its watermark.
    Status,
    /// Drop the replication slot (for decommissioning; the next start rebuilds).
    DropSlot,
    /// Compare the live generation's views with the tables, while the daemon streams.
    ///
    /// Prints each entity and field that differs, with both values. Exit status: 0 clean;
    /// 1 mismatches found (with --repair: some left after it); 2 the audit could not run
    /// (no live generation, PostgreSQL or Redis unreachable, the daemon not streaming).
    Audit(AuditArgs),
}

/// What `projector audit` covers.
#[derive(Debug, Clone, Copy, Args)]
pub struct AuditArgs {
    /// Check a random sample of at most this many entities per kind (courses, events, orders, libraries, categories) instead of every one.
    #[arg(long, env = "AUDIT_SAMPLE", value_parser = clap::value_parser!(u32).range(1..))]
    pub sample: Option<u32>,

    /// Re-project exactly the entities that differ from the tables, then check them again.
    #[arg(long, env = "AUDIT_REPAIR")]
    pub repair: bool,
}

/// Settings shared by every subcommand.
#[derive(Debug, Clone, Args)]
pub struct Config {
    /// The write model's PostgreSQL; the role needs REPLICATION and SELECT on the published tables.
    #[command(flatten)]
    pub database: service::Database,

    /// The Redis the views are written to, and their key prefix.
    #[command(flatten)]
    pub redis: views::RedisSettings,

    /// The token guarding `/v1/ops/*` (those routes answer 401 when unset).
    #[command(flatten)]
    pub admin: service::AdminToken,

    /// Listen address of the health, readiness, metrics and ops endpoints.
    #[arg(
        long = "addr",
        env = "PROJECTOR_ADDR",
        default_value = "127.0.0.1:8083"
    )]
    pub addr: SocketAddr,

    /// Name of the logical replication slot (created on first start).
    #[arg(long, env = "PROJECTOR_SLOT", default_value = "cqrs_projector", value_parser = parse_identifier)]
    pub slot: String,

    /// Publication of the write model's tables; the migrations create the default one, another is created on first start if the role owns the tables.
    #[arg(long, env = "PROJECTOR_PUBLICATION", default_value = "cqrs_projector", value_parser = parse_identifier)]
    pub publication: String,

    /// Flush to Redis once this many row changes are buffered, even mid-transaction (larger flushes drain a backlog faster: more writes to one key coalesce; at most two batches are held in memory).
    #[arg(long, env = "PROJECTOR_FLUSH_MAX_CHANGES", default_value_t = 20000, value_parser = clap::value_parser!(u32).range(1..))]
    pub flush_max_changes: u32,

    /// Flush to Redis once the buffered changes hold this many bytes, whichever bound comes first (default 16 MiB): peak memory is about 100 MiB plus five times this (the batch filling, the one in flight with its Redis commands and replies), whatever the size of a transaction.
    #[arg(long, env = "PROJECTOR_FLUSH_MAX_BYTES", default_value_t = 16 << 20, value_parser = clap::value_parser!(u64).range(1024..))]
    pub flush_max_bytes: u64,

    /// Longest a committed transaction waits to be grouped with others before the flush, in milliseconds (while a flush is in flight, the next batch grows anyway): each flush costs Redis and PostgreSQL round trips of its own, so at a sale's order rates 10 ms spends a third less CPU per order than 1 ms, for a few milliseconds of freshness.
    #[arg(long, env = "PROJECTOR_FLUSH_LINGER_MS", default_value_t = 10)]
    pub flush_linger_ms: u64,

    /// Seconds between heartbeat messages emitted into the WAL so an idle slot keeps advancing.
    #[arg(long, env = "PROJECTOR_HEARTBEAT_SECS", default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..))]
    pub heartbeat_secs: u64,

    /// This instance's name, shown as its replication connection's application_name and by `projector status` (default: host name and process id).
    #[arg(long, env = "PROJECTOR_INSTANCE")]
    pub instance_name: Option<String>,

    /// Seconds after which the server drops an active instance that stopped answering (its wal_sender_timeout), freeing the slot for a standby.
    #[arg(long, env = "PROJECTOR_TAKEOVER_TIMEOUT_SECS", default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub takeover_timeout_secs: u64,

    /// Seconds the previous view schema's generation stays readable (stale) for the query APIs of the previous release after a new schema's generation went live; 0 deletes it at the switch.
    #[arg(
        long,
        env = "PROJECTOR_PREVIOUS_SCHEMA_GRACE_SECS",
        default_value_t = 3600
    )]
    pub previous_schema_grace_secs: u64,

    /// Tests only (hidden): the view schema version this release writes, to run two releases side by side as in a rolling upgrade.
    #[arg(long, env = "PROJECTOR_VIEW_SCHEMA_VERSION", hide = true, default_value_t = views::VIEW_SCHEMA_VERSION)]
    pub view_schema_version: u32,

    /// Seconds between the daemon's own audits of a sample of the views against the tables (0: off); it reports, never repairs.
    #[arg(long, env = "PROJECTOR_AUDIT_INTERVAL_SECS", default_value_t = 0)]
    pub audit_interval_secs: u64,

    /// Entities per kind the daemon's audit samples each time (0: every entity).
    #[arg(long, env = "PROJECTOR_AUDIT_SAMPLE", default_value_t = 100)]
    pub audit_sample: u32,

    /// Header-read and idle timeouts and the connection cap of the ops listener.
    #[command(flatten)]
    pub connections: service::ConnectionLimits,
}

impl Config {
    /// Defaults with the given database, Redis and key prefix (for tests).
    pub fn new(database_url: &str, redis_url: views::RedisUrl, key_prefix: &str) -> Self {
        let mut cli = Cli::parse_from(["projector"]);
        cli.config.database = service::Database::new(database_url);
        cli.config.redis = views::RedisSettings::new(redis_url, key_prefix);
        cli.config
    }

    /// Reads the secrets named by `_FILE` settings; once, at start.
    pub fn load_secrets(&mut self) -> anyhow::Result<()> {
        self.database.load()?;
        self.redis.load()?;
        self.admin.load()?;
        Ok(())
    }

    pub(crate) fn flush_linger(&self) -> Duration {
        Duration::from_millis(self.flush_linger_ms)
    }

    pub(crate) fn heartbeat(&self) -> Duration {
        Duration::from_secs(self.heartbeat_secs)
    }

    /// The configured instance name, else `<host>-<pid>`.
    pub(crate) fn instance_name(&self) -> String {
        self.instance_name.clone().unwrap_or_else(|| {
            // Linux names the host here; no crate needed for one file read.
            let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
                .map(|h| h.trim().to_owned())
                .ok()
                .filter(|h| !h.is_empty())
                .unwrap_or_else(|| "projector".to_owned());
            format!("{host}-{}", std::process::id())
        })
    }

    pub(crate) fn previous_schema_grace(&self) -> Duration {
        Duration::from_secs(self.previous_schema_grace_secs)
    }

    /// How often the daemon audits, if it does.
    pub(crate) fn audit_interval(&self) -> Option<Duration> {
        (self.audit_interval_secs > 0).then(|| Duration::from_secs(self.audit_interval_secs))
    }
}

/// Slot and publication names go into replication commands unquoted, so they
/// are held to PostgreSQL's plain identifier form.
fn parse_identifier(s: &str) -> Result<String, String> {
    let ok = !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        && !s.as_bytes()[0].is_ascii_digit();
    if ok {
        Ok(s.to_owned())
    } else {
        Err("use 1 to 63 characters of a-z, 0-9 and _, not starting with a digit".into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_list_of_nodes_selects_cluster_mode_and_a_bad_url_fails_parsing() {
        let cli =
            Cli::try_parse_from(["projector", "--redis-url", "127.0.0.1:7000,127.0.0.1:7001"])
                .expect("a list of nodes parses");
        assert!(cli.config.redis.url.is_clustered());
        assert!(!Cli::parse_from(["projector"])
            .config
            .redis
            .url
            .is_clustered());
        let err = Cli::try_parse_from(["projector", "--redis-url", "127.0.0.1:7000"])
            .expect_err("a node without a scheme is refused")
            .to_string();
        assert!(err.contains("redis://127.0.0.1:7000"), "{err}");
    }

    #[test]
    fn shared_settings_go_before_or_after_the_subcommand() {
        for args in [
            &[
                "projector",
                "status",
                "--database-url",
                "postgres://h/d",
                "--slot",
                "s",
            ][..],
            &[
                "projector",
                "--database-url",
                "postgres://h/d",
                "--slot",
                "s",
                "status",
            ][..],
            &[
                "projector",
                "--slot",
                "s",
                "status",
                "--database-url",
                "postgres://h/d",
            ][..],
        ] {
            let cli = Cli::try_parse_args(args).unwrap_or_else(|err| panic!("{args:?}: {err}"));
            assert!(matches!(cli.command, Some(Command::Status)), "{args:?}");
            assert_eq!(cli.config.database.url, "postgres://h/d", "{args:?}");
            assert_eq!(cli.config.slot, "s", "{args:?}");
        }
        let cli = Cli::try_parse_args(["projector", "audit", "--sample", "5", "--key-prefix", "p"])
            .expect("audit takes its own and the shared settings");
        assert!(matches!(cli.command, Some(Command::Audit(a)) if a.sample == Some(5)));
        assert_eq!(cli.config.redis.key_prefix, "p");
    }
}
