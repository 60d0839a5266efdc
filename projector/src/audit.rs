//! `projector audit`: the live generation's views and aggregates against
//! what PostgreSQL says, with `--repair` re-projecting what differs; also
//! run now and then beside the stream (`--audit-interval-secs`).
//!
//! The expected state is the initial build's: the same scans of the tables
//! (`source::Scan`), folded as the apply script folds a stream, rendered by
//! the same render code.
//!
//! The daemon keeps streaming while the audit runs, so a difference is
//! reported only once it is proven not to be a change in flight:
//!
//! - A pass reads the tables in one REPEATABLE READ snapshot and the WAL
//!   insert position `L` in the statement that takes it (every commit the
//!   snapshot sees was written before `L`), waits until the watermark has
//!   passed `L` (so Redis holds at least what the snapshot holds), then
//!   reads each entity in Redis with its `stamp` and `vstamp` read before
//!   and after (equal: no write landed in between).
//! - Redis may hold more than the snapshot (a change after `L`, or one
//!   written before `L` that the snapshot saw as still running), so a
//!   difference makes the entity a suspect, read again by the next pass.
//!   That pass's snapshot sees every transaction that had an id when the
//!   previous pass's Redis reads ended (it waits until the oldest running
//!   transaction is younger), so it holds everything the stream had applied
//!   by then.
//! - A suspect whose stamps (for a library or a category, whose contents)
//!   did not move between the two passes held, at the second, exactly the
//!   changes the second snapshot holds: a difference there is a real one,
//!   and is reported. One that moved is read by a third pass, and so on up
//!   to [`PASSES`]; one still moving then is listed as unsettled (not
//!   compared), never as a mismatch.
//!
//! `--repair` writes each entity that differs anew from a snapshot `S`
//! read with its `L`: aggregate, HTML, tallies and views in one script,
//! stamped `(L, 0)`, and only if the aggregate's stamp is older. Every
//! change `S` holds committed before `L`, so its stamp is below and a
//! replay skips it; every change `S` misses with a commit at or after `L`
//! is above, so the stream still applies it, and if it already did, the
//! stamp refuses the write (read again later). What is left is a change
//! that committed before `L` yet was still running for `S`: it would be
//! skipped. So the tables are read again in a snapshot that sees every
//! transaction that had an id when the write ended; if any row the entity
//! is built from changed between the two (its row versions, not its values:
//! an order and its cancel add up to nothing), it is written again. Rankings, the event index and
//! libraries carry no stamp: written after the script, they are covered by
//! the same second read. Afterwards the audit runs again on what it
//! repaired.

mod compare;
mod cut;
mod expected;
mod observed;
mod repair;
mod report;
mod subject;

use std::{
    collections::BTreeMap,
    sync::{atomic::Ordering::Relaxed, Arc},
    time::Duration,
};

use anyhow::Context;
use tokio::time::Instant;
use tokio_postgres::Client;
use views::{Keys, Lsn};

pub use compare::Difference;
pub use repair::Repaired;
pub use report::{Findings, Mismatch, Report, EXIT_FAILED};
pub use subject::{Kind, Subject};

use crate::{config::Config, metrics::Metrics, sink::Sink, source};
use cut::{next_xid, wait_applied, Cut};

/// Passes at most: the first over everything, the others over suspects.
const PASSES: usize = 5;

/// How long a pass waits for the watermark to pass its snapshot (and for
/// old transactions to end).
const WAIT: Duration = Duration::from_secs(30);

/// Entities read per round trip (a course is ten reads, its page up to tens of KB).
const CHUNK: usize = 200;

/// What the audit covers.
#[derive(Debug, Clone, Copy, Default)]
pub struct Options {
    /// A random sample of this many entities per kind; `None`: every one.
    pub sample: Option<u32>,
    /// Re-project the entities that differ.
    pub repair: bool,
}

/// The row versions a repair compares around its write (see the module
/// doc), read in whatever snapshot `pg` is in; public for the tests that
/// prove it tells apart changes whose values cancel out.
#[doc(hidden)]
pub async fn row_versions(pg: &Client, subject: &Subject) -> anyhow::Result<Vec<String>> {
    expected::versions(pg, subject.kind(), std::slice::from_ref(subject)).await
}

/// `projector audit`: audits the live generation; with `--repair`, repairs
/// what differs and audits that again.
pub async fn audit(config: &Config, options: Options) -> anyhow::Result<Report> {
    let keys = Keys::new(config.redis.key_prefix.clone());
    let sink = Sink::connect(&config.redis.url, keys.clone())
        .await
        .with_context(|| format!("connecting to Redis at {}", config.redis.url))?;
    let marker = sink
        .marker()
        .await?
        .context("no live view generation in Redis: nothing to audit")?;
    anyhow::ensure!(
        marker.schema == config.view_schema_version,
        "the live generation has view schema {}, this release renders schema {}: \
         audit with the release that writes it",
        marker.schema,
        config.view_schema_version
    );
    if let Some(building) = marker.building {
        anyhow::bail!(
            "generation {building} is being built and nothing streams into the live one \
             meanwhile: audit once the rebuild is done"
        );
    }
    let snap = source::connect(&config.database.url).await?;
    let control = source::connect(&config.database.url).await?;
    let auditor = Auditor {
        redis: sink.client(),
        keys: &keys,
        generation: marker.generation,
        snap: &snap,
        control: &control,
    };
    let (lsn, checked, found) = auditor.everything(options.sample).await?;
    let repair = if options.repair && !found.mismatches.is_empty() {
        let mut repairs = Vec::new();
        for m in &found.mismatches {
            let outcome = match auditor.repair(&m.subject).await {
                Ok(outcome) => outcome,
                Err(err) => Repaired::Failed(format!("{err:#}")),
            };
            repairs.push((m.subject.clone(), outcome));
        }
        let subjects: Vec<Subject> = repairs.iter().map(|(s, _)| s.clone()).collect();
        let (_, after) = auditor.passes(subjects).await?;
        Some((repairs, after))
    } else {
        None
    };
    Ok(Report {
        generation: marker.generation,
        lsn,
        options,
        checked,
        found,
        repair,
    })
}

/// The daemon's slow audit of `generation` (never a repair): every
/// `interval`, a sample of `sample` per kind (0: everything); the mismatch
/// count goes to `projector_audit_mismatches`, each mismatch to a warning.
pub async fn background(
    config: Config,
    metrics: Arc<Metrics>,
    generation: u64,
    interval: Duration,
    sample: u32,
) {
    /// Warnings per pass at most: a broken generation must not flood the log.
    const WARNINGS: usize = 20;
    let keys = Keys::new(config.redis.key_prefix.clone());
    // A connection of its own: the audit's reads must not queue behind the
    // stream's flushes, nor delay them.
    let mut redis: Option<Sink> = None;
    loop {
        tokio::time::sleep(interval).await;
        let run = async {
            let sink = match &redis {
                Some(sink) => sink.clone(),
                None => redis
                    .insert(Sink::connect(&config.redis.url, keys.clone()).await?)
                    .clone(),
            };
            let snap = source::connect(&config.database.url).await?;
            let control = source::connect(&config.database.url).await?;
            let auditor = Auditor {
                redis: sink.client(),
                keys: &keys,
                generation,
                snap: &snap,
                control: &control,
            };
            auditor.everything((sample > 0).then_some(sample)).await
        };
        match run.await {
            Ok((lsn, checked, found)) => {
                metrics
                    .audit_mismatches
                    .store(found.mismatches.len() as u64, Relaxed);
                metrics.audit_runs.fetch_add(1, Relaxed);
                let differences = found
                    .mismatches
                    .iter()
                    .flat_map(|m| m.differences.iter().map(move |d| (&m.subject, d)));
                for (subject, d) in differences.take(WARNINGS) {
                    tracing::warn!(
                        entity = %subject,
                        field = d.field,
                        redis = d.redis,
                        postgres = d.postgres,
                        "audit: a view differs from the tables (projector audit --repair fixes it)"
                    );
                }
                tracing::info!(
                    %lsn,
                    checked = checked.values().sum::<u64>(),
                    mismatches = found.mismatches.len(),
                    unsettled = found.unsettled.len(),
                    "audit pass done"
                );
            }
            Err(err) => {
                tracing::warn!(error = format!("{err:#}"), "audit pass failed");
            }
        }
    }
}

/// One audit's connections and target.
struct Auditor<'a> {
    redis: &'a fred::clients::Client,
    keys: &'a Keys,
    generation: u64,
    /// The connection snapshots are taken on (one at a time).
    snap: &'a Client,
    /// A connection without a snapshot: heartbeats, transaction ids.
    control: &'a Client,
}

/// How an entity compared in one pass.
struct Outcome {
    subject: Subject,
    differences: Vec<Difference>,
    /// What must not move between two passes for a difference to count:
    /// the stamps, or a stampless entity's contents; `None` when it moved
    /// during the pass's own read.
    still: Option<String>,
}

impl Auditor<'_> {
    fn deadline(&self) -> Instant {
        Instant::now() + WAIT
    }

    /// Audits every entity (or a sample per kind): returns the first
    /// pass's position, what it compared per kind, and the findings.
    async fn everything(
        &self,
        sample: Option<u32>,
    ) -> anyhow::Result<(Lsn, BTreeMap<Kind, u64>, Findings)> {
        let cut = Cut::open(self.snap, 0, self.deadline()).await?;
        let lsn = cut.lsn;
        let first = async {
            wait_applied(
                self.redis,
                self.keys,
                self.control,
                self.generation,
                lsn,
                self.deadline(),
            )
            .await?;
            let mut checked = BTreeMap::new();
            let mut suspects = Vec::new();
            for kind in Kind::ALL {
                let mut count = 0;
                let mut after = None;
                loop {
                    let chunk = subjects(cut.pg(), kind, sample, after.as_ref()).await?;
                    let Some(last) = chunk.last().cloned() else {
                        break;
                    };
                    count += chunk.len() as u64;
                    suspects.extend(self.compare(cut.pg(), kind, &chunk).await?);
                    if sample.is_some() || chunk.len() < CHUNK {
                        break;
                    }
                    after = Some(last);
                }
                checked.insert(kind, count);
            }
            anyhow::Ok((checked, suspects))
        }
        .await;
        cut.close().await?;
        let (checked, suspects) = first?;
        let found = self.settle(suspects).await?;
        Ok((lsn, checked, found))
    }

    /// Audits `subjects` from a first pass on.
    async fn passes(&self, subjects: Vec<Subject>) -> anyhow::Result<(Lsn, Findings)> {
        let cut = Cut::open(self.snap, 0, self.deadline()).await?;
        let lsn = cut.lsn;
        let first = self.pass(&cut, &subjects).await;
        cut.close().await?;
        Ok((lsn, self.settle(first?).await?))
    }

    /// The passes after the first: suspects are read again until each is
    /// clean, proven different, or out of passes.
    async fn settle(&self, mut suspects: Vec<Outcome>) -> anyhow::Result<Findings> {
        let mut found = Findings {
            rechecked: suspects.len(),
            ..Findings::default()
        };
        for _ in 1..PASSES {
            if suspects.is_empty() {
                break;
            }
            // Sees everything the stream had applied when the last pass's
            // Redis reads ended.
            let horizon = next_xid(self.control).await?;
            let cut = Cut::open(self.snap, horizon, self.deadline()).await?;
            let subjects: Vec<Subject> = suspects.iter().map(|o| o.subject.clone()).collect();
            let again = self.pass(&cut, &subjects).await;
            cut.close().await?;
            let before: BTreeMap<Subject, Option<String>> =
                suspects.into_iter().map(|o| (o.subject, o.still)).collect();
            suspects = Vec::new();
            for outcome in again? {
                let held = before
                    .get(&outcome.subject)
                    .is_some_and(|still| still.is_some() && *still == outcome.still);
                if held {
                    found.mismatches.push(Mismatch {
                        subject: outcome.subject,
                        differences: outcome.differences,
                    });
                } else {
                    suspects.push(outcome);
                }
            }
        }
        found.unsettled = suspects.into_iter().map(|o| o.subject).collect();
        Ok(found)
    }

    /// One pass over `subjects` in `cut`: waits for the watermark, then
    /// compares; returns the ones that differ.
    async fn pass(&self, cut: &Cut<'_>, subjects: &[Subject]) -> anyhow::Result<Vec<Outcome>> {
        wait_applied(
            self.redis,
            self.keys,
            self.control,
            self.generation,
            cut.lsn,
            self.deadline(),
        )
        .await?;
        let mut differing = Vec::new();
        for kind in Kind::ALL {
            let of_kind: Vec<Subject> = subjects
                .iter()
                .filter(|s| s.kind() == kind)
                .cloned()
                .collect();
            for chunk in of_kind.chunks(CHUNK) {
                differing.extend(self.compare(cut.pg(), kind, chunk).await?);
            }
        }
        Ok(differing)
    }

    /// Compares a chunk of `kind` in the snapshot `pg` is in; returns the
    /// entities that differ.
    async fn compare(
        &self,
        pg: &Client,
        kind: Kind,
        chunk: &[Subject],
    ) -> anyhow::Result<Vec<Outcome>> {
        let want = expected::read(pg, kind, chunk).await?;
        let (redis, keys, g) = (self.redis, self.keys, self.generation);
        let ids: Vec<i64> = chunk.iter().filter_map(Subject::id).collect();
        let mut outcomes = Vec::with_capacity(chunk.len());
        let still = |s: &observed::Stamped| s.still.as_ref().map(|(a, b)| format!("{a}/{b}"));
        match kind {
            Kind::Course => {
                let present: Vec<(i64, String)> = ids
                    .iter()
                    .filter_map(|id| Some((*id, want.courses.get(id)?.category().to_owned())))
                    .collect();
                let got = observed::courses(redis, keys, g, &present).await?;
                for ((id, _), got) in present.iter().zip(got) {
                    let differences = compare::course(*id, &want.courses[id], &got, &want.terms);
                    outcomes.push(Outcome {
                        subject: Subject::Course(*id),
                        differences,
                        still: still(&got.stamped),
                    });
                }
            }
            Kind::Event => {
                let present: Vec<i64> = ids
                    .iter()
                    .copied()
                    .filter(|id| want.events.contains_key(id))
                    .collect();
                let got = observed::events(redis, keys, g, &present).await?;
                for (id, got) in present.iter().zip(got) {
                    outcomes.push(Outcome {
                        subject: Subject::Event(*id),
                        differences: compare::event(*id, &want.events[id], &got),
                        still: still(&got.stamped),
                    });
                }
            }
            Kind::Order => {
                let present: Vec<i64> = ids
                    .iter()
                    .copied()
                    .filter(|id| want.orders.contains_key(id))
                    .collect();
                let got = observed::orders(redis, keys, g, &present).await?;
                for (id, got) in present.iter().zip(got) {
                    outcomes.push(Outcome {
                        subject: Subject::Order(*id),
                        differences: compare::order(*id, &want.orders[id], &got),
                        still: still(&got.stamped),
                    });
                }
            }
            Kind::Library => {
                let got = observed::libraries(redis, keys, g, &ids).await?;
                for (id, got) in ids.iter().zip(got) {
                    let empty = BTreeMap::new();
                    let differences =
                        compare::library(want.libraries.get(id).unwrap_or(&empty), &got);
                    outcomes.push(Outcome {
                        subject: Subject::Library(*id),
                        differences,
                        still: Some(format!("{got:?}")),
                    });
                }
            }
            Kind::Category => {
                let names = Subject::category_names(chunk);
                let got = observed::categories(redis, keys, g, &names).await?;
                for (name, got) in names.iter().zip(got) {
                    let empty = Default::default();
                    let differences =
                        compare::category(want.categories.get(name).unwrap_or(&empty), &got);
                    outcomes.push(Outcome {
                        subject: Subject::Category(name.clone()),
                        differences,
                        still: Some(format!("{got:?}")),
                    });
                }
            }
        }
        outcomes.retain(|o| !o.differences.is_empty());
        Ok(outcomes)
    }
}

/// The next chunk of `kind` to audit, after `after` (in id or name order),
/// or a random sample of `sample` of them.
async fn subjects(
    pg: &Client,
    kind: Kind,
    sample: Option<u32>,
    after: Option<&Subject>,
) -> anyhow::Result<Vec<Subject>> {
    let table = match kind {
        Kind::Course => "SELECT id FROM courses",
        Kind::Event => "SELECT id FROM sale_events",
        Kind::Order => "SELECT id FROM orders",
        // Whoever has an active enrollment or an order (the indexed ways to
        // every user a library may list anything for).
        Kind::Library => {
            "SELECT user_id AS id FROM enrollments WHERE revoked_at IS NULL \
             UNION SELECT user_id FROM orders"
        }
        Kind::Category => "SELECT DISTINCT category AS id FROM courses",
    };
    let rows = match (sample, after) {
        (Some(n), _) => {
            pg.query(
                &format!("SELECT id FROM ({table}) t ORDER BY random() LIMIT $1"),
                &[&i64::from(n)],
            )
            .await?
        }
        (None, Some(Subject::Category(name))) => {
            pg.query(
                &format!("SELECT id FROM ({table}) t WHERE id > $1 ORDER BY id LIMIT $2"),
                &[name, &(CHUNK as i64)],
            )
            .await?
        }
        (None, Some(last)) => {
            let id = last.id().unwrap_or_default();
            pg.query(
                &format!("SELECT id FROM ({table}) t WHERE id > $1 ORDER BY id LIMIT $2"),
                &[&id, &(CHUNK as i64)],
            )
            .await?
        }
        (None, None) => {
            pg.query(
                &format!("SELECT id FROM ({table}) t ORDER BY id LIMIT $1"),
                &[&(CHUNK as i64)],
            )
            .await?
        }
    };
    Ok(rows
        .iter()
        .map(|row| match kind {
            Kind::Course => Subject::Course(row.get(0)),
            Kind::Event => Subject::Event(row.get(0)),
            Kind::Order => Subject::Order(row.get(0)),
            Kind::Library => Subject::Library(row.get(0)),
            Kind::Category => Subject::Category(row.get(0)),
        })
        .collect())
}
