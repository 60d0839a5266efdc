//! `POST /v1/enrollments` on the command side (command → projector → query):
//! enrolling without checkout where the price is 0. It is written as a free
//! order of one course, so seats, cancellation and the projector's views treat
//! it exactly like any other purchase.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sqlx::Connection;
use utoipa::ToSchema;

use crate::db::commit_lsn;
use crate::error::{ApiError, BodyRefused, ErrorBody, FieldErrors, Unavailable};
use crate::extract::AppJson;
use crate::routes::orders::{write_order, NewOrder, Pricing};
use crate::routes::{written, AppState};

/// A direct enrollment.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct CreateEnrollment {
    user_id: i64,
    course_id: i64,
    /// A running 100%-off event of the course; claims one of its seats.
    #[serde(default)]
    event_id: Option<i64>,
}

/// An enrollment as stored: an insert-only fact, revoked only by cancelling
/// its order.
#[derive(Serialize, sqlx::FromRow, ToSchema)]
struct Enrollment {
    id: i64,
    user_id: i64,
    course_id: i64,
    order_id: Option<i64>,
    event_id: Option<i64>,
    company: Option<String>,
    created_at: DateTime<Utc>,
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
    let order = NewOrder {
        user_id: request.user_id,
        course_ids: vec![request.course_id],
        event_id: request.event_id,
    };

    let mut conn = state.pool.acquire().await?;
    let mut tx = conn.begin().await?;
    let receipt = write_order(&mut tx, &order, Pricing::FreeOnly)
        .await
        .map_err(|err| match err {
            // The shared checks speak of `course_ids`; this route has `course_id`.
            ApiError::Validation(fields) => {
                ApiError::Validation(fields.rename("course_ids", "course_id"))
            }
            other => other,
        })?;
    let enrollment: Enrollment = sqlx::query_as(
        "SELECT id, user_id, course_id, order_id, event_id, company, created_at \
         FROM enrollments WHERE order_id = $1",
    )
    .bind(receipt.id)
    .fetch_one(&mut *tx)
    .await?;
    tx.commit().await?;
    tracing::info!(
        enrollment_id = enrollment.id,
        order_id = receipt.id,
        "direct enrollment"
    );
    let lsn = commit_lsn(&mut conn).await;
    Ok(written(StatusCode::CREATED, lsn, &enrollment))
}
