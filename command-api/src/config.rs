//! Settings: where the write model lives, how the server listens, and the
//! limits that keep it answering under load.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use service::parse_duration;

/// Every setting of `command-api`: a flag, its environment twin and a default.
#[derive(clap::Parser, Clone, Debug)]
#[command(
    about = "The write side of the course store: validates commands and writes them to PostgreSQL."
)]
pub struct Config {
    /// The write model's PostgreSQL.
    #[command(flatten)]
    pub database: service::Database,

    /// Address the HTTP server listens on (port 0 picks a free port).
    #[arg(long, env = "COMMAND_API_ADDR", default_value = "127.0.0.1:8081")]
    pub addr: SocketAddr,

    /// The token guarding back-office writes (open when unset or empty: development mode).
    #[command(flatten)]
    pub admin: service::AdminToken,

    /// Most PostgreSQL connections the pool opens.
    #[arg(long, env = "COMMAND_API_DB_POOL_SIZE", default_value_t = DEFAULT_POOL_SIZE, value_parser = clap::value_parser!(u32).range(1..))]
    pub db_pool_size: u32,

    /// How long a request waits for a pooled connection before it is shed with 503 (short: a budget, not a queue).
    #[arg(long, env = "COMMAND_API_DB_ACQUIRE_TIMEOUT", default_value = "500ms", value_parser = parse_duration)]
    pub db_acquire_timeout: Duration,

    /// PostgreSQL `statement_timeout` set on every pooled connection (e.g. 5s).
    #[arg(long, env = "COMMAND_API_DB_STATEMENT_TIMEOUT", default_value = "5s", value_parser = parse_duration)]
    pub db_statement_timeout: Duration,

    /// Longest a request may take before it is abandoned with 503 (e.g. 10s); a write already
    /// committing then is waited for, so that its answer says what was written.
    #[arg(long, env = "COMMAND_API_REQUEST_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub request_timeout: Duration,

    /// Requests handled at once, past it shed with 503 at once; unset: the pool size plus a quarter (at least one more).
    #[arg(long, env = "COMMAND_API_CONCURRENCY_LIMIT", value_parser = clap::value_parser!(u32).range(1..))]
    pub concurrency_limit: Option<u32>,

    /// How long a client may take to send a request's body, read before the request takes a concurrency slot (e.g. 5s).
    #[arg(long, env = "COMMAND_API_BODY_READ_TIMEOUT", default_value = "5s", value_parser = parse_duration)]
    pub body_read_timeout: Duration,

    /// Largest accepted request body in bytes; larger bodies are answered 413.
    #[arg(long, env = "COMMAND_API_BODY_LIMIT_BYTES", default_value_t = DEFAULT_BODY_LIMIT_BYTES, value_parser = clap::value_parser!(u64).range(1..))]
    pub body_limit_bytes: u64,

    /// How long an order's idempotency key is kept (at least 24h, as the contract promises).
    #[arg(long, env = "COMMAND_API_IDEMPOTENCY_KEY_TTL", default_value = "24h", value_parser = parse_key_ttl)]
    pub idempotency_key_ttl: Duration,

    /// How often expired idempotency keys are deleted, in small batches (e.g. 5m).
    #[arg(long, env = "COMMAND_API_IDEMPOTENCY_SWEEP_INTERVAL", default_value = "5m", value_parser = parse_duration)]
    pub idempotency_sweep_interval: Duration,

    #[command(flatten)]
    pub connections: service::ConnectionLimits,

    /// Ops flags (`FLAGS_FILE`): kill switches and release toggles.
    #[command(flatten)]
    pub flags: service::FlagsArgs,
}

const DEFAULT_POOL_SIZE: u32 = 16;
const DEFAULT_BODY_LIMIT_BYTES: u64 = 256 * 1024;
/// The SPEC keeps idempotency keys at least this long.
const KEY_TTL_MIN: Duration = Duration::from_secs(24 * 60 * 60);

impl Config {
    /// The defaults, listening on a free port of 127.0.0.1, with no admin token.
    pub fn for_tests(database_url: &str) -> Self {
        Config {
            database: service::Database::new(database_url),
            addr: SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
            admin: service::AdminToken::default(),
            db_pool_size: DEFAULT_POOL_SIZE,
            db_acquire_timeout: Duration::from_millis(500),
            db_statement_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(10),
            concurrency_limit: None,
            body_read_timeout: Duration::from_secs(5),
            body_limit_bytes: DEFAULT_BODY_LIMIT_BYTES,
            idempotency_key_ttl: KEY_TTL_MIN,
            idempotency_sweep_interval: Duration::from_secs(5 * 60),
            connections: service::ConnectionLimits::default(),
            flags: service::FlagsArgs::default(),
        }
    }

    /// Requests admitted at once: the setting, or else the pool size plus
    /// a quarter (at least one more). Every write needs a connection, so
    /// admitting many more than the pool only queues them; the margin keeps
    /// a connection from idling while the next request is parsed.
    pub fn admitted(&self) -> u32 {
        self.concurrency_limit.unwrap_or_else(|| {
            let margin = (self.db_pool_size / 4).max(1);
            self.db_pool_size.saturating_add(margin)
        })
    }

    /// Reads the secrets named by `_FILE` settings; once, at start.
    pub fn load_secrets(&mut self) -> Result<(), service::SecretError> {
        self.database.load()?;
        self.admin.load()
    }
}

/// A duration of at least 24 hours.
fn parse_key_ttl(text: &str) -> Result<Duration, String> {
    let ttl = parse_duration(text)?;
    if ttl < KEY_TTL_MIN {
        return Err("idempotency keys are kept at least 24h".to_owned());
    }
    Ok(ttl)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[test]
    fn the_test_configuration_uses_the_command_line_defaults() {
        let parsed = Config::try_parse_from([
            "command-api",
            "--database-url",
            "postgres://x/y",
            "--addr",
            "127.0.0.1:0",
        ])
        .expect("defaults parse");
        let for_tests = Config::for_tests("postgres://x/y");
        assert_eq!(parsed.db_pool_size, for_tests.db_pool_size);
        assert_eq!(parsed.db_acquire_timeout, for_tests.db_acquire_timeout);
        assert_eq!(parsed.db_statement_timeout, for_tests.db_statement_timeout);
        assert_eq!(parsed.request_timeout, for_tests.request_timeout);
        assert_eq!(parsed.concurrency_limit, for_tests.concurrency_limit);
        assert_eq!(parsed.body_limit_bytes, for_tests.body_limit_bytes);
        assert_eq!(parsed.body_read_timeout, for_tests.body_read_timeout);
        assert_eq!(parsed.connections, for_tests.connections);
        assert_eq!(parsed.addr, for_tests.addr);
        assert_eq!(parsed.idempotency_key_ttl, for_tests.idempotency_key_ttl);
        assert_eq!(
            parsed.idempotency_sweep_interval,
            for_tests.idempotency_sweep_interval
        );
    }

    #[test]
    fn admission_follows_the_pool_unless_the_limit_is_set() {
        let mut config = Config::for_tests("postgres://x/y");
        assert_eq!(config.admitted(), 20);
        config.db_pool_size = 2;
        assert_eq!(config.admitted(), 3);
        config.concurrency_limit = Some(7);
        assert_eq!(config.admitted(), 7);
    }

    #[test]
    fn idempotency_keys_are_kept_at_least_a_day() {
        assert!(parse_key_ttl("23h").is_err());
        assert_eq!(parse_key_ttl("48h"), Ok(Duration::from_secs(2 * 86_400)));
    }

    #[test]
    fn an_empty_admin_token_counts_as_none() {
        let mut config = Config::for_tests("postgres://x/y");
        config.admin = service::AdminToken::new(Some(""));
        assert_eq!(config.admin.configured(), None);
        config.admin = service::AdminToken::new(Some("s3cret"));
        assert_eq!(config.admin.configured(), Some("s3cret"));
    }
}
