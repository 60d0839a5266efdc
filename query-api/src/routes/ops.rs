//! `GET /health`, `/ready` and `/metrics`: what ops and the load balancer ask.

use std::fmt::Write;

use axum::{
    extract::State,
    http::{header, HeaderMap},
    response::IntoResponse,
    Json,
};
use subtle::ConstantTimeEq;

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
    let mut text = state.metrics.render();
    let (hits, misses) = state.store.warm().counts();
    let (mgets, gathered) = state.store.gathered();
    let _ = write!(
        text,
        "# HELP query_api_prewarm_hits_total Reads answered from the pre-warmed in-process views.\n\
         # TYPE query_api_prewarm_hits_total counter\nquery_api_prewarm_hits_total {hits}\n\
         # HELP query_api_prewarm_misses_total Reads of course pages, cards and events that went to Redis.\n\
         # TYPE query_api_prewarm_misses_total counter\nquery_api_prewarm_misses_total {misses}\n\
         # HELP query_api_prewarm_events Sale events whose views are held in process now.\n\
         # TYPE query_api_prewarm_events gauge\nquery_api_prewarm_events {}\n\
         # HELP query_api_redis_mgets_total MGETs sent to a single Redis (each may carry several reads).\n\
         # TYPE query_api_redis_mgets_total counter\nquery_api_redis_mgets_total {mgets}\n\
         # HELP query_api_redis_mget_reads_total Reads carried by those MGETs.\n\
         # TYPE query_api_redis_mget_reads_total counter\nquery_api_redis_mget_reads_total {gathered}\n",
        state.store.warm().events().len()
    );
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text)
}

/// `GET /v1/ops/prewarm` (admin token): the events held warm and how many
/// views each holds.
#[utoipa::path(
    get,
    path = "/v1/ops/prewarm",
    operation_id = "get_prewarm",
    tag = "ops",
    params(("Authorization" = String, Header, description = "`Bearer <ADMIN_TOKEN>`")),
    responses(
        (status = 200, description = "`{\"events\":[{\"event_id\",\"starts_at\",\"ends_at\",\"entries\"}]}`: sale events whose views are held in process (from `PREWARM_WINDOW` before they start until they end)"),
        (status = 401, description = "No admin token, a wrong one, or none configured (the route is off)", body = super::reference::ErrorBody)
    )
)]
pub(super) async fn prewarm(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Json<serde_json::Value>, ApiError> {
    // Off without a configured token (SPEC); compared in constant time.
    let expected = state
        .config
        .admin_token
        .as_deref()
        .ok_or(ApiError::Unauthorized)?;
    let presented = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.as_bytes().strip_prefix(b"Bearer "))
        .ok_or(ApiError::Unauthorized)?;
    if !bool::from(presented.ct_eq(expected.as_bytes())) {
        return Err(ApiError::Unauthorized);
    }
    Ok(Json(
        serde_json::json!({ "events": state.store.warm().events() }),
    ))
}
