//! Prometheus metrics of the command side (command → projector → query):
//! requests by route and status, their latency, the load that was shed or
//! timed out, and the state of the PostgreSQL pool.
//!
//! Served at `GET /metrics`:
//!
//! | name | type | labels |
//! |---|---|---|
//! | `command_api_requests_total` | counter | `route`, `status` |
//! | `command_api_request_duration_seconds` | histogram | `route` |
//! | `command_api_requests_shed_total` | counter | |
//! | `command_api_request_timeouts_total` | counter | |
//! | `command_api_db_pool_connections` | gauge | |
//! | `command_api_db_pool_idle_connections` | gauge | |
//! | `command_api_db_pool_in_use_connections` | gauge | |
//! | `command_api_db_pool_max_connections` | gauge | |
//!
//! Hand-rolled on purpose: two counter families, one histogram and a few
//! gauges do not need a metrics framework.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::hash::Hash;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::Response;
use sqlx::PgPool;

/// Route label of requests that matched no route, so unknown paths cannot
/// grow the label set without bound.
const UNMATCHED: &str = "unmatched";

/// Upper bounds of the latency buckets, in seconds: from a fast insert to
/// the request deadline.
const LATENCY_BOUNDS: [f64; 13] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// The route a response was produced for, as its path template.
#[derive(Clone)]
pub(crate) struct RouteLabel(pub(crate) Arc<str>);

/// Latencies of one route. Each bucket counts the requests that fell in it
/// alone; the exposition sums them into Prometheus' cumulative buckets.
#[derive(Default)]
struct Histogram {
    buckets: [AtomicU64; LATENCY_BOUNDS.len()],
    count: AtomicU64,
    sum_micros: AtomicU64,
}

impl Histogram {
    fn observe(&self, elapsed: Duration) {
        let seconds = elapsed.as_secs_f64();
        if let Some(bucket) = LATENCY_BOUNDS
            .iter()
            .position(|bound| seconds <= *bound)
            .and_then(|at| self.buckets.get(at))
        {
            bucket.fetch_add(1, Ordering::Relaxed);
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        let micros = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
        self.sum_micros.fetch_add(micros, Ordering::Relaxed);
    }
}

/// Counters shared by every request.
#[derive(Default)]
pub(crate) struct Metrics {
    /// `(route, status)` → count.
    requests: RwLock<HashMap<(Arc<str>, u16), AtomicU64>>,
    /// route → latencies.
    latency: RwLock<HashMap<Arc<str>, Histogram>>,
    /// Requests refused at once because the concurrency budget was spent.
    shed: AtomicU64,
    /// Requests abandoned at their deadline.
    timed_out: AtomicU64,
}

/// Runs `update` on the entry of `key`, creating it first if needed. The
/// read lock is enough for known keys; the write lock is taken once per key.
fn with_entry<K: Eq + Hash, V: Default>(map: &RwLock<HashMap<K, V>>, key: K, update: impl Fn(&V)) {
    {
        let entries = map.read().unwrap_or_else(|poison| poison.into_inner());
        if let Some(entry) = entries.get(&key) {
            update(entry);
            return;
        }
    }
    let mut entries = map.write().unwrap_or_else(|poison| poison.into_inner());
    update(entries.entry(key).or_default());
}

impl Metrics {
    fn count_request(&self, route: Arc<str>, status: u16, elapsed: Duration) {
        with_entry(&self.latency, route.clone(), |histogram| {
            histogram.observe(elapsed)
        });
        with_entry(&self.requests, (route, status), |counter| {
            counter.fetch_add(1, Ordering::Relaxed);
        });
    }

    /// Counts a request refused by load shedding.
    pub(crate) fn count_shed(&self) {
        self.shed.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a request abandoned at its deadline.
    pub(crate) fn count_timeout(&self) {
        self.timed_out.fetch_add(1, Ordering::Relaxed);
    }

    /// The Prometheus text exposition of every metric.
    pub(crate) fn render(&self, pool: &PgPool, max_connections: u32) -> String {
        let mut out = String::new();
        self.render_requests(&mut out);
        self.render_latency(&mut out);
        let counters = [
            (
                "command_api_requests_shed_total",
                "Requests refused with 503 because the concurrency limit was reached.",
                self.shed.load(Ordering::Relaxed),
            ),
            (
                "command_api_request_timeouts_total",
                "Requests abandoned with 503 at the request deadline.",
                self.timed_out.load(Ordering::Relaxed),
            ),
        ];
        for (name, help, value) in counters {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {value}"
            );
        }
        let size = pool.size();
        let idle = u32::try_from(pool.num_idle()).unwrap_or(u32::MAX);
        let gauges = [
            (
                "command_api_db_pool_connections",
                "Open connections in the PostgreSQL pool.",
                size,
            ),
            (
                "command_api_db_pool_idle_connections",
                "Open connections in the PostgreSQL pool that are idle.",
                idle,
            ),
            (
                "command_api_db_pool_in_use_connections",
                "Connections of the PostgreSQL pool held by requests right now.",
                size.saturating_sub(idle),
            ),
            (
                "command_api_db_pool_max_connections",
                "Most connections the PostgreSQL pool may open.",
                max_connections,
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

    fn render_requests(&self, out: &mut String) {
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
    }

    fn render_latency(&self, out: &mut String) {
        out.push_str(
            "# HELP command_api_request_duration_seconds Time from receiving a request to \
             answering it, by route template.\n",
        );
        out.push_str("# TYPE command_api_request_duration_seconds histogram\n");
        let latency = self
            .latency
            .read()
            .unwrap_or_else(|poison| poison.into_inner());
        let mut routes: Vec<&Arc<str>> = latency.keys().collect();
        routes.sort();
        for route in routes {
            let Some(histogram) = latency.get(route) else {
                continue;
            };
            let mut cumulative = 0;
            for (bound, bucket) in LATENCY_BOUNDS.iter().zip(&histogram.buckets) {
                cumulative += bucket.load(Ordering::Relaxed);
                let _ = writeln!(
                    out,
                    "command_api_request_duration_seconds_bucket{{route=\"{route}\",le=\"{bound}\"}} {cumulative}"
                );
            }
            let count = histogram.count.load(Ordering::Relaxed);
            let sum = histogram.sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
            let _ = writeln!(
                out,
                "command_api_request_duration_seconds_bucket{{route=\"{route}\",le=\"+Inf\"}} {count}\n\
                 command_api_request_duration_seconds_sum{{route=\"{route}\"}} {sum}\n\
                 command_api_request_duration_seconds_count{{route=\"{route}\"}} {count}"
            );
        }
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

/// Outer layer: counts and times every response, including 404s, 405s and
/// shed load.
pub(crate) async fn count_requests(
    State(metrics): State<Arc<Metrics>>,
    request: Request,
    next: Next,
) -> Response {
    let started = Instant::now();
    let response = next.run(request).await;
    let route = response
        .extensions()
        .get::<RouteLabel>()
        .map(|label| label.0.clone())
        .unwrap_or_else(|| Arc::from(UNMATCHED));
    metrics.count_request(route, response.status().as_u16(), started.elapsed());
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_counted_per_route_and_status() {
        let metrics = Metrics::default();
        let fast = Duration::from_millis(1);
        metrics.count_request(Arc::from("/v1/users"), 201, fast);
        metrics.count_request(Arc::from("/v1/users"), 201, fast);
        metrics.count_request(Arc::from("/v1/users"), 409, fast);
        let requests = metrics.requests.read().expect("not poisoned");
        let count = |status| requests[&(Arc::from("/v1/users"), status)].load(Ordering::Relaxed);
        assert_eq!(count(201), 2);
        assert_eq!(count(409), 1);
    }

    #[test]
    fn latency_buckets_are_cumulative_and_end_with_the_count() {
        let metrics = Metrics::default();
        let route: Arc<str> = Arc::from("/v1/orders");
        metrics.count_request(route.clone(), 201, Duration::from_micros(800));
        metrics.count_request(route.clone(), 201, Duration::from_millis(30));
        metrics.count_request(route, 503, Duration::from_secs(30));
        let mut out = String::new();
        metrics.render_latency(&mut out);
        let line = |suffix: &str| {
            out.lines()
                .find(|line| {
                    line.starts_with("command_api_request_duration_seconds")
                        && line.contains(suffix)
                })
                .map(|line| line.rsplit(' ').next().unwrap_or_default().to_owned())
        };
        assert_eq!(line("le=\"0.001\"}").as_deref(), Some("1"));
        assert_eq!(line("le=\"0.025\"}").as_deref(), Some("1"));
        assert_eq!(line("le=\"0.05\"}").as_deref(), Some("2"));
        assert_eq!(line("le=\"10\"}").as_deref(), Some("2"));
        assert_eq!(line("le=\"+Inf\"}").as_deref(), Some("3"));
        assert_eq!(line("_count{").as_deref(), Some("3"));
        assert_eq!(line("_sum{").as_deref(), Some("30.0308"));
    }
}
