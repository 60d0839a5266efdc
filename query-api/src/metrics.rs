//! The query API's metrics: requests (counted by the shared request layer),
//! Redis round trips, answers while views are rebuilt or stale, and the
//! pre-warm and MGET counts read at scrape time.

use std::{sync::Arc, time::Duration};

use axum::response::Response;
use service::{Counter, Gauge, Histogram, RequestMetrics, Shedding};

use crate::headers::X_VIEW_STALE;

/// Marks a 503 `rebuilding` answer, so that the metrics count it (set by
/// the error's answer, read here: the marker lives with its reader so
/// that the metrics need nothing of the errors).
#[derive(Clone, Copy, Debug)]
pub(crate) struct RebuildingAnswer;

/// Upper bounds of the latency histogram buckets, in seconds.
const BUCKETS: [f64; 12] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
];

const REQUEST_DURATION: &str = "query_api_request_duration_seconds";
const REDIS_ROUNDTRIP: &str = "query_api_redis_roundtrip_seconds";

/// Every metric of the query API.
#[derive(Debug)]
pub struct Metrics {
    recorded: Arc<service::Metrics>,
    /// Requests by route and status, and their latency.
    pub requests: Arc<RequestMetrics>,
    /// Requests refused for want of capacity or cut at their deadline.
    pub shedding: Shedding,
    redis: Histogram,
    /// Set from the store's own counts at each scrape.
    hits: Counter,
    misses: Counter,
    events: Gauge,
    mgets: Counter,
    mget_reads: Counter,
    rebuilding: Counter,
    stale: Counter,
}

impl Metrics {
    /// Metrics for `routes` (the router's paths, the busiest first).
    pub fn new<R: Into<String>>(routes: impl IntoIterator<Item = R>) -> Self {
        let recorded =
            service::Metrics::new(&[(REQUEST_DURATION, &BUCKETS), (REDIS_ROUNDTRIP, &BUCKETS)]);
        let m = &recorded;
        Self {
            requests: RequestMetrics::new(recorded.clone(), "query_api", routes),
            shedding: Shedding::register(m, "query_api", &[]),
            redis: m.histogram(
                REDIS_ROUNDTRIP,
                "Time of one pipeline to Redis, sent to answered.",
            ),
            hits: m.counter(
                "query_api_prewarm_hits_total",
                "Reads answered from the pre-warmed in-process views.",
            ),
            misses: m.counter(
                "query_api_prewarm_misses_total",
                "Reads of course pages, cards and events that went to Redis.",
            ),
            events: m.gauge(
                "query_api_prewarm_events",
                "Sale events whose views are held in process now.",
            ),
            mgets: m.counter(
                "query_api_redis_mgets_total",
                "MGETs sent to a single Redis (each may carry several reads).",
            ),
            mget_reads: m.counter(
                "query_api_redis_mget_reads_total",
                "Reads carried by those MGETs.",
            ),
            // Registered at start, at zero: an alert's rate() needs the
            // series before the first such answer.
            rebuilding: m.counter(
                "query_api_rebuilding_answers_total",
                "Reads answered 503 rebuilding: no view generation was live.",
            ),
            stale: m.counter(
                "query_api_stale_answers_total",
                "Reads answered from a generation no longer kept current (X-View-Stale: true).",
            ),
            recorded,
        }
    }

    /// The recorder, for metrics registered elsewhere (the ops flags).
    pub fn recorded(&self) -> &service::Metrics {
        &self.recorded
    }

    /// Counts `response` if it is a 503 `rebuilding` or marked stale.
    pub fn observe_answer(&self, response: &Response) {
        if response.extensions().get::<RebuildingAnswer>().is_some() {
            self.rebuilding.increment(1);
        } else if response.headers().contains_key(X_VIEW_STALE) {
            self.stale.increment(1);
        }
    }

    /// Records one round trip to Redis (a pipeline, answered).
    pub fn record_redis(&self, took: Duration) {
        self.redis.record(took.as_secs_f64());
    }

    /// The `/metrics` answer, with what the store counts itself: pre-warm
    /// hits and misses, events held warm, MGETs and the reads they carried.
    pub fn exposition(
        &self,
        (hits, misses): (u64, u64),
        events: usize,
        (mgets, reads): (u64, u64),
    ) -> Response {
        self.hits.absolute(hits);
        self.misses.absolute(misses);
        self.events.set(events as f64);
        self.mgets.absolute(mgets);
        self.mget_reads.absolute(reads);
        self.recorded.exposition()
    }
}
