//! A halted stream: the source changed in a way the views cannot follow
//! (`schema`). Retrying would meet the same change again, so the projector
//! says so once (one ERROR naming the table, the column and the fix), answers
//! `/ready` 503 with `projector_halted` 1, keeps its slot where it was (WAL
//! is retained meanwhile), and waits quietly: it checks the tables every
//! 30 s, and at once when `projector rebuild` is asked for, and once they
//! have what the views read again it rebuilds into a new generation (the
//! stream itself cannot be followed: it still holds the change).

use std::{
    sync::{atomic::Ordering::Relaxed, Arc},
    time::Duration,
};

use tokio::sync::watch;
use views::Keys;

use crate::{config::Config, metrics::Metrics, schema, schema::SchemaProblem, sink::Sink, source};

/// How often the tables are checked while halted.
const RECHECK: Duration = Duration::from_secs(30);
/// How often a rebuild request is looked for while halted.
const REQUEST_POLL: Duration = Duration::from_secs(1);

/// How a halt ended.
pub enum Resumed {
    Shutdown,
    /// A rebuild is requested (in Redis, as `projector rebuild` does): the
    /// next start builds a fresh generation.
    Rebuild,
}

/// Waits out `problem`: until shutdown, or until the tables can be built
/// from again.
pub async fn wait(
    config: &Config,
    metrics: &Arc<Metrics>,
    stop: &mut watch::Receiver<bool>,
    mut problem: SchemaProblem,
) -> Resumed {
    metrics.ready.store(false, Relaxed);
    metrics.halt(Some(problem.to_string()));
    log(&problem);
    let mut source = Source::default();
    // A request pending now led here (a build met the problem) or is
    // answered by the ERROR just logged: only a newer one is acted on.
    let mut answered = source.rebuild_request(config).await;
    let mut recheck = tokio::time::interval(RECHECK);
    let mut poll = tokio::time::interval(REQUEST_POLL);
    // The first check comes a period from now: a halt is never undone at once.
    recheck.reset();
    loop {
        let request = tokio::select! {
            _ = stop.changed() => return Resumed::Shutdown,
            _ = recheck.tick() => None,
            _ = poll.tick() => match source.rebuild_request(config).await {
                Some(request) if answered.as_ref() != Some(&request) => Some(request),
                _ => continue,
            },
        };
        if !problem.seen_in_catalog() {
            if request.is_some() {
                // A bad row is data: the operator's request says it is fixed.
                metrics.halt(None);
                tracing::info!("a rebuild was requested; rebuilding");
                return Resumed::Rebuild;
            }
            continue;
        }
        let Some(found) = source.check(config).await else {
            continue;
        };
        match found {
            None => {
                // Asked for in Redis like `projector rebuild` does, so the
                // next start rebuilds (whichever instance is active then).
                let Some(sink) = source.sink(config).await else {
                    continue;
                };
                if let Err(err) = sink.request_rebuild().await {
                    tracing::debug!(error = %err, "could not request the rebuild");
                    continue;
                }
                metrics.halt(None);
                tracing::info!(
                    "the tables have what the views read again; rebuilding into a new generation"
                );
                return Resumed::Rebuild;
            }
            Some(now) => {
                if let Some(request) = request {
                    // One line per request, which stays pending: the
                    // rebuild it asks for comes once the tables are fixed.
                    answered = Some(request);
                    tracing::warn!(
                        table = now.table(),
                        column = now.column(),
                        "a rebuild was requested but the tables still cannot be built from: {now}"
                    );
                }
                if now != problem {
                    problem = now;
                    metrics.halt(Some(problem.to_string()));
                    log(&problem);
                }
            }
        }
    }
}

/// The one ERROR line of a halt.
fn log(problem: &SchemaProblem) {
    tracing::error!(
        table = problem.table(),
        column = problem.column(),
        "streaming halted: {problem}. The slot keeps its position (and its WAL) meanwhile; \
         the projector rebuilds once the tables have what the views read (checked every 30 s, \
         and at once on `projector rebuild`)"
    );
}

/// The connections a halted projector checks with, opened when first
/// needed and again after a failure (quietly: the halt was said once).
#[derive(Default)]
struct Source {
    pg: Option<tokio_postgres::Client>,
    sink: Option<Sink>,
}

impl Source {
    /// The pending rebuild request, if Redis answers.
    async fn rebuild_request(&mut self, config: &Config) -> Option<String> {
        let sink = self.sink(config).await?;
        match sink.rebuild_request().await {
            Ok(request) => request,
            Err(err) => {
                tracing::debug!(error = %err, "could not read the rebuild request");
                None
            }
        }
    }

    async fn sink(&mut self, config: &Config) -> Option<&Sink> {
        if self.sink.is_none() {
            let keys = Keys::new(config.redis.key_prefix.clone());
            match Sink::connect(&config.redis.url, keys).await {
                Ok(sink) => self.sink = Some(sink),
                Err(err) => tracing::debug!(error = %err, "redis unreachable while halted"),
            }
        }
        self.sink.as_ref()
    }

    /// The first problem the publication and tables show now; `None` when
    /// PostgreSQL could not be asked.
    async fn check(&mut self, config: &Config) -> Option<Option<SchemaProblem>> {
        if self.pg.as_ref().is_none_or(|pg| pg.is_closed()) {
            match source::connect(&config.database.url).await {
                Ok(pg) => self.pg = Some(pg),
                Err(err) => {
                    tracing::debug!(error = %err, "postgres unreachable while halted");
                    return None;
                }
            }
        }
        let pg = self.pg.as_ref()?;
        let found = async {
            match schema::check_publication(pg, &config.publication).await? {
                Some(problem) => Ok(Some(problem)),
                None => schema::check_tables(pg).await,
            }
        }
        .await;
        match found {
            Ok(found) => Some(found),
            Err(err) => {
                tracing::debug!(error = %err, "could not check the tables while halted");
                self.pg = None;
                None
            }
        }
    }
}
