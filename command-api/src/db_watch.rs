//! Whether PostgreSQL is reachable, as the log tells it: one line when it
//! goes away (address and cause), one when it is back.
//!
//! The pool hides why it could not connect (it retries until the acquire
//! timeout and says only "pool timed out"), and a timeout under load is no
//! outage. So a failed request only wakes a watcher, which connects on its
//! own, outside the pool: that connection's error is the cause, and its
//! success means the database is back.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::Response;
use service::{io_cause, Dependency};
use sqlx::postgres::PgConnectOptions;
use sqlx::{ConnectOptions, Connection, PgConnection};
use tokio::sync::Notify;

/// How long the watcher's own connection attempt may take.
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);
/// Pause between two attempts while the database is away.
const RETRY: Duration = Duration::from_secs(1);

/// Marks a response that met a transient database error, for [`watch`].
#[derive(Clone, Copy)]
pub(crate) struct DatabaseTrouble;

/// The watcher of one database.
pub(crate) struct DbWatch {
    dependency: Dependency,
    options: PgConnectOptions,
    wake: Notify,
}

impl DbWatch {
    /// A watcher of the database `options` connect to; it runs once spawned.
    pub(crate) fn new(options: PgConnectOptions) -> Arc<Self> {
        let address = format!("{}:{}", options.get_host(), options.get_port());
        Arc::new(DbWatch {
            dependency: Dependency::new("PostgreSQL", address),
            options,
            wake: Notify::new(),
        })
    }

    /// Something failed as if the database were away: have it checked.
    /// Cheap and without a log line, so every request may call it.
    pub(crate) fn suspect(&self) {
        self.wake.notify_one();
    }

    /// Waits for a suspicion, then connects until it can, logging the
    /// changes of state; forever, so the caller aborts it at shutdown.
    pub(crate) async fn run(self: Arc<Self>) {
        loop {
            self.wake.notified().await;
            while let Err(cause) = self.probe().await {
                self.dependency.failed(&cause);
                tokio::time::sleep(RETRY).await;
            }
            self.dependency.answered();
        }
    }

    /// One connection of its own, closed at once; the cause when it fails.
    async fn probe(&self) -> Result<(), String> {
        match tokio::time::timeout(PROBE_TIMEOUT, self.options.connect()).await {
            Ok(Ok::<PgConnection, _>(conn)) => {
                // The database answered; a failed goodbye changes nothing.
                let _ = conn.close().await;
                Ok(())
            }
            Ok(Err(err)) => Err(cause(&err)),
            Err(_) => Err(format!("no answer within {}s", PROBE_TIMEOUT.as_secs())),
        }
    }
}

/// The words of a connection error, without sqlx's wrapping.
fn cause(err: &sqlx::Error) -> String {
    match err {
        sqlx::Error::Io(io) => io_cause(io),
        sqlx::Error::Database(db) => db.message().to_owned(),
        other => other.to_string(),
    }
}

/// Middleware: a response that met a transient database error wakes the watcher.
pub(crate) async fn watch(
    State(db): State<Arc<DbWatch>>,
    request: Request,
    next: Next,
) -> Response {
    let response = next.run(request).await;
    if response.extensions().get::<DatabaseTrouble>().is_some() {
        db.suspect();
    }
    response
}
