//! The streaming loop: replication events → changes → batches → Redis
//! flushes → watermark → confirmation to PostgreSQL.
//!
//! Guarantee: the LSN confirmed never passes what Redis acknowledged; a
//! transaction's end is the watermark only once a flush applied all before it.
//! A batch is flushed when it holds `max_changes` changes or `max_bytes`
//! bytes; with the one in flight, at most two batches are held.
//!
//! A change replaying would meet again (a schema the views cannot read, a
//! `TRUNCATE`) ends the stream without confirming anything past it: the
//! caller halts or rebuilds rather than retrying.

use std::{
    sync::{atomic::Ordering::Relaxed, Arc},
    time::Duration,
};

use anyhow::Context;
use pgwire_replication::{Lsn as WireLsn, ReplicationClient, ReplicationEvent};
use tokio::{sync::watch, time::Instant};
use views::Lsn;

use crate::{
    decode::{DecodeError, Decoder},
    divergence::Baseline,
    metrics::Metrics,
    projection::{stamp, Batch},
    schema::SchemaProblem,
    sink::{Sink, SinkError},
};

/// PostgreSQL's epoch (2000-01-01 UTC) in µs since the Unix epoch: commit
/// times on the wire count from it.
const PG_EPOCH_UNIX_US: i64 = 946_684_800_000_000;

fn unix_now_us() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0)
}

/// Why the stream stopped without an error.
#[derive(Debug)]
pub enum Stopped {
    /// Shutdown was asked for; everything received was flushed and confirmed.
    Shutdown,
    /// The generation is no longer live (Redis lost it) or a rebuild was
    /// requested: the caller decides again between resuming and rebuilding.
    Restart,
    /// The source changed in a way the views cannot follow; nothing past
    /// it was confirmed. Waits for the operator (see `halt`).
    Halted(SchemaProblem),
    /// The live views have a newer view schema than this release: it leaves
    /// them (and the slot) to a newer projector.
    Outdated { live_schema: u32 },
}

/// Streams from `repl` into `generation` until shutdown or an error.
pub struct Pipeline<'a> {
    pub sink: &'a Sink,
    pub metrics: &'a Arc<Metrics>,
    pub generation: u64,
    pub max_changes: usize,
    pub max_bytes: usize,
    pub linger: Duration,
    /// Watermark already stored for the generation.
    pub applied: Lsn,
    /// Told after every flush that applied transactions (see `monitor`).
    pub nudge: Arc<tokio::sync::Notify>,
    /// Redis as the stream started: the watermark moves only on that server.
    pub baseline: Arc<Baseline>,
}

struct OpenTxn {
    commit_lsn: Lsn,
    next_index: u32,
}

/// What a finished flush applied.
struct Flushed {
    took: Duration,
    transactions: u64,
    changes: u64,
    /// The watermark it stored, if it moved.
    watermark: Option<Lsn>,
    /// The batch's first commit time (µs since the Unix epoch) and when it
    /// was received; when the flush started.
    first_commit_unix_us: Option<i64>,
    first_received: Option<std::time::Instant>,
    started: std::time::Instant,
}

/// The flush under way: at most one at a time, since per-entity stamps make
/// a later flush skip what an earlier one had not applied yet.
type InFlight = tokio::task::JoinHandle<Result<Flushed, crate::sink::SinkError>>;

impl Pipeline<'_> {
    /// Streams until shutdown, a lost generation, a refused watermark (Redis
    /// is not the server it was: the caller checks it against the slot, see
    /// `divergence`) or an error.
    pub async fn run(
        self,
        repl: ReplicationClient,
        shutdown: &mut watch::Receiver<bool>,
        lost: watch::Receiver<bool>,
    ) -> anyhow::Result<Stopped> {
        match self.stream(repl, shutdown, lost).await {
            Err(err) => match err.downcast_ref::<SinkError>() {
                Some(SinkError::WatermarkRefused(refusal)) => {
                    refusal.log();
                    Ok(Stopped::Restart)
                }
                _ => Err(err),
            },
            stopped => stopped,
        }
    }

    async fn stream(
        mut self,
        mut repl: ReplicationClient,
        shutdown: &mut watch::Receiver<bool>,
        mut lost: watch::Receiver<bool>,
    ) -> anyhow::Result<Stopped> {
        let mut decoder = Decoder::default();
        let mut batch = Batch::default();
        let mut txn: Option<OpenTxn> = None;
        let mut deadline: Option<Instant> = None;
        // Receiving goes on while the previous batch is written: one flush
        // in flight, the next batch growing (a backlog drains in larger flushes).
        let mut inflight: Option<InFlight> = None;
        // The linger ran out while a flush was in flight: flush when it ends.
        let mut due = false;
        self.metrics.applied_lsn.store(self.applied.0, Relaxed);

        loop {
            let linger = deadline.unwrap_or_else(|| Instant::now() + Duration::from_secs(3600));
            tokio::select! {
                biased;
                _ = shutdown.changed() => {
                    self.close(&mut repl, inflight.take(), Some(&mut batch)).await?;
                    tracing::info!(applied = %self.applied, "replication stopped after a final flush");
                    return Ok(Stopped::Shutdown);
                }
                // Its guard is dropped inside, so the stream stays `Send`
                // (the all-in-one process runs it on a shared runtime).
                _ = async { lost.wait_for(|l| *l).await.is_ok() } => {
                    if let Some(flight) = inflight.take() {
                        flight.abort();
                    }
                    // Nothing unconfirmed is lost: the next stream resumes
                    // from the confirmed position or rebuilds.
                    return Ok(Stopped::Restart);
                }
                done = async { inflight.as_mut().expect("guarded by the condition").await }, if inflight.is_some() => {
                    inflight = None;
                    self.finished(&repl, done).await?;
                    if due || batch.is_full(self.max_changes, self.max_bytes) {
                        due = false;
                        inflight = Some(self.start_flush(&mut batch));
                    }
                }
                _ = tokio::time::sleep_until(linger), if deadline.is_some() => {
                    deadline = None;
                    if inflight.is_none() {
                        inflight = Some(self.start_flush(&mut batch));
                    } else {
                        due = true;
                    }
                }
                event = repl.recv() => {
                    let event = event.context("replication stream failed")?
                        .context("replication stream ended")?;
                    match event {
                        ReplicationEvent::Begin { final_lsn, .. } => {
                            txn = Some(OpenTxn { commit_lsn: Lsn(final_lsn.0), next_index: 0 });
                        }
                        ReplicationEvent::XLogData { data, .. } => {
                            let changes = match decoder.decode(&data) {
                                Ok(changes) => changes,
                                Err(err) => return self.stopped_by(err, &mut repl, inflight.take()).await,
                            };
                            if changes.is_empty() {
                                continue;
                            }
                            let open = txn.as_mut().context("row change outside a transaction")?;
                            for change in changes {
                                batch.push(stamp(open.commit_lsn, open.next_index), change);
                                open.next_index += 1;
                            }
                            if batch.is_full(self.max_changes, self.max_bytes) {
                                // A full batch waits for the flush in flight
                                // (memory: two batches); a large transaction is
                                // split, its stamps let a replay resume after it.
                                if let Some(flight) = inflight.take() {
                                    self.finished(&repl, flight.await).await?;
                                }
                                inflight = Some(self.start_flush(&mut batch));
                                deadline = None;
                                due = false;
                            }
                        }
                        ReplicationEvent::Commit { end_lsn, commit_time_micros, .. } => {
                            txn = None;
                            batch.commit_end = Some(Lsn(end_lsn.0));
                            batch.transactions += 1;
                            if batch.first_commit_unix_us.is_none() {
                                batch.first_commit_unix_us = Some(commit_time_micros + PG_EPOCH_UNIX_US);
                                batch.first_received = Some(std::time::Instant::now());
                            }
                            if deadline.is_none() && !due {
                                deadline = Some(Instant::now() + self.linger);
                            }
                        }
                        ReplicationEvent::KeepAlive { wal_end, .. } => {
                            self.metrics.server_wal_lsn.fetch_max(wal_end.0, Relaxed);
                            if txn.is_none() {
                                self.passed(&repl, &mut batch, &inflight, &mut deadline, Lsn(wal_end.0)).await?;
                            }
                        }
                        ReplicationEvent::Message { transactional: false, lsn, .. } => {
                            if txn.is_none() {
                                self.passed(&repl, &mut batch, &inflight, &mut deadline, Lsn(lsn.0)).await?;
                            }
                        }
                        ReplicationEvent::Message { .. } => {}
                        ReplicationEvent::StoppedAt { .. } => anyhow::bail!("replication stopped at a stop LSN"),
                    }
                }
            }
        }
    }

    /// Ends the stream cleanly: waits for the flush in flight (and flushes
    /// `batch`, if given), confirms what Redis has, and lets the last
    /// status update go out: without it the server would replay everything
    /// after the previous one.
    async fn close(
        &mut self,
        repl: &mut ReplicationClient,
        inflight: Option<InFlight>,
        batch: Option<&mut Batch>,
    ) -> anyhow::Result<()> {
        if let Some(flight) = inflight {
            self.finished(repl, flight.await).await?;
        }
        if let Some(batch) = batch {
            let flight = self.start_flush(batch);
            self.finished(repl, flight.await).await?;
        }
        repl.update_applied_lsn(WireLsn(self.applied.0));
        tokio::time::sleep(Duration::from_millis(400)).await;
        let _ = tokio::time::timeout(Duration::from_secs(3), repl.shutdown()).await;
        Ok(())
    }

    /// A change the decoder refused. One that replaying would meet again
    /// ends the stream at the last transaction applied before it (the
    /// batch, which may hold part of its transaction, is dropped); any
    /// other is an error, retried.
    async fn stopped_by(
        &mut self,
        err: DecodeError,
        repl: &mut ReplicationClient,
        inflight: Option<InFlight>,
    ) -> anyhow::Result<Stopped> {
        if let DecodeError::Truncated(table) = &err {
            tracing::warn!(
                table,
                "a projected table was truncated; rebuilding the views into a new generation (the live one keeps serving, marked stale)"
            );
            // Asked for in Redis, so a crash before the rebuild still rebuilds.
            self.sink.request_rebuild().await?;
            self.close(repl, inflight, None).await?;
            return Ok(Stopped::Restart);
        }
        let Some(problem) = err.halts() else {
            return Err(err.into());
        };
        self.close(repl, inflight, None).await?;
        Ok(Stopped::Halted(problem))
    }

    /// Starts applying the batch (leaving an empty one); the flush stores the
    /// watermark of the last transaction it completed once Redis acknowledged it.
    fn start_flush(&self, batch: &mut Batch) -> InFlight {
        let batch = std::mem::take(batch);
        let sink = self.sink.clone();
        let generation = self.generation;
        let applied = self.applied;
        let baseline = self.baseline.clone();
        let started = std::time::Instant::now();
        tokio::spawn(async move {
            let (first_commit_unix_us, first_received) =
                (batch.first_commit_unix_us, batch.first_received);
            if batch.is_empty() {
                return Ok(Flushed {
                    took: Duration::ZERO,
                    transactions: 0,
                    changes: 0,
                    watermark: None,
                    first_commit_unix_us,
                    first_received,
                    started,
                });
            }
            let took = sink.apply(generation, &batch).await?;
            let watermark = batch.commit_end.filter(|end| *end > applied);
            if let Some(end) = watermark {
                sink.advance_watermark(generation, applied, end, baseline.watermark_run_id())
                    .await?;
            }
            Ok(Flushed {
                took,
                transactions: batch.transactions,
                changes: batch.changes as u64,
                watermark,
                first_commit_unix_us,
                first_received,
                started,
            })
        })
    }

    /// Counts a finished flush and confirms its watermark to PostgreSQL (the
    /// flush stored it only after Redis answered its writes).
    async fn finished(
        &mut self,
        repl: &ReplicationClient,
        done: Result<Result<Flushed, crate::sink::SinkError>, tokio::task::JoinError>,
    ) -> anyhow::Result<()> {
        let flushed = done.context("flush task failed")??;
        if flushed.changes > 0 || flushed.transactions > 0 {
            self.metrics
                .flushed(flushed.transactions, flushed.changes, flushed.took);
        }
        self.metrics
            .remembered_courses
            .store(self.sink.remembered_courses() as u64, Relaxed);
        if let Some(commit) = flushed.first_commit_unix_us {
            let age = Duration::from_micros(unix_now_us().saturating_sub(commit).max(0) as u64);
            self.metrics.observe_commit_to_applied(age);
            tracing::debug!(
                transactions = flushed.transactions,
                changes = flushed.changes,
                commit_to_applied_ms = age.as_secs_f64() * 1e3,
                waited_ms = flushed.first_received.map(|r| flushed
                    .started
                    .saturating_duration_since(r)
                    .as_secs_f64()
                    * 1e3),
                flush_ms = flushed.took.as_secs_f64() * 1e3,
                "flushed"
            );
        }
        if let Some(end) = flushed.watermark {
            debug_assert!(end > self.applied, "watermarks only move forward");
            self.applied = end;
            self.metrics.applied_lsn.store(end.0, Relaxed);
            repl.update_applied_lsn(WireLsn(end.0));
            self.nudge.notify_one();
        }
        Ok(())
    }

    /// The stream passed `lsn` outside any transaction (keepalive,
    /// heartbeat): the watermark moves there at once when nothing is pending,
    /// else with the next flush, so a read-your-writes token just past a
    /// commit is reached while orders keep streaming in.
    async fn passed(
        &mut self,
        repl: &ReplicationClient,
        batch: &mut Batch,
        inflight: &Option<InFlight>,
        deadline: &mut Option<Instant>,
        lsn: Lsn,
    ) -> anyhow::Result<()> {
        if batch.is_empty() && inflight.is_none() {
            return self.advance(repl, lsn).await;
        }
        if lsn > self.applied && batch.commit_end.is_none_or(|end| end < lsn) {
            batch.commit_end = Some(lsn);
            if deadline.is_none() {
                *deadline = Some(Instant::now() + self.linger);
            }
        }
        Ok(())
    }

    /// Everything up to `lsn` is in Redis: store the watermark, then confirm.
    async fn advance(&mut self, repl: &ReplicationClient, lsn: Lsn) -> anyhow::Result<()> {
        if lsn <= self.applied {
            return Ok(());
        }
        self.sink
            .advance_watermark(
                self.generation,
                self.applied,
                lsn,
                self.baseline.watermark_run_id(),
            )
            .await?;
        self.applied = lsn;
        self.metrics.applied_lsn.store(lsn.0, Relaxed);
        repl.update_applied_lsn(WireLsn(lsn.0));
        Ok(())
    }
}
