//! The checkout in two statements (the release toggle `checkout-joined-lookup`):
//! one claims the idempotency key and reads every fact the order needs, one
//! writes the order, its seats, items, enrollments and the key's answer.
//! Each round trip saved is one less wait on the network and one less
//! statement for both ends to parse, bind and answer.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::types::Json;
use sqlx::PgConnection;

use super::order::{EventRow, Facts, Plan};
use super::seats::free_seats;
use super::{CheckoutError, NewOrder, Receipt};

/// Claims the key `($1, $2)` for request `$3` and reads, for user `$1`,
/// courses `$4` and event `$5` (NULL: none): the user, the prices, the event
/// (its window judged by the database clock), the order's courses in it,
/// and those the user is already enrolled in; with the transaction's clock,
/// which `orders.created_at` takes too.
///
/// On a key another request holds, the INSERT waits for that one to commit
/// (then nothing is claimed) or roll back (then this one claims it).
pub const CHECKOUT_FACTS: &str = "\
WITH claimed AS ( \
    INSERT INTO idempotency_keys (user_id, key, request) VALUES ($1, $2, $3) \
    ON CONFLICT DO NOTHING RETURNING 1 \
) \
SELECT EXISTS (SELECT FROM claimed) AS claimed, now() AS now, \
    u.id IS NOT NULL AS user_found, u.company, \
    c.ids AS course_ids, c.prices, \
    e.discount_percent, e.running, \
    ec.ids AS event_course_ids, ec.seat_limits, \
    en.ids AS enrolled \
FROM (SELECT) AS one \
LEFT JOIN users u ON u.id = $1 \
CROSS JOIN LATERAL ( \
    SELECT coalesce(array_agg(id), '{}') AS ids, coalesce(array_agg(price_krw), '{}') AS prices \
    FROM courses WHERE id = ANY($4) \
) AS c \
LEFT JOIN LATERAL ( \
    SELECT discount_percent, (starts_at <= now() AND now() < ends_at) AS running \
    FROM sale_events WHERE id = $5 \
) AS e ON true \
CROSS JOIN LATERAL ( \
    SELECT coalesce(array_agg(course_id), '{}') AS ids, \
        coalesce(array_agg(seat_limit), '{}') AS seat_limits \
    FROM sale_event_courses WHERE event_id = $5 AND course_id = ANY($4) \
) AS ec \
CROSS JOIN LATERAL ( \
    SELECT coalesce(array_agg(course_id), '{}') AS ids FROM enrollments \
    WHERE user_id = $1 AND course_id = ANY($4) AND revoked_at IS NULL \
) AS en";

/// Writes order `(user $1, event $2, total $3)`, claims a seat of event `$2`
/// for each course of `$4` (as `seats::claim` does: one row per seat,
/// `FOR UPDATE SKIP LOCKED`), inserts the items (courses `$5`, prices `$6`)
/// and the enrollments (company `$7`, events `$8`), and stores the answer
/// `$9` with the order's id set in it under key `($1, $10)`. Returns the
/// order's id and time and the courses that got a seat.
pub const CHECKOUT_WRITE: &str = concat!(
    "\
WITH placed AS ( \
    INSERT INTO orders (user_id, event_id, status, total_krw) \
    VALUES ($1, $2, 'completed', $3) RETURNING id, created_at \
), free AS (",
    free_seats!(2, 4),
    "), seated AS ( \
    UPDATE event_seats s SET order_id = placed.id FROM free, placed \
    WHERE s.event_id = $2 AND s.course_id = free.course_id AND s.seat_no = free.seat_no \
    RETURNING s.course_id \
), items AS ( \
    INSERT INTO order_items (order_id, course_id, price_krw) \
    SELECT placed.id, item.course_id, item.price_krw \
    FROM placed, UNNEST($5::bigint[], $6::bigint[]) AS item(course_id, price_krw) \
), enrolled AS ( \
    INSERT INTO enrollments (user_id, course_id, order_id, event_id, company) \
    SELECT $1, e.course_id, placed.id, e.event_id, $7 \
    FROM placed, UNNEST($5::bigint[], $8::bigint[]) AS e(course_id, event_id) \
), answered AS ( \
    UPDATE idempotency_keys \
    SET response = jsonb_set($9::jsonb, '{id}', to_jsonb(placed.id)), status_code = 201 \
    FROM placed WHERE user_id = $1 AND key = $10 \
) \
SELECT placed.id, placed.created_at, ARRAY(SELECT course_id FROM seated) AS seated FROM placed"
);

#[derive(sqlx::FromRow)]
struct FactsRow {
    claimed: bool,
    now: DateTime<Utc>,
    user_found: bool,
    company: Option<String>,
    course_ids: Vec<i64>,
    prices: Vec<i64>,
    discount_percent: Option<i32>,
    running: Option<bool>,
    event_course_ids: Vec<i64>,
    seat_limits: Vec<Option<i32>>,
    enrolled: Vec<i64>,
}

#[derive(sqlx::FromRow)]
struct WrittenRow {
    id: i64,
    created_at: DateTime<Utc>,
    seated: Vec<i64>,
}

/// What the first statement found.
pub(super) enum Claim {
    /// This request holds the key: the facts, and the transaction's clock.
    Claimed(Facts, DateTime<Utc>),
    /// The key was already taken (by a committed request).
    Taken,
}

/// Claims `key` for `request` and reads the facts about `order`, in one statement.
pub(super) async fn claim(
    tx: &mut PgConnection,
    key: &str,
    request: &Value,
    order: &NewOrder,
) -> Result<Claim, CheckoutError> {
    let row: FactsRow = sqlx::query_as(CHECKOUT_FACTS)
        .bind(order.user_id)
        .bind(key)
        .bind(Json(request))
        .bind(&order.course_ids)
        .bind(order.event_id)
        .fetch_one(&mut *tx)
        .await?;
    if !row.claimed {
        return Ok(Claim::Taken);
    }
    let event = match (row.discount_percent, row.running) {
        (Some(discount_percent), Some(running)) => Some(EventRow {
            discount_percent,
            running,
        }),
        _ => None,
    };
    let facts = Facts {
        user: row.user_found.then_some(row.company),
        prices: row.course_ids.into_iter().zip(row.prices).collect(),
        event,
        in_event: row
            .event_course_ids
            .into_iter()
            .zip(row.seat_limits)
            .collect::<HashMap<_, _>>(),
        enrolled: row.enrolled,
    };
    Ok(Claim::Claimed(facts, row.now))
}

/// Writes `plan` for `order` and the answer under `key`, in one statement;
/// `now` is the transaction's clock, the order's `created_at`.
pub(super) async fn write(
    tx: &mut PgConnection,
    key: &str,
    order: &NewOrder,
    plan: Plan,
    now: DateTime<Utc>,
) -> Result<Receipt, CheckoutError> {
    let Plan {
        items,
        total_krw,
        company,
        course_ids,
        item_prices,
        enrollment_events,
        limited,
    } = plan;
    // The id is not known yet: the statement sets it in the stored answer.
    let mut receipt = Receipt::completed(order, items, total_krw, 0, now);
    let written: WrittenRow = sqlx::query_as(CHECKOUT_WRITE)
        .bind(order.user_id)
        .bind(order.event_id)
        .bind(total_krw)
        .bind(&limited)
        .bind(&course_ids)
        .bind(&item_prices)
        .bind(&company)
        .bind(&enrollment_events)
        .bind(Json(&receipt))
        .bind(key)
        .fetch_one(&mut *tx)
        .await
        .map_err(super::order::enrollment_refused)?;
    if written.seated.len() < limited.len() {
        // The rollback gives back the seats this order did take.
        let sold_out: Vec<i64> = limited
            .into_iter()
            .filter(|id| !written.seated.contains(id))
            .collect();
        return Err(CheckoutError::SoldOut(sold_out));
    }
    debug_assert_eq!(
        written.created_at, now,
        "created_at is the transaction's clock"
    );
    receipt.id = written.id;
    Ok(receipt)
}
