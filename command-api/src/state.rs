//! What every handler and extractor of the command API shares. Kept below
//! the routes so that extractors such as `auth` need not import the router.

use std::sync::Arc;

use axum::body::Bytes;
use sqlx::PgPool;

use crate::db_watch::DbWatch;
use crate::metrics::Metrics;

/// What every handler shares.
#[derive(Clone)]
pub(crate) struct AppState {
    pub(crate) pool: PgPool,
    /// Logs the database's comings and goings, woken by failed requests.
    pub(crate) db: Arc<DbWatch>,
    /// `None`: back-office writes are open (development mode).
    pub(crate) admin_token: Option<Arc<str>>,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) max_connections: u32,
    /// Ops flags, re-read from `FLAGS_FILE` in the background.
    pub(crate) flags: service::Flags,
    /// The order-intake cap's token bucket.
    pub(crate) intake: Arc<crate::switches::Intake>,
    /// The API reference, rendered once from the routes that are served.
    pub(crate) openapi: Bytes,
}
