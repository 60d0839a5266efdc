//! Query API settings: every one a flag with an environment twin and a default.

use std::{net::SocketAddr, time::Duration};

use clap::Parser;

/// The storefront's read API: precomputed views from Redis, never PostgreSQL.
#[derive(Debug, Clone, Parser)]
#[command(name = "query-api", version, about, long_about = None)]
pub struct Config {
    /// The Redis holding the views and their key prefix.
    #[command(flatten)]
    pub redis: views::RedisSettings,

    /// Listen address.
    #[arg(
        long = "addr",
        env = "QUERY_API_ADDR",
        default_value = "127.0.0.1:8082"
    )]
    pub addr: SocketAddr,

    /// The token guarding `/v1/ops/*` (those routes answer 401 when unset).
    #[command(flatten)]
    pub admin: service::AdminToken,

    /// Default wait for `X-Min-Lsn` when `X-Max-Wait-Ms` is absent, in milliseconds.
    #[arg(long, env = "QUERY_DEFAULT_MAX_WAIT_MS", default_value_t = 1000)]
    pub default_max_wait_ms: u64,

    /// Most requests served at once; more are shed with 503 and `Retry-After`.
    #[arg(long, env = "QUERY_CONCURRENCY_LIMIT", default_value_t = 4096)]
    pub concurrency_limit: usize,

    /// How long before a sale event starts its views are pre-warmed in
    /// process (`600`, `600s`, `10m`, `1h`); they are kept until it ends.
    /// `0` turns pre-warming off.
    #[arg(long, env = "PREWARM_WINDOW", default_value = "10m", value_parser = parse_duration)]
    pub prewarm_window: Duration,

    /// How often the pre-warmed views are read again, in milliseconds (a
    /// change reaches them within this much after the projector applied it).
    #[arg(long, env = "PREWARM_REFRESH_MS", default_value_t = 250, value_parser = clap::value_parser!(u64).range(10..=900))]
    pub prewarm_refresh_ms: u64,

    /// Longest a request may take before it is answered 503, in milliseconds.
    #[arg(long, env = "QUERY_REQUEST_TIMEOUT_MS", default_value_t = 10_000)]
    pub request_timeout_ms: u64,

    /// Longest wait for a Redis reply or connection attempt, in milliseconds;
    /// a read past it is answered 503 `unavailable`.
    #[arg(long, env = "QUERY_REDIS_TIMEOUT_MS", default_value_t = views::DEFAULT_READ_TIMEOUT_MS, value_parser = clap::value_parser!(u64).range(1..))]
    pub redis_timeout_ms: u64,

    /// Tests only (hidden): the view schema version this release reads, to run two releases side by side as in a rolling upgrade.
    #[arg(long, env = "QUERY_VIEW_SCHEMA_VERSION", hide = true, default_value_t = views::VIEW_SCHEMA_VERSION)]
    pub view_schema_version: u32,

    /// Log format (`RUST_LOG` picks what is logged).
    #[command(flatten)]
    pub log: service::LogArgs,

    /// Header-read and idle timeouts and the connection cap of the listener.
    #[command(flatten)]
    pub connections: service::ConnectionLimits,

    /// Ops flags (`FLAGS_FILE`): kill switches and release toggles.
    #[command(flatten)]
    pub flags: service::FlagsArgs,
}

impl Config {
    /// Defaults on an ephemeral port for the given Redis and key prefix (tests).
    pub fn for_tests(redis_url: views::RedisUrl, key_prefix: &str) -> Self {
        let mut c = Config::parse_from(["query-api"]);
        c.redis = views::RedisSettings::new(redis_url, key_prefix);
        c.addr = SocketAddr::from(([127, 0, 0, 1], 0));
        c
    }

    /// Reads the secrets named by `_FILE` settings; once, at start.
    pub fn load_secrets(&mut self) -> anyhow::Result<()> {
        self.redis.load()?;
        self.admin.load()?;
        Ok(())
    }

    pub(crate) fn prewarm_refresh(&self) -> Duration {
        Duration::from_millis(self.prewarm_refresh_ms)
    }

    pub(crate) fn request_timeout(&self) -> Duration {
        Duration::from_millis(self.request_timeout_ms)
    }

    pub(crate) fn redis_timeout(&self) -> Duration {
        Duration::from_millis(self.redis_timeout_ms)
    }
}

/// `600`, `600s`, `10m` or `1h`.
fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (number, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = number
        .parse()
        .map_err(|_| format!("{s:?} is not a duration like 600s, 10m or 1h"))?;
    let secs = match unit {
        "" | "s" => n,
        "m" => n * 60,
        "h" => n * 3600,
        _ => return Err(format!("{s:?} is not a duration like 600s, 10m or 1h")),
    };
    Ok(Duration::from_secs(secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_take_seconds_minutes_and_hours() {
        assert_eq!(parse_duration("600"), Ok(Duration::from_secs(600)));
        assert_eq!(parse_duration("10m"), Ok(Duration::from_secs(600)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert!(parse_duration("ten").is_err());
        assert!(parse_duration("5d").is_err());
    }

    #[test]
    fn a_list_of_nodes_selects_cluster_mode_and_a_bad_url_fails_parsing() {
        let config = Config::try_parse_from(["query-api", "--redis-url", "h1:7000,h2:7001"])
            .expect("a list of nodes parses");
        assert!(config.redis.url.is_clustered());
        let config = Config::try_parse_from(["query-api", "--redis-url", "rediss://h:6380"])
            .expect("a TLS URL parses");
        assert!(config.redis.url.uses_tls());
        let err = Config::try_parse_from(["query-api", "--redis-url", "h1:7000,rediss://h2:7001"])
            .expect_err("a list mixing TLS and plain nodes is refused")
            .to_string();
        assert!(err.contains("TLS"), "{err}");
    }
}
