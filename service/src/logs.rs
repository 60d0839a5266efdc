//! Log set-up: `RUST_LOG` picks what is logged (default `info`), `LOG_FORMAT`
//! how (text, coloured only on a terminal, or one JSON object per line).

use std::io::IsTerminal;

use tracing_subscriber::{fmt::time::SystemTime, layer::SubscriberExt, util::SubscriberInitExt};
use tracing_subscriber::{EnvFilter, Layer};

/// How log lines are written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line, for log collectors: `timestamp`, `level`,
    /// `target`, the event's fields (`message` among them) and those of
    /// the spans it is in (a request's `request_id` and `route`).
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
        match self.log_format {
            LogFormat::Text => tracing_subscriber::fmt()
                .with_env_filter(filter)
                .with_ansi(colour())
                .init(),
            LogFormat::Json => tracing_subscriber::registry()
                .with(json_lines().with_filter(filter))
                .init(),
        }
    }
}

/// Colour only on a terminal, and not there either when `NO_COLOR` is set
/// (no-color.org).
fn colour() -> bool {
    std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

/// The JSON layer: every field flat in the line, so a collector indexes a
/// request's id as it does `level` (tracing-subscriber's own JSON format
/// nests span fields under `span` and `spans`). The request span's fields
/// (`request_id`, `route`) are named apart from the events' own.
fn json_lines<S>() -> json_subscriber::JsonLayer<S, fn() -> std::io::Stdout>
where
    S: tracing::Subscriber + for<'span> tracing_subscriber::registry::LookupSpan<'span>,
{
    let mut layer = json_subscriber::JsonLayer::stdout();
    layer
        .with_timer("timestamp", SystemTime)
        .with_level("level")
        .with_target("target")
        .with_flattened_event()
        .with_top_level_flattened_span_list();
    layer
}
