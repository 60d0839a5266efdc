//! The projector's counters and gauges: plain atomics the pipeline updates
//! (and `/ready` reads), put in the shared exposition at scrape time.

use std::{
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering::Relaxed},
        Arc, Mutex, OnceLock,
    },
    time::{SystemTime, UNIX_EPOCH},
};

use axum::response::Response;
use service::{Counter, Gauge};

use crate::{
    standby::{Role, RoleCell},
    wal::{WalGauges, EXPORTED_STATUSES},
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
    /// Times Redis was found to hold less than the projector wrote, so the
    /// generation was rebuilt (see `divergence`).
    pub divergences: AtomicU64,
    /// Failures of the stream that were retried.
    pub failures: AtomicU64,
    pub snapshot_rows: AtomicU64,
    /// Courses whose aggregate the sink remembers.
    pub remembered_courses: AtomicU64,
    /// `used_memory` and `maxmemory` of the fullest Redis primary.
    pub redis_used_memory: AtomicU64,
    pub redis_maxmemory: AtomicU64,
    /// Active, standby or starting: one instance per slot is active.
    pub role: RoleCell,
    /// `max_slot_wal_keep_size` and the slot's `wal_status`.
    pub wal: WalGauges,
    /// Entities that differed from the tables in the last audit pass.
    pub audit_mismatches: AtomicU64,
    /// Audit passes completed.
    pub audit_runs: AtomicU64,
    /// Why streaming is halted (see `halt`), while it is.
    halted: Mutex<Option<String>>,
    /// The exported series, made on first use: inside the runtime that
    /// their upkeep task needs.
    exported: OnceLock<Exported>,
}

/// Upper bounds of the histogram's buckets, in seconds.
const BUCKETS: [f64; 11] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

const COMMIT_TO_APPLIED: &str = "projector_commit_to_applied_seconds";

/// Reads a gauge's value from the atomics.
type ReadGauge = fn(&Metrics) -> f64;
/// Reads a counter's value from the atomics.
type ReadCounter = fn(&Metrics) -> u64;

/// The exported series, set from the atomics at each scrape.
#[derive(Debug)]
struct Exported {
    recorded: Arc<service::Metrics>,
    gauges: Vec<(Gauge, ReadGauge)>,
    counters: Vec<(Counter, ReadCounter)>,
    commit_to_applied: service::Histogram,
}

impl Exported {
    fn new() -> Self {
        let recorded = service::Metrics::new(&[(COMMIT_TO_APPLIED, &BUCKETS)]);
        fn flag(on: &AtomicBool) -> f64 {
            f64::from(u8::from(on.load(Relaxed)))
        }
        let gauges: [(&str, &'static str, ReadGauge); 14] = [
            ("projector_ready", "1 once the initial build is done and changes stream.", |m| flag(&m.ready)),
            ("projector_redis_up", "1 while Redis answers.", |m| flag(&m.redis_up)),
            ("projector_postgres_up", "1 while PostgreSQL answers.", |m| flag(&m.postgres_up)),
            ("projector_generation", "The live view generation.", |m| m.generation.load(Relaxed) as f64),
            ("projector_applied_lsn", "WAL position up to which every change is applied in Redis.", |m| m.applied_lsn.load(Relaxed) as f64),
            ("projector_lag_bytes", "Bytes of WAL between the server's current position and the applied position.", |m| {
                m.server_wal_lsn.load(Relaxed).saturating_sub(m.applied_lsn.load(Relaxed)) as f64
            }),
            ("projector_retained_wal_bytes", "WAL the server keeps for the projector's slot.", |m| m.retained_wal_bytes.load(Relaxed) as f64),
            // A float: the exporter's counters count whole units.
            ("projector_redis_flush_seconds_total", "Time Redis took for the flushes, in seconds (divide by flushes for the mean).", |m| {
                m.flush_micros.load(Relaxed) as f64 / 1e6
            }),
            ("projector_seconds_since_last_transaction", "Seconds since the last applied source transaction (-1 before the first).", |m| {
                match m.last_applied_unix_ms.load(Relaxed) {
                    0 => -1.0,
                    last => now_ms().saturating_sub(last) as f64 / 1e3,
                }
            }),
            ("projector_halted", "1 while streaming is halted by a schema change the views cannot follow (the log and /ready say which); the slot keeps its position.", |m| {
                f64::from(u8::from(m.halted().is_some()))
            }),
            ("projector_remembered_courses", "Courses whose aggregate the projector remembers (their enrollments are applied and written in one step).", |m| {
                m.remembered_courses.load(Relaxed) as f64
            }),
            ("projector_redis_used_memory_bytes", "used_memory of the fullest Redis primary (by share of its maxmemory).", |m| {
                m.redis_used_memory.load(Relaxed) as f64
            }),
            ("projector_redis_maxmemory_bytes", "maxmemory of that primary; 0 when it has no limit.", |m| {
                m.redis_maxmemory.load(Relaxed) as f64
            }),
            ("projector_audit_mismatches", "Entities whose views or aggregates differed from the tables in the last audit pass (--audit-interval-secs).", |m| {
                m.audit_mismatches.load(Relaxed) as f64
            }),
        ];
        let counters: [(&str, &'static str, ReadCounter); 7] = [
            ("projector_transactions_applied_total", "Source transactions applied.", |m| m.transactions.load(Relaxed)),
            ("projector_changes_applied_total", "Row changes applied.", |m| m.changes.load(Relaxed)),
            ("projector_redis_flushes_total", "Flushes written to Redis.", |m| m.flushes.load(Relaxed)),
            ("projector_rebuilds_total", "Full rebuilds into a new generation since start.", |m| m.rebuilds.load(Relaxed)),
            ("projector_divergences_total", "Times Redis was found holding less than the projector wrote (a node restarted or failed over, or behind the slot), so the generation was rebuilt.", |m| {
                m.divergences.load(Relaxed)
            }),
            ("projector_failures_total", "Failures of the stream that were retried after a backoff (a requested rebuild or a lost generation is not one).", |m| {
                m.failures.load(Relaxed)
            }),
            ("projector_audit_runs_total", "Audit passes completed by the daemon.", |m| m.audit_runs.load(Relaxed)),
        ];
        let role_and_wal: [(&str, &'static str, ReadGauge); 2] = [
            ("projector_active", "1 on the instance that holds the slot (streams); 0 on standbys.", |m| {
                f64::from(u8::from(m.role.get() == Role::Active))
            }),
            ("projector_max_slot_wal_keep_size_bytes", "The server's max_slot_wal_keep_size in bytes; -1 when unlimited (the slot can fill the disk).", |m| {
                m.wal.keep_bytes()
            }),
        ];
        let mut gauges: Vec<(Gauge, ReadGauge)> = gauges
            .into_iter()
            .chain(role_and_wal)
            .map(|(name, help, read)| (recorded.gauge(name, help), read))
            .collect();
        const WAL_STATUS: &str = "projector_slot_wal_status";
        const WAL_STATUS_HELP: &str =
            "1 for the slot's wal_status (reserved, extended, unreserved, lost), 0 for the others.";
        let by_status: [ReadGauge; 4] = [
            |m| m.wal.slot_is(EXPORTED_STATUSES[0]),
            |m| m.wal.slot_is(EXPORTED_STATUSES[1]),
            |m| m.wal.slot_is(EXPORTED_STATUSES[2]),
            |m| m.wal.slot_is(EXPORTED_STATUSES[3]),
        ];
        for (status, read) in EXPORTED_STATUSES.iter().zip(by_status) {
            let labels = [("status", status.as_str())];
            gauges.push((
                recorded.labelled_gauge(WAL_STATUS, WAL_STATUS_HELP, &labels),
                read,
            ));
        }
        Self {
            gauges,
            counters: counters
                .into_iter()
                .map(|(name, help, read)| (recorded.counter(name, help), read))
                .collect(),
            commit_to_applied: recorded.histogram(
                COMMIT_TO_APPLIED,
                "From a transaction's commit (server clock) until its views are in Redis, for the oldest transaction of each flush.",
            ),
            recorded,
        }
    }
}

impl Metrics {
    /// Commit (server clock) → applied in Redis, for the oldest transaction
    /// of a flush: the projector's own view of freshness.
    pub fn observe_commit_to_applied(&self, age: std::time::Duration) {
        self.exported().commit_to_applied.record(age.as_secs_f64());
    }

    /// Records that streaming halted for `reason`, or (`None`) no longer is.
    pub fn halt(&self, reason: Option<String>) {
        if let Ok(mut halted) = self.halted.lock() {
            *halted = reason;
        }
    }

    /// Why streaming is halted, while it is.
    pub fn halted(&self) -> Option<String> {
        self.halted.lock().ok().and_then(|h| h.clone())
    }

    fn exported(&self) -> &Exported {
        self.exported.get_or_init(Exported::new)
    }

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

    /// The `/metrics` answer: the values now.
    pub fn exposition(&self) -> Response {
        let exported = self.exported();
        for (gauge, read) in &exported.gauges {
            gauge.set(read(self));
        }
        for (counter, read) in &exported.counters {
            counter.absolute(read(self));
        }
        exported.recorded.exposition()
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
