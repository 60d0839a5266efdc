//! The projector: PostgreSQL logical replication in, Redis views out.
//!
//! Modules follow the stream: `startup` (resume or rebuild) → `source` →
//! `decode` → `projection` → `sink` → `pipeline` (confirms nothing Redis has
//! not acknowledged); `monitor` (and, when asked for, `audit`) runs beside
//! it; `ops` and `audit` are the subcommands. `standby` decides which one
//! instance of a slot runs them. `schema` is what the views read of the
//! tables; a change they cannot follow `halt`s streaming until the operator
//! acts, never a retry loop.

mod audit;
mod config;
mod decode;
mod divergence;
mod halt;
mod http;
mod metrics;
mod monitor;
mod ops;
mod pipeline;
mod preload;
mod projection;
mod schema;
mod sink;
mod source;
mod standby;
mod startup;
mod wal;

use std::{
    future::Future,
    sync::{atomic::Ordering::Relaxed, Arc},
    time::Duration,
};

use anyhow::Context;
pub use audit::{
    audit, row_versions, Options as AuditOptions, Report as AuditReport, Subject as AuditSubject,
    EXIT_FAILED as AUDIT_FAILED,
};
pub use config::{AuditArgs, Cli, Command, Config};
use metrics::Metrics;
use monitor::Monitor;
pub use ops::{drop_slot, request_rebuild, status};
use sink::Sink;
use standby::Role;
use tokio::sync::watch;
use views::Keys;

/// Runs the daemon until `shutdown` resolves: serves the ops endpoints, builds
/// views when needed, and streams changes, reconnecting after failures.
pub async fn run(
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let metrics = Arc::new(Metrics::default());
    let server = service::Server::bind(config.addr)
        .await
        .with_context(|| format!("binding {}", config.addr))?
        .with_limits(config.connections.clone());

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
    let app = http::router(http::Ops {
        metrics: metrics.clone(),
        config: Arc::new(config.clone()),
    });
    let server = tokio::spawn(server.serve("projector ops endpoints", app, http_stop));

    check_tls(&config).await?;

    const FIRST_RETRY: Duration = Duration::from_millis(500);
    const OUTDATED_RECHECK: Duration = Duration::from_secs(5);
    let mut backoff = FIRST_RETRY;
    // The newer view schema this release was last told it cannot serve.
    let mut outdated_told: Option<u32> = None;
    loop {
        if *stop_rx.borrow() {
            break;
        }
        let started = std::time::Instant::now();
        // A problem in the source found by a build halts like one found
        // by the stream: retrying would meet it again.
        let outcome =
            cycle(&config, &metrics, &mut stop_rx)
                .await
                .or_else(|err| match err.downcast::<schema::SchemaProblem>() {
                    Ok(problem) => Ok(pipeline::Stopped::Halted(problem)),
                    Err(err) => Err(err),
                });
        metrics.role.set(Role::Starting);
        match outcome {
            Ok(pipeline::Stopped::Shutdown) => break,
            Ok(pipeline::Stopped::Halted(problem)) => {
                match halt::wait(&config, &metrics, &mut stop_rx, problem).await {
                    halt::Resumed::Shutdown => break,
                    halt::Resumed::Rebuild => backoff = FIRST_RETRY,
                }
            }
            Ok(pipeline::Stopped::Outdated { live_schema }) => {
                // Not a failure to retry loudly: said once, then this
                // instance stands aside (the slot's lock released) so that
                // a newer projector can be the active one.
                metrics.ready.store(false, Relaxed);
                if outdated_told != Some(live_schema) {
                    outdated_told = Some(live_schema);
                    tracing::error!(
                        live_schema,
                        schema = config.view_schema_version,
                        "the live views have view schema {live_schema}, newer than this release's {}: \
                         leaving them and the slot to the newer projector, looking again every {} s \
                         (to roll back, run `projector rebuild` with this release)",
                        config.view_schema_version,
                        OUTDATED_RECHECK.as_secs()
                    );
                }
                tokio::select! {
                    _ = tokio::time::sleep(OUTDATED_RECHECK) => {}
                    _ = stop_rx.changed() => {}
                }
            }
            Ok(pipeline::Stopped::Restart) => {
                // Not a failure: a requested rebuild or a lost generation
                // starts over at once.
                metrics.ready.store(false, Relaxed);
                tracing::info!("the stream stopped to rebuild or resume; starting over");
                backoff = FIRST_RETRY;
            }
            // A certificate that fails the check fails it again: a setting
            // to fix, so the program stops rather than retry.
            Err(err) if tls_refused(&err) => return Err(err),
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

/// Stops the start when a dependency answers but its TLS certificate fails
/// the check (a wrong CA or host name), so the mistake is one clear error,
/// not a retry loop; a dependency that does not answer yet is waited for.
async fn check_tls(config: &Config) -> anyhow::Result<()> {
    const CHECK_TIMEOUT: Duration = Duration::from_secs(5);
    if let Some(client) = config.redis.url.tls_client() {
        service::tls::check_at_start("Redis", &config.redis.url.nodes(), &client, CHECK_TIMEOUT)
            .await?;
    }
    if source::DatabaseUrl::parse(&config.database.url)?.verifies() {
        match tokio::time::timeout(CHECK_TIMEOUT, source::connect(&config.database.url)).await {
            Ok(Err(err)) if err.downcast_ref::<source::TlsRefused>().is_some() => return Err(err),
            _ => {}
        }
    }
    Ok(())
}

/// A dependency's certificate failed the check (see [`check_tls`]).
fn tls_refused(err: &anyhow::Error) -> bool {
    err.downcast_ref::<source::TlsRefused>().is_some()
        || matches!(
            err.downcast_ref::<sink::SinkError>(),
            Some(sink::SinkError::Tls(_))
        )
}

/// One life of the replication connection: wait for the slot's lock as a
/// standby, resume or rebuild, then stream until shutdown (`Ok`) or a
/// failure (`Err`).
async fn cycle(
    config: &Config,
    metrics: &Arc<Metrics>,
    stop: &mut watch::Receiver<bool>,
) -> anyhow::Result<pipeline::Stopped> {
    let keys = Keys::new(config.redis.key_prefix.clone());
    let sink = Sink::connect(&config.redis.url, keys)
        .await
        .with_context(|| format!("connecting to Redis at {}", config.redis.url))?;
    sink.check_no_eviction().await?;
    metrics.redis_up.store(true, Relaxed);
    let pg = Arc::new(source::connect(&config.database.url).await?);
    metrics.postgres_up.store(true, Relaxed);
    source::ensure_publication(&pg, &config.publication).await?;
    wal::check(&pg, &metrics.wal).await;

    if let Some(problem) = schema::check_publication(&pg, &config.publication).await? {
        return Ok(pipeline::Stopped::Halted(problem));
    }

    // Only the lock's holder observes: a standby must never take a rebuild
    // request or touch the slot.
    let Some(session) = standby::acquire(config, &metrics.role, stop).await? else {
        return Ok(pipeline::Stopped::Shutdown);
    };
    metrics.role.set(Role::Active);
    let seen = startup::observe(&sink, &pg, &config.slot).await?;
    let plan = startup::plan(&seen, config.view_schema_version);
    if let startup::Plan::Refuse { live_schema } = plan {
        return Ok(pipeline::Stopped::Outdated { live_schema });
    }
    // A build from tables the views cannot read would fail, and again.
    if let startup::Plan::Rebuild(_) = plan {
        if let Some(problem) = schema::check_tables(&pg).await? {
            return Ok(pipeline::Stopped::Halted(problem));
        }
    }
    let startup::Opened {
        mut repl,
        generation,
        applied,
    } = startup::open(plan, session, &seen, config, &sink, &pg, metrics).await?;
    if !repl.is_running() {
        anyhow::bail!("replication connection closed before streaming");
    }
    repl.wait_started().await.context("starting replication")?;
    let baseline = Arc::new(startup::baseline(&sink, &seen, generation).await?);
    metrics.generation.store(generation, Relaxed);
    metrics.ready.store(true, Relaxed);

    let (lost_tx, lost_rx) = watch::channel(false);
    let nudge = Arc::new(tokio::sync::Notify::new());
    let monitor = tokio::spawn(
        Monitor {
            pg: pg.clone(),
            sink: sink.clone(),
            slot: config.slot.clone(),
            publication: config.publication.clone(),
            heartbeat: config.heartbeat(),
            metrics: metrics.clone(),
            generation,
            previous_schema_grace: config.previous_schema_grace(),
            lost: lost_tx,
            nudge: nudge.clone(),
            baseline: baseline.clone(),
        }
        .run(),
    );
    let audit = config.audit_interval().map(|every| {
        tokio::spawn(audit::background(
            config.clone(),
            metrics.clone(),
            generation,
            every,
            config.audit_sample,
        ))
    });
    let preload = tokio::spawn(preload::preload_known(
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
        max_bytes: config.flush_max_bytes as usize,
        linger: config.flush_linger(),
        applied,
        nudge,
        baseline,
    }
    .run(repl, stop, lost_rx)
    .await;
    monitor.abort();
    preload.abort();
    if let Some(audit) = audit {
        audit.abort();
    }
    result
}
