//! Enrolling without checkout where the price is 0: a free order of one
//! course, so seats, cancellation and the views treat it as any purchase.

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::{Connection, PgConnection};
use utoipa::ToSchema;

use super::{order, CheckoutError, NewOrder, Pricing};
use crate::db::commit_with_lsn;

/// An enrollment as stored: an insert-only fact, revoked only by cancelling
/// its order.
#[derive(Serialize, sqlx::FromRow, ToSchema)]
pub(crate) struct Enrollment {
    id: i64,
    user_id: i64,
    course_id: i64,
    order_id: Option<i64>,
    event_id: Option<i64>,
    company: Option<String>,
    created_at: DateTime<Utc>,
}

/// Enrolls `user_id` in `course_id` as a free order, committed on `conn`,
/// with an LSN at or after the commit. Refused (`Invalid`) where the course
/// costs more than 0 here.
pub(crate) async fn enroll(
    conn: &mut PgConnection,
    user_id: i64,
    course_id: i64,
    event_id: Option<i64>,
) -> Result<(Enrollment, Option<String>), CheckoutError> {
    let order = NewOrder {
        user_id,
        course_ids: vec![course_id],
        event_id,
        joined_lookup: false,
    };
    let mut tx = conn.begin().await?;
    let receipt = match order::write(&mut tx, &order, Pricing::FreeOnly).await {
        Ok(receipt) => receipt,
        Err(err) => {
            drop(tx);
            return Err(order::name_enrolled(conn, &order, err).await);
        }
    };
    let enrollment: Enrollment = sqlx::query_as(
        "SELECT id, user_id, course_id, order_id, event_id, company, created_at \
         FROM enrollments WHERE order_id = $1",
    )
    .bind(receipt.id)
    .fetch_one(&mut *tx)
    .await?;
    let lsn = commit_with_lsn(tx).await?;
    tracing::info!(
        enrollment_id = enrollment.id,
        order_id = receipt.id,
        "direct enrollment"
    );
    Ok((enrollment, lsn))
}
