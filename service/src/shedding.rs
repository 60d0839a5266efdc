//! Requests answered 503 for want of capacity (shed at admission, or cut at
//! their deadline): each counted by reason in `/metrics`, and logged in
//! summary, at most one line per interval, because a line per refusal would
//! cost what shedding saves.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::response::Response;
use metrics::Counter;

use crate::requests::Summarised;

/// The shortest time between two summary lines.
const SUMMARY_EVERY: Duration = Duration::from_secs(10);

/// A response extension naming why the answer is a refusal, so the
/// accounting finds it whichever layer or handler produced it.
#[derive(Clone, Copy, Debug)]
struct Refused(&'static str);

/// One reason: its counter and what was refused for it since the last line.
#[derive(Debug)]
struct Reason {
    label: &'static str,
    counter: Counter,
    pending: AtomicU64,
}

/// The refusals of one program.
#[derive(Debug)]
pub struct Shedding {
    reasons: Vec<Reason>,
    /// When the last summary line was written.
    last_summary: Mutex<Option<Instant>>,
}

impl Shedding {
    /// The reason of a request refused because the admission limit was reached.
    pub const CONCURRENCY: &'static str = "concurrency";
    /// The reason of a request cut at its deadline.
    pub const DEADLINE: &'static str = "deadline";

    /// Accounting for `reasons`: each a label (as given to [`Shedding::mark`])
    /// and the counter it increments.
    pub fn new(reasons: impl IntoIterator<Item = (&'static str, Counter)>) -> Self {
        let reasons = reasons
            .into_iter()
            .map(|(label, counter)| Reason {
                label,
                counter,
                pending: AtomicU64::new(0),
            })
            .collect();
        Self {
            reasons,
            last_summary: Mutex::new(None),
        }
    }

    /// The accounting of `program` (the metric name prefix):
    /// `{program}_requests_shed_total{reason}` for [`Self::CONCURRENCY`]
    /// and each of `more_reasons`, `{program}_request_timeouts_total` for
    /// [`Self::DEADLINE`].
    pub fn register(
        metrics: &crate::Metrics,
        program: &str,
        more_reasons: &[&'static str],
    ) -> Self {
        let shed = format!("{program}_requests_shed_total");
        let shed = |reason: &'static str| {
            let counter = metrics.counter_with_labels(
                &shed,
                "Requests refused at once with 503 and Retry-After, having done nothing, by reason.",
                &[("reason", reason)],
            );
            (reason, counter)
        };
        let deadline = metrics.counter(
            &format!("{program}_request_timeouts_total"),
            "Requests answered 503 at the request deadline.",
        );
        let reasons = std::iter::once(Self::CONCURRENCY)
            .chain(more_reasons.iter().copied())
            .map(shed)
            .chain([(Self::DEADLINE, deadline)]);
        Self::new(reasons)
    }

    /// The reason of a refusal by the admission stack (`load_shed`, then a
    /// concurrency limit, then `timeout`), or `None` for any other error.
    pub fn reason_of(err: &tower::BoxError) -> Option<&'static str> {
        if err.is::<tower::load_shed::error::Overloaded>() {
            Some(Self::CONCURRENCY)
        } else if err.is::<tower::timeout::error::Elapsed>() {
            Some(Self::DEADLINE)
        } else {
            None
        }
    }

    /// `response` marked as refused for `reason`, its access line kept at
    /// DEBUG (the summary speaks for it).
    pub fn mark(mut response: Response, reason: &'static str) -> Response {
        response.extensions_mut().insert(Refused(reason));
        response.extensions_mut().insert(Summarised);
        response
    }

    /// The reason `response` was marked refused for, if it was.
    pub fn reason(response: &Response) -> Option<&'static str> {
        response.extensions().get::<Refused>().map(|r| r.0)
    }

    /// Counts `response` if it is marked refused; the first refusal, then at
    /// most one per [`SUMMARY_EVERY`], writes a summary line.
    pub fn observe(&self, response: &Response) {
        let Some(label) = Self::reason(response) else {
            return;
        };
        let Some(reason) = self.reasons.iter().find(|r| r.label == label) else {
            debug_assert!(false, "refusal reason {label} not declared");
            return;
        };
        reason.counter.increment(1);
        reason.pending.fetch_add(1, Ordering::Relaxed);
        // Whoever holds the lock writes the line; the others only count.
        let Ok(mut last) = self.last_summary.try_lock() else {
            return;
        };
        let now = Instant::now();
        if last.is_some_and(|at| now.duration_since(at) < SUMMARY_EVERY) {
            return;
        }
        *last = Some(now);
        let counts = self
            .reasons
            .iter()
            .map(|r| format!("{}={}", r.label, r.pending.swap(0, Ordering::Relaxed)))
            .collect::<Vec<_>>()
            .join(" ");
        tracing::warn!(
            %counts,
            "requests answered 503 for want of capacity since the last report (one report per 10s at most)"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(reason: &'static str) -> Response {
        Shedding::mark(Response::new(axum::body::Body::empty()), reason)
    }

    #[test]
    fn refusals_are_counted_by_reason_and_summarised_once_per_interval() {
        let metrics = crate::Metrics::new(&[]);
        let shedding = Shedding::register(&metrics, "t", &["db_pool"]);
        for _ in 0..3 {
            shedding.observe(&refused(Shedding::CONCURRENCY));
        }
        shedding.observe(&refused(Shedding::DEADLINE));
        shedding.observe(&Response::new(axum::body::Body::empty()));
        // The first refusal wrote the line; the rest wait for the next one.
        let pending = |i: usize| shedding.reasons[i].pending.load(Ordering::Relaxed);
        assert_eq!((pending(0), pending(1), pending(2)), (2, 0, 1));
        let text = metrics.render();
        for series in [
            r#"t_requests_shed_total{reason="concurrency"} 3"#,
            r#"t_requests_shed_total{reason="db_pool"} 0"#,
            "t_request_timeouts_total 1",
        ] {
            assert!(text.contains(series), "{series} in {text}");
        }
    }
}
