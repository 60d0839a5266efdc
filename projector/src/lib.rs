//! The projector: PostgreSQL logical replication in, Redis views out.
//!
//! Pipeline: `source` (slot, snapshot, replication connection) → `decode`
//! (pgoutput → changes) → `projection` (stamped per-entity entries, view
//! rendering) → `sink` (idempotent Redis writes) → `pipeline` (watermark and
//! confirmation, which never pass what Redis acknowledged).

mod config;
mod decode;
mod http;
mod metrics;
mod pipeline;
mod projection;
mod sink;
mod source;

use std::{
    future::Future,
    sync::{atomic::Ordering::Relaxed, Arc},
    time::Duration,
};

use anyhow::Context;
pub use config::{Cli, Command, Config};
use metrics::Metrics;
use sink::Sink;
use tokio::sync::watch;
use views::{GenerationMarker, Keys, Lsn, VIEW_SCHEMA_VERSION};

/// How long an old generation outlives the switch in a cluster before it is
/// deleted: well past a query API's Redis timeout (500 ms by default).
const CLUSTER_CLEANUP_GRACE: Duration = Duration::from_secs(5);

/// Runs the daemon until `shutdown` resolves: serves the ops endpoints, builds
/// views when needed, and streams changes, reconnecting after failures.
pub async fn run(
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let metrics = Arc::new(Metrics::default());
    let listener = tokio::net::TcpListener::bind(config.addr)
        .await
        .with_context(|| format!("binding {}", config.addr))?;
    tracing::info!(addr = %listener.local_addr()?, "projector ops endpoints listening");

    let (stop_tx, mut stop_rx) = watch::channel(false);
    tokio::spawn(async move {
        shutdown.await;
        let _ = stop_tx.send(true);
    });
    let http_stop = {
        let mut rx = stop_rx.clone();
        async move {
            let _ = rx.wait_for(|s| *s).await;
        }
    };
    let app = http::router(metrics.clone());
    let server = tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(http_stop)
            .await
    });

    const FIRST_RETRY: Duration = Duration::from_millis(500);
    let mut backoff = FIRST_RETRY;
    loop {
        if *stop_rx.borrow() {
            break;
        }
        let started = std::time::Instant::now();
        match cycle(&config, &metrics, &mut stop_rx).await {
            Ok(pipeline::Stopped::Shutdown) => break,
            Ok(pipeline::Stopped::Restart) => {
                // Not a failure: a requested rebuild or a lost generation
                // starts over at once.
                metrics.ready.store(false, Relaxed);
                tracing::info!("the stream stopped to rebuild or resume; starting over");
                backoff = FIRST_RETRY;
            }
            Err(err) => {
                metrics.failures.fetch_add(1, Relaxed);
                // A failure after a long healthy run starts a new episode of
                // retries, not the tail of an old one.
                if started.elapsed() > Duration::from_secs(60) {
                    backoff = FIRST_RETRY;
                }
                metrics.ready.store(false, Relaxed);
                tracing::error!(
                    error = format!("{err:#}"),
                    retry_in_ms = backoff.as_millis() as u64,
                    "projector failed; retrying"
                );
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = stop_rx.changed() => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(10));
            }
        }
    }
    let _ = server.await;
    tracing::info!("projector stopped");
    Ok(())
}

/// One life of the replication connection: decide between resuming and
/// rebuilding, then stream until shutdown (`Ok`) or a failure (`Err`).
async fn cycle(
    config: &Config,
    metrics: &Arc<Metrics>,
    stop: &mut watch::Receiver<bool>,
) -> anyhow::Result<pipeline::Stopped> {
    let keys = Keys::new(config.key_prefix.clone());
    let sink = Sink::connect(&config.redis_url, keys)
        .await
        .context("connecting to Redis")?;
    sink.check_no_eviction().await?;
    metrics.redis_up.store(true, Relaxed);
    let pg = Arc::new(source::connect(&config.database_url).await?);
    metrics.postgres_up.store(true, Relaxed);
    source::ensure_publication(&pg, &config.publication).await?;

    let marker = sink.marker().await?;
    let slot = source::slot_info(&pg, &config.slot).await?;
    let rebuild_requested = sink.take_rebuild_request().await?;
    let resume_from = match (&marker, &slot) {
        _ if rebuild_requested => {
            tracing::info!("a rebuild was requested; building a fresh generation while the live one keeps serving");
            None
        }
        (Some(m), Some(s)) if m.schema == VIEW_SCHEMA_VERSION && s.wal_status != "lost" => {
            let watermark = sink.watermark(m.generation).await?.unwrap_or_default();
            if watermark >= s.confirmed_flush {
                Some((m.generation, watermark))
            } else {
                tracing::warn!(generation = m.generation, %watermark, confirmed = %s.confirmed_flush,
                    "redis holds less than the slot confirmed (restored or failed over?); rebuilding");
                None
            }
        }
        (Some(m), Some(s)) if s.wal_status == "lost" => {
            tracing::error!(generation = m.generation, slot = %config.slot, "the replication slot was invalidated (WAL removed); creating a new slot and rebuilding");
            None
        }
        (Some(m), Some(_)) => {
            tracing::info!(
                schema = m.schema,
                current = VIEW_SCHEMA_VERSION,
                "view schema changed; rebuilding"
            );
            None
        }
        (None, _) => {
            tracing::info!("no live view generation in redis; building one");
            None
        }
        (Some(_), None) => {
            tracing::warn!(slot = %config.slot, "replication slot is missing; creating it and rebuilding");
            None
        }
    };

    let (repl, generation, applied) = match resume_from {
        Some((generation, watermark)) => {
            let repl =
                pgwire_replication::ReplicationClient::connect(source::replication_config(config)?)
                    .await
                    .context("opening the replication connection")?;
            tracing::info!(generation, %watermark, slot = %config.slot, "resuming replication");
            (repl, generation, watermark)
        }
        None => {
            if let Some(s) = &slot {
                anyhow::ensure!(
                    !s.active,
                    "replication slot {} is in use by another process",
                    config.slot
                );
                source::drop_slot(&pg, &config.slot).await?;
            }
            let generation = sink.next_generation().await?;
            if let Some(m) = &marker {
                // Readers keep the old generation, marked stale, meanwhile.
                sink.set_marker(&GenerationMarker {
                    building: Some(generation),
                    ..m.clone()
                })
                .await?;
            }
            let (repl, consistent_point) =
                source::create_slot_and_build(config, &sink, generation, metrics).await?;
            sink.set_watermark(generation, consistent_point).await?;
            sink.set_marker(&GenerationMarker {
                generation,
                schema: VIEW_SCHEMA_VERSION,
                building: None,
            })
            .await?;
            metrics.rebuilds.fetch_add(1, Relaxed);
            tracing::info!(generation, %consistent_point, "generation is live");
            let cleaner = sink.clone();
            tokio::spawn(async move {
                if cleaner.is_clustered() {
                    // A reader's closing marker proves its keys were read
                    // before the switch only on one Redis: in a cluster they
                    // sit on other nodes, read in no set order with it. Past
                    // a query API's Redis timeout, no such read is served.
                    tokio::time::sleep(CLUSTER_CLEANUP_GRACE).await;
                }
                match cleaner.delete_older_generations(generation).await {
                    Ok(n) => tracing::info!(keys = n, "deleted the keys of older generations"),
                    Err(err) => tracing::warn!(error = %err, "could not delete older generations"),
                }
            });
            (repl, generation, consistent_point)
        }
    };
    let mut repl = repl;
    if !repl.is_running() {
        anyhow::bail!("replication connection closed before streaming");
    }
    // A gated session (after a build) starts here; a plain one already did.
    let _ = repl.start().await;
    repl.wait_started().await.context("starting replication")?;
    metrics.generation.store(generation, Relaxed);
    metrics.ready.store(true, Relaxed);

    let (lost_tx, lost_rx) = watch::channel(false);
    let nudge = Arc::new(tokio::sync::Notify::new());
    let monitor = tokio::spawn(
        Monitor {
            pg: pg.clone(),
            sink: sink.clone(),
            slot: config.slot.clone(),
            heartbeat: config.heartbeat(),
            metrics: metrics.clone(),
            generation,
            lost: lost_tx,
            nudge: nudge.clone(),
        }
        .run(),
    );
    let preload = tokio::spawn(preload_known(
        pg.clone(),
        sink.clone(),
        metrics.clone(),
        generation,
    ));
    let result = pipeline::Pipeline {
        sink: &sink,
        metrics,
        generation,
        max_changes: config.flush_max_changes as usize,
        linger: config.flush_linger(),
        applied,
        nudge,
    }
    .run(repl, stop, lost_rx)
    .await;
    monitor.abort();
    preload.abort();
    result
}

/// Remembers the courses' aggregates in the background after the stream
/// starts (see [`Sink::preload_known`]): without it, the first enrollment
/// of every course after a start costs the flush a second round trip.
/// Best effort: a failure only means those courses are read back later.
async fn preload_known(
    pg: Arc<tokio_postgres::Client>,
    sink: Sink,
    metrics: Arc<Metrics>,
    generation: u64,
) {
    let started = std::time::Instant::now();
    let ids = match pg
        .query(
            "SELECT id FROM courses ORDER BY id LIMIT $1",
            &[&(sink::KNOWN_COURSES as i64)],
        )
        .await
    {
        Ok(rows) => rows
            .iter()
            .map(|row| row.get::<_, i64>(0))
            .collect::<Vec<_>>(),
        Err(err) => {
            tracing::warn!(error = %err, "could not list the courses to remember");
            return;
        }
    };
    let outcome = sink.preload_known(generation, &ids).await;
    metrics
        .remembered_courses
        .store(sink.remembered_courses() as u64, Relaxed);
    match outcome {
        Ok(loaded) => tracing::info!(
            loaded,
            remembered = sink.remembered_courses(),
            took_ms = started.elapsed().as_millis() as u64,
            "remembered the courses' aggregates"
        ),
        Err(err) => tracing::warn!(error = %err, "could not remember the courses' aggregates"),
    }
}

/// Heartbeats into the WAL, slot statistics, and the watch on the
/// generation marker: when Redis lost it (restart without persistence,
/// FLUSHALL), `lost` fires within a second and the projector rebuilds.
struct Monitor {
    pg: Arc<tokio_postgres::Client>,
    sink: Sink,
    slot: String,
    heartbeat: Duration,
    metrics: Arc<Metrics>,
    /// The generation the stream writes.
    generation: u64,
    /// Fired when that generation is no longer live or a rebuild is asked for.
    lost: watch::Sender<bool>,
    /// Told after each flush that applied transactions.
    nudge: Arc<tokio::sync::Notify>,
}

impl Monitor {
    async fn run(self) {
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
                            metrics.retained_wal_bytes.store(info.retained_bytes, Relaxed);
                            metrics.server_wal_lsn.fetch_max(info.current_wal.0, Relaxed);
                            if info.wal_status == "lost" {
                                tracing::error!(slot, "replication slot invalidated: its WAL was removed (max_slot_wal_keep_size); the projector will rebuild");
                            }
                        }
                        Ok(None) => tracing::warn!(slot, "replication slot disappeared"),
                        Err(err) => {
                            metrics.postgres_up.store(false, Relaxed);
                            tracing::warn!(error = %err, "postgres statistics query failed");
                        }
                    }
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
                // After applying transactions: a read-your-writes token is taken
                // after its COMMIT and may lie past the commit record (other WAL
                // in between); a heartbeat right away moves the watermark past
                // it instead of waiting for the next keepalive.
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

/// `projector status`: prints the slot, lag, retained WAL, generation and watermark as JSON.
pub async fn status(config: &Config) -> anyhow::Result<serde_json::Value> {
    let pg = source::connect(&config.database_url).await?;
    let slot = source::slot_info(&pg, &config.slot).await?;
    let sink = Sink::connect(&config.redis_url, Keys::new(config.key_prefix.clone())).await?;
    let marker = sink.marker().await?;
    let watermark = match &marker {
        Some(m) => sink.watermark(m.generation).await?,
        None => None,
    };
    Ok(serde_json::json!({
        "slot": config.slot,
        "slot_exists": slot.is_some(),
        "slot_active": slot.as_ref().map(|s| s.active),
        "wal_status": slot.as_ref().map(|s| s.wal_status.clone()),
        "confirmed_flush_lsn": slot.as_ref().map(|s| s.confirmed_flush.to_string()),
        "current_wal_lsn": slot.as_ref().map(|s| s.current_wal.to_string()),
        "lag_bytes": slot.as_ref().map(|s| s.current_wal.0.saturating_sub(s.confirmed_flush.0)),
        "retained_wal_bytes": slot.as_ref().map(|s| s.retained_bytes),
        "generation": marker.as_ref().map(|m| m.generation),
        "building": marker.as_ref().and_then(|m| m.building),
        "watermark": watermark.map(|w: Lsn| w.to_string()),
    }))
}

/// `projector rebuild`: asks the running daemon (or the next one to start)
/// to build a fresh generation and switch readers to it.
pub async fn request_rebuild(config: &Config) -> anyhow::Result<()> {
    let sink = Sink::connect(&config.redis_url, Keys::new(config.key_prefix.clone())).await?;
    sink.request_rebuild().await?;
    Ok(())
}

/// `projector drop-slot`: drops the slot (the daemon must be stopped).
pub async fn drop_slot(config: &Config) -> anyhow::Result<bool> {
    let pg = source::connect(&config.database_url).await?;
    match source::slot_info(&pg, &config.slot).await? {
        None => Ok(false),
        Some(s) => {
            anyhow::ensure!(
                !s.active,
                "slot {} is in use: stop the projector first",
                config.slot
            );
            source::drop_slot(&pg, &config.slot).await?;
            Ok(true)
        }
    }
}
