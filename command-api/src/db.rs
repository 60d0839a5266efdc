//! PostgreSQL connections: a bounded pool whose statements run under a
//! timeout, and the commit LSN handed to clients as a read-your-writes token.

use std::str::FromStr;
use std::time::Duration;

use futures_util::StreamExt;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{Connection, Either, PgConnection, PgPool, Postgres, Row, Transaction};

use crate::config::Config;

/// How the API's sessions choose between a prepared statement's plans (see
/// [`pool`]).
pub const PLAN_CACHE_MODE: &str = "force_generic_plan";

/// How long a connection may idle in the pool before it is pinged again
/// before use.
const IDLE_BEFORE_PING: Duration = Duration::from_secs(1);

/// The pool the API runs on. It connects lazily, so the API starts (and
/// `/ready` says 503) while PostgreSQL is still down.
///
/// Each session plans a prepared statement once (`plan_cache_mode =
/// force_generic_plan`). Left to choose, PostgreSQL kept planning the
/// checkout's write anew at every order (its generic cost estimate never
/// came below the custom plans'), about a fifth of a backend's time under
/// the sale rush; the generic plan is the same plan. Every statement here
/// looks rows up by key, so none needs a plan made for its values.
pub fn pool(config: &Config) -> Result<PgPool, sqlx::Error> {
    let options = PgConnectOptions::from_str(&config.database.url)?.application_name("command-api");
    let statement_timeout = format!("{}ms", config.db_statement_timeout.as_millis());
    let pool = PgPoolOptions::new()
        .max_connections(config.db_pool_size)
        .acquire_timeout(config.db_acquire_timeout)
        // The pool checks every connection as it comes back (sqlx pings it
        // on release); one idle for a second or more is checked again
        // before use, so a restarted server costs no request. At sale rates
        // a connection comes back within milliseconds: the ping before each
        // use was one more wait on PostgreSQL per request.
        .test_before_acquire(false)
        .before_acquire(|conn, meta| {
            Box::pin(async move {
                if meta.idle_for >= IDLE_BEFORE_PING {
                    conn.ping().await?;
                }
                Ok(true)
            })
        })
        .after_connect(move |conn, _meta| {
            let statement_timeout = statement_timeout.clone();
            Box::pin(async move {
                // `set_config` is `SET` with a bound value, so the SQL text
                // stays constant; both settings in one round trip.
                sqlx::query(
                    "SELECT set_config('statement_timeout', $1, false), \
                     set_config('plan_cache_mode', $2, false)",
                )
                .bind(statement_timeout)
                .bind(PLAN_CACHE_MODE)
                .execute(conn)
                .await?;
                Ok(())
            })
        })
        .connect_lazy_with(options);
    Ok(pool)
}

/// Commits `tx` and reads an LSN at or after the commit (as [`commit_lsn`])
/// in the same round trip: one wait on PostgreSQL less per write than a
/// COMMIT and a read after it. `Err` only where the COMMIT failed; `Ok(None)`
/// where it went through but the LSN could not be read.
pub(crate) async fn commit_with_lsn(
    mut tx: Transaction<'_, Postgres>,
) -> Result<Option<String>, sqlx::Error> {
    // One simple query of three statements. The BEGIN opens an empty
    // transaction where sqlx still counts `tx` open: dropping `tx` queues
    // its ROLLBACK, which goes out with the connection's next message (the
    // pool's check on release) instead of a round trip of its own now.
    crate::deadline::committing();
    let mut results = sqlx::raw_sql("COMMIT; BEGIN; SELECT pg_current_wal_insert_lsn()::text")
        .fetch_many(&mut *tx);
    let mut committed = false;
    let mut lsn = None;
    while let Some(result) = results.next().await {
        match result {
            // The first statement to complete is the COMMIT.
            Ok(Either::Left(_)) => committed = true,
            Ok(Either::Right(row)) => lsn = row.try_get::<String, _>(0).ok(),
            Err(err) if !committed => return Err(err),
            Err(err) => {
                tracing::debug!(error = %err, "could not read the commit lsn");
                break;
            }
        }
    }
    Ok(lsn)
}

/// An LSN at or after the commit that just finished on `conn`, in PostgreSQL's
/// text form (`0/16B3748`). Read after COMMIT, so the commit record is behind it.
///
/// `None` if it cannot be read: the write is committed by then, and failing
/// the request would invite a retry that writes twice. The answer then
/// wakes the database watcher ([`crate::routes::written`]), which logs the
/// outage once; the error itself is logged at debug, once per request.
pub(crate) async fn commit_lsn(conn: &mut PgConnection) -> Option<String> {
    match sqlx::query_scalar::<_, String>("SELECT pg_current_wal_insert_lsn()::text")
        .fetch_one(conn)
        .await
    {
        Ok(lsn) => Some(lsn),
        Err(err) => {
            tracing::debug!(error = %err, "could not read the commit lsn");
            None
        }
    }
}
