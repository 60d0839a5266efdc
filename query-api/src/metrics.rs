//! Request counters and latency for `/metrics` (Prometheus text).
//!
//! Recording is a few relaxed atomic additions on a table built at start
//! from the router's routes: no lock, no allocation per request. A route
//! missing from the table (none today) still counts, in a locked map.

use std::{
    collections::BTreeMap,
    fmt::Write,
    sync::{
        atomic::{AtomicU64, Ordering::Relaxed},
        Mutex,
    },
    time::Duration,
};

/// Upper bounds of the latency histogram buckets, in seconds.
const BUCKETS: [f64; 12] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
];

/// HTTP statuses are 100 to 599.
const STATUSES: usize = 500;

/// The label of requests that matched no route.
const UNMATCHED: &str = "unmatched";

#[derive(Debug)]
struct Histogram {
    /// Observations per bucket (not cumulative); the last one is over 5 s.
    counts: [AtomicU64; BUCKETS.len() + 1],
    sum_nanos: AtomicU64,
}

#[derive(Debug)]
struct RouteMetrics {
    /// Requests by status (index: status - 100).
    statuses: Box<[AtomicU64]>,
    latency: Histogram,
}

/// Where a request is counted: a route of the table, or another one.
#[derive(Debug)]
pub enum RouteId {
    Known(usize),
    Other(String),
}

/// Requests by route and status, and a latency histogram per route.
#[derive(Debug)]
pub struct Metrics {
    /// The table's route names, in the order of `routes`.
    names: Vec<String>,
    routes: Vec<RouteMetrics>,
    /// Routes outside the table.
    others: Mutex<BTreeMap<String, RouteMetrics>>,
    redis: Histogram,
}

impl Histogram {
    fn new() -> Self {
        Self {
            counts: std::array::from_fn(|_| AtomicU64::new(0)),
            sum_nanos: AtomicU64::new(0),
        }
    }

    fn observe(&self, took: Duration) {
        let secs = took.as_secs_f64();
        let bucket = BUCKETS
            .iter()
            .position(|bound| secs <= *bound)
            .unwrap_or(BUCKETS.len());
        self.counts[bucket].fetch_add(1, Relaxed);
        self.sum_nanos
            .fetch_add(u64::try_from(took.as_nanos()).unwrap_or(u64::MAX), Relaxed);
    }

    fn count(&self) -> u64 {
        self.counts.iter().map(|c| c.load(Relaxed)).sum()
    }

    /// Writes the histogram's series; `labels` is `key="value",` or empty.
    fn write(&self, out: &mut String, name: &str, labels: &str) {
        let mut cumulative = 0;
        for (i, bound) in BUCKETS.iter().enumerate() {
            cumulative += self.counts[i].load(Relaxed);
            let _ = writeln!(out, "{name}_bucket{{{labels}le=\"{bound}\"}} {cumulative}");
        }
        cumulative += self.counts[BUCKETS.len()].load(Relaxed);
        let _ = writeln!(out, "{name}_bucket{{{labels}le=\"+Inf\"}} {cumulative}");
        let labels = labels.trim_end_matches(',');
        let sum = self.sum_nanos.load(Relaxed) as f64 / 1e9;
        let _ = writeln!(out, "{name}_sum{{{labels}}} {sum}");
        let _ = writeln!(out, "{name}_count{{{labels}}} {cumulative}");
    }
}

impl RouteMetrics {
    fn new() -> Self {
        Self {
            statuses: (0..STATUSES).map(|_| AtomicU64::new(0)).collect(),
            latency: Histogram::new(),
        }
    }

    fn record(&self, status: u16, took: Duration) {
        let at = usize::from(status).saturating_sub(100).min(STATUSES - 1);
        self.statuses[at].fetch_add(1, Relaxed);
        self.latency.observe(took);
    }
}

impl Metrics {
    /// Counters for `routes` (the router's paths) and unmatched requests.
    pub fn new(routes: &[impl AsRef<str>]) -> Self {
        let mut names: Vec<String> = routes.iter().map(|r| r.as_ref().to_owned()).collect();
        names.push(UNMATCHED.to_owned());
        Self {
            routes: names.iter().map(|_| RouteMetrics::new()).collect(),
            names,
            others: Mutex::new(BTreeMap::new()),
            redis: Histogram::new(),
        }
    }

    /// Where a request of `route` (its matched path; `None`: no route
    /// matched) is counted.
    pub fn route(&self, route: Option<&str>) -> RouteId {
        let name = route.unwrap_or(UNMATCHED);
        match self.names.iter().position(|n| *n == name) {
            Some(i) => RouteId::Known(i),
            None => RouteId::Other(name.to_owned()),
        }
    }

    /// The label of `route`.
    pub fn name<'a>(&'a self, route: &'a RouteId) -> &'a str {
        match route {
            RouteId::Known(i) => &self.names[*i],
            RouteId::Other(name) => name,
        }
    }

    /// Records one answered request.
    pub fn record(&self, route: &RouteId, status: u16, took: Duration) {
        match route {
            RouteId::Known(i) => self.routes[*i].record(status, took),
            RouteId::Other(name) => {
                if let Ok(mut others) = self.others.lock() {
                    others
                        .entry(name.clone())
                        .or_insert_with(RouteMetrics::new)
                        .record(status, took);
                }
            }
        }
    }

    /// Records one round trip to Redis (a pipeline, answered).
    pub fn record_redis(&self, took: Duration) {
        self.redis.observe(took);
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let others = self.others.lock();
        let mut routes: Vec<(&str, &RouteMetrics)> = self
            .names
            .iter()
            .map(String::as_str)
            .zip(&self.routes)
            .filter(|(_, m)| m.latency.count() > 0)
            .collect();
        if let Ok(others) = &others {
            routes.extend(others.iter().map(|(n, m)| (n.as_str(), m)));
        }
        routes.sort_by_key(|(name, _)| *name);

        let mut out = String::new();
        out.push_str("# HELP query_api_requests_total Requests answered, by route and status.\n# TYPE query_api_requests_total counter\n");
        for (route, metrics) in &routes {
            for (i, n) in metrics.statuses.iter().enumerate() {
                let n = n.load(Relaxed);
                if n > 0 {
                    let status = i + 100;
                    let _ = writeln!(
                        out,
                        "query_api_requests_total{{route=\"{route}\",status=\"{status}\"}} {n}"
                    );
                }
            }
        }
        out.push_str("# HELP query_api_request_duration_seconds Request latency, by route.\n# TYPE query_api_request_duration_seconds histogram\n");
        for (route, metrics) in &routes {
            metrics.latency.write(
                &mut out,
                "query_api_request_duration_seconds",
                &format!("route=\"{route}\","),
            );
        }
        out.push_str("# HELP query_api_redis_roundtrip_seconds Time of one pipeline to Redis, sent to answered.\n# TYPE query_api_redis_roundtrip_seconds histogram\n");
        self.redis
            .write(&mut out, "query_api_redis_roundtrip_seconds", "");
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_counted_by_route_and_status_with_cumulative_buckets() {
        let metrics = Metrics::new(&["/v1/courses/{id}", "/health"]);
        let course = metrics.route(Some("/v1/courses/{id}"));
        metrics.record(&course, 200, Duration::from_micros(300));
        metrics.record(&course, 200, Duration::from_millis(3));
        metrics.record(&course, 404, Duration::from_secs(9));
        metrics.record(&metrics.route(None), 404, Duration::from_micros(10));
        let other = metrics.route(Some("/elsewhere"));
        assert_eq!(metrics.name(&other), "/elsewhere");
        metrics.record(&other, 200, Duration::from_micros(10));
        let text = metrics.render();
        for line in [
            "query_api_requests_total{route=\"/v1/courses/{id}\",status=\"200\"} 2",
            "query_api_requests_total{route=\"/v1/courses/{id}\",status=\"404\"} 1",
            "query_api_requests_total{route=\"unmatched\",status=\"404\"} 1",
            "query_api_requests_total{route=\"/elsewhere\",status=\"200\"} 1",
            "query_api_request_duration_seconds_bucket{route=\"/v1/courses/{id}\",le=\"0.0005\"} 1",
            "query_api_request_duration_seconds_bucket{route=\"/v1/courses/{id}\",le=\"0.005\"} 2",
            "query_api_request_duration_seconds_bucket{route=\"/v1/courses/{id}\",le=\"5\"} 2",
            "query_api_request_duration_seconds_bucket{route=\"/v1/courses/{id}\",le=\"+Inf\"} 3",
            "query_api_request_duration_seconds_count{route=\"/v1/courses/{id}\"} 3",
        ] {
            assert!(text.contains(line), "{line} in\n{text}");
        }
        assert!(
            !text.contains("route=\"/health\""),
            "unused routes are not listed"
        );
    }
}
