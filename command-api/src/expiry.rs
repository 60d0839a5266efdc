//! Expiry of idempotency keys: keys older than the TTL go in small batches,
//! so no single statement leaves a storm of dead tuples for vacuum.

use std::time::Duration;

use service::{EvaluationContext, Flags};
use sqlx::PgPool;

use crate::switches::KEY_EXPIRY;

/// Rows deleted per statement.
const BATCH: i64 = 1_000;
/// Pause between two batches, so a large backlog does not hog the database.
const PAUSE: Duration = Duration::from_millis(100);

/// Sweeps every `interval`, forever, except while the `idempotency-key-expiry`
/// switch is off; the caller aborts it at shutdown.
pub(crate) async fn run(
    pool: PgPool,
    ttl: Duration,
    interval: Duration,
    flags: Flags,
    skipped: service::Counter,
) {
    let mut paused = false;
    let mut ticks = tokio::time::interval(interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The first tick completes at once; skip it so startup stays quiet.
    ticks.tick().await;
    loop {
        ticks.tick().await;
        let on = flags.get_boolean_value(KEY_EXPIRY, &EvaluationContext::default(), true);
        if on == paused {
            paused = !on;
            if paused {
                tracing::warn!(flag = KEY_EXPIRY, "idempotency key expiry paused");
            } else {
                tracing::info!(flag = KEY_EXPIRY, "idempotency key expiry resumed");
            }
        }
        if paused {
            skipped.increment(1);
            continue;
        }
        match sweep(&pool, ttl).await {
            Ok(0) => {}
            Ok(deleted) => tracing::info!(deleted, "expired idempotency keys deleted"),
            Err(err) => tracing::warn!(error = %err, "idempotency key sweep failed"),
        }
    }
}

/// Deletes keys created more than `ttl` ago, `BATCH` rows at a time.
async fn sweep(pool: &PgPool, ttl: Duration) -> Result<u64, sqlx::Error> {
    let mut deleted = 0;
    loop {
        // SKIP LOCKED: several API instances may sweep at once without waiting
        // on each other. A retry that meets its key as it is swept finds it
        // gone and claims it anew, as it may once the key has expired.
        let done = sqlx::query(
            "DELETE FROM idempotency_keys WHERE ctid = ANY(ARRAY( \
                 SELECT ctid FROM idempotency_keys \
                 WHERE created_at < now() - make_interval(secs => $1) \
                 LIMIT $2 FOR UPDATE SKIP LOCKED))",
        )
        .bind(ttl.as_secs_f64())
        .bind(BATCH)
        .execute(pool)
        .await?
        .rows_affected();
        deleted += done;
        if done < BATCH.unsigned_abs() {
            return Ok(deleted);
        }
        tokio::time::sleep(PAUSE).await;
    }
}
