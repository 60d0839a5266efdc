//! Event seats: one row per seat, claimed without waiting on other buyers.

use std::collections::HashSet;

use sqlx::PgConnection;

use super::CheckoutError;

/// The seats to claim, as SQL: for each course of the `bigint[]` parameter
/// number `$courses`, the first free seat of the event in parameter number
/// `$event`, locked without waiting. One text for every statement that
/// claims seats (they number their parameters differently).
macro_rules! free_seats {
    ($event:literal, $courses:literal) => {
        concat!(
            "SELECT seat.course_id, seat.seat_no FROM UNNEST($",
            $courses,
            "::bigint[]) AS wanted(course_id) CROSS JOIN LATERAL ( ",
            "SELECT e.course_id, e.seat_no FROM event_seats e WHERE e.event_id = $",
            $event,
            " AND e.course_id = wanted.course_id AND e.order_id IS NULL ",
            "LIMIT 1 FOR UPDATE SKIP LOCKED ) AS seat"
        )
    };
}
pub(super) use free_seats;

/// Claims one free seat of `event_id` for each course, for `order_id`, in one
/// statement.
///
/// Seats are rows, not a counter: a counter row would queue every buyer of a
/// hot course on its lock and leave a dead tuple per sale. A buyer locks the
/// first free row with `FOR UPDATE SKIP LOCKED`, so N buyers take N rows side
/// by side.
///
/// No oversell: a claim sets `order_id` under the row lock, and a committed
/// claim no longer passes `order_id IS NULL` when PostgreSQL re-checks the
/// row. Fewer seats than courses is `sold_out`, and the rollback releases
/// what this buyer took; cancelling sets `order_id` back to NULL.
///
/// The price of not waiting: a buyer who finds every free seat locked by
/// transactions in flight hears `sold_out`, even if one later rolls back.
pub(super) async fn claim(
    tx: &mut PgConnection,
    event_id: i64,
    course_ids: &[i64],
    order_id: i64,
) -> Result<(), CheckoutError> {
    let claimed: Vec<i64> = sqlx::query_scalar(concat!(
        "WITH free AS (",
        free_seats!(1, 2),
        ") ",
        "UPDATE event_seats s SET order_id = $3 FROM free \
         WHERE s.event_id = $1 AND s.course_id = free.course_id AND s.seat_no = free.seat_no \
         RETURNING s.course_id"
    ))
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
        return Err(CheckoutError::SoldOut(sold_out));
    }
    Ok(())
}
