//! Checkout under an idempotency key: the key is claimed in the order's own
//! transaction, so a retry either replays the stored answer or places the
//! order once.

use serde_json::Value;
use sqlx::types::Json;
use sqlx::{Connection, PgConnection, Postgres, Transaction};

use super::joined::{self, Claim};
use super::{order, CheckoutError, NewOrder, Pricing, Receipt};
use crate::db::commit_with_lsn;

/// Tries of one request when its key row disappears between the conflict and
/// the read (the expiry job deleted it): then the key is free again.
const ATTEMPTS: usize = 3;

/// What placing an order came to.
pub(crate) enum Placed {
    /// The order was written and committed, with an LSN at or after its
    /// commit (`None`: it could not be read).
    Created(Receipt, Option<String>),
    /// The key already holds the answer to this very request.
    Replayed(Value),
}

/// What one attempt came to.
enum Attempt {
    Done(Placed),
    /// The key's row was gone by the time it was read: try again.
    KeyVanished,
}

#[derive(sqlx::FromRow)]
struct StoredKey {
    same_request: bool,
    response: Option<Value>,
}

/// Places `order` under the user's `key`, committed on `conn`. `request` is
/// the body as parsed JSON: what a retry with the same key is compared with.
pub(crate) async fn place(
    conn: &mut PgConnection,
    key: &str,
    request: &Value,
    order: &NewOrder,
) -> Result<Placed, CheckoutError> {
    for _ in 0..ATTEMPTS {
        match attempt(conn, key, request, order).await {
            Ok(Attempt::Done(placed)) => return Ok(placed),
            Ok(Attempt::KeyVanished) => continue,
            Err(err) => return Err(order::name_enrolled(conn, order, err).await),
        }
    }
    Err(CheckoutError::KeyChangingHands)
}

/// One attempt, in one transaction. Any error rolls everything back, the
/// idempotency key included, so a corrected retry may reuse the key.
async fn attempt(
    conn: &mut PgConnection,
    key: &str,
    request: &Value,
    order: &NewOrder,
) -> Result<Attempt, CheckoutError> {
    let mut tx = conn.begin().await?;
    // The primary key (user_id, key) serializes concurrent requests with the
    // same key: a second INSERT waits here until the first commits (then it
    // conflicts and reads the stored answer) or rolls back (then it proceeds).
    let receipt = if order.joined_lookup {
        let Claim::Claimed(facts, now) = joined::claim(&mut tx, key, request, order).await? else {
            return stored(tx, key, request, order).await;
        };
        let plan = order::plan(order, Pricing::Paid, facts)?;
        joined::write(&mut tx, key, order, plan, now).await?
    } else {
        let claimed: Option<i32> = sqlx::query_scalar(
            "INSERT INTO idempotency_keys (user_id, key, request) VALUES ($1, $2, $3) \
             ON CONFLICT DO NOTHING RETURNING 1",
        )
        .bind(order.user_id)
        .bind(key)
        .bind(Json(request))
        .fetch_optional(&mut *tx)
        .await?;
        if claimed.is_none() {
            return stored(tx, key, request, order).await;
        }
        let receipt = order::write(&mut tx, order, Pricing::Paid).await?;
        sqlx::query(
            "UPDATE idempotency_keys SET response = $3, status_code = 201 \
             WHERE user_id = $1 AND key = $2",
        )
        .bind(order.user_id)
        .bind(key)
        .bind(Json(&receipt))
        .execute(&mut *tx)
        .await?;
        receipt
    };
    let lsn = commit_with_lsn(tx).await?;
    Ok(Attempt::Done(Placed::Created(receipt, lsn)))
}

/// The answer stored under the key another request claimed, read in `tx`,
/// which is then rolled back.
async fn stored(
    mut tx: Transaction<'_, Postgres>,
    key: &str,
    request: &Value,
    order: &NewOrder,
) -> Result<Attempt, CheckoutError> {
    // jsonb equality compares parsed JSON: key order and spacing do not matter.
    let stored: Option<StoredKey> = sqlx::query_as(
        "SELECT request = $3 AS same_request, response FROM idempotency_keys \
         WHERE user_id = $1 AND key = $2",
    )
    .bind(order.user_id)
    .bind(key)
    .bind(Json(request))
    .fetch_optional(&mut *tx)
    .await?;
    tx.rollback().await?;
    match stored {
        None => Ok(Attempt::KeyVanished),
        Some(StoredKey {
            same_request: false,
            ..
        }) => Err(CheckoutError::KeyReused),
        Some(StoredKey {
            response: Some(response),
            ..
        }) => Ok(Attempt::Done(Placed::Replayed(response))),
        // Rows are committed only with their answer, so this is a bug.
        Some(StoredKey { response: None, .. }) => Err(CheckoutError::KeyWithoutResponse),
    }
}
