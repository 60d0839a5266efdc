//! `GET /ready`, `/metrics`, `/v1/ops/prewarm`, `/v1/ops/flags` and
//! `/v1/ops/events/{id}/readiness`: what ops and the load balancer ask.

use axum::{
    extract::State,
    http::{header, HeaderMap},
    response::Response,
    Json,
};
use service::EvaluationContext;

use crate::{error::ApiError, params::PathId, prewarm::Prewarm, switches, AppState};

/// The projection's watermark must have moved within this (three of the
/// projector's heartbeats at their default 10 s keep it moving when idle).
const WATERMARK_MOVED_WITHIN_MS: u64 = 30_000;

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
    admin(&state, &headers)?;
    Ok(Json(
        serde_json::json!({ "events": state.store.warm().events() }),
    ))
}

/// Passes with the configured admin token; `/v1/ops/*` is off without one
/// (SPEC). Compared in constant time.
fn admin(state: &AppState, headers: &HeaderMap) -> Result<(), ApiError> {
    if !state
        .config
        .admin
        .admits(headers.get(header::AUTHORIZATION))
    {
        return Err(ApiError::Unauthorized);
    }
    Ok(())
}

/// `GET /v1/ops/flags` (admin token): the ops flags as this process
/// evaluates them now.
#[utoipa::path(
    get,
    path = "/v1/ops/flags",
    operation_id = "get_flags",
    tag = "ops",
    security(("admin_token" = [])),
    responses(
        (status = 200, description = "`{\"file\",\"file_problem\",\"flags\":[{\"flag\",\"value\",\"variant\",\"reason\",\"targeting\",\"default\",\"about\"}]}`: each flag evaluated with no context, and the problem that made the flag file refused, if any (the last good flags stay)"),
        (status = 401, description = "No admin token, a wrong one, or none configured (the route is off)", body = super::reference::ErrorBody)
    )
)]
pub(super) async fn flags(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Json<serde_json::Value>, ApiError> {
    admin(&state, &headers)?;
    Ok(Json(state.flags.listing()))
}

/// `GET /v1/ops/events/{id}/readiness` (admin token): whether the event is
/// ready for its rush, check by check.
#[utoipa::path(
    get,
    path = "/v1/ops/events/{id}/readiness",
    operation_id = "get_event_readiness",
    tag = "ops",
    security(("admin_token" = [])),
    params(("id" = i64, Path, minimum = 1, description = "The sale event id, a positive integer")),
    responses(
        (status = 200, description = "`{\"event_id\",\"ready\",\"checks\":[{\"name\",\"ok\",\"value\",\"limit\"}]}`; `ready` only when every check passes: `views_warm` (views of the event held in this process, of all it has), `warm_set_age_ms` (since the warm set was refreshed), `watermark_moved_ms` (since the projection's watermark last moved), `rebuilding` (a replacement generation is being built), and the switches that stop the event's sale (`checkout-orders`, `checkout-event-purchases`)"),
        (status = 400, description = "The id is not a positive integer", body = super::reference::ErrorBody),
        (status = 401, description = "No admin token, a wrong one, or none configured (the route is off)", body = super::reference::ErrorBody),
        (status = 404, description = "No view for this event", body = super::reference::ErrorBody),
        (status = 503, description = "`rebuilding` (no view generation is live) or `unavailable` (Redis is unreachable)", body = super::reference::ErrorBody)
    )
)]
pub(super) async fn readiness(
    State(state): State<AppState>,
    PathId(id): PathId,
    headers: HeaderMap,
) -> Result<Json<serde_json::Value>, ApiError> {
    admin(&state, &headers)?;
    let (projection, event) = state.store.event_view(id).await?;
    let event = event.ok_or_else(|| ApiError::NotFound(format!("event {id} has no view")))?;
    let warmth = state.store.warm().warmth(id, &event.course_ids);
    let millis = |d: Option<std::time::Duration>| d.map(|d| d.as_millis() as u64);
    let max_age = Prewarm::max_age().as_millis() as u64;
    let (refreshed, moved) = (millis(warmth.refreshed), millis(warmth.watermark_moved));
    let none = EvaluationContext::default();
    let event_context = EvaluationContext::default().with("eventId", id);
    let orders = state
        .flags
        .get_boolean_value(switches::CHECKOUT_ORDERS, &none, true);
    let purchases = state
        .flags
        .get_boolean_value(switches::EVENT_PURCHASES, &event_context, true);
    let stale = projection.stale || warmth.stale;
    let checks = [
        check(
            "views_warm",
            warmth.held == warmth.expected,
            warmth.held,
            warmth.expected,
        ),
        check(
            "warm_set_age_ms",
            refreshed.is_some_and(|ms| ms < max_age),
            refreshed,
            max_age,
        ),
        check(
            "watermark_moved_ms",
            moved.is_some_and(|ms| ms <= WATERMARK_MOVED_WITHIN_MS),
            moved,
            WATERMARK_MOVED_WITHIN_MS,
        ),
        check("rebuilding", !stale, stale, false),
        check(switches::CHECKOUT_ORDERS, orders, orders, true),
        check(switches::EVENT_PURCHASES, purchases, purchases, true),
    ];
    let ready = checks.iter().all(|c| c["ok"] == true);
    Ok(Json(serde_json::json!({
        "event_id": id,
        "ready": ready,
        "checks": checks,
    })))
}

fn check(
    name: &str,
    ok: bool,
    value: impl serde::Serialize,
    limit: impl serde::Serialize,
) -> serde_json::Value {
    serde_json::json!({ "name": name, "ok": ok, "value": value, "limit": limit })
}
