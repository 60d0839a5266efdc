//! `POST /v1/orders` and `POST /v1/orders/{id}/cancel`: parse the request,
//! run the checkout, answer with the receipt and its commit LSN.

use std::collections::HashSet;

use axum::extract::State;
use axum::http::{HeaderName, HeaderValue, StatusCode};
use axum::response::Response;
use serde::Deserialize;
use serde_json::Value;
use utoipa::ToSchema;

use crate::checkout::{self, CheckoutError, NewOrder, Placed, Receipt};
use crate::db::commit_lsn;
use crate::error::{join_ids, ApiError, BodyRefused, ErrorBody, FieldErrors, Unavailable};
use crate::extract::{AppJson, IdempotencyKey, PathId};
use crate::routes::written;
use crate::state::AppState;
use crate::switches;

/// Most courses one order may hold.
const MAX_COURSES: usize = 500;

/// Marks a response that repeats the stored answer of an earlier request.
const IDEMPOTENT_REPLAYED: HeaderName = HeaderName::from_static("idempotent-replayed");

/// A checkout.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct CreateOrder {
    #[schema(minimum = 1)]
    user_id: i64,
    #[schema(schema_with = course_ids_schema)]
    course_ids: Vec<i64>,
    /// A running sale event: its courses are priced and seated by it.
    #[serde(default)]
    #[schema(minimum = 1)]
    event_id: Option<i64>,
}

fn course_ids_schema() -> utoipa::openapi::Array {
    super::reference::distinct_ids(MAX_COURSES, "1 to 500 distinct course ids.")
}

impl TryFrom<CreateOrder> for NewOrder {
    type Error = ApiError;

    fn try_from(request: CreateOrder) -> Result<Self, ApiError> {
        let mut errors = FieldErrors::default();
        if request.user_id <= 0 {
            errors.add("user_id", "must be a positive integer");
        }
        if request.event_id.is_some_and(|id| id <= 0) {
            errors.add("event_id", "must be a positive integer");
        }
        let count = request.course_ids.len();
        if count == 0 || count > MAX_COURSES {
            errors.add(
                "course_ids",
                format!("must hold 1 to {MAX_COURSES} course ids (got {count})"),
            );
        } else if request.course_ids.iter().any(|id| *id <= 0) {
            errors.add("course_ids", "course ids are positive integers");
        } else {
            let mut seen = HashSet::with_capacity(count);
            let mut repeated: Vec<i64> = request
                .course_ids
                .iter()
                .filter(|id| !seen.insert(**id))
                .copied()
                .collect();
            repeated.sort_unstable();
            repeated.dedup();
            if !repeated.is_empty() {
                errors.add(
                    "course_ids",
                    format!(
                        "must not repeat a course id (repeated: {})",
                        join_ids(&repeated)
                    ),
                );
            }
        }
        errors.into_result()?;
        Ok(NewOrder {
            user_id: request.user_id,
            course_ids: request.course_ids,
            event_id: request.event_id,
            joined_lookup: false,
        })
    }
}

/// The answer to a checkout, an enrollment or a cancellation that wrote nothing.
impl From<CheckoutError> for ApiError {
    fn from(err: CheckoutError) -> Self {
        match err {
            CheckoutError::Invalid(fields) => ApiError::Validation(fields),
            CheckoutError::AlreadyEnrolled(ids) => ApiError::AlreadyEnrolled(ids),
            CheckoutError::SoldOut(ids) => ApiError::SoldOut(ids),
            CheckoutError::KeyReused => ApiError::IdempotencyKeyReused,
            CheckoutError::KeyChangingHands => {
                ApiError::Unavailable("the idempotency key is changing hands, retry shortly")
            }
            err @ CheckoutError::KeyWithoutResponse => ApiError::Internal(err.to_string()),
            CheckoutError::NoOrder(id) => ApiError::NotFound(format!("there is no order {id}")),
            CheckoutError::Database(err) => ApiError::Database(err),
        }
    }
}

/// Place an order: checkout.
///
/// One transaction prices the courses (by the event's window and discount
/// where `event_id` names a running event), claims event seats, and enrolls
/// the user in every course: all or nothing. A retry with the same key and
/// the same body (compared as parsed JSON) answers the stored order with 200
/// and `Idempotent-Replayed: true`, and creates nothing.
#[utoipa::path(
    post,
    path = "/v1/orders",
    operation_id = "place_order",
    tag = "orders",
    params((
        "Idempotency-Key" = String, Header, min_length = 1, max_length = 128, pattern = "^[!-~]+$",
        description = "1 to 128 visible ASCII characters, scoped per user, kept at least 24 hours; \
            missing is 428 `idempotency_key_required`, malformed or sent twice is 400."
    )),
    request_body = CreateOrder,
    responses(
        (status = 201, description = "The order, completed.", body = Receipt,
            headers(("X-Commit-Lsn" = String, description = "Read-your-writes token: an LSN at or after the commit."))),
        (status = 200, description = "A replay: the stored answer to the first request with this key and body.", body = Receipt,
            headers(
                ("Idempotent-Replayed" = String, description = "`true`."),
                ("X-Commit-Lsn" = String, description = "Read-your-writes token: an LSN at or after the commit.")
            )),
        (status = 409, description = "`already_enrolled`, `sold_out` (the whole order is refused), or `idempotency_key_reused` (the key was used with another body).", body = ErrorBody),
        (status = 422, description = "`validation_failed`, with `fields`: unknown user or courses, repeated or too many courses, an event that is not running.", body = ErrorBody),
        (status = 428, description = "`idempotency_key_required`.", body = ErrorBody),
        BodyRefused,
        Unavailable,
    )
)]
pub(super) async fn create(
    State(state): State<AppState>,
    IdempotencyKey(key): IdempotencyKey,
    AppJson(body): AppJson<Value>,
) -> Result<Response, ApiError> {
    // The body is kept as parsed JSON: that is what a retry is compared with.
    let request = CreateOrder::deserialize(&body)
        .map_err(|err| ApiError::BadRequest(format!("the body is not an order: {err}")))?;
    let mut order = NewOrder::try_from(request)?;
    // Ops switches refuse before any database work: nothing is written.
    switches::admit(&state.flags, false, order.event_id)?;
    state.intake.take(&state.flags)?;
    order.joined_lookup = switches::joined_lookup(&state.flags, order.user_id);
    let mut conn = state.pool.acquire().await?;
    match checkout::place(&mut conn, &key, &body, &order).await? {
        Placed::Created(receipt, lsn) => {
            tracing::info!(
                order_id = receipt.id,
                total_krw = receipt.total_krw,
                joined_lookup = order.joined_lookup,
                "order placed"
            );
            state.metrics.count_lookup(order.joined_lookup);
            Ok(written(StatusCode::CREATED, lsn, &receipt))
        }
        Placed::Replayed(stored) => {
            tracing::info!("order replayed from its idempotency key");
            // The stored order committed before this request read it, so
            // the current position is past its commit too.
            let lsn = commit_lsn(&mut conn).await;
            let mut response = written(StatusCode::OK, lsn, &stored);
            response
                .headers_mut()
                .insert(IDEMPOTENT_REPLAYED, HeaderValue::from_static("true"));
            Ok(response)
        }
    }
}

/// Cancel an order.
///
/// A compensating action, in one transaction: the order's enrollments are
/// revoked (insert-only facts get their `revoked_at`, once), its event seats
/// go back to the event, and the order is marked cancelled. Cancelling a
/// cancelled order changes nothing and answers the same.
#[utoipa::path(
    post,
    path = "/v1/orders/{id}/cancel",
    operation_id = "cancel_order",
    tag = "orders",
    params(("id" = i64, Path, minimum = 1, description = "The order id.")),
    responses(
        (status = 200, description = "The order, cancelled.", body = Receipt,
            headers(("X-Commit-Lsn" = String, description = "Read-your-writes token: an LSN at or after the commit."))),
        (status = 400, description = "`bad_request`: the id is not a positive integer.", body = ErrorBody),
        (status = 404, description = "`not_found`: there is no such order.", body = ErrorBody),
        Unavailable,
    )
)]
pub(super) async fn cancel(
    State(state): State<AppState>,
    PathId(id): PathId,
) -> Result<Response, ApiError> {
    let mut conn = state.pool.acquire().await?;
    let (receipt, lsn) = checkout::cancel(&mut conn, id).await?;
    Ok(written(StatusCode::OK, lsn, &receipt))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(course_ids: Vec<i64>) -> CreateOrder {
        CreateOrder {
            user_id: 1,
            course_ids,
            event_id: None,
        }
    }

    #[test]
    fn an_order_needs_one_to_five_hundred_distinct_courses() {
        assert!(NewOrder::try_from(request(vec![])).is_err());
        assert!(NewOrder::try_from(request((1..=501).collect())).is_err());
        assert!(NewOrder::try_from(request(vec![1, 2, 1])).is_err());
        assert!(NewOrder::try_from(request(vec![1, -2])).is_err());
        assert!(NewOrder::try_from(request((1..=500).collect())).is_ok());
    }

    #[test]
    fn checkout_refusals_answer_with_the_spec_statuses() {
        use axum::response::IntoResponse;

        let status = |err: CheckoutError| ApiError::from(err).into_response().status();
        let mut fields = FieldErrors::default();
        fields.add("user_id", "there is no user 7");
        assert_eq!(
            status(CheckoutError::Invalid(fields)),
            StatusCode::UNPROCESSABLE_ENTITY
        );
        assert_eq!(
            status(CheckoutError::AlreadyEnrolled(vec![3])),
            StatusCode::CONFLICT
        );
        assert_eq!(
            status(CheckoutError::SoldOut(vec![3])),
            StatusCode::CONFLICT
        );
        assert_eq!(status(CheckoutError::KeyReused), StatusCode::CONFLICT);
        assert_eq!(
            status(CheckoutError::KeyChangingHands),
            StatusCode::SERVICE_UNAVAILABLE
        );
        assert_eq!(status(CheckoutError::NoOrder(9)), StatusCode::NOT_FOUND);
        assert_eq!(
            status(CheckoutError::KeyWithoutResponse),
            StatusCode::INTERNAL_SERVER_ERROR
        );
    }
}
