//! Beside each stream: heartbeats into the WAL, slot, WAL-limit and Redis
//! health, and the watch on the generation marker (lost by Redis, or a
//! rebuild asked for).

use std::{
    sync::{atomic::Ordering::Relaxed, Arc},
    time::Duration,
};

use tokio::sync::watch;

use crate::{
    metrics::Metrics,
    sink::Sink,
    source::{self, SlotStatus},
    wal,
};

/// Watches one stream until aborted: `lost` fires within a second of Redis
/// losing the marker (restart without persistence, FLUSHALL).
pub struct Monitor {
    pub pg: Arc<tokio_postgres::Client>,
    pub sink: Sink,
    pub slot: String,
    pub heartbeat: Duration,
    pub metrics: Arc<Metrics>,
    /// The generation the stream writes.
    pub generation: u64,
    /// Fired when that generation is no longer live or a rebuild is asked for.
    pub lost: watch::Sender<bool>,
    /// Told after each flush that applied transactions.
    pub nudge: Arc<tokio::sync::Notify>,
}

impl Monitor {
    pub async fn run(self) {
        let Monitor {
            pg,
            sink,
            slot,
            heartbeat,
            metrics,
            generation,
            lost,
            nudge,
        } = self;
        let mut last_beat = tokio::time::Instant::now();
        let mut stats = tokio::time::interval(Duration::from_secs(2));
        let mut marker = tokio::time::interval(Duration::from_millis(500));
        let mut beat = tokio::time::interval(heartbeat);
        loop {
            tokio::select! {
                _ = stats.tick() => {
                    match source::slot_info(&pg, &slot).await {
                        Ok(Some(info)) => {
                            metrics.postgres_up.store(true, Relaxed);
                            metrics.wal.set_slot(info.wal_status);
                            metrics.retained_wal_bytes.store(info.retained_bytes, Relaxed);
                            metrics.server_wal_lsn.fetch_max(info.current_wal.0, Relaxed);
                            if info.wal_status == SlotStatus::Lost {
                                tracing::error!(slot, "replication slot invalidated: its WAL was removed (max_slot_wal_keep_size); the projector will rebuild");
                            }
                        }
                        Ok(None) => tracing::warn!(slot, "replication slot disappeared"),
                        Err(err) => {
                            metrics.postgres_up.store(false, Relaxed);
                            tracing::warn!(error = %err, "postgres statistics query failed");
                        }
                    }
                    wal::check(&pg, &metrics).await;
                    let up = fred::interfaces::ClientLike::ping::<()>(sink.client(), None).await.is_ok();
                    metrics.redis_up.store(up, Relaxed);
                }
                _ = marker.tick() => {
                    if sink.rebuild_requested().await.unwrap_or(false) {
                        tracing::info!("rebuild requested; stopping the stream to build a fresh generation");
                        let _ = lost.send(true);
                    }
                    match sink.marker().await {
                        Ok(Some(m)) if m.generation == generation => {}
                        Ok(found) => {
                            tracing::error!(generation, found = ?found.map(|m| m.generation), "the live generation marker is gone from redis (data lost?); rebuilding");
                            let _ = lost.send(true);
                        }
                        Err(err) => tracing::warn!(error = %err, "could not read the generation marker"),
                    }
                }
                // A read-your-writes token may lie past its commit record: a
                // heartbeat right after a flush moves the watermark past it
                // without waiting for the next keepalive.
                _ = nudge.notified() => {
                    if last_beat.elapsed() >= Duration::from_millis(20) {
                        last_beat = tokio::time::Instant::now();
                        if let Err(err) = source::heartbeat(&pg).await {
                            tracing::warn!(error = %err, "heartbeat failed");
                        }
                    }
                }
                _ = beat.tick() => {
                    last_beat = tokio::time::Instant::now();
                    if let Err(err) = source::heartbeat(&pg).await {
                        tracing::warn!(error = %err, "heartbeat failed");
                    }
                }
            }
        }
    }
}
