//! Probes and metrics: is the process up, can it reach PostgreSQL, how is it
//! doing.

use std::time::Duration;

use axum::extract::State;
use axum::response::Response;
use axum::Json;
use serde::Serialize;
use utoipa::ToSchema;

use crate::error::{ApiError, Unavailable};
use crate::state::AppState;

/// How long `/ready` waits for PostgreSQL before it says 503.
const READY_TIMEOUT: Duration = Duration::from_secs(1);

/// The answer of a probe.
#[derive(Serialize, ToSchema)]
pub(super) struct Probe {
    /// `ok` for `/health`, `ready` for `/ready`.
    #[schema(example = "ok")]
    status: &'static str,
}

/// Liveness: 200 while the process runs.
#[utoipa::path(
    get,
    path = "/health",
    tag = "ops",
    responses((status = 200, description = "The process runs.", body = Probe))
)]
pub(super) async fn health() -> Json<serde_json::Value> {
    service::health().await
}

/// Readiness: 200 when PostgreSQL answers `SELECT 1` within a second, else 503.
#[utoipa::path(
    get,
    path = "/ready",
    tag = "ops",
    responses(
        (status = 200, description = "PostgreSQL answers.", body = Probe),
        Unavailable,
    )
)]
pub(super) async fn ready(State(state): State<AppState>) -> Result<Json<Probe>, ApiError> {
    let probe = sqlx::query("SELECT 1").execute(&state.pool);
    match tokio::time::timeout(READY_TIMEOUT, probe).await {
        Ok(Ok(_)) => Ok(Json(Probe { status: "ready" })),
        Ok(Err(err)) => {
            // The watcher logs the outage once, with its cause.
            tracing::debug!(error = %err, "not ready: postgresql unreachable");
            state.db.suspect();
            Err(ApiError::Unavailable("postgresql is unreachable"))
        }
        Err(_) => {
            tracing::debug!("not ready: postgresql did not answer in time");
            state.db.suspect();
            Err(ApiError::Unavailable("postgresql did not answer in time"))
        }
    }
}

/// Metrics: requests by route and status, latency, shed load, pool usage.
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "ops",
    responses(
        (status = 200, description = "Prometheus text format 0.0.4.",
            body = String, content_type = "text/plain; version=0.0.4; charset=utf-8")
    )
)]
pub(super) async fn metrics(State(state): State<AppState>) -> Response {
    state.metrics.exposition(&state.pool, state.max_connections)
}
