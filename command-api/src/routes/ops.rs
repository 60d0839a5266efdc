//! `GET /v1/ops/flags`: the ops flags as this process evaluates them now.

use axum::extract::State;
use axum::Json;

use crate::auth::Ops;
use crate::error::{ApiError, ErrorBody};
use crate::state::AppState;

/// The ops flags (admin token).
///
/// Each flag this API reads, evaluated with no context: its value, variant,
/// reason (OpenFeature's), the targeting rules the flag file gives it, its
/// default, and what it protects; and the flag file with the problem that
/// made it refused, if any (the last good flags stay).
#[utoipa::path(
    get,
    path = "/v1/ops/flags",
    operation_id = "get_flags",
    tag = "ops",
    security(("admin_token" = [])),
    responses(
        (status = 200, description = "`{\"file\",\"file_problem\",\"flags\":[{\"flag\",\"value\",\"variant\",\"reason\",\"targeting\",\"default\",\"about\"}]}`.", body = serde_json::Value),
        (status = 401, description = "`unauthorized`: no admin token, a wrong one, or none configured (the route is off).", body = ErrorBody),
    )
)]
pub(super) async fn flags(
    State(state): State<AppState>,
    _ops: Ops,
) -> Result<Json<serde_json::Value>, ApiError> {
    Ok(Json(state.flags.listing()))
}
