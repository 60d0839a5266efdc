//! Write rounds in a steady state: the database is settled before each
//! round (vacuumed, checkpointed, autovacuum idle), and what the server did
//! during the round is recorded beside its figure.

use std::{
    collections::HashMap,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use anyhow::Result;
use serde::{Deserialize, Serialize};
use sqlx::{Connection, PgConnection};
use tokio::task::JoinHandle;

use crate::cpu::{machine_cpu_s, process_cpu_s};

/// How often the server's activity is sampled during a round.
const SAMPLE_EVERY: Duration = Duration::from_millis(100);

/// Longest wait for autovacuum workers to finish before a round.
const AUTOVACUUM_WAIT: Duration = Duration::from_secs(60);

/// What the server did during one round.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Activity {
    /// Checkpoints that started (timed or requested).
    pub checkpoints: u64,
    /// WAL written, MB.
    pub wal_mb: f64,
    /// Share of WAL records that were full-page images.
    pub fpi_share: f64,
    /// Share of samples in which an autovacuum worker ran, anywhere on the server.
    pub autovacuum: f64,
    /// What the autovacuum workers worked on.
    pub autovacuum_on: Vec<String>,
    /// The commonest states of the client backends inside a statement or a
    /// transaction, with their share of backend samples (`CPU`: active with
    /// no wait event; `client`: idle in a transaction, waiting for the
    /// client's next statement).
    pub waits: Vec<(String, f64)>,
    /// Client backends inside a statement or a transaction, mean over the samples.
    pub active_backends: f64,
    /// Cores the load generator (this process) used.
    pub load_generator_cores: f64,
    /// Cores the whole machine used, anyone's processes included.
    pub machine_cores: f64,
}

impl Activity {
    /// One line for the report.
    pub fn describe(&self) -> String {
        let waits: Vec<String> = self
            .waits
            .iter()
            .map(|(w, share)| format!("{w} {:.0}%", share * 100.0))
            .collect();
        let autovacuum = if self.autovacuum > 0.0 {
            format!(
                "autovacuum {:.0}% ({})",
                self.autovacuum * 100.0,
                self.autovacuum_on.join(", ")
            )
        } else {
            "no autovacuum".to_owned()
        };
        format!(
            "{} checkpoint(s), {:.0} MB WAL ({:.0}% full pages), {autovacuum}; {:.1} backends in a transaction: {}; \
             load generator {:.2} cores, machine {:.2}",
            self.checkpoints,
            self.wal_mb,
            self.fpi_share * 100.0,
            self.active_backends,
            waits.join(", "),
            self.load_generator_cores,
            self.machine_cores
        )
    }
}

/// Settles the server before a round of writes: vacuums and analyzes every
/// database of `urls` (what earlier rounds and scenarios left, so that
/// autovacuum finds nothing to do mid-round), checkpoints (their dirty pages
/// are written before the round, not during it), and waits until no
/// autovacuum worker runs. Returns the seconds it took.
pub async fn settle(urls: &[String]) -> Result<f64> {
    let started = Instant::now();
    for url in urls {
        let mut conn = PgConnection::connect(url).await?;
        sqlx::raw_sql("VACUUM (ANALYZE)").execute(&mut conn).await?;
        conn.close().await?;
    }
    let Some(url) = urls.first() else {
        return Ok(0.0);
    };
    let mut conn = PgConnection::connect(url).await?;
    sqlx::raw_sql("CHECKPOINT").execute(&mut conn).await?;
    let deadline = Instant::now() + AUTOVACUUM_WAIT;
    while Instant::now() < deadline {
        let workers: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'autovacuum worker'",
        )
        .fetch_one(&mut conn)
        .await?;
        if workers == 0 {
            break;
        }
        tokio::time::sleep(SAMPLE_EVERY).await;
    }
    conn.close().await?;
    Ok(started.elapsed().as_secs_f64())
}

/// Server-wide counters read at the start and the end of a round.
#[derive(Default)]
struct Counters {
    checkpoints: Option<i64>,
    wal_records: Option<i64>,
    wal_fpi: Option<i64>,
    wal_bytes: Option<f64>,
    load_cpu_s: Option<f64>,
    machine_cpu_s: Option<f64>,
    at: Option<Instant>,
}

async fn counters(conn: &mut PgConnection) -> Counters {
    // PostgreSQL 17 moved the checkpoint counters to pg_stat_checkpointer.
    let checkpoints = match sqlx::query_scalar::<_, i64>(
        "SELECT checkpoints_timed + checkpoints_req FROM pg_stat_bgwriter",
    )
    .fetch_one(&mut *conn)
    .await
    {
        Ok(n) => Some(n),
        Err(_) => sqlx::query_scalar("SELECT num_timed + num_requested FROM pg_stat_checkpointer")
            .fetch_one(&mut *conn)
            .await
            .ok(),
    };
    let wal: Option<(i64, i64, f64)> =
        sqlx::query_as("SELECT wal_records, wal_fpi, wal_bytes::float8 FROM pg_stat_wal")
            .fetch_one(&mut *conn)
            .await
            .ok();
    Counters {
        checkpoints,
        wal_records: wal.map(|w| w.0),
        wal_fpi: wal.map(|w| w.1),
        wal_bytes: wal.map(|w| w.2),
        load_cpu_s: process_cpu_s(std::process::id()),
        machine_cpu_s: machine_cpu_s(),
        at: Some(Instant::now()),
    }
}

/// What the samples of one round added up to.
#[derive(Default)]
struct Samples {
    taken: u64,
    with_autovacuum: u64,
    autovacuum_on: Vec<String>,
    /// Backend samples by wait state.
    waits: HashMap<String, u64>,
    backends: u64,
}

#[derive(sqlx::FromRow)]
struct Backend {
    backend_type: String,
    wait: String,
    query: String,
}

/// Samples the server's activity until stopped.
pub struct Watch {
    conn: PgConnection,
    before: Counters,
    stop: Arc<AtomicBool>,
    sampler: JoinHandle<Samples>,
}

impl Watch {
    /// Starts watching the server of `url`.
    pub async fn start(url: &str) -> Result<Watch> {
        let mut conn = PgConnection::connect(url).await?;
        let before = counters(&mut conn).await;
        let mut sampling = PgConnection::connect(url).await?;
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        let sampler = tokio::spawn(async move {
            let mut samples = Samples::default();
            let mut tick = tokio::time::interval(SAMPLE_EVERY);
            while !stopped.load(Ordering::Relaxed) {
                tick.tick().await;
                let Ok(backends) = sqlx::query_as::<_, Backend>(
                    "SELECT backend_type, \
                     CASE WHEN state = 'active' \
                     THEN coalesce(wait_event_type || ':' || wait_event, 'CPU') \
                     ELSE 'client' END AS wait, \
                     coalesce(query, '') AS query \
                     FROM pg_stat_activity \
                     WHERE pid <> pg_backend_pid() AND (backend_type = 'autovacuum worker' \
                     OR (backend_type = 'client backend' \
                     AND state IN ('active', 'idle in transaction')))",
                )
                .fetch_all(&mut sampling)
                .await
                else {
                    continue;
                };
                samples.taken += 1;
                let mut autovacuum = false;
                for b in backends {
                    if b.backend_type == "autovacuum worker" {
                        autovacuum = true;
                        let what = b.query.trim_start_matches("autovacuum: ").to_owned();
                        if !what.is_empty() && !samples.autovacuum_on.contains(&what) {
                            samples.autovacuum_on.push(what);
                        }
                    } else {
                        samples.backends += 1;
                        *samples.waits.entry(b.wait).or_default() += 1;
                    }
                }
                samples.with_autovacuum += u64::from(autovacuum);
            }
            let _ = sampling.close().await;
            samples
        });
        Ok(Watch {
            conn,
            before,
            stop,
            sampler,
        })
    }

    /// Stops watching and sums up the round.
    pub async fn finish(mut self) -> Result<Activity> {
        self.stop.store(true, Ordering::Relaxed);
        let samples = self.sampler.await?;
        let after = counters(&mut self.conn).await;
        self.conn.close().await?;
        let before = self.before;
        let seconds = match (before.at, after.at) {
            (Some(b), Some(a)) => a.duration_since(b).as_secs_f64().max(f64::EPSILON),
            _ => f64::EPSILON,
        };
        let delta_i = |b: Option<i64>, a: Option<i64>| match (b, a) {
            (Some(b), Some(a)) => (a - b).max(0),
            _ => 0,
        };
        let delta_f = |b: Option<f64>, a: Option<f64>| match (b, a) {
            (Some(b), Some(a)) => (a - b).max(0.0),
            _ => 0.0,
        };
        let records = delta_i(before.wal_records, after.wal_records);
        let fpi = delta_i(before.wal_fpi, after.wal_fpi);
        let mut waits: Vec<(String, f64)> = samples
            .waits
            .into_iter()
            .map(|(w, n)| (w, n as f64 / samples.backends.max(1) as f64))
            .collect();
        waits.sort_by(|a, b| b.1.total_cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        waits.truncate(4);
        Ok(Activity {
            checkpoints: delta_i(before.checkpoints, after.checkpoints) as u64,
            wal_mb: delta_f(before.wal_bytes, after.wal_bytes) / 1e6,
            fpi_share: if records > 0 {
                fpi as f64 / records as f64
            } else {
                0.0
            },
            autovacuum: samples.with_autovacuum as f64 / samples.taken.max(1) as f64,
            autovacuum_on: samples.autovacuum_on,
            waits,
            active_backends: samples.backends as f64 / samples.taken.max(1) as f64,
            load_generator_cores: delta_f(before.load_cpu_s, after.load_cpu_s) / seconds,
            machine_cores: delta_f(before.machine_cpu_s, after.machine_cpu_s) / seconds,
        })
    }
}
