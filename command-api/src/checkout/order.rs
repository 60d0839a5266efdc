//! The order transaction's body: checks the order against the database and
//! writes the order, its items, its enrollments and its event seats.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use sqlx::PgConnection;

use super::pricing::{discounted, COURSE_PRICES};
use super::{seats, CheckoutError, Item, NewOrder, Pricing, Receipt};
use crate::error::{join_ids, violates, FieldErrors};

/// The order's courses the user is actively enrolled in ($1 user, $2 course ids).
const ENROLLED: &str = "SELECT course_id FROM enrollments \
    WHERE user_id = $1 AND course_id = ANY($2) AND revoked_at IS NULL";

#[derive(sqlx::FromRow)]
struct CourseRow {
    id: i64,
    price_krw: i64,
}

#[derive(sqlx::FromRow)]
pub(super) struct EventRow {
    pub(super) discount_percent: i32,
    pub(super) running: bool,
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

/// What the database says about an order before anything is written.
pub(super) struct Facts {
    /// `None`: there is no such user; else the user's company, if any.
    pub(super) user: Option<Option<String>>,
    /// The list price of every course of the order that exists.
    pub(super) prices: HashMap<i64, i64>,
    /// The order's event, if it names one that exists.
    pub(super) event: Option<EventRow>,
    /// The order's courses that are in its event, with their seat limits.
    pub(super) in_event: HashMap<i64, Option<i32>>,
    /// The order's courses the user is actively enrolled in.
    pub(super) enrolled: Vec<i64>,
}

/// The order as it is to be written, once the facts allow it.
pub(super) struct Plan {
    pub(super) items: Vec<Item>,
    pub(super) total_krw: i64,
    pub(super) company: Option<String>,
    /// Course ids ascending, so two orders of one user that overlap wait on
    /// each other instead of deadlocking; with the prices and the event
    /// (if any) of each one's enrollment.
    pub(super) course_ids: Vec<i64>,
    pub(super) item_prices: Vec<i64>,
    pub(super) enrollment_events: Vec<Option<i64>>,
    /// The courses that take an event seat, ascending.
    pub(super) limited: Vec<i64>,
}

/// Checks `order` against `facts` and prices it: every refusal that needs no
/// write (unknown ids, an event not running, courses already taken, a price
/// a direct enrollment may not have) comes from here.
pub(super) fn plan(
    order: &NewOrder,
    pricing: Pricing,
    facts: Facts,
) -> Result<Plan, CheckoutError> {
    let mut errors = FieldErrors::default();
    if facts.user.is_none() {
        errors.add("user_id", format!("there is no user {}", order.user_id));
    }
    let prices = &facts.prices;
    let unknown: Vec<i64> = order
        .course_ids
        .iter()
        .filter(|id| !prices.contains_key(id))
        .copied()
        .collect();
    if !unknown.is_empty() {
        errors.add(
            "course_ids",
            format!("unknown course ids: {}", join_ids(&unknown)),
        );
    }
    match (order.event_id, &facts.event) {
        (Some(event_id), None) => errors.add("event_id", format!("there is no event {event_id}")),
        (Some(event_id), Some(event)) if !event.running => {
            errors.add("event_id", format!("event {event_id} is not running now"))
        }
        _ => {}
    }
    if !errors.is_empty() {
        return Err(CheckoutError::Invalid(errors));
    }
    let company = facts.user.flatten();
    let mut enrolled = facts.enrolled;
    if !enrolled.is_empty() {
        enrolled.sort_unstable();
        return Err(CheckoutError::AlreadyEnrolled(enrolled));
    }
    let (discount_percent, in_event) = match &facts.event {
        Some(event) => (i64::from(event.discount_percent), facts.in_event),
        None => (0, HashMap::new()),
    };

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
        .ok_or_else(|| CheckoutError::invalid("course_ids", "the order total is too large"))?;
    if pricing == Pricing::FreeOnly {
        if let Some(item) = items.iter().find(|item| item.price_krw > 0) {
            return Err(CheckoutError::invalid(
                "course_ids",
                format!(
                    "course {} costs {} won here; only free courses, or courses of a running \
                     100%-off event given by event_id, can be enrolled in directly",
                    item.course_id, item.price_krw
                ),
            ));
        }
    }

    let mut sorted: Vec<&Item> = items.iter().collect();
    sorted.sort_unstable_by_key(|item| item.course_id);
    let course_ids: Vec<i64> = sorted.iter().map(|item| item.course_id).collect();
    let item_prices: Vec<i64> = sorted.iter().map(|item| item.price_krw).collect();
    let enrollment_events: Vec<Option<i64>> = course_ids
        .iter()
        .map(|course_id| order.event_id.filter(|_| in_event.contains_key(course_id)))
        .collect();
    let mut limited: Vec<i64> = in_event
        .iter()
        .filter(|(_, seat_limit)| seat_limit.is_some())
        .map(|(course_id, _)| *course_id)
        .collect();
    limited.sort_unstable();
    Ok(Plan {
        items,
        total_krw,
        company,
        course_ids,
        item_prices,
        enrollment_events,
        limited,
    })
}

/// The facts about `order`, one statement each.
async fn facts(tx: &mut PgConnection, order: &NewOrder) -> Result<Facts, CheckoutError> {
    let user: Option<Option<String>> =
        sqlx::query_scalar("SELECT company FROM users WHERE id = $1")
            .bind(order.user_id)
            .fetch_optional(&mut *tx)
            .await?;
    let courses: Vec<CourseRow> = sqlx::query_as(COURSE_PRICES)
        .bind(&order.course_ids)
        .fetch_all(&mut *tx)
        .await?;
    let event: Option<EventRow> = match order.event_id {
        // The database clock decides whether the sale runs: [starts_at, ends_at).
        Some(event_id) => {
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
    let in_event = match (order.event_id, &event) {
        (Some(event_id), Some(event)) if event.running => {
            let rows: Vec<EventCourseRow> = sqlx::query_as(
                "SELECT course_id, seat_limit FROM sale_event_courses \
                 WHERE event_id = $1 AND course_id = ANY($2)",
            )
            .bind(event_id)
            .bind(&order.course_ids)
            .fetch_all(&mut *tx)
            .await?;
            rows.into_iter()
                .map(|r| (r.course_id, r.seat_limit))
                .collect()
        }
        _ => HashMap::new(),
    };
    let enrolled: Vec<i64> = sqlx::query_scalar(ENROLLED)
        .bind(order.user_id)
        .bind(&order.course_ids)
        .fetch_all(&mut *tx)
        .await?;
    Ok(Facts {
        user,
        prices: courses.into_iter().map(|c| (c.id, c.price_krw)).collect(),
        event,
        in_event,
        enrolled,
    })
}

/// Validates the order against the database and writes it, inside `tx`,
/// one statement a step: the order, its items, one enrollment per course,
/// and the event seats.
pub(super) async fn write(
    tx: &mut PgConnection,
    order: &NewOrder,
    pricing: Pricing,
) -> Result<Receipt, CheckoutError> {
    let facts = facts(tx, order).await?;
    let plan = plan(order, pricing, facts)?;

    let created: OrderRow = sqlx::query_as(
        "INSERT INTO orders (user_id, event_id, status, total_krw) \
         VALUES ($1, $2, 'completed', $3) RETURNING id, created_at",
    )
    .bind(order.user_id)
    .bind(order.event_id)
    .bind(plan.total_krw)
    .fetch_one(&mut *tx)
    .await?;

    if let (Some(event_id), false) = (order.event_id, plan.limited.is_empty()) {
        seats::claim(tx, event_id, &plan.limited, created.id).await?;
    }

    sqlx::query(
        "INSERT INTO order_items (order_id, course_id, price_krw) \
         SELECT $1, item.course_id, item.price_krw \
         FROM UNNEST($2::bigint[], $3::bigint[]) AS item(course_id, price_krw)",
    )
    .bind(created.id)
    .bind(&plan.course_ids)
    .bind(&plan.item_prices)
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
    .bind(&plan.company)
    .bind(&plan.course_ids)
    .bind(&plan.enrollment_events)
    .execute(&mut *tx)
    .await
    .map_err(enrollment_refused)?;

    Ok(Receipt::completed(
        order,
        plan.items,
        plan.total_krw,
        created.id,
        created.created_at,
    ))
}

/// An enrollment insert's error: a concurrent order of the same user and
/// course (the active-enrollment key) is 409 `already_enrolled`, its courses
/// named by [`name_enrolled`] once the transaction is gone.
pub(super) fn enrollment_refused(err: sqlx::Error) -> CheckoutError {
    if violates(&err, "enrollments_active_key") {
        CheckoutError::AlreadyEnrolled(Vec::new())
    } else {
        CheckoutError::Database(err)
    }
}

/// Names the courses of a refusal by the active-enrollment key, read on
/// `conn` after the refused transaction rolled back: the concurrent order
/// that holds them had committed before the key refused this one (the
/// constraint's own message is localized text, not data). Left unnamed if
/// that order was cancelled since or the read fails.
pub(super) async fn name_enrolled(
    conn: &mut PgConnection,
    order: &NewOrder,
    err: CheckoutError,
) -> CheckoutError {
    if !matches!(&err, CheckoutError::AlreadyEnrolled(ids) if ids.is_empty()) {
        return err;
    }
    let enrolled: Result<Vec<i64>, _> = sqlx::query_scalar(ENROLLED)
        .bind(order.user_id)
        .bind(&order.course_ids)
        .fetch_all(conn)
        .await;
    match enrolled {
        Ok(mut ids) => {
            ids.sort_unstable();
            CheckoutError::AlreadyEnrolled(ids)
        }
        Err(lookup) => {
            tracing::warn!(error = %lookup, "could not read which courses a concurrent order took");
            err
        }
    }
}
