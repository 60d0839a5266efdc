//! One span and one count per request: the layer every program's router
//! wears, and the request metrics it records.
//!
//! Recording is lock-free for the routes listed at build time: their series
//! are resolved once and cached, so a request costs an atomic add and a
//! sample appended to the histogram, never a lookup by label.

use std::{
    sync::{Arc, OnceLock},
    task::{Context, Poll},
    time::{Duration, Instant},
};

use axum::{
    extract::{MatchedPath, Request},
    http::Response,
};
use futures_util::future::BoxFuture;
use metrics::{Counter, Histogram, Label};
use tower::{Layer, Service};
use tower_http::request_id::{MakeRequestId, PropagateRequestId, RequestId, SetRequestId};
use tracing::{Instrument, Level};

use crate::{exposition::Metrics, request_id::Counter as RequestIds};

/// The route label of requests that matched no route, so unknown paths
/// cannot grow the label set without bound.
pub const UNMATCHED: &str = "unmatched";

/// HTTP statuses are 100 to 599.
const STATUSES: usize = 500;

/// The series of one route of the table, made on first use so that routes
/// and statuses never seen are not listed.
#[derive(Debug)]
struct RouteSeries {
    /// Requests by status (index: status - 100).
    statuses: Box<[OnceLock<Counter>]>,
    latency: OnceLock<Histogram>,
}

/// Where a request is counted: a route of the table, or another one.
#[derive(Debug)]
pub enum RouteId {
    Known(usize),
    Other(String),
}

/// `<prefix>_requests_total{route,status}` and
/// `<prefix>_request_duration_seconds{route}`.
#[derive(Debug)]
pub struct RequestMetrics {
    metrics: Arc<Metrics>,
    /// The table's route names, in the order of `series`; the last one is
    /// [`UNMATCHED`].
    names: Box<[Box<str>]>,
    series: Box<[RouteSeries]>,
    requests: String,
    latency: String,
}

impl RequestMetrics {
    /// The request metrics of `routes` (the router's paths, the busiest
    /// first) in `metrics`, whose histogram `<prefix>_request_duration_seconds`
    /// should have buckets.
    pub fn new<R: Into<String>>(
        metrics: Arc<Metrics>,
        prefix: &str,
        routes: impl IntoIterator<Item = R>,
    ) -> Arc<Self> {
        let names: Box<[Box<str>]> = routes
            .into_iter()
            .map(|route| route.into().into_boxed_str())
            .chain([UNMATCHED.into()])
            .collect();
        let requests = format!("{prefix}_requests_total");
        let latency = format!("{prefix}_request_duration_seconds");
        metrics.describe_counter(&requests, "Requests answered, by route and status.");
        metrics.describe_histogram(
            &latency,
            "Time from receiving a request to answering it, by route.",
        );
        Arc::new(Self {
            metrics,
            series: names
                .iter()
                .map(|_| RouteSeries {
                    statuses: (0..STATUSES).map(|_| OnceLock::new()).collect(),
                    latency: OnceLock::new(),
                })
                .collect(),
            names,
            requests,
            latency,
        })
    }

    fn counter(&self, route: &str, status: u16) -> Counter {
        let labels = vec![
            Label::new("route", route.to_owned()),
            Label::new("status", status.to_string()),
        ];
        self.metrics.labelled_counter(&self.requests, labels)
    }

    fn histogram(&self, route: &str) -> Histogram {
        let labels = vec![Label::new("route", route.to_owned())];
        self.metrics.labelled_histogram(&self.latency, labels)
    }

    /// Where a request of `route` (its matched path; `None`: no route
    /// matched) is counted.
    pub fn route(&self, route: Option<&str>) -> RouteId {
        let name = route.unwrap_or(UNMATCHED);
        match self.names.iter().position(|n| **n == *name) {
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
        let seconds = took.as_secs_f64();
        match route {
            RouteId::Known(i) => {
                let (name, series) = (&self.names[*i], &self.series[*i]);
                let at = usize::from(status).saturating_sub(100).min(STATUSES - 1);
                series.statuses[at]
                    .get_or_init(|| self.counter(name, (at + 100) as u16))
                    .increment(1);
                series
                    .latency
                    .get_or_init(|| self.histogram(name))
                    .record(seconds);
            }
            RouteId::Other(name) => {
                self.counter(name, status).increment(1);
                self.histogram(name).record(seconds);
            }
        }
    }
}

/// Gives each request an id (`X-Request-Id`: the caller's, else a new one,
/// also put on the response), a span carrying it and the route, and counts
/// and times it. Apply it with `Router::layer`, so the matched route is known.
#[derive(Debug, Clone)]
pub struct RequestLayer<M = RequestIds> {
    metrics: Option<Arc<RequestMetrics>>,
    ids: M,
    served: Level,
}

impl RequestLayer {
    /// Ids, spans and request metrics.
    pub fn new(metrics: Arc<RequestMetrics>) -> Self {
        Self {
            metrics: Some(metrics),
            ..Self::without_metrics()
        }
    }

    /// Ids and spans alone.
    pub fn without_metrics() -> Self {
        Self {
            metrics: None,
            ids: RequestIds::new(),
            served: Level::DEBUG,
        }
    }
}

impl<M> RequestLayer<M> {
    /// Logs each answer at `level` (default: debug, as a line per read
    /// would cost more than the read).
    pub fn log_answers_at(mut self, level: Level) -> Self {
        self.served = level;
        self
    }

    /// Makes new ids with `ids` instead of the counter.
    pub fn ids<N: MakeRequestId>(self, ids: N) -> RequestLayer<N> {
        RequestLayer {
            metrics: self.metrics,
            ids,
            served: self.served,
        }
    }
}

impl<S, M: MakeRequestId + Clone> Layer<S> for RequestLayer<M> {
    type Service = SetRequestId<PropagateRequestId<Observed<S>>, M>;

    fn layer(&self, inner: S) -> Self::Service {
        let observed = Observed {
            inner,
            metrics: self.metrics.clone(),
            served: self.served,
        };
        SetRequestId::x_request_id(PropagateRequestId::x_request_id(observed), self.ids.clone())
    }
}

/// The service of [`RequestLayer`] under the request id's.
#[derive(Debug, Clone)]
pub struct Observed<S> {
    inner: S,
    metrics: Option<Arc<RequestMetrics>>,
    served: Level,
}

impl<S, B> Service<Request> for Observed<S>
where
    S: Service<Request, Response = Response<B>> + Send,
    S::Future: Send + 'static,
{
    type Response = Response<B>;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Response<B>, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request) -> Self::Future {
        let started = Instant::now();
        let matched = request
            .extensions()
            .get::<MatchedPath>()
            .map(|p| p.as_str());
        let route = self.metrics.as_ref().map(|m| m.route(matched));
        // Borrowed, not copied: the route's name comes from the metrics' table.
        let name = match (&self.metrics, &route) {
            (Some(metrics), Some(route)) => metrics.name(route),
            _ => matched.unwrap_or(UNMATCHED),
        };
        // Borrowed for the span; `PropagateRequestId` puts the id on the
        // response.
        let request_id = request
            .extensions()
            .get::<RequestId>()
            .and_then(|id| id.header_value().to_str().ok())
            .unwrap_or("-");
        // The method is in the answer's line, not the span: a span's fields
        // are formatted when it is made, on every request.
        let span = tracing::info_span!("request", request_id = %request_id, route = %name);
        let method = request.method().clone();
        let answered = self.inner.call(request);
        let (metrics, served) = (self.metrics.clone(), self.served);
        // Answered and logged inside the span, entered only while polled.
        let observed = async move {
            let response = answered.await?;
            let status = response.status().as_u16();
            let took = started.elapsed();
            if let (Some(metrics), Some(route)) = (&metrics, &route) {
                metrics.record(route, status, took);
            }
            let elapsed_us = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
            // Answers summarised elsewhere (shed load) would flood the log
            // one line each; they stay at DEBUG.
            let summarised = response.extensions().get::<Summarised>().is_some();
            if served == Level::INFO && !summarised {
                tracing::info!(%method, status, elapsed_us, "finished processing request");
            } else {
                tracing::debug!(%method, status, elapsed_us, "finished processing request");
            }
            Ok(response)
        };
        Box::pin(observed.instrument(span))
    }
}

/// Marks an answer that is counted and logged in summary by the program
/// (e.g. shed load): its per-request line is logged at DEBUG, not INFO.
#[derive(Clone, Copy, Debug)]
pub struct Summarised;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_counted_by_route_and_status_with_cumulative_buckets() {
        let recorded = Metrics::new(&[(
            "query_api_request_duration_seconds",
            &[
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
            ],
        )]);
        let metrics = RequestMetrics::new(
            recorded.clone(),
            "query_api",
            ["/v1/courses/{id}", "/health"],
        );
        let course = metrics.route(Some("/v1/courses/{id}"));
        metrics.record(&course, 200, Duration::from_micros(300));
        metrics.record(&course, 200, Duration::from_millis(3));
        metrics.record(&course, 404, Duration::from_secs(9));
        metrics.record(&metrics.route(None), 404, Duration::from_micros(10));
        let other = metrics.route(Some("/elsewhere"));
        assert_eq!(metrics.name(&other), "/elsewhere");
        metrics.record(&other, 200, Duration::from_micros(10));
        let text = recorded.render();
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

    #[test]
    fn requests_are_counted_per_route_and_status() {
        let recorded = Metrics::new(&[]);
        let metrics = RequestMetrics::new(recorded.clone(), "command_api", ["/v1/users"]);
        let fast = Duration::from_millis(1);
        let users = metrics.route(Some("/v1/users"));
        metrics.record(&users, 201, fast);
        metrics.record(&users, 201, fast);
        metrics.record(&users, 409, fast);
        let text = recorded.render();
        let count = |status: u16| {
            text.lines()
                .find_map(|line| {
                    line.strip_prefix(&format!(
                        "command_api_requests_total{{route=\"/v1/users\",status=\"{status}\"}} "
                    ))
                })
                .and_then(|n| n.parse::<u64>().ok())
        };
        assert_eq!(count(201), Some(2));
        assert_eq!(count(409), Some(1));
    }

    #[test]
    fn latency_buckets_are_cumulative_and_end_with_the_count() {
        let recorded = Metrics::new(&[(
            "command_api_request_duration_seconds",
            &[
                0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
            ],
        )]);
        let metrics = RequestMetrics::new(recorded.clone(), "command_api", ["/v1/orders"]);
        let route = metrics.route(Some("/v1/orders"));
        metrics.record(&route, 201, Duration::from_micros(800));
        metrics.record(&route, 201, Duration::from_millis(30));
        metrics.record(&route, 503, Duration::from_secs(30));
        let out = recorded.render();
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
