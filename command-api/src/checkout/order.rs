//! The order transaction's body: checks the order against the database and
//! writes the order, its items, its enrollments and its event seats.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use sqlx::PgConnection;

use super::pricing::{discounted, COURSE_PRICES, USER_AND_PRICES};
use super::{seats, CheckoutError, Item, NewOrder, OrderStatus, Pricing, Receipt};
use crate::error::{join_ids, violates, FieldErrors};

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

#[derive(sqlx::FromRow)]
struct UserPriceRow {
    user_id: Option<i64>,
    company: Option<String>,
    id: Option<i64>,
    price_krw: Option<i64>,
}

/// The user and the course prices in one round trip (the release toggle
/// `checkout-joined-lookup`): always one row at least, without a user when
/// there is no such user, without a course when none of the courses exists.
async fn user_and_prices(
    tx: &mut PgConnection,
    order: &NewOrder,
) -> Result<(Option<UserRow>, Vec<CourseRow>), CheckoutError> {
    let rows: Vec<UserPriceRow> = sqlx::query_as(USER_AND_PRICES)
        .bind(order.user_id)
        .bind(&order.course_ids)
        .fetch_all(&mut *tx)
        .await?;
    let user = rows
        .first()
        .filter(|row| row.user_id.is_some())
        .map(|row| UserRow {
            company: row.company.clone(),
        });
    let courses = rows
        .iter()
        .filter_map(|row| {
            Some(CourseRow {
                id: row.id?,
                price_krw: row.price_krw?,
            })
        })
        .collect();
    Ok((user, courses))
}

/// Validates the order against the database and writes it, inside `tx`:
/// the order, its items, one enrollment per course, and the event seats.
pub(super) async fn write(
    tx: &mut PgConnection,
    order: &NewOrder,
    pricing: Pricing,
) -> Result<Receipt, CheckoutError> {
    let (user, courses) = if order.joined_lookup {
        user_and_prices(tx, order).await?
    } else {
        let user: Option<UserRow> = sqlx::query_as("SELECT company FROM users WHERE id = $1")
            .bind(order.user_id)
            .fetch_optional(&mut *tx)
            .await?;
        let courses: Vec<CourseRow> = sqlx::query_as(COURSE_PRICES)
            .bind(&order.course_ids)
            .fetch_all(&mut *tx)
            .await?;
        (user, courses)
    };
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
            format!("unknown course ids: {}", join_ids(&unknown)),
        );
    }
    match (order.event_id, &event) {
        (Some(event_id), None) => errors.add("event_id", format!("there is no event {event_id}")),
        (Some(event_id), Some(event)) if !event.running => {
            errors.add("event_id", format!("event {event_id} is not running now"))
        }
        _ => {}
    }
    if !errors.is_empty() {
        return Err(CheckoutError::Invalid(errors));
    }
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
        return Err(CheckoutError::AlreadyEnrolled(enrolled));
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
            seats::claim(tx, event_id, &limited, created.id).await?;
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
            CheckoutError::AlreadyEnrolled(Vec::new())
        } else {
            CheckoutError::Database(err)
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
