//! The command API's metrics: requests (counted by the shared request
//! layer), load refused or timed out, and the PostgreSQL pool, read at
//! scrape time. Names and meanings are in the README.

use std::sync::Arc;

use axum::response::Response;
use service::{Gauge, RequestMetrics, Shedding};
use sqlx::PgPool;

/// Upper bounds of the latency buckets, in seconds: from a fast insert to
/// the request deadline.
const LATENCY_BOUNDS: [f64; 13] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// The shed reason of a request that got no pooled connection within
/// `COMMAND_API_DB_ACQUIRE_TIMEOUT`.
pub(crate) const DB_POOL: &str = "db_pool";

/// Every metric of the command API.
#[derive(Debug)]
pub(crate) struct Metrics {
    recorded: Arc<service::Metrics>,
    /// Requests refused for want of capacity or cut at their deadline.
    pub(crate) shedding: Shedding,
    /// Requests by route and status, and their latency; set by
    /// [`Metrics::count_requests`] once the routes are known.
    requests: std::sync::OnceLock<Arc<RequestMetrics>>,
    pool: [Gauge; 4],
    /// Expiry sweeps skipped while the `idempotency-key-expiry` switch is off.
    pub(crate) sweeps_skipped: service::Counter,
    /// Orders placed by the checkout lookup they used: [separate, joined].
    lookups: [service::Counter; 2],
}

impl Metrics {
    pub(crate) fn new() -> Self {
        let recorded =
            service::Metrics::new(&[("command_api_request_duration_seconds", &LATENCY_BOUNDS)]);
        let gauge = |name, help| recorded.gauge(name, help);
        let pool = [
            gauge(
                "command_api_db_pool_connections",
                "Open connections in the PostgreSQL pool.",
            ),
            gauge(
                "command_api_db_pool_idle_connections",
                "Open connections in the PostgreSQL pool that are idle.",
            ),
            gauge(
                "command_api_db_pool_in_use_connections",
                "Connections of the PostgreSQL pool held by requests right now.",
            ),
            gauge(
                "command_api_db_pool_max_connections",
                "Most connections the PostgreSQL pool may open.",
            ),
        ];
        let lookup = |statement| {
            recorded.counter_with_labels(
                "command_api_checkout_lookups_total",
                "Orders placed, by the checkout's statement plan (`joined`: the release toggle's two statements).",
                &[("lookup", statement)],
            )
        };
        let lookups = [lookup("separate"), lookup("joined")];
        Self {
            sweeps_skipped: recorded.counter(
                "command_api_idempotency_sweeps_skipped_total",
                "Idempotency-key expiry sweeps skipped because the `idempotency-key-expiry` switch is off.",
            ),
            lookups,
            shedding: Shedding::register(&recorded, "command_api", &[DB_POOL]),
            requests: std::sync::OnceLock::new(),
            pool,
            recorded,
        }
    }

    /// The request metrics of `routes` (the router's paths).
    pub(crate) fn count_requests<R: Into<String>>(
        &self,
        routes: impl IntoIterator<Item = R>,
    ) -> Arc<RequestMetrics> {
        self.requests
            .get_or_init(|| RequestMetrics::new(self.recorded.clone(), "command_api", routes))
            .clone()
    }

    /// Counts an order placed with the `joined` lookup or not.
    pub(crate) fn count_lookup(&self, joined: bool) {
        self.lookups[usize::from(joined)].increment(1);
    }

    /// The recorder, for metrics registered elsewhere (the ops flags).
    pub(crate) fn recorded(&self) -> &service::Metrics {
        &self.recorded
    }

    /// The `/metrics` answer, with the pool's state now.
    pub(crate) fn exposition(&self, pool: &PgPool, max_connections: u32) -> Response {
        let size = pool.size();
        let idle = u32::try_from(pool.num_idle()).unwrap_or(u32::MAX);
        let now = [size, idle, size.saturating_sub(idle), max_connections];
        for (gauge, value) in self.pool.iter().zip(now) {
            gauge.set(f64::from(value));
        }
        self.recorded.exposition()
    }
}
