//! Counters and gauges the projector exposes at `/metrics` (Prometheus text).

use std::{
    fmt::Write,
    sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed},
    time::{SystemTime, UNIX_EPOCH},
};

/// Shared between the pipeline (writer) and the HTTP endpoints (reader).
#[derive(Debug, Default)]
pub struct Metrics {
    /// The initial build is done and the stream runs.
    pub ready: AtomicBool,
    /// Redis answered the last check.
    pub redis_up: AtomicBool,
    /// PostgreSQL answered the last check.
    pub postgres_up: AtomicBool,
    pub generation: AtomicU64,
    pub applied_lsn: AtomicU64,
    pub server_wal_lsn: AtomicU64,
    pub retained_wal_bytes: AtomicU64,
    pub transactions: AtomicU64,
    pub changes: AtomicU64,
    pub flushes: AtomicU64,
    pub flush_micros: AtomicU64,
    pub last_applied_unix_ms: AtomicU64,
    pub rebuilds: AtomicU64,
    /// Failures of the stream that were retried.
    pub failures: AtomicU64,
    pub snapshot_rows: AtomicU64,
    /// Courses whose aggregate the sink remembers.
    pub remembered_courses: AtomicU64,
    /// Commit (server clock) → applied in Redis, for the oldest transaction
    /// of each flush: the projector's own view of freshness.
    pub commit_to_applied: Histogram,
}

/// A Prometheus histogram of seconds with fixed buckets, lock-free.
#[derive(Debug, Default)]
pub struct Histogram {
    /// Count per bucket of [`BUCKETS`], then the overflow (`+Inf`).
    counts: [AtomicU64; BUCKETS.len() + 1],
    sum_micros: AtomicU64,
}

/// Upper bounds of the histogram's buckets, in seconds.
const BUCKETS: [f64; 11] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

impl Histogram {
    pub fn observe(&self, value: std::time::Duration) {
        let secs = value.as_secs_f64();
        let bucket = BUCKETS
            .iter()
            .position(|bound| secs <= *bound)
            .unwrap_or(BUCKETS.len());
        self.counts[bucket].fetch_add(1, Relaxed);
        self.sum_micros.fetch_add(value.as_micros() as u64, Relaxed);
    }

    fn render(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        let mut cumulative = 0;
        for (i, count) in self.counts.iter().enumerate() {
            cumulative += count.load(Relaxed);
            match BUCKETS.get(i) {
                Some(bound) => {
                    let _ = writeln!(out, "{name}_bucket{{le=\"{bound}\"}} {cumulative}");
                }
                None => {
                    let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {cumulative}");
                }
            }
        }
        let sum = self.sum_micros.load(Relaxed) as f64 / 1e6;
        let _ = writeln!(out, "{name}_sum {sum}\n{name}_count {cumulative}");
    }
}

impl Metrics {
    /// Records a completed flush.
    pub fn flushed(&self, transactions: u64, changes: u64, redis: std::time::Duration) {
        self.flushes.fetch_add(1, Relaxed);
        self.flush_micros
            .fetch_add(redis.as_micros() as u64, Relaxed);
        self.changes.fetch_add(changes, Relaxed);
        if transactions > 0 {
            self.transactions.fetch_add(transactions, Relaxed);
            self.last_applied_unix_ms.store(now_ms(), Relaxed);
        }
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let mut metric = |name: &str, kind: &str, help: &str, value: f64| {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
            );
        };
        let applied = self.applied_lsn.load(Relaxed);
        let server = self.server_wal_lsn.load(Relaxed);
        metric(
            "projector_ready",
            "gauge",
            "1 once the initial build is done and changes stream.",
            b(self.ready.load(Relaxed)),
        );
        metric(
            "projector_redis_up",
            "gauge",
            "1 while Redis answers.",
            b(self.redis_up.load(Relaxed)),
        );
        metric(
            "projector_postgres_up",
            "gauge",
            "1 while PostgreSQL answers.",
            b(self.postgres_up.load(Relaxed)),
        );
        metric(
            "projector_generation",
            "gauge",
            "The live view generation.",
            self.generation.load(Relaxed) as f64,
        );
        metric(
            "projector_applied_lsn",
            "gauge",
            "WAL position up to which every change is applied in Redis.",
            applied as f64,
        );
        metric(
            "projector_lag_bytes",
            "gauge",
            "Bytes of WAL between the server's current position and the applied position.",
            server.saturating_sub(applied) as f64,
        );
        metric(
            "projector_retained_wal_bytes",
            "gauge",
            "WAL the server keeps for the projector's slot.",
            self.retained_wal_bytes.load(Relaxed) as f64,
        );
        metric(
            "projector_transactions_applied_total",
            "counter",
            "Source transactions applied.",
            self.transactions.load(Relaxed) as f64,
        );
        metric(
            "projector_changes_applied_total",
            "counter",
            "Row changes applied.",
            self.changes.load(Relaxed) as f64,
        );
        metric(
            "projector_redis_flushes_total",
            "counter",
            "Flushes written to Redis.",
            self.flushes.load(Relaxed) as f64,
        );
        metric(
            "projector_redis_flush_seconds_total",
            "counter",
            "Time Redis took for the flushes, in seconds (divide by flushes for the mean).",
            self.flush_micros.load(Relaxed) as f64 / 1e6,
        );
        let last = self.last_applied_unix_ms.load(Relaxed);
        let since = if last == 0 {
            -1.0
        } else {
            now_ms().saturating_sub(last) as f64 / 1e3
        };
        metric(
            "projector_seconds_since_last_transaction",
            "gauge",
            "Seconds since the last applied source transaction (-1 before the first).",
            since,
        );
        metric(
            "projector_rebuilds_total",
            "counter",
            "Full rebuilds into a new generation since start.",
            self.rebuilds.load(Relaxed) as f64,
        );
        metric(
            "projector_remembered_courses",
            "gauge",
            "Courses whose aggregate the projector remembers (their enrollments are applied and written in one step).",
            self.remembered_courses.load(Relaxed) as f64,
        );
        metric(
            "projector_failures_total",
            "counter",
            "Failures of the stream that were retried after a backoff (a requested rebuild or a lost generation is not one).",
            self.failures.load(Relaxed) as f64,
        );
        self.commit_to_applied.render(
            &mut out,
            "projector_commit_to_applied_seconds",
            "From a transaction's commit (server clock) until its views are in Redis, for the oldest transaction of each flush.",
        );
        out
    }
}

fn b(v: bool) -> f64 {
    if v {
        1.0
    } else {
        0.0
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
