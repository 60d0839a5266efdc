//! `GET /health`, `/ready` and `/metrics`: what ops and the load balancer ask.

use axum::{extract::State, http::header, response::IntoResponse, Json};

use crate::{error::ApiError, AppState};

/// `GET /health`: the process runs.
pub(super) async fn health() -> Json<serde_json::Value> {
    Json(serde_json::json!({"status": "ok"}))
}

/// `GET /ready`: Redis answers and a view generation is live.
pub(super) async fn ready(
    State(state): State<AppState>,
) -> Result<Json<serde_json::Value>, ApiError> {
    if !state.store.ping().await {
        return Err(ApiError::Unavailable);
    }
    let marker = state.store.marker().await?.ok_or(ApiError::Rebuilding)?;
    Ok(Json(
        serde_json::json!({"status": "ready", "generation": marker.generation}),
    ))
}

/// `GET /metrics`: Prometheus text.
pub(super) async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.metrics.render(),
    )
}
