//! The rush: a sale's first minutes. The reads of a sale at saturation while
//! orders on the event's seat-limited courses arrive on a fixed schedule
//! and the projector keeps the views fresh, against the reads alone and the
//! orders alone, in the same rounds.
//!
//! Each round runs the three phases, the first to go turning round by
//! round, so drift on a shared machine lands on every phase alike; each
//! ratio is the median of the rounds' ratios, each taken between phases
//! seconds apart.

use std::{net::SocketAddr, sync::Arc, time::Instant};

use anyhow::{ensure, Context, Result};
use fred::prelude::Client;
use serde::{Deserialize, Serialize};

use super::{
    freshness::{self, Freshness, Visible},
    machine_cpu_s, median_of, mix,
    orders::event_order_requests,
    postgres_cpu_s, process_cpu_s, redis_cpu_s, Ctx, PROFILE_SECONDS,
};
use crate::{
    load::{self, get_request, MakeRequest, Mode, Phase, Spec},
    seed::CATEGORIES,
    stack::metric_sum,
    tools,
};

/// A kind of read of the sale.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Read {
    /// `GET /v1/courses/{id}` of a course of the event.
    CoursePage,
    /// `GET /v1/events/{id}`: the event and its courses' cards.
    EventPage,
    /// `GET /v1/courses?ids=...` of every course of the event.
    Cart,
    /// `GET /v1/categories/{category}/courses?sort=popular`, first page.
    Category,
}

/// The sale's reads, each with its share of the requests in percent: most
/// buyers open a course of the event, fewer the event page, a few check out
/// the whole event and a few browse a category.
pub const MIX: [(Read, u64); 4] = [
    (Read::CoursePage, 65),
    (Read::EventPage, 15),
    (Read::Cart, 10),
    (Read::Category, 10),
];

impl Read {
    /// What request `n` of the mix reads.
    fn of(n: u64) -> Read {
        let mut at = mix(n) % 100;
        for (read, share) in MIX {
            if at < share {
                return read;
            }
            at -= share;
        }
        Read::CoursePage
    }

    /// What it is, for people.
    pub fn label(self) -> &'static str {
        match self {
            Read::CoursePage => "course pages of the event",
            Read::EventPage => "the event page",
            Read::Cart => "carts of every course of the event",
            Read::Category => "first pages of categories, by popularity",
        }
    }
}

/// The read mix on event `event` of courses `ids`.
pub fn read_mix(event: i64, ids: Arc<Vec<i64>>) -> MakeRequest {
    let cart = format!(
        "/v1/courses?ids={}",
        ids.iter().map(i64::to_string).collect::<Vec<_>>().join(",")
    );
    Arc::new(move |n| {
        // The kind takes the low digits of the mix, the pick the rest.
        let pick = mix(n) / 100;
        let path = match Read::of(n) {
            Read::CoursePage => format!("/v1/courses/{}", ids[(pick % ids.len() as u64) as usize]),
            Read::EventPage => format!("/v1/events/{event}"),
            Read::Cart => cart.clone(),
            Read::Category => format!(
                "/v1/categories/{}/courses?sort=popular&limit=20",
                CATEGORIES[(pick % CATEGORIES.len() as u64) as usize]
            ),
        };
        get_request(&path)
    })
}

/// The processes the rush runs on.
#[derive(Debug, Clone, Copy)]
pub struct Pids {
    pub query_api: Option<u32>,
    pub command_api: Option<u32>,
    pub projector: Option<u32>,
    /// The three in one process, when they run so (the all-in-one scenario).
    pub all_in_one: Option<u32>,
    /// Absent when PostgreSQL does not run on this machine.
    pub postmaster: Option<u32>,
}

impl Pids {
    /// The ids of the programs under test (not PostgreSQL's).
    pub fn programs(&self) -> impl Iterator<Item = u32> {
        [
            self.query_api,
            self.command_api,
            self.projector,
            self.all_in_one,
        ]
        .into_iter()
        .flatten()
    }
}

/// Where the rush sends its reads and orders, and what serves them.
pub struct Targets {
    /// A query API pre-warming the events about to run.
    pub query: SocketAddr,
    pub command: SocketAddr,
    /// The views' key prefix.
    pub prefix: String,
    pub pids: Pids,
}

/// Cores (CPU seconds per second) each process used during a phase;
/// `None` where its time could not be read.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
pub struct Cores {
    pub query_api: Option<f64>,
    pub command_api: Option<f64>,
    pub projector: Option<f64>,
    /// The three programs in one process, when they run so.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub all_in_one: Option<f64>,
    /// Every process of the PostgreSQL server: backends, the walsender
    /// decoding the projector's slot, background workers.
    pub postgres: Option<f64>,
    pub redis: Option<f64>,
    /// This process: the load generator and the visibility pollers.
    pub load_generator: Option<f64>,
    /// Every process on the machine, these and anyone else's.
    #[serde(default)]
    pub machine: Option<f64>,
}

impl Cores {
    /// Every process with its cores, in a fixed order; the all-in-one
    /// process last, only where it ran.
    pub fn each(&self) -> Vec<(&'static str, Option<f64>)> {
        let mut each = vec![
            ("the query API", self.query_api),
            ("the command API", self.command_api),
            ("the projector", self.projector),
            ("PostgreSQL", self.postgres),
            ("Redis", self.redis),
            ("the load generator", self.load_generator),
        ];
        if self.all_in_one.is_some() {
            each.push(("the all-in-one process", self.all_in_one));
        }
        each
    }

    /// The cores of every process measured.
    pub fn total(&self) -> f64 {
        self.each().iter().filter_map(|(_, c)| *c).sum()
    }

    /// The process that used the most.
    pub fn busiest(&self) -> Option<(&'static str, f64)> {
        self.each()
            .into_iter()
            .filter_map(|(who, c)| Some((who, c?)))
            .max_by(|a, b| a.1.total_cmp(&b.1))
    }

    /// The median of each process's cores over `all`.
    pub fn median(all: &[Cores]) -> Cores {
        let of = |f: fn(&Cores) -> Option<f64>| median_of(all.iter().filter_map(f));
        Cores {
            query_api: of(|c| c.query_api),
            command_api: of(|c| c.command_api),
            projector: of(|c| c.projector),
            all_in_one: of(|c| c.all_in_one),
            postgres: of(|c| c.postgres),
            redis: of(|c| c.redis),
            load_generator: of(|c| c.load_generator),
            machine: of(|c| c.machine),
        }
    }
}

/// CPU seconds of every process so far, and when they were read.
struct Sample {
    at: Instant,
    seconds: [Option<f64>; 8],
}

async fn sample(pids: &Pids, redis: &Client) -> Sample {
    let cpu = |pid: Option<u32>| pid.and_then(process_cpu_s);
    Sample {
        seconds: [
            cpu(pids.query_api),
            cpu(pids.command_api),
            cpu(pids.projector),
            pids.postmaster.and_then(postgres_cpu_s),
            redis_cpu_s(redis).await,
            process_cpu_s(std::process::id()),
            machine_cpu_s(),
            cpu(pids.all_in_one),
        ],
        at: Instant::now(),
    }
}

/// Runs `phase`, measuring the cores each process used meanwhile.
pub(crate) async fn metered<T>(
    pids: &Pids,
    redis: &Client,
    phase: impl std::future::Future<Output = T>,
) -> (T, Cores) {
    let before = sample(pids, redis).await;
    let out = phase.await;
    let after = sample(pids, redis).await;
    let seconds = after
        .at
        .duration_since(before.at)
        .as_secs_f64()
        .max(f64::EPSILON);
    let used = |i: usize| Some((after.seconds[i]? - before.seconds[i]?).max(0.0) / seconds);
    let cores = Cores {
        query_api: used(0),
        command_api: used(1),
        projector: used(2),
        all_in_one: used(7),
        postgres: used(3),
        redis: used(4),
        load_generator: used(5),
        machine: used(6),
    };
    (out, cores)
}

/// Share of a fixed-rate phase's due requests that may fail before it no
/// longer counts as the load it is stated at.
const FAILED_SHARE: f64 = 0.01;

/// A fixed-rate phase placed (nearly) every order due in its window.
pub(crate) fn carried(phase: &Phase) -> bool {
    let due = phase.ok + phase.errors;
    due > 0 && phase.errors as f64 <= FAILED_SHARE * due as f64
}

/// One round: each phase of the three.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Round {
    /// The read mix alone at saturation.
    pub reads_alone: Phase,
    pub reads_alone_cores: Cores,
    /// The orders alone on the fixed schedule, the projector running, and
    /// their commit-to-visible lags.
    pub orders_alone: Phase,
    pub orders_alone_freshness: Freshness,
    pub orders_alone_cores: Cores,
    /// Both together: the reads at saturation and the orders on the same
    /// schedule, the projector running.
    pub reads: Phase,
    pub orders: Phase,
    /// The orders' commit-to-visible lags: to the projection's watermark
    /// in Redis (freshness's method, the goal's).
    pub freshness: Freshness,
    /// To the pre-warmed event page the query API serves showing them.
    pub served: Freshness,
    /// During the reads of the phase (its warm-up included).
    pub cores: Cores,
    /// The query API's pre-warmed hits and misses during the phase.
    pub warm_hits: Option<f64>,
    pub warm_misses: Option<f64>,
}

impl Round {
    /// Reads per second with the orders / alone.
    pub fn read_ratio(&self) -> Option<f64> {
        (self.reads_alone.achieved_rps > 0.0)
            .then(|| self.reads.achieved_rps / self.reads_alone.achieved_rps)
    }

    /// Order p99 with the reads / alone, when both phases carried their
    /// orders (a failed order has no latency to count).
    pub fn order_p99_ratio(&self) -> Option<f64> {
        let alone = self.orders_alone.latency.p99_ms;
        (alone > 0.0 && carried(&self.orders_alone) && carried(&self.orders))
            .then(|| self.orders.latency.p99_ms / alone)
    }

    /// The lags' p99 with the reads, when the command API carried the
    /// orders' rate.
    pub fn freshness_p99(&self) -> Option<f64> {
        (self.freshness.orders > 0 && carried(&self.orders)).then_some(self.freshness.p99_ms)
    }

    /// The same for the pre-warmed event page.
    pub fn served_p99(&self) -> Option<f64> {
        (self.served.orders > 0 && carried(&self.orders)).then_some(self.served.p99_ms)
    }
}

/// Everything the rush measured.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Rush {
    pub event_id: i64,
    pub courses: usize,
    pub seat_limit: i64,
    /// Orders per second offered, in both phases with orders.
    pub order_rate: f64,
    pub read_connections: usize,
    /// Seconds measured of each phase, after the warm-up.
    pub phase_s: f64,
    pub rounds: Vec<Round>,
}

impl Rush {
    /// The median of the rounds' read ratios.
    pub fn read_ratio(&self) -> Option<f64> {
        median_of(self.rounds.iter().filter_map(Round::read_ratio))
    }

    /// The median of the order p99 ratios of the rounds that measured one.
    pub fn order_p99_ratio(&self) -> Option<f64> {
        median_of(self.rounds.iter().filter_map(Round::order_p99_ratio))
    }

    /// The median of the rounds' lag p99s, to the watermark.
    pub fn freshness_p99(&self) -> Option<f64> {
        median_of(self.rounds.iter().filter_map(Round::freshness_p99))
    }

    /// The median of the rounds' lag p99s, to the pre-warmed page.
    pub fn served_p99(&self) -> Option<f64> {
        median_of(self.rounds.iter().filter_map(Round::served_p99))
    }

    /// The median of a figure over every round.
    pub fn median(&self, figure: impl Fn(&Round) -> f64) -> f64 {
        median_of(self.rounds.iter().map(figure)).unwrap_or(0.0)
    }

    /// Why no round gave an order ratio (`latency`) or a freshness figure.
    pub fn unmeasured(&self, latency: bool) -> Option<String> {
        let measured = self.rounds.iter().any(|r| {
            if latency {
                r.order_p99_ratio().is_some()
            } else {
                r.freshness_p99().is_some()
            }
        });
        if measured || self.rounds.is_empty() {
            return None;
        }
        let together = self.rounds.iter().filter(|r| !carried(&r.orders)).count();
        let alone = self
            .rounds
            .iter()
            .filter(|r| !carried(&r.orders_alone))
            .count();
        Some(format!(
            "of {} rounds, {together} had more than 1% of the orders with the reads failed or unsent{} (a \
             lighter load than stated)",
            self.rounds.len(),
            if latency {
                format!(", and {alone} the same of the orders alone")
            } else {
                String::new()
            }
        ))
    }
}

/// Creates the rush's event through the command API: running now, for a
/// day, at 30% off, over `ids` with `seat_limit` seats each. Returns its id
/// and the commit's LSN.
async fn create_event(
    command: SocketAddr,
    ids: &[i64],
    seat_limit: i64,
) -> Result<(i64, views::Lsn)> {
    let now = chrono::Utc::now();
    let courses: Vec<serde_json::Value> = ids
        .iter()
        .map(|id| serde_json::json!({"course_id": id, "seat_limit": seat_limit}))
        .collect();
    let body = serde_json::json!({
        "name": format!("Rush: {} courses, {seat_limit} seats each", ids.len()),
        "starts_at": (now - chrono::Duration::minutes(1)).to_rfc3339(),
        "ends_at": (now + chrono::Duration::days(1)).to_rfc3339(),
        "discount_percent": 30,
        "courses": courses,
    });
    let (status, headers, answer) = load::send(
        command,
        load::post_json("/v1/events", serde_json::to_vec(&body)?, &[]),
    )
    .await?;
    ensure!(
        status == 201,
        "creating the rush's event answered {status}: {}",
        String::from_utf8_lossy(&answer)
    );
    let id = serde_json::from_slice::<serde_json::Value>(&answer)?["id"]
        .as_i64()
        .context("the created event has no id")?;
    let lsn = headers
        .get("x-commit-lsn")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .context("the created event has no X-Commit-Lsn")?;
    Ok((id, lsn))
}

/// The query API's pre-warmed hits and misses so far.
async fn warm_counts(query: SocketAddr) -> (Option<f64>, Option<f64>) {
    (
        metric_sum(query, |n| n == "query_api_prewarm_hits_total").await,
        metric_sum(query, |n| n == "query_api_prewarm_misses_total").await,
    )
}

/// Waits until the query API answers the event's page from its pre-warmed
/// copy (its hit count moves with each read of it).
async fn wait_warm(query: SocketAddr, event: i64) -> Result<()> {
    let deadline = Instant::now() + std::time::Duration::from_secs(30);
    let path = format!("/v1/events/{event}");
    loop {
        let (before, _) = warm_counts(query).await;
        let mut answered = 0;
        for _ in 0..10 {
            if let Ok((200, _)) = load::get(query, &path).await {
                answered += 1;
            }
        }
        let (after, _) = warm_counts(query).await;
        if let (Some(a), Some(b)) = (before, after) {
            if answered == 10 && b - a >= 10.0 {
                return Ok(());
            }
        }
        ensure!(
            Instant::now() < deadline,
            "the query API did not pre-warm event {event} within 30 s"
        );
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    }
}

/// The phases of a round.
#[derive(Clone, Copy)]
enum Which {
    ReadsAlone,
    OrdersAlone,
    Together,
}

/// Creates the event, waits until it is projected and pre-warmed, then
/// runs the rounds; with perf, profiles the whole machine in one more
/// phase together, after the measured ones.
pub async fn run(ctx: &Ctx, at: &Targets) -> Result<(Rush, Option<Result<tools::Profile>>)> {
    let scale = &ctx.scale;
    let ids = Arc::new(scale.rush_ids());
    ensure!(!ids.is_empty(), "the rush's event has no courses");
    let rate = scale.rush_order_rate.max(1.0);
    let rounds = scale.rounds.max(1);
    // Seats for three times the orders a course gets on average, within
    // the 200,000 seats an event may hold: no course sells out.
    let phase = scale.warmup + scale.rate_phase;
    let expected = 2.0 * rounds as f64 * phase.as_secs_f64() * rate;
    let most = (200_000 / ids.len() as i64).max(1);
    let seat_limit = ((3.0 * expected / ids.len() as f64).ceil() as i64)
        .max(100)
        .min(most);
    let redis = ctx.env.redis().await?;
    let (event, lsn) = create_event(at.command, &ids, seat_limit).await?;
    let projected =
        freshness::wait_for_watermark(&redis, &at.prefix, lsn, std::time::Duration::from_secs(60))
            .await?;
    ensure!(projected, "the projector did not project the rush's event");
    wait_warm(at.query, event).await?;
    let key = freshness::watermark_key(&redis, &at.prefix).await?;

    let reads = read_mix(event, ids.clone());
    let read_spec = |what: &str| Spec {
        label: format!("sale read mix, {what}"),
        mode: Mode::Saturate {
            connections: scale.read_connections,
        },
        warmup: scale.warmup,
        duration: scale.rate_phase,
        capture: None,
    };
    let order_spec = |what: &str| Spec {
        label: format!("orders on the event at {rate:.0}/s, {what}"),
        mode: Mode::Rate {
            per_second: rate,
            connections: scale.rate_connections,
        },
        warmup: scale.warmup,
        duration: scale.rate_phase,
        capture: Some("x-commit-lsn"),
    };
    let courses = ids.clone();
    let orders = event_order_requests(
        ctx.next_user.clone(),
        event,
        Arc::new(move |n| courses[(mix(n) % courses.len() as u64) as usize]),
    );
    let watermark = || Visible::Watermark {
        redis: redis.clone(),
        key: key.clone(),
    };
    let page = Visible::Served {
        addr: at.query,
        path: format!("/v1/events/{event}"),
    };
    let pids = &at.pids;

    let mut out = Vec::with_capacity(rounds);
    for round in 0..rounds {
        let mut reads_alone = None;
        let mut orders_alone = None;
        let mut together = None;
        let order = [Which::ReadsAlone, Which::OrdersAlone, Which::Together];
        for k in 0..order.len() {
            match order[(k + round) % order.len()] {
                Which::ReadsAlone => {
                    tracing::info!(round, "rush: reads alone");
                    let (phase, cores) = metered(
                        pids,
                        &redis,
                        load::run(at.query, reads.clone(), &read_spec("alone")),
                    )
                    .await;
                    reads_alone = Some((phase?.phase, cores));
                }
                Which::OrdersAlone => {
                    tracing::info!(round, "rush: orders alone");
                    let spec = order_spec("alone");
                    let (outcome, cores) = metered(
                        pids,
                        &redis,
                        freshness::watched(
                            rate,
                            vec![watermark()],
                            load::run(at.command, orders.clone(), &spec),
                        ),
                    )
                    .await;
                    let (outcome, mut lags) = outcome?;
                    let lags = lags.pop().context("no lags of the orders alone")?;
                    orders_alone = Some((outcome.phase, lags, cores));
                }
                Which::Together => {
                    tracing::info!(round, "rush: reads and orders together");
                    let (hits, misses) = warm_counts(at.query).await;
                    let spec = order_spec("with the reads");
                    let sources = vec![watermark(), page.clone()];
                    let orders_phase = freshness::watched(
                        rate,
                        sources,
                        load::run(at.command, orders.clone(), &spec),
                    );
                    let with_orders = read_spec("with the orders");
                    let reads_phase = metered(
                        pids,
                        &redis,
                        load::run(at.query, reads.clone(), &with_orders),
                    );
                    let ((read_outcome, cores), orders_phase) =
                        tokio::join!(reads_phase, orders_phase);
                    let (hits_after, misses_after) = warm_counts(at.query).await;
                    let (outcome, mut lags) = orders_phase?;
                    let served = lags.pop().context("no lags to the event page")?;
                    let freshness = lags.pop().context("no lags to the watermark")?;
                    let delta = |a: Option<f64>, b: Option<f64>| Some(b? - a?);
                    together = Some((
                        read_outcome?.phase,
                        outcome.phase,
                        freshness,
                        served,
                        cores,
                        delta(hits, hits_after),
                        delta(misses, misses_after),
                    ));
                }
            }
        }
        let (
            (reads_alone, reads_alone_cores),
            (orders_alone, orders_alone_freshness, orders_alone_cores),
        ) = (
            reads_alone.context("the reads alone did not run")?,
            orders_alone.context("the orders alone did not run")?,
        );
        let (reads, orders_together, freshness, served, cores, warm_hits, warm_misses) =
            together.context("the phase together did not run")?;
        out.push(Round {
            reads_alone,
            reads_alone_cores,
            orders_alone,
            orders_alone_freshness,
            orders_alone_cores,
            reads,
            orders: orders_together,
            freshness,
            served,
            cores,
            warm_hits,
            warm_misses,
        });
    }
    let profile = if ctx.profile {
        tracing::info!("rush: profiling reads and orders together");
        let spec = |spec: Spec| Spec {
            warmup: std::time::Duration::from_millis(500),
            duration: std::time::Duration::from_secs(PROFILE_SECONDS),
            ..spec
        };
        let (reads_spec, orders_spec) = (spec(read_spec("profiled")), spec(order_spec("profiled")));
        let load = async {
            tokio::try_join!(
                load::run(at.query, reads.clone(), &reads_spec),
                load::run(at.command, orders.clone(), &orders_spec),
            )
        };
        let what = format!(
            "whole machine, sale rush: the read mix at saturation with orders at {rate:.0}/s"
        );
        Some(
            tools::profile_while(None, PROFILE_SECONDS, &what, &ctx.env.log_dir, load)
                .await
                .map(|(_, profile)| profile),
        )
    } else {
        None
    };
    let rush = Rush {
        event_id: event,
        courses: ids.len(),
        seat_limit,
        order_rate: rate,
        read_connections: scale.read_connections,
        phase_s: scale.rate_phase.as_secs_f64(),
        rounds: out,
    };
    Ok((rush, profile))
}

#[cfg(test)]
pub(crate) mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::load::Latency;

    /// A phase of `ok` answers and `failed` ones, at `rps`, its p99 `p99_ms`.
    pub(crate) fn phase(rps: f64, ok: u64, failed: u64, p99_ms: f64) -> Phase {
        Phase {
            label: String::new(),
            mode: "fixed rate".into(),
            connections: 1,
            offered_rps: Some(rps),
            achieved_rps: rps,
            ok,
            errors: failed,
            statuses: BTreeMap::new(),
            duration_s: 1.0,
            latency: Latency {
                p50_ms: p99_ms / 4.0,
                p99_ms,
                ..Latency::default()
            },
            timeline: Vec::new(),
        }
    }

    /// `orders` lags whose p99 is `p99_ms`.
    pub(crate) fn lags(orders: u64, p99_ms: f64) -> Freshness {
        Freshness {
            offered_rps: 166.0,
            achieved_rps: 166.0,
            orders,
            errors: 0,
            unseen: 0,
            p50_ms: p99_ms / 4.0,
            p95_ms: p99_ms / 2.0,
            p99_ms,
            max_ms: p99_ms * 2.0,
            samples: Vec::new(),
        }
    }

    /// A round: reads alone and together, orders alone and together (with
    /// `failed` orders failed together), and the lag p99 together.
    pub(crate) fn round(reads: (f64, f64), p99: (f64, f64), failed: u64, lag_ms: f64) -> Round {
        let cores = |redis| Cores {
            query_api: Some(0.6),
            command_api: Some(0.1),
            projector: Some(0.05),
            all_in_one: None,
            postgres: Some(0.2),
            redis: Some(redis),
            load_generator: Some(0.5),
            machine: Some(2.0),
        };
        Round {
            reads_alone: phase(reads.0, 1_000, 0, 1.0),
            reads_alone_cores: cores(0.3),
            orders_alone: phase(166.0, 1_660, 0, p99.0),
            orders_alone_freshness: lags(1_660, 5.0),
            orders_alone_cores: cores(0.1),
            reads: phase(reads.1, 1_000, 0, 1.0),
            orders: phase(166.0, 1_660 - failed, failed, p99.1),
            freshness: lags(1_660, lag_ms),
            served: lags(1_660, lag_ms + 250.0),
            cores: cores(0.9),
            warm_hits: Some(900.0),
            warm_misses: Some(100.0),
        }
    }

    pub(crate) fn rush(rounds: Vec<Round>) -> Rush {
        Rush {
            event_id: 2,
            courses: 125,
            seat_limit: 438,
            order_rate: 166.0,
            read_connections: 32,
            phase_s: 10.0,
            rounds,
        }
    }

    #[test]
    fn the_read_mix_keeps_its_shares_and_reads_only_the_events_courses() {
        let ids = Arc::new(vec![2, 82, 162]);
        let make = read_mix(7, ids.clone());
        let n = 20_000;
        let mut counts: BTreeMap<&str, u64> = BTreeMap::new();
        for i in 0..n {
            let request = make(i);
            let path = request.uri().to_string();
            let kind = if path == "/v1/events/7" {
                "event"
            } else if path == "/v1/courses?ids=2,82,162" {
                "cart"
            } else if let Some(id) = path.strip_prefix("/v1/courses/") {
                let id: i64 = id.parse().expect("a course id");
                assert!(ids.contains(&id), "course {id} is not the event's");
                "course"
            } else if path.starts_with("/v1/categories/") {
                assert!(path.ends_with("/courses?sort=popular&limit=20"), "{path}");
                "category"
            } else {
                panic!("a read outside the mix: {path}");
            };
            *counts.entry(kind).or_insert(0) += 1;
        }
        for (kind, share) in [
            ("course", 65),
            ("event", 15),
            ("cart", 10),
            ("category", 10),
        ] {
            let got = counts.get(kind).copied().unwrap_or(0) as f64 / n as f64 * 100.0;
            assert!(
                (got - share as f64).abs() < 1.5,
                "{kind}: {got:.1}% of the reads, not {share}%"
            );
        }
    }

    #[test]
    fn each_figure_is_the_median_of_the_rounds_that_measured_it() {
        let x = rush(vec![
            round((1000.0, 900.0), (10.0, 15.0), 0, 20.0),
            round((1000.0, 800.0), (10.0, 30.0), 0, 40.0),
            // The orders together failed: no order ratio, no lag figure.
            round((1000.0, 700.0), (10.0, 90.0), 200, 400.0),
        ]);
        assert_eq!(x.read_ratio(), Some(0.8));
        // The upper median of 1.5 and 3.0.
        assert_eq!(x.order_p99_ratio(), Some(3.0));
        assert_eq!(x.freshness_p99(), Some(40.0));
        assert_eq!(x.served_p99(), Some(290.0));
        assert!(x.unmeasured(true).is_none());
    }

    #[test]
    fn rounds_that_did_not_carry_their_orders_give_a_reason_instead_of_a_figure() {
        let x = rush(vec![round((1000.0, 900.0), (10.0, 90.0), 200, 400.0)]);
        assert_eq!(x.read_ratio(), Some(0.9));
        assert_eq!(x.order_p99_ratio(), None);
        assert_eq!(x.freshness_p99(), None);
        let why = x.unmeasured(true).expect("a reason");
        assert!(why.starts_with("of 1 rounds, 1 had more than 1%"), "{why}");
        assert!(why.contains("and 0 the same of the orders alone"), "{why}");
        assert!(x.unmeasured(false).is_some());
    }

    #[test]
    fn the_busiest_process_and_the_medians_come_from_the_figures() {
        let a = Cores {
            redis: Some(0.9),
            query_api: Some(0.4),
            ..Cores::default()
        };
        let b = Cores {
            redis: Some(0.2),
            query_api: Some(0.5),
            ..Cores::default()
        };
        assert_eq!(a.busiest(), Some(("Redis", 0.9)));
        assert_eq!(b.busiest(), Some(("the query API", 0.5)));
        assert!((a.total() - 1.3).abs() < 1e-9);
        let m = Cores::median(&[a, b, b]);
        assert_eq!(
            (m.redis, m.query_api, m.postgres),
            (Some(0.2), Some(0.5), None)
        );
    }
}
