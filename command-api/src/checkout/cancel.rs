//! Cancellation, the compensating action: revoke the order's enrollments,
//! put its event seats back on sale and mark it cancelled, once.

use chrono::{DateTime, Utc};
use sqlx::{Connection, PgConnection};

use super::{CheckoutError, Item, OrderStatus, Receipt};
use crate::db::commit_with_lsn;

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

/// Cancels order `id` in one transaction, committed on `conn`, with an LSN
/// at or after the commit. Cancelling a cancelled order changes nothing and
/// answers the same.
pub(crate) async fn cancel(
    conn: &mut PgConnection,
    id: i64,
) -> Result<(Receipt, Option<String>), CheckoutError> {
    let mut tx = conn.begin().await?;
    // The row lock makes two concurrent cancels of one order take turns.
    let order: Option<StoredOrder> = sqlx::query_as(
        "SELECT id, user_id, event_id, status, total_krw, created_at, cancelled_at \
         FROM orders WHERE id = $1 FOR UPDATE",
    )
    .bind(id)
    .fetch_optional(&mut *tx)
    .await?;
    let mut order = order.ok_or(CheckoutError::NoOrder(id))?;
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
    let lsn = commit_with_lsn(tx).await?;
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
    Ok((receipt, lsn))
}
