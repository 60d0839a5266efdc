//! Shed load: every request refused for want of capacity is counted by
//! reason, and the log gets one summary line per interval instead of a line
//! per request (a flood of lines would cost what shedding saves).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::response::Response;
use service::Counter;

/// The shortest time between two summary lines.
const SUMMARY_EVERY: Duration = Duration::from_secs(10);

/// Why a request was refused with 503 before doing any work.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ShedReason {
    /// The concurrency limit was reached.
    Concurrency,
    /// No pooled connection came free within the acquire budget.
    DbPool,
}

impl ShedReason {
    const ALL: [ShedReason; 2] = [ShedReason::Concurrency, ShedReason::DbPool];

    /// The `reason` label of the counter.
    pub(crate) fn label(self) -> &'static str {
        match self {
            ShedReason::Concurrency => "concurrency",
            ShedReason::DbPool => "db_pool",
        }
    }

    fn index(self) -> usize {
        match self {
            ShedReason::Concurrency => 0,
            ShedReason::DbPool => 1,
        }
    }
}

/// A response extension naming a shed answer, so the accounting finds it
/// whichever layer or handler produced the 503.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Shed(pub(crate) ShedReason);

/// The counters of shed requests and the pending summary.
#[derive(Debug)]
pub(crate) struct Sheds {
    counters: [Counter; 2],
    /// Shed since the last summary line, by reason.
    pending: [AtomicU64; 2],
    /// When the last summary line was written.
    last_summary: Mutex<Option<Instant>>,
}

impl Sheds {
    pub(crate) fn new(metrics: &service::Metrics) -> Self {
        let counter = |reason: ShedReason| {
            metrics.counter_with_labels(
                "command_api_requests_shed_total",
                "Requests refused at once with 503: the concurrency limit was reached (concurrency) or no pooled connection came free in time (db_pool).",
                &[("reason", reason.label())],
            )
        };
        Self {
            counters: ShedReason::ALL.map(counter),
            pending: [AtomicU64::new(0), AtomicU64::new(0)],
            last_summary: Mutex::new(None),
        }
    }

    /// Counts `response` if it is marked shed; the first shed and then at
    /// most one per [`SUMMARY_EVERY`] write a summary line.
    pub(crate) fn observe(&self, response: &Response) {
        if let Some(Shed(reason)) = response.extensions().get::<Shed>() {
            self.record(*reason);
        }
    }

    fn record(&self, reason: ShedReason) {
        self.counters[reason.index()].increment(1);
        self.pending[reason.index()].fetch_add(1, Ordering::Relaxed);
        // Whoever holds the lock writes the line; the others only count.
        let Ok(mut last) = self.last_summary.try_lock() else {
            return;
        };
        let now = Instant::now();
        if last.is_some_and(|at| now.duration_since(at) < SUMMARY_EVERY) {
            return;
        }
        *last = Some(now);
        let [concurrency, db_pool] =
            ShedReason::ALL.map(|r| self.pending[r.index()].swap(0, Ordering::Relaxed));
        tracing::warn!(
            concurrency,
            db_pool,
            "requests shed with 503 since the last report (at most one report per 10s)"
        );
    }
}

/// `response` marked as shed for `reason`, its access line kept at DEBUG.
pub(crate) fn mark(mut response: Response, reason: ShedReason) -> Response {
    response.extensions_mut().insert(Shed(reason));
    response.extensions_mut().insert(service::Summarised);
    response
}
