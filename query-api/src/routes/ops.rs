//! `GET /ready`, `/metrics` and `/v1/ops/prewarm`: what ops and the load balancer ask.

use axum::{
    extract::State,
    http::{header, HeaderMap},
    response::Response,
    Json,
};
use subtle::ConstantTimeEq;

use crate::{error::ApiError, AppState};

/// `GET /ready`: Redis answers and a view generation of this query API's
/// view schema is live.
pub(super) async fn ready(
    State(state): State<AppState>,
) -> Result<Json<serde_json::Value>, ApiError> {
    if !state.store.ping().await {
        return Err(ApiError::Unavailable);
    }
    let live = state.store.live().await?.ok_or(ApiError::Rebuilding)?;
    Ok(Json(serde_json::json!({
        "status": "ready",
        "generation": live.generation,
        "schema": state.store.schema(),
        "stale": live.stale,
    })))
}

/// `GET /metrics`: OpenMetrics text.
pub(super) async fn metrics(State(state): State<AppState>) -> Response {
    let warm = state.store.warm();
    state
        .metrics
        .exposition(warm.counts(), warm.events().len(), state.store.gathered())
}

/// `GET /v1/ops/prewarm` (admin token): the events held warm and how many
/// views each holds.
#[utoipa::path(
    get,
    path = "/v1/ops/prewarm",
    operation_id = "get_prewarm",
    tag = "ops",
    security(("admin_token" = [])),
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
