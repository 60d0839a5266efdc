//! Log set-up: `RUST_LOG` picks what is logged (default `info`), `LOG_FORMAT`
//! how (text, coloured only on a terminal, or one JSON object per line).

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

/// How log lines are written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line, for log collectors.
    Json,
}

/// The logging settings every program takes.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct LogArgs {
    /// Log format: `text` (coloured only on a terminal) or `json`.
    #[arg(
        long = "log-format",
        env = "LOG_FORMAT",
        value_enum,
        default_value_t,
        global = true
    )]
    pub log_format: LogFormat,
}

impl LogArgs {
    /// Installs the global subscriber; call once, before the runtime starts.
    pub fn init(&self) {
        let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
        let logs = tracing_subscriber::fmt().with_env_filter(filter);
        match self.log_format {
            LogFormat::Text => logs.with_ansi(std::io::stdout().is_terminal()).init(),
            LogFormat::Json => logs.json().with_ansi(false).init(),
        }
    }
}
