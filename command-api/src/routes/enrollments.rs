//! `POST /v1/enrollments`: enrolling without checkout where the price is 0,
//! written by the checkout as a free order of one course.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use serde::Deserialize;
use utoipa::ToSchema;

use crate::checkout::{self, CheckoutError, Enrollment};
use crate::error::{ApiError, BodyRefused, ErrorBody, FieldErrors, Unavailable};
use crate::extract::AppJson;
use crate::routes::written;
use crate::state::AppState;
use crate::switches;

/// A direct enrollment.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct CreateEnrollment {
    #[schema(minimum = 1)]
    user_id: i64,
    #[schema(minimum = 1)]
    course_id: i64,
    /// A running 100%-off event of the course; claims one of its seats.
    #[serde(default)]
    #[schema(minimum = 1)]
    event_id: Option<i64>,
}

/// Enroll without checkout, where the price is 0.
///
/// Allowed for a free course, or in a running 100%-off event given by
/// `event_id` (which claims one of its seats, like an order); anything else
/// is 422. Written as a free order of one course, so cancelling that order
/// revokes it.
#[utoipa::path(
    post,
    path = "/v1/enrollments",
    operation_id = "create_enrollment",
    tag = "enrollments",
    request_body = CreateEnrollment,
    responses(
        (status = 201, description = "The enrollment.", body = Enrollment,
            headers(("X-Commit-Lsn" = String, description = "Read-your-writes token: an LSN at or after the commit."))),
        (status = 409, description = "`already_enrolled`, or `sold_out`: no seat left in the event.", body = ErrorBody),
        (status = 422, description = "`validation_failed`, with `fields`: unknown user, course or event, an event that is not running, or a price above 0.", body = ErrorBody),
        BodyRefused,
        Unavailable,
    )
)]
pub(super) async fn create(
    State(state): State<AppState>,
    AppJson(request): AppJson<CreateEnrollment>,
) -> Result<Response, ApiError> {
    let mut errors = FieldErrors::default();
    if request.user_id <= 0 {
        errors.add("user_id", "must be a positive integer");
    }
    if request.course_id <= 0 {
        errors.add("course_id", "must be a positive integer");
    }
    if request.event_id.is_some_and(|id| id <= 0) {
        errors.add("event_id", "must be a positive integer");
    }
    errors.into_result()?;
    // Ops switches refuse before any database work: nothing is written. A
    // direct enrollment is written as an order: the order-rate cap counts it.
    switches::admit(&state.flags, true, request.event_id)?;
    state.intake.take(&state.flags)?;

    let mut conn = state.pool.acquire().await?;
    let (enrollment, lsn) = checkout::enroll(
        &mut conn,
        request.user_id,
        request.course_id,
        request.event_id,
    )
    .await
    .map_err(|err| match err {
        // The checkout speaks of `course_ids`; this route has `course_id`.
        CheckoutError::Invalid(fields) => {
            ApiError::Validation(fields.rename("course_ids", "course_id"))
        }
        other => other.into(),
    })?;
    Ok(written(StatusCode::CREATED, lsn, &enrollment))
}
