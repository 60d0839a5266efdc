//! What makes each program a network service, done one way for all three so a
//! fix reaches every one: logs, request ids, request spans and metrics,
//! probes, the `/metrics` answer, binding and graceful shutdown, and the
//! secret-bearing settings they share.

mod dependency;
mod excerpt;
mod exposition;
pub mod flags;
mod limits;
mod logs;
mod request_id;
mod requests;
mod secrets;
mod server;
mod shedding;
pub mod tls;

pub use dependency::{io_cause, plain_cause, Dependency};
pub use excerpt::{bounded, EXCERPT_CHARS};
pub use exposition::Metrics;
pub use flags::{EvaluationContext, FlagDefault, FlagSpec, Flags, FlagsArgs};
pub use limits::{parse_duration, ConnectionLimits};
pub use logs::{LogArgs, LogFormat};
/// The handles of the metrics library the programs record with.
pub use metrics::{Counter, Gauge, Histogram};
pub use request_id::Counter as RequestIds;
pub use requests::{RequestLayer, RequestMetrics, RouteId, Summarised};
pub use secrets::{
    bearer_matches, read_secret_file, redacted_url, AdminToken, Database, SecretError,
    DEFAULT_DATABASE_URL,
};
pub use server::{health, shutdown_signal, Server};
pub use shedding::Shedding;
