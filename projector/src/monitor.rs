//! Beside each stream: heartbeats into the WAL, slot, WAL-limit and Redis
//! health, the watch on the generation marker (lost by Redis, or a rebuild
//! asked for; the previous view schema's generation retired once its grace
//! is over) and on the Redis nodes (restarted or failed over: see
//! `divergence`).

use std::{
    sync::{atomic::Ordering::Relaxed, Arc},
    time::Duration,
};

use tokio::sync::watch;

use views::GenerationMarker;

use crate::{
    divergence::{Baseline, Verdict},
    metrics::Metrics,
    schema,
    sink::Sink,
    source::{self, SlotStatus},
    startup::unix_ms,
    wal,
};

/// Watches one stream until aborted: `lost` fires within a second of Redis
/// losing the marker (restart without persistence, FLUSHALL).
pub struct Monitor {
    pub pg: Arc<tokio_postgres::Client>,
    pub sink: Sink,
    pub slot: String,
    /// The publication, checked for a projected table taken out of it.
    pub publication: String,
    pub heartbeat: Duration,
    pub metrics: Arc<Metrics>,
    /// The generation the stream writes.
    pub generation: u64,
    /// How long after a schema change the previous schema's generation stays readable.
    pub previous_schema_grace: Duration,
    /// Fired when that generation is no longer live or a rebuild is asked for.
    pub lost: watch::Sender<bool>,
    /// Told after each flush that applied transactions.
    pub nudge: Arc<tokio::sync::Notify>,
    /// Redis as the stream started.
    pub baseline: Arc<Baseline>,
}

impl Monitor {
    pub async fn run(self) {
        let Monitor {
            pg,
            sink,
            slot,
            publication,
            heartbeat,
            metrics,
            generation,
            previous_schema_grace,
            lost,
            nudge,
            baseline,
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
                    wal::check(&pg, &metrics.wal).await;
                    // pgoutput just stops sending a table taken out of the
                    // publication: restart, and the start halts on it.
                    if let Ok(Some(problem)) = schema::check_publication(&pg, &publication).await {
                        tracing::warn!(%problem, "a projected table left the publication; stopping the stream");
                        let _ = lost.send(true);
                    }
                    let up = fred::interfaces::ClientLike::ping::<()>(sink.client(), None).await.is_ok();
                    metrics.redis_up.store(up, Relaxed);
                    if up {
                        match sink.memory().await {
                            Ok(memory) => {
                                metrics.redis_used_memory.store(memory.used, Relaxed);
                                metrics.redis_maxmemory.store(memory.max, Relaxed);
                            }
                            Err(err) => tracing::debug!(error = %err, "could not read redis memory"),
                        }
                    }
                }
                _ = marker.tick() => {
                    if sink.rebuild_requested().await.unwrap_or(false) {
                        tracing::info!("rebuild requested; stopping the stream to build a fresh generation");
                        let _ = lost.send(true);
                    }
                    match sink.marker_as_stored().await {
                        Ok(Some((raw, m))) if m.generation == generation => {
                            retire_previous_schema(&sink, &raw, &m, previous_schema_grace).await;
                        }
                        Ok(found) => {
                            tracing::error!(generation, found = ?found.map(|(_, m)| m.generation), "the live generation marker is gone from redis (data lost?); rebuilding");
                            let _ = lost.send(true);
                        }
                        Err(err) => tracing::warn!(error = %err, "could not read the generation marker"),
                    }
                    if check_nodes(&sink, &baseline, &metrics).await {
                        // Said once: the stream stops and a new one starts
                        // with a monitor of its own.
                        let _ = lost.send(true);
                        return;
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

/// Once `grace` has passed since the live view schema went live, takes the
/// previous schema's generation out of the marker (its query APIs answer
/// `rebuilding` from then on) and deletes its keys.
async fn retire_previous_schema(
    sink: &Sink,
    raw: &str,
    marker: &GenerationMarker,
    grace: Duration,
) {
    let grace_ms = u64::try_from(grace.as_millis()).unwrap_or(u64::MAX);
    let Some(retired) = marker.retired(unix_ms(), grace_ms) else {
        return;
    };
    match sink.replace_marker(Some(raw), &retired).await {
        Ok(true) => {
            let schemas: Vec<u32> = marker
                .live
                .keys()
                .copied()
                .filter(|s| *s != marker.schema)
                .collect();
            tracing::info!(
                ?schemas,
                "the previous view schema's grace is over; its generation is no longer readable"
            );
            sink.delete_unread_generations_soon(retired);
        }
        // Changed meanwhile: the next tick sees the new marker.
        Ok(false) => {}
        Err(err) => {
            tracing::warn!(error = %err, "could not retire the previous view schema's generation")
        }
    }
}

/// Asks every node the stream started with who it is now; true when the
/// stream must stop. A node other than the watermark's that changed gets a
/// rebuild, asked for in Redis before stopping so that whichever instance
/// streams next carries it out even if this one dies now.
async fn check_nodes(sink: &Sink, baseline: &Baseline, metrics: &Metrics) -> bool {
    let polled = sink.poll_nodes(&baseline.nodes).await;
    let Some(change) = baseline.changed(&polled) else {
        return false;
    };
    match baseline.verdict(&change) {
        Verdict::CheckAgainstSlot => tracing::warn!(
            node = change.node,
            old_run_id = change.recorded,
            new_run_id = change.found_text(),
            "the redis node holding the watermark restarted or failed over under the stream; stopping to check redis against the slot"
        ),
        Verdict::Rebuild => {
            tracing::error!(
                node = change.node,
                old_run_id = change.recorded,
                new_run_id = change.found_text(),
                "a redis node restarted or failed over under the stream: its views may have gone back in time; rebuilding while the live generation serves, marked stale"
            );
            metrics.divergences.fetch_add(1, Relaxed);
            if let Err(err) = sink.request_rebuild().await {
                // The next start still compares the nodes it finds with
                // the ones recorded for this generation.
                tracing::warn!(error = %err, "could not store the rebuild request");
            }
        }
    }
    true
}
