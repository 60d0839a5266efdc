//! Prometheus metrics of the command side (command → projector → query):
//! requests by route and status, and the state of the PostgreSQL pool.
//!
//! Hand-rolled on purpose: one counter family and three gauges do not need a
//! metrics framework.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::Response;
use sqlx::PgPool;

/// Route label of requests that matched no route, so unknown paths cannot
/// grow the label set without bound.
const UNMATCHED: &str = "unmatched";

/// The route a response was produced for, as its path template.
#[derive(Clone)]
pub(crate) struct RouteLabel(pub(crate) Arc<str>);

/// Counters shared by every request.
#[derive(Default)]
pub(crate) struct Metrics {
    /// `(route, status)` → count. The read lock is enough for known pairs;
    /// the write lock is taken once per new pair.
    requests: RwLock<HashMap<(Arc<str>, u16), AtomicU64>>,
}

impl Metrics {
    fn count_request(&self, route: Arc<str>, status: u16) {
        let key = (route, status);
        {
            let requests = self
                .requests
                .read()
                .unwrap_or_else(|poison| poison.into_inner());
            if let Some(counter) = requests.get(&key) {
                counter.fetch_add(1, Ordering::Relaxed);
                return;
            }
        }
        let mut requests = self
            .requests
            .write()
            .unwrap_or_else(|poison| poison.into_inner());
        requests
            .entry(key)
            .or_default()
            .fetch_add(1, Ordering::Relaxed);
    }

    /// The Prometheus text exposition of every metric.
    pub(crate) fn render(&self, pool: &PgPool, max_connections: u32) -> String {
        let mut out = String::new();
        out.push_str(
            "# HELP command_api_requests_total Requests answered, by route template and status.\n",
        );
        out.push_str("# TYPE command_api_requests_total counter\n");
        let requests = self
            .requests
            .read()
            .unwrap_or_else(|poison| poison.into_inner());
        let mut rows: Vec<(&Arc<str>, u16, u64)> = requests
            .iter()
            .map(|((route, status), count)| (route, *status, count.load(Ordering::Relaxed)))
            .collect();
        rows.sort();
        for (route, status, count) in rows {
            // Route templates are ours (`/v1/courses/{id}`): nothing to escape.
            let _ = writeln!(
                out,
                "command_api_requests_total{{route=\"{route}\",status=\"{status}\"}} {count}"
            );
        }
        drop(requests);
        let gauges = [
            (
                "command_api_db_pool_connections",
                "Open connections in the PostgreSQL pool.",
                u64::from(pool.size()),
            ),
            (
                "command_api_db_pool_idle_connections",
                "Open connections in the PostgreSQL pool that are idle.",
                pool.num_idle() as u64,
            ),
            (
                "command_api_db_pool_max_connections",
                "Most connections the PostgreSQL pool may open.",
                u64::from(max_connections),
            ),
        ];
        for (name, help, value) in gauges {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {value}"
            );
        }
        out
    }
}

/// Route layer: labels the response with the route template it matched.
pub(crate) async fn tag_route(
    matched: Option<MatchedPath>,
    request: Request,
    next: Next,
) -> Response {
    let mut response = next.run(request).await;
    if let Some(matched) = matched {
        response
            .extensions_mut()
            .insert(RouteLabel(Arc::from(matched.as_str())));
    }
    response
}

/// Outer layer: counts every response, including 404s, 405s and shed load.
pub(crate) async fn count_requests(
    State(metrics): State<Arc<Metrics>>,
    request: Request,
    next: Next,
) -> Response {
    let response = next.run(request).await;
    let route = response
        .extensions()
        .get::<RouteLabel>()
        .map(|label| label.0.clone())
        .unwrap_or_else(|| Arc::from(UNMATCHED));
    metrics.count_request(route, response.status().as_u16());
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_counted_per_route_and_status() {
        let metrics = Metrics::default();
        metrics.count_request(Arc::from("/v1/users"), 201);
        metrics.count_request(Arc::from("/v1/users"), 201);
        metrics.count_request(Arc::from("/v1/users"), 409);
        let requests = metrics.requests.read().expect("not poisoned");
        let count = |status| requests[&(Arc::from("/v1/users"), status)].load(Ordering::Relaxed);
        assert_eq!(count(201), 2);
        assert_eq!(count(409), 1);
    }
}
