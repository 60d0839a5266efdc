//! The streaming loop: replication events → decoded changes → batches →
//! Redis flushes → watermark → confirmation to PostgreSQL.
//!
//! Guarantee: the LSN confirmed to PostgreSQL never passes what Redis has
//! acknowledged. A transaction's end LSN is written as the watermark and
//! confirmed only after every change up to it was applied by a flush.

use std::{
    sync::{atomic::Ordering::Relaxed, Arc},
    time::Duration,
};

use anyhow::Context;
use pgwire_replication::{Lsn as WireLsn, ReplicationClient, ReplicationEvent};
use tokio::{sync::watch, time::Instant};
use views::Lsn;

use crate::{
    decode::Decoder,
    metrics::Metrics,
    projection::{stamp, Batch},
    sink::Sink,
};

/// Why the stream stopped without an error.
#[derive(Debug)]
pub enum Stopped {
    /// Shutdown was asked for; everything received was flushed and confirmed.
    Shutdown,
}

/// Streams from `repl` into `generation` until shutdown or an error.
pub struct Pipeline<'a> {
    pub sink: &'a Sink,
    pub metrics: &'a Arc<Metrics>,
    pub generation: u64,
    pub max_changes: usize,
    pub linger: Duration,
    /// Watermark already stored for the generation.
    pub applied: Lsn,
    /// Told after every flush that applied transactions (see `monitor`).
    pub nudge: Arc<tokio::sync::Notify>,
}

struct OpenTxn {
    commit_lsn: Lsn,
    next_index: u32,
}

impl Pipeline<'_> {
    pub async fn run(
        mut self,
        mut repl: ReplicationClient,
        shutdown: &mut watch::Receiver<bool>,
        mut lost: watch::Receiver<bool>,
    ) -> anyhow::Result<Stopped> {
        let mut decoder = Decoder::default();
        let mut batch = Batch::default();
        let mut txn: Option<OpenTxn> = None;
        let mut deadline: Option<Instant> = None;
        self.metrics.applied_lsn.store(self.applied.0, Relaxed);

        loop {
            let linger = deadline.unwrap_or_else(|| Instant::now() + Duration::from_secs(3600));
            tokio::select! {
                biased;
                _ = shutdown.changed() => {
                    self.flush(&repl, &mut batch).await?;
                    repl.update_applied_lsn(WireLsn(self.applied.0));
                    // Let the last standby status update go out: without it the
                    // server would replay everything after the previous one.
                    tokio::time::sleep(Duration::from_millis(400)).await;
                    let _ = tokio::time::timeout(Duration::from_secs(3), repl.shutdown()).await;
                    tracing::info!(applied = %self.applied, "replication stopped after a final flush");
                    return Ok(Stopped::Shutdown);
                }
                _ = lost.wait_for(|l| *l) => {
                    anyhow::bail!("stream stopped: its generation is no longer live or a rebuild was requested");
                }
                _ = tokio::time::sleep_until(linger), if deadline.is_some() => {
                    self.flush(&repl, &mut batch).await?;
                    deadline = None;
                }
                event = repl.recv() => {
                    let event = event.context("replication stream failed")?
                        .context("replication stream ended")?;
                    match event {
                        ReplicationEvent::Begin { final_lsn, .. } => {
                            txn = Some(OpenTxn { commit_lsn: Lsn(final_lsn.0), next_index: 0 });
                        }
                        ReplicationEvent::XLogData { data, .. } => {
                            let changes = decoder.decode(&data)?;
                            if changes.is_empty() {
                                continue;
                            }
                            let open = txn.as_mut().context("row change outside a transaction")?;
                            for change in changes {
                                batch.push(stamp(open.commit_lsn, open.next_index), change);
                                open.next_index += 1;
                            }
                            if batch.changes >= self.max_changes {
                                // Large transaction: apply what we have; stamps
                                // let a replay resume exactly after it.
                                self.flush(&repl, &mut batch).await?;
                                deadline = None;
                            }
                        }
                        ReplicationEvent::Commit { end_lsn, .. } => {
                            txn = None;
                            batch.commit_end = Some(Lsn(end_lsn.0));
                            batch.transactions += 1;
                            if batch.changes >= self.max_changes {
                                self.flush(&repl, &mut batch).await?;
                                deadline = None;
                            } else if deadline.is_none() {
                                deadline = Some(Instant::now() + self.linger);
                            }
                        }
                        ReplicationEvent::KeepAlive { wal_end, .. } => {
                            self.metrics.server_wal_lsn.fetch_max(wal_end.0, Relaxed);
                            if txn.is_none() && batch.is_empty() {
                                self.advance(&repl, Lsn(wal_end.0)).await?;
                            }
                        }
                        ReplicationEvent::Message { transactional: false, lsn, .. } => {
                            if txn.is_none() && batch.is_empty() {
                                self.advance(&repl, Lsn(lsn.0)).await?;
                            }
                        }
                        ReplicationEvent::Message { .. } => {}
                        ReplicationEvent::StoppedAt { .. } => anyhow::bail!("replication stopped at a stop LSN"),
                    }
                }
            }
        }
    }

    /// Applies the batch, then moves the watermark and the confirmed LSN to
    /// the last transaction it completed.
    async fn flush(&mut self, repl: &ReplicationClient, batch: &mut Batch) -> anyhow::Result<()> {
        if batch.is_empty() {
            return Ok(());
        }
        let took = self.sink.apply(self.generation, batch).await?;
        self.metrics
            .flushed(batch.transactions, batch.changes as u64, took);
        if let Some(end) = batch.commit_end {
            self.advance(repl, end).await?;
            self.nudge.notify_one();
        }
        *batch = Batch::default();
        Ok(())
    }

    /// Everything up to `lsn` is in Redis: store the watermark, then confirm.
    async fn advance(&mut self, repl: &ReplicationClient, lsn: Lsn) -> anyhow::Result<()> {
        if lsn <= self.applied {
            return Ok(());
        }
        self.sink.set_watermark(self.generation, lsn).await?;
        self.applied = lsn;
        self.metrics.applied_lsn.store(lsn.0, Relaxed);
        repl.update_applied_lsn(WireLsn(lsn.0));
        Ok(())
    }
}
