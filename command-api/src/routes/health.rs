//! Probes and metrics of the command side (command → projector → query): is
//! the process up, can it reach PostgreSQL, how is it doing.

use std::time::Duration;

use axum::extract::State;
use axum::http::header::CONTENT_TYPE;
use axum::http::HeaderValue;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

use crate::error::ApiError;
use crate::routes::AppState;

/// How long `/ready` waits for PostgreSQL before it says 503.
const READY_TIMEOUT: Duration = Duration::from_secs(1);

/// `GET /health`: 200 while the process runs.
pub(super) async fn health() -> Json<serde_json::Value> {
    Json(json!({ "status": "ok" }))
}

/// `GET /ready`: 200 when PostgreSQL answers `SELECT 1` in time, else 503.
pub(super) async fn ready(
    State(state): State<AppState>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let probe = sqlx::query("SELECT 1").execute(&state.pool);
    match tokio::time::timeout(READY_TIMEOUT, probe).await {
        Ok(Ok(_)) => Ok(Json(json!({ "status": "ready" }))),
        Ok(Err(err)) => {
            tracing::warn!(error = %err, "not ready: postgresql unreachable");
            Err(ApiError::Unavailable("postgresql is unreachable"))
        }
        Err(_) => {
            tracing::warn!("not ready: postgresql did not answer in time");
            Err(ApiError::Unavailable("postgresql did not answer in time"))
        }
    }
}

/// `GET /metrics`: Prometheus text format.
pub(super) async fn metrics(State(state): State<AppState>) -> Response {
    let body = state.metrics.render(&state.pool, state.max_connections);
    let mut response = body.into_response();
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    response
}
