//! How long a client may take and how many may be connected at once: the
//! settings every program's HTTP listener shares.

use std::time::Duration;

/// Connection settings of an HTTP listener; flattened into each program's
/// settings.
#[derive(clap::Args, Clone, Debug, PartialEq, Eq)]
pub struct ConnectionLimits {
    /// Longest a client may take to send a request's headers (also bounds the wait for the first request of a connection), e.g. 5s.
    #[arg(long, env = "HTTP_HEADER_READ_TIMEOUT", default_value = "5s", value_parser = parse_duration)]
    pub header_read_timeout: Duration,

    /// A connection with no bytes either way for this long is closed once its answers are sent, e.g. 60s (a kept-alive connection waiting for its next request closes after the header-read timeout if that is shorter).
    #[arg(long, env = "HTTP_IDLE_TIMEOUT", default_value = "60s", value_parser = parse_duration)]
    pub idle_timeout: Duration,

    /// Most client connections open at once; past it new ones wait in the listen backlog.
    #[arg(long, env = "HTTP_MAX_CONNECTIONS", default_value_t = DEFAULT_MAX_CONNECTIONS, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_connections: u32,
}

const DEFAULT_MAX_CONNECTIONS: u32 = 10_000;

impl Default for ConnectionLimits {
    fn default() -> Self {
        Self {
            header_read_timeout: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(60),
            max_connections: DEFAULT_MAX_CONNECTIONS,
        }
    }
}

/// Parses `250ms`, `2s`, `1m` or `24h` (a bare number is seconds); zero is refused.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let (digits, unit) = match text.find(|c: char| !c.is_ascii_digit()) {
        Some(at) => text.split_at(at),
        None => (text, "s"),
    };
    let value: u64 = digits
        .parse()
        .map_err(|_| format!("`{text}` is not a duration such as 500ms, 2s or 1m"))?;
    let duration = match unit {
        "ms" => Duration::from_millis(value),
        "s" => Duration::from_secs(value),
        "m" => Duration::from_secs(value.saturating_mul(60)),
        "h" => Duration::from_secs(value.saturating_mul(60 * 60)),
        _ => return Err(format!("`{text}` has an unknown unit (use ms, s, m or h)")),
    };
    if duration.is_zero() {
        return Err("a duration must be more than zero".to_owned());
    }
    Ok(duration)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        limits: ConnectionLimits,
    }

    #[test]
    fn the_default_limits_are_the_command_line_defaults() {
        let parsed = Cli::try_parse_from(["program"]).expect("defaults parse");
        assert_eq!(parsed.limits, ConnectionLimits::default());
    }

    #[test]
    fn durations_parse_with_their_units_and_zero_is_refused() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("2s"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_duration("3"), Ok(Duration::from_secs(3)));
        assert_eq!(parse_duration("1m"), Ok(Duration::from_secs(60)));
        assert_eq!(parse_duration("24h"), Ok(Duration::from_secs(86_400)));
        assert!(parse_duration("0s").is_err());
        assert!(parse_duration("2d").is_err());
        assert!(parse_duration("fast").is_err());
    }
}
