//! `POST /v1/orders` on the command side (command → projector → query):
//! checkout. One transaction prices the courses, claims event seats, writes the
//! order, its items and one enrollment per course, and records the answer under
//! the caller's idempotency key; the projector turns those inserted facts into
//! student counts, company tallies and seats left.

use std::collections::{HashMap, HashSet};

use axum::extract::State;
use axum::http::{HeaderName, HeaderValue, StatusCode};
use axum::response::Response;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sqlx::types::Json;
use sqlx::{Connection, PgConnection};
use utoipa::ToSchema;

use crate::db::commit_lsn;
use crate::error::{violates, ApiError, BodyRefused, ErrorBody, FieldErrors, Unavailable};
use crate::extract::{AppJson, IdempotencyKey, PathId};
use crate::routes::{written, AppState};

/// Most courses one order may hold.
const MAX_COURSES: usize = 500;

/// Marks a response that repeats the stored answer of an earlier request.
const IDEMPOTENT_REPLAYED: HeaderName = HeaderName::from_static("idempotent-replayed");

/// The prices of an order's courses: one statement with one array parameter
/// whatever the cart's size, so it stays one primary-key index lookup where a
/// growing `IN (...)` list would be planned anew and could fall back to a
/// scan. Heavy columns stay out: only ids and prices.
pub const COURSE_PRICES: &str = "SELECT id, price_krw FROM courses WHERE id = ANY($1)";

/// Tries of one request when its key row disappears between the conflict and
/// the read (the expiry job deleted it): then the key is free again.
const ATTEMPTS: usize = 3;

/// A checkout.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct CreateOrder {
    user_id: i64,
    /// 1 to 500 distinct course ids.
    #[schema(min_items = 1, max_items = 500)]
    course_ids: Vec<i64>,
    /// A running sale event: its courses are priced and seated by it.
    #[serde(default)]
    event_id: Option<i64>,
}

/// An order request whose shape and values passed the checks that need no
/// database: 1 to 500 distinct positive course ids.
pub(super) struct NewOrder {
    pub(super) user_id: i64,
    pub(super) course_ids: Vec<i64>,
    pub(super) event_id: Option<i64>,
}

/// Which prices an order may have.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Pricing {
    /// A checkout: any price.
    Paid,
    /// A direct enrollment: only where the price is 0.
    FreeOnly,
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
                        join(&repeated)
                    ),
                );
            }
        }
        errors.into_result()?;
        Ok(NewOrder {
            user_id: request.user_id,
            course_ids: request.course_ids,
            event_id: request.event_id,
        })
    }
}

fn join(ids: &[i64]) -> String {
    ids.iter()
        .map(i64::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

/// The order as answered to the client, and as stored for replays.
#[derive(Serialize, ToSchema)]
#[schema(as = Order)]
pub(super) struct Receipt {
    pub(super) id: i64,
    user_id: i64,
    event_id: Option<i64>,
    status: OrderStatus,
    /// The sum of the items' prices.
    total_krw: i64,
    /// In the order the course ids were given.
    items: Vec<Item>,
    created_at: DateTime<Utc>,
    /// Only on a cancelled order.
    #[serde(skip_serializing_if = "Option::is_none")]
    cancelled_at: Option<DateTime<Utc>>,
}

/// Where an order stands. Payment is out of scope: an order completes when
/// it is written.
#[derive(Clone, Copy, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
enum OrderStatus {
    Completed,
    Cancelled,
}

/// A course of an order and the price paid for it.
#[derive(Serialize, sqlx::FromRow, ToSchema)]
#[schema(as = OrderItem)]
struct Item {
    course_id: i64,
    price_krw: i64,
}

/// What happened to one attempt at placing an order.
enum Placed {
    /// The order was written and committed.
    Created(Receipt),
    /// The key already holds the answer to this very request.
    Replayed(Value),
    /// The key already holds the answer to a different request.
    KeyReused,
    /// The key's row was gone by the time it was read: try again.
    KeyVanished,
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
        "Idempotency-Key" = String, Header,
        description = "1 to 128 visible ASCII characters, scoped per user, kept at least 24 hours."
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
    let order = NewOrder::try_from(request)?;
    let mut conn = state.pool.acquire().await?;
    for _ in 0..ATTEMPTS {
        match place(&mut conn, &key, &body, &order).await? {
            Placed::Created(receipt) => {
                tracing::info!(
                    order_id = receipt.id,
                    total_krw = receipt.total_krw,
                    "order placed"
                );
                let lsn = commit_lsn(&mut conn).await;
                return Ok(written(StatusCode::CREATED, lsn, &receipt));
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
                return Ok(response);
            }
            Placed::KeyReused => return Err(ApiError::IdempotencyKeyReused),
            Placed::KeyVanished => continue,
        }
    }
    Err(ApiError::Unavailable(
        "the idempotency key is changing hands, retry shortly",
    ))
}

#[derive(sqlx::FromRow)]
struct StoredKey {
    same_request: bool,
    response: Option<Value>,
}

/// One attempt, in one transaction. Any error rolls everything back, the
/// idempotency key included, so a corrected retry may reuse the key.
async fn place(
    conn: &mut PgConnection,
    key: &str,
    body: &Value,
    order: &NewOrder,
) -> Result<Placed, ApiError> {
    let mut tx = conn.begin().await?;
    // The primary key (user_id, key) serializes concurrent requests with the
    // same key: a second INSERT waits here until the first commits (then it
    // conflicts and reads the stored answer) or rolls back (then it proceeds).
    let claimed: Option<i32> = sqlx::query_scalar(
        "INSERT INTO idempotency_keys (user_id, key, request) VALUES ($1, $2, $3) \
         ON CONFLICT DO NOTHING RETURNING 1",
    )
    .bind(order.user_id)
    .bind(key)
    .bind(Json(body))
    .fetch_optional(&mut *tx)
    .await?;
    if claimed.is_none() {
        // jsonb equality compares parsed JSON: key order and spacing do not matter.
        let stored: Option<StoredKey> = sqlx::query_as(
            "SELECT request = $3 AS same_request, response FROM idempotency_keys \
             WHERE user_id = $1 AND key = $2",
        )
        .bind(order.user_id)
        .bind(key)
        .bind(Json(body))
        .fetch_optional(&mut *tx)
        .await?;
        tx.rollback().await?;
        return match stored {
            None => Ok(Placed::KeyVanished),
            Some(StoredKey {
                same_request: false,
                ..
            }) => Ok(Placed::KeyReused),
            Some(StoredKey {
                response: Some(response),
                ..
            }) => Ok(Placed::Replayed(response)),
            // Rows are committed only with their answer, so this is a bug.
            Some(StoredKey { response: None, .. }) => Err(ApiError::Internal(
                "an idempotency key was committed without its response".to_owned(),
            )),
        };
    }

    let receipt = write_order(&mut tx, order, Pricing::Paid).await?;

    sqlx::query(
        "UPDATE idempotency_keys SET response = $3, status_code = 201 \
         WHERE user_id = $1 AND key = $2",
    )
    .bind(order.user_id)
    .bind(key)
    .bind(Json(&receipt))
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(Placed::Created(receipt))
}

#[derive(sqlx::FromRow)]
struct UserRow {
    company: Option<String>,
}

#[derive(sqlx::FromRow)]
struct CourseRow {
    id: i64,
    price_krw: i64,
}

#[derive(sqlx::FromRow)]
struct EventRow {
    discount_percent: i32,
    running: bool,
}

#[derive(sqlx::FromRow)]
struct EventCourseRow {
    course_id: i64,
    seat_limit: Option<i32>,
}

#[derive(sqlx::FromRow)]
struct OrderRow {
    id: i64,
    created_at: DateTime<Utc>,
}

/// Validates the order against the database and writes it, inside `tx`:
/// the order, its items, one enrollment per course, and the event seats.
pub(super) async fn write_order(
    tx: &mut PgConnection,
    order: &NewOrder,
    pricing: Pricing,
) -> Result<Receipt, ApiError> {
    let user: Option<UserRow> = sqlx::query_as("SELECT company FROM users WHERE id = $1")
        .bind(order.user_id)
        .fetch_optional(&mut *tx)
        .await?;
    let courses: Vec<CourseRow> = sqlx::query_as(COURSE_PRICES)
        .bind(&order.course_ids)
        .fetch_all(&mut *tx)
        .await?;
    let event: Option<EventRow> = match order.event_id {
        Some(event_id) => {
            // The database clock decides whether the sale runs: [starts_at, ends_at).
            sqlx::query_as(
                "SELECT discount_percent, (starts_at <= now() AND now() < ends_at) AS running \
                 FROM sale_events WHERE id = $1",
            )
            .bind(event_id)
            .fetch_optional(&mut *tx)
            .await?
        }
        None => None,
    };

    let mut errors = FieldErrors::default();
    if user.is_none() {
        errors.add("user_id", format!("there is no user {}", order.user_id));
    }
    let prices: HashMap<i64, i64> = courses.iter().map(|c| (c.id, c.price_krw)).collect();
    let unknown: Vec<i64> = order
        .course_ids
        .iter()
        .filter(|id| !prices.contains_key(id))
        .copied()
        .collect();
    if !unknown.is_empty() {
        errors.add(
            "course_ids",
            format!("unknown course ids: {}", join(&unknown)),
        );
    }
    match (order.event_id, &event) {
        (Some(event_id), None) => errors.add("event_id", format!("there is no event {event_id}")),
        (Some(event_id), Some(event)) if !event.running => {
            errors.add("event_id", format!("event {event_id} is not running now"))
        }
        _ => {}
    }
    errors.into_result()?;
    let company = user.and_then(|user| user.company);

    // Courses of the running event, with their seat limits.
    let (discount_percent, in_event): (i64, HashMap<i64, Option<i32>>) =
        match (order.event_id, &event) {
            (Some(event_id), Some(event)) => {
                let rows: Vec<EventCourseRow> = sqlx::query_as(
                    "SELECT course_id, seat_limit FROM sale_event_courses \
                 WHERE event_id = $1 AND course_id = ANY($2)",
                )
                .bind(event_id)
                .bind(&order.course_ids)
                .fetch_all(&mut *tx)
                .await?;
                (
                    i64::from(event.discount_percent),
                    rows.into_iter()
                        .map(|r| (r.course_id, r.seat_limit))
                        .collect(),
                )
            }
            _ => (0, HashMap::new()),
        };

    // Checked before anything is written, so the common refusal costs no
    // locks; the unique index below still catches a concurrent order.
    let mut enrolled: Vec<i64> = sqlx::query_scalar(
        "SELECT course_id FROM enrollments \
         WHERE user_id = $1 AND course_id = ANY($2) AND revoked_at IS NULL",
    )
    .bind(order.user_id)
    .bind(&order.course_ids)
    .fetch_all(&mut *tx)
    .await?;
    if !enrolled.is_empty() {
        enrolled.sort_unstable();
        return Err(ApiError::AlreadyEnrolled(enrolled));
    }

    let items: Vec<Item> = order
        .course_ids
        .iter()
        .map(|course_id| {
            let list_price = prices.get(course_id).copied().unwrap_or_default();
            let price_krw = if in_event.contains_key(course_id) {
                discounted(list_price, discount_percent)
            } else {
                list_price
            };
            Item {
                course_id: *course_id,
                price_krw,
            }
        })
        .collect();
    let total_krw = items
        .iter()
        .try_fold(0i64, |total, item| total.checked_add(item.price_krw))
        .ok_or_else(|| FieldErrors::single("course_ids", "the order total is too large"))?;
    if pricing == Pricing::FreeOnly {
        if let Some(item) = items.iter().find(|item| item.price_krw > 0) {
            return Err(FieldErrors::single(
                "course_ids",
                format!(
                    "course {} costs {} won here; only free courses, or courses of a running \
                     100%-off event given by event_id, can be enrolled in directly",
                    item.course_id, item.price_krw
                ),
            ));
        }
    }

    let created: OrderRow = sqlx::query_as(
        "INSERT INTO orders (user_id, event_id, status, total_krw) \
         VALUES ($1, $2, 'completed', $3) RETURNING id, created_at",
    )
    .bind(order.user_id)
    .bind(order.event_id)
    .bind(total_krw)
    .fetch_one(&mut *tx)
    .await?;

    if let Some(event_id) = order.event_id {
        let mut limited: Vec<i64> = in_event
            .iter()
            .filter(|(_, seat_limit)| seat_limit.is_some())
            .map(|(course_id, _)| *course_id)
            .collect();
        if !limited.is_empty() {
            limited.sort_unstable();
            claim_seats(tx, event_id, &limited, created.id).await?;
        }
    }

    // Rows go in ascending course order, so two orders of one user that
    // overlap wait on each other instead of deadlocking.
    let mut sorted: Vec<&Item> = items.iter().collect();
    sorted.sort_unstable_by_key(|item| item.course_id);
    let course_ids: Vec<i64> = sorted.iter().map(|item| item.course_id).collect();
    let item_prices: Vec<i64> = sorted.iter().map(|item| item.price_krw).collect();
    let enrollment_events: Vec<Option<i64>> = course_ids
        .iter()
        .map(|course_id| order.event_id.filter(|_| in_event.contains_key(course_id)))
        .collect();

    sqlx::query(
        "INSERT INTO order_items (order_id, course_id, price_krw) \
         SELECT $1, item.course_id, item.price_krw \
         FROM UNNEST($2::bigint[], $3::bigint[]) AS item(course_id, price_krw)",
    )
    .bind(created.id)
    .bind(&course_ids)
    .bind(&item_prices)
    .execute(&mut *tx)
    .await?;

    // The company and the event are copied onto each enrollment so the
    // projector tallies them from the row alone.
    sqlx::query(
        "INSERT INTO enrollments (user_id, course_id, order_id, event_id, company) \
         SELECT $1, e.course_id, $2, e.event_id, $3 \
         FROM UNNEST($4::bigint[], $5::bigint[]) AS e(course_id, event_id)",
    )
    .bind(order.user_id)
    .bind(created.id)
    .bind(&company)
    .bind(&course_ids)
    .bind(&enrollment_events)
    .execute(&mut *tx)
    .await
    .map_err(|err| {
        if violates(&err, "enrollments_active_key") {
            ApiError::AlreadyEnrolled(Vec::new())
        } else {
            ApiError::Database(err)
        }
    })?;

    Ok(Receipt {
        id: created.id,
        user_id: order.user_id,
        event_id: order.event_id,
        status: OrderStatus::Completed,
        total_krw,
        items,
        created_at: created.created_at,
        cancelled_at: None,
    })
}

#[derive(sqlx::FromRow)]
struct StoredOrder {
    id: i64,
    user_id: i64,
    event_id: Option<i64>,
    status: String,
    total_krw: i64,
    created_at: DateTime<Utc>,
    cancelled_at: Option<DateTime<Utc>>,
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
    let mut tx = conn.begin().await?;
    // The row lock makes two concurrent cancels of one order take turns.
    let order: Option<StoredOrder> = sqlx::query_as(
        "SELECT id, user_id, event_id, status, total_krw, created_at, cancelled_at \
         FROM orders WHERE id = $1 FOR UPDATE",
    )
    .bind(id)
    .fetch_optional(&mut *tx)
    .await?;
    let mut order = order.ok_or_else(|| ApiError::NotFound(format!("there is no order {id}")))?;
    if order.status != "cancelled" {
        let cancelled_at: DateTime<Utc> = sqlx::query_scalar(
            "UPDATE orders SET status = 'cancelled', cancelled_at = now() \
             WHERE id = $1 RETURNING cancelled_at",
        )
        .bind(id)
        .fetch_one(&mut *tx)
        .await?;
        sqlx::query(
            "UPDATE enrollments SET revoked_at = now() \
             WHERE order_id = $1 AND revoked_at IS NULL",
        )
        .bind(id)
        .execute(&mut *tx)
        .await?;
        sqlx::query("UPDATE event_seats SET order_id = NULL WHERE order_id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await?;
        order.cancelled_at = Some(cancelled_at);
        tracing::info!(order_id = id, "order cancelled");
    }
    let items: Vec<Item> = sqlx::query_as(
        "SELECT course_id, price_krw FROM order_items WHERE order_id = $1 ORDER BY course_id",
    )
    .bind(id)
    .fetch_all(&mut *tx)
    .await?;
    tx.commit().await?;
    let lsn = commit_lsn(&mut conn).await;
    let receipt = Receipt {
        id: order.id,
        user_id: order.user_id,
        event_id: order.event_id,
        status: OrderStatus::Cancelled,
        total_krw: order.total_krw,
        items,
        created_at: order.created_at,
        cancelled_at: order.cancelled_at,
    };
    Ok(written(StatusCode::OK, lsn, &receipt))
}

/// The sale price: `price * (100 - discount) / 100`, rounded down.
fn discounted(price_krw: i64, discount_percent: i64) -> i64 {
    let discounted = i128::from(price_krw) * i128::from(100 - discount_percent) / 100;
    // Between 0 and `price_krw` for a discount in 0..=100, which the table checks.
    i64::try_from(discounted).unwrap_or(price_krw)
}

/// Claims one free seat of `event_id` for each course, for `order_id`, in one
/// statement.
///
/// Seats are rows, not a counter. A `seats_left = seats_left - 1` on one row
/// per (event, course) would queue every buyer of a hot course on that row's
/// lock and leave a dead tuple per sale. Instead `POST /v1/events` writes one
/// row per seat, and a buyer locks the first free one with
/// `FOR UPDATE SKIP LOCKED`: rows that other buyers hold are skipped, not
/// waited on, so N buyers take N different rows side by side.
///
/// No oversell: a seat is claimed by setting its `order_id` under its row
/// lock, inside the buyer's transaction. A seat whose claim has committed no
/// longer passes `order_id IS NULL` when PostgreSQL re-checks it under the
/// lock, and a row holds one order. Fewer seats than courses means
/// `sold_out`, and the rollback releases whatever this buyer took.
/// Cancelling an order sets its seats' `order_id` back to NULL (see
/// [`cancel`]), which puts them back on sale.
///
/// The price of not waiting: a buyer who finds every free seat locked by
/// transactions still in flight hears `sold_out`, even if one of them later
/// rolls back. That is the true answer at that instant, and it never blocks.
async fn claim_seats(
    tx: &mut PgConnection,
    event_id: i64,
    course_ids: &[i64],
    order_id: i64,
) -> Result<(), ApiError> {
    let claimed: Vec<i64> = sqlx::query_scalar(
        "WITH free AS ( \
             SELECT seat.course_id, seat.seat_no \
             FROM UNNEST($2::bigint[]) AS wanted(course_id) \
             CROSS JOIN LATERAL ( \
                 SELECT e.course_id, e.seat_no FROM event_seats e \
                 WHERE e.event_id = $1 AND e.course_id = wanted.course_id AND e.order_id IS NULL \
                 LIMIT 1 FOR UPDATE SKIP LOCKED \
             ) AS seat \
         ) \
         UPDATE event_seats s SET order_id = $3 FROM free \
         WHERE s.event_id = $1 AND s.course_id = free.course_id AND s.seat_no = free.seat_no \
         RETURNING s.course_id",
    )
    .bind(event_id)
    .bind(course_ids)
    .bind(order_id)
    .fetch_all(&mut *tx)
    .await?;
    if claimed.len() < course_ids.len() {
        let claimed: HashSet<i64> = claimed.into_iter().collect();
        let sold_out: Vec<i64> = course_ids
            .iter()
            .filter(|id| !claimed.contains(id))
            .copied()
            .collect();
        return Err(ApiError::SoldOut(sold_out));
    }
    Ok(())
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
    fn sale_prices_round_down() {
        assert_eq!(discounted(10_000, 0), 10_000);
        assert_eq!(discounted(9_999, 50), 4_999);
        assert_eq!(discounted(10_000, 100), 0);
        assert_eq!(discounted(1, 99), 0);
    }

    #[test]
    fn an_order_needs_one_to_five_hundred_distinct_courses() {
        assert!(NewOrder::try_from(request(vec![])).is_err());
        assert!(NewOrder::try_from(request((1..=501).collect())).is_err());
        assert!(NewOrder::try_from(request(vec![1, 2, 1])).is_err());
        assert!(NewOrder::try_from(request(vec![1, -2])).is_err());
        assert!(NewOrder::try_from(request((1..=500).collect())).is_ok());
    }
}
