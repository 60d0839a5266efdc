//! Overload: orders offered at three times what the command API carries,
//! against its admission as shipped (about as many requests as the pool
//! has connections, a short wait for one) and as it was (256 admitted, 2 s
//! to wait), side by side in one run: the goodput, the accepted orders'
//! latency, how fast the rest were refused, and whether every answer told
//! the truth about what was written.

use std::{
    collections::{BTreeMap, HashSet},
    net::SocketAddr,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use anyhow::{ensure, Context, Result};
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};
use sqlx::{Connection, PgConnection};

use super::{mix, process_cpu_s, saturate, Ctx, Target};
use crate::{
    load::{self, Latency, MakeRequest, Mode, Outcome, Phase, Spec},
    stack::{self, free_addr, Program},
};

/// What the scenario measured.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Overload {
    /// Orders per second the command API carries, measured at the start of
    /// every round by a closed loop that nothing is shed from: the median,
    /// and each round's.
    pub capacity_rps: f64,
    pub capacity_rounds: Vec<f64>,
    pub capacity_connections: usize,
    /// Offered orders per second under overload: `factor` × the round's
    /// capacity (the median here).
    pub factor: f64,
    pub offered_rps: f64,
    /// Connections of the overload's open loop (the most in flight at once).
    pub connections: usize,
    /// The admission as shipped first, then the old one.
    pub admissions: Vec<Admission>,
}

/// One command API under the same loads, round after round.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Admission {
    /// `new` (as shipped) or `old` (256 admitted, 2 s to get a connection).
    pub key: String,
    /// Its settings, for people.
    pub label: String,
    /// In the order run.
    pub rounds: Vec<Round>,
}

/// One round of an admission: the unloaded latency, then the overload.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Round {
    /// The capacity measured at the start of the round.
    pub capacity_rps: f64,
    /// Cores the command API and the load generator used meanwhile.
    #[serde(default)]
    pub capacity_cpu: Cpu,
    /// Cores they used during the overload.
    #[serde(default)]
    pub overload_cpu: Cpu,
    /// Orders at half the capacity: the unloaded latency.
    pub unloaded: Phase,
    /// Orders at `factor` × capacity.
    pub overload: Phase,
    /// 503s due in the overload's window, and their latency.
    pub shed: u64,
    pub shed_latency: Latency,
    /// 503s of the whole overload phase answered without `Retry-After`.
    pub shed_without_retry_after: u64,
    /// The command API's own count of requests it shed during the overload,
    /// by reason (`command_api_requests_shed_total`).
    pub shed_counted: BTreeMap<String, f64>,
    /// The database against the answers, over every request of the phase.
    pub written: Written,
}

impl Overload {
    /// The admission `key` (`new` or `old`).
    pub fn admission(&self, key: &str) -> Option<&Admission> {
        self.admissions.iter().find(|a| a.key == key)
    }
}

/// Share of a phase's due requests that may fail before it no longer
/// counts as the load it is stated at.
const FAILED_SHARE: f64 = 0.01;

impl Round {
    /// 201s per second during the overload / the capacity, when the
    /// overload was offered in full.
    pub fn goodput_ratio(&self) -> Option<f64> {
        (self.capacity_rps > 0.0 && self.offered_in_full())
            .then(|| self.overload.achieved_rps / self.capacity_rps)
    }

    /// The accepted orders' p99 under overload / unloaded, when both
    /// phases were what they are stated to be.
    pub fn p99_ratio(&self) -> Option<f64> {
        let unloaded = self.unloaded.latency.p99_ms;
        (unloaded > 0.0 && self.overload.ok > 0 && self.offered_in_full() && self.was_unloaded())
            .then(|| self.overload.latency.p99_ms / unloaded)
    }

    /// Requests due in the overload's window that got no answer: never sent
    /// because every connection was busy, a failed connection, or a timeout.
    pub fn unanswered(&self) -> u64 {
        self.overload.statuses.get(&0).copied().unwrap_or(0)
    }

    /// At most 1% of the overload's due requests went unanswered.
    pub fn offered_in_full(&self) -> bool {
        let due: u64 = self.overload.statuses.values().sum();
        due > 0 && self.unanswered() as f64 <= FAILED_SHARE * due as f64
    }

    /// The phase at half the capacity placed (nearly) every order: a busy
    /// machine can make half the capacity measured earlier an overload too.
    pub fn was_unloaded(&self) -> bool {
        let due = self.unloaded.ok + self.unloaded.errors;
        due > 0 && self.unloaded.errors as f64 <= FAILED_SHARE * due as f64
    }
}

impl Admission {
    /// The median round's goodput ratio, of the rounds offered in full.
    pub fn goodput_ratio(&self) -> Option<f64> {
        median_of(self.rounds.iter().filter_map(Round::goodput_ratio))
    }

    /// The median round's p99 ratio, of the rounds that measured one.
    pub fn p99_ratio(&self) -> Option<f64> {
        median_of(self.rounds.iter().filter_map(Round::p99_ratio))
    }

    /// The median of a figure over every round.
    pub fn median(&self, figure: impl Fn(&Round) -> f64) -> f64 {
        median_of(self.rounds.iter().map(figure)).unwrap_or(0.0)
    }

    /// The database against the answers, over every round.
    pub fn written(&self) -> Written {
        self.rounds.iter().fold(Written::default(), |sum, r| {
            let w = &r.written;
            Written {
                requests: sum.requests + w.requests,
                created: sum.created + w.created,
                refused: sum.refused + w.refused,
                orders: sum.orders + w.orders,
                lost: sum.lost + w.lost,
                written_by_refused: sum.written_by_refused + w.written_by_refused,
                written_otherwise: sum.written_otherwise + w.written_otherwise,
            }
        })
    }

    /// Why no round gave a goodput ratio, or a p99 ratio (`latency`).
    pub fn unmeasured(&self, latency: bool) -> Option<String> {
        let measured = self.rounds.iter().any(|r| {
            if latency {
                r.p99_ratio().is_some()
            } else {
                r.goodput_ratio().is_some()
            }
        });
        if measured || self.rounds.is_empty() {
            return None;
        }
        let short = self.rounds.iter().filter(|r| !r.offered_in_full()).count();
        let busy = self.rounds.iter().filter(|r| !r.was_unloaded()).count();
        Some(format!(
            "of {} rounds, {short} had more than 1% of the overload's orders never sent or unanswered (a lighter \
             load than stated){}",
            self.rounds.len(),
            if latency {
                format!(
                    ", and {busy} had more than 1% of the orders at half the capacity refused or unsent (the \
                     machine was too busy for that rate to be unloaded)"
                )
            } else {
                String::new()
            }
        ))
    }
}

/// The median (the upper one of an even count).
fn median_of(values: impl Iterator<Item = f64>) -> Option<f64> {
    let mut values: Vec<f64> = values.collect();
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied()
}

/// Cores (CPU seconds per second) two processes used during a phase: the
/// rest of the machine's is what PostgreSQL had, with anyone else's work.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
pub struct Cpu {
    /// The command API under load.
    pub api_cores: f64,
    /// The load generator (this process).
    pub load_cores: f64,
}

impl Cpu {
    /// Runs `phase`, measuring the cores process `api` and this one used.
    async fn of<T>(api: Option<u32>, phase: impl std::future::Future<Output = T>) -> (T, Cpu) {
        let cpu = |pid: Option<u32>| pid.and_then(process_cpu_s).unwrap_or(0.0);
        let me = Some(std::process::id());
        let (api_before, load_before, started) = (cpu(api), cpu(me), Instant::now());
        let out = phase.await;
        let seconds = started.elapsed().as_secs_f64().max(f64::EPSILON);
        let used = Cpu {
            api_cores: (cpu(api) - api_before) / seconds,
            load_cores: (cpu(me) - load_before) / seconds,
        };
        (out, used)
    }
}

/// Orders in the database against the answers, for every request of one
/// phase (warm-up included).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Written {
    pub requests: u64,
    /// Answered 201.
    pub created: u64,
    /// Answered 503.
    pub refused: u64,
    /// Orders in the database from the phase's requests.
    pub orders: u64,
    /// Answered 201, but not in the database.
    pub lost: u64,
    /// In the database, but answered 503.
    pub written_by_refused: u64,
    /// In the database, but answered neither 201 nor 503, or not at all.
    pub written_otherwise: u64,
}

impl Written {
    /// Answers that misreport what was written.
    pub fn untrue(&self) -> u64 {
        self.lost + self.written_by_refused + self.written_otherwise
    }
}

/// The admission before it followed the pool.
const OLD_ADMISSION: [(&str, &str); 2] = [
    ("COMMAND_API_CONCURRENCY_LIMIT", "256"),
    ("COMMAND_API_DB_ACQUIRE_TIMEOUT", "2s"),
];

/// Runs the scenario on the write model at `url`, with two command APIs of
/// its own.
pub async fn run(ctx: &Ctx, url: &str) -> Result<Overload> {
    let orders = Arc::new(Orders::reserve(ctx)?);
    let start = |name: &str, settings: &[(&'static str, &str)]| -> Result<Program> {
        let addr = free_addr()?;
        let mut envs = vec![
            ("DATABASE_URL", stack::as_role(url, stack::COMMAND_ROLE)),
            ("COMMAND_API_ADDR", addr.to_string()),
        ];
        envs.extend(settings.iter().map(|(k, v)| (*k, (*v).to_owned())));
        Program::workspace(&ctx.env, name, "command-api", &envs, addr)
    };
    let mut new = start("command-api-admission-new", &[])?;
    let mut old = start("command-api-admission-old", &OLD_ADMISSION)?;
    new.wait_ok("/ready", Duration::from_secs(60)).await?;
    old.wait_ok("/ready", Duration::from_secs(60)).await?;
    let outcome = measure(ctx, url, &orders, &new, &old).await;
    new.stop().await?;
    old.stop().await?;
    outcome
}

async fn measure(
    ctx: &Ctx,
    url: &str,
    orders: &Arc<Orders>,
    new: &Program,
    old: &Program,
) -> Result<Overload> {
    // Capacity: a closed loop on the old admission, which sheds nothing at
    // this many connections, so the figure is what the database carries;
    // taken again at the start of every round, since on a shared machine
    // it drifts.
    let capacity_target = Target {
        key: "overload_capacity".to_owned(),
        label: "command API, orders at saturation".to_owned(),
        addr: old.addr,
        make: orders.counted(),
        connections: ctx.scale.order_connections,
        rates: false,
    };
    let factor = ctx.scale.overload_factor.max(1.0);
    let mut db = PgConnection::connect(url).await?;
    let mut runs: [Vec<(Capacity, Phase, Overloaded)>; 2] = [Vec::new(), Vec::new()];
    let mut capacity_rounds = Vec::new();
    for round in 0..ctx.scale.overload_rounds.max(1) {
        let (saturation, cpu) = Cpu::of(old.pid(), saturate(ctx, &capacity_target, round)).await;
        let capacity = saturation?.achieved_rps;
        ensure!(capacity > 0.0, "no order was placed at saturation");
        capacity_rounds.push(capacity);
        let offered = capacity * factor;
        let measured = Capacity { rps: capacity, cpu };
        let unloaded_new = unloaded(ctx, orders, new.addr, capacity).await?;
        let unloaded_old = unloaded(ctx, orders, old.addr, capacity).await?;
        // The overloads take turns going first, so the work one leaves
        // behind (vacuum, dirty pages) lands on each in turn; a checkpoint
        // before each keeps the rest level.
        let (new_run, old_run) = if round % 2 == 0 {
            let old_run = overloaded(ctx, orders, &mut db, old, offered).await?;
            (
                overloaded(ctx, orders, &mut db, new, offered).await?,
                old_run,
            )
        } else {
            let new_run = overloaded(ctx, orders, &mut db, new, offered).await?;
            (
                new_run,
                overloaded(ctx, orders, &mut db, old, offered).await?,
            )
        };
        runs[0].push((measured, unloaded_new, new_run));
        runs[1].push((measured, unloaded_old, old_run));
    }
    let written = orders.written(&mut db).await?;
    db.close().await?;
    orders.ensure_unique()?;

    let [new_runs, old_runs] = runs;
    let admission = |key: &str, label: &str, runs: Vec<(Capacity, Phase, Overloaded)>| Admission {
        key: key.to_owned(),
        label: label.to_owned(),
        rounds: runs
            .into_iter()
            .map(|(capacity, unloaded, run)| run.round(capacity, unloaded, &written))
            .collect(),
    };
    let admissions = vec![
        admission(
            "new",
            "as shipped: pool 16, admits the pool plus a quarter (20), 500 ms to get a connection",
            new_runs,
        ),
        admission(
            "old",
            "the old admission: pool 16, admits 256, 2 s to get a connection",
            old_runs,
        ),
    ];
    let capacity = median_of(capacity_rounds.iter().copied()).unwrap_or(0.0);
    Ok(Overload {
        capacity_rps: capacity,
        capacity_rounds,
        capacity_connections: ctx.scale.order_connections,
        factor,
        offered_rps: capacity * factor,
        connections: ctx.scale.overload_connections,
        admissions,
    })
}

/// Orders at half the capacity, on a fixed schedule.
async fn unloaded(
    ctx: &Ctx,
    orders: &Arc<Orders>,
    addr: SocketAddr,
    capacity: f64,
) -> Result<Phase> {
    let rate = (capacity * 0.5).max(1.0);
    tracing::info!(%addr, rate = rate as u64, "overload: unloaded latency");
    let label = format!("orders at {rate:.0}/s (half the capacity)");
    super::at_rate_of(ctx, addr, orders.counted(), label, rate).await
}

/// One overload phase and what is needed to judge it.
struct Overloaded {
    outcome: Outcome,
    /// The numbers of the phase's requests: `first..first + count`.
    first: u64,
    count: u64,
    shed_counted: BTreeMap<String, f64>,
    cpu: Cpu,
}

/// A round's capacity, and the cores used to measure it.
#[derive(Clone, Copy)]
struct Capacity {
    rps: f64,
    cpu: Cpu,
}

/// Orders at `offered` per second on `command`, open loop: a request
/// leaves when it is due whatever came of the earlier ones, and a 503 is
/// not retried.
async fn overloaded(
    ctx: &Ctx,
    orders: &Arc<Orders>,
    db: &mut PgConnection,
    command: &Program,
    offered: f64,
) -> Result<Overloaded> {
    sqlx::raw_sql("CHECKPOINT").execute(&mut *db).await?;
    let spec = Spec {
        label: format!("orders at {offered:.0}/s (overload)"),
        mode: Mode::Rate {
            per_second: offered,
            connections: ctx.scale.overload_connections.max(1),
        },
        warmup: ctx.scale.warmup,
        duration: ctx.scale.overload_phase,
        capture: Some("retry-after"),
    };
    // On a fixed schedule request n is due at n / rate: none past the end.
    let count = (offered * (spec.warmup + spec.duration).as_secs_f64()).ceil() as u64 + 1;
    let (first, make) = orders.numbered(count);
    tracing::info!(program = %command.name, rate = offered as u64, "overload");
    let before = shed_counts(command.addr).await;
    let (outcome, cpu) = Cpu::of(command.pid(), load::run(command.addr, make, &spec)).await;
    let outcome = outcome?;
    let after = shed_counts(command.addr).await;
    ensure!(
        outcome.answers.iter().all(|a| a.n < count),
        "the overload sent more requests than its schedule holds"
    );
    let shed_counted = after
        .into_iter()
        .map(|(reason, n)| {
            let was = before.get(&reason).copied().unwrap_or(0.0);
            (reason, n - was)
        })
        .collect();
    Ok(Overloaded {
        outcome,
        first,
        count,
        shed_counted,
        cpu,
    })
}

impl Overloaded {
    /// The round's figures, and its answers set against `written` (the
    /// numbers of every request with an order in the database).
    fn round(self, capacity: Capacity, unloaded: Phase, written: &HashSet<u64>) -> Round {
        let window = self.outcome.window_us;
        let answers = &self.outcome.answers;
        let mut shed_latency = Histogram::<u64>::new_with_bounds(1, 120_000_000, 3).ok();
        let (mut shed, mut shed_without_retry_after) = (0, 0);
        let mut check = Written::default();
        for a in answers {
            let number = self.first + a.n;
            let in_db = written.contains(&number);
            check.requests += 1;
            match a.status {
                201 => {
                    check.created += 1;
                    check.lost += u64::from(!in_db);
                }
                503 => {
                    check.refused += 1;
                    check.written_by_refused += u64::from(in_db);
                    shed_without_retry_after += u64::from(a.header.is_none());
                    if a.started_in(window) {
                        shed += 1;
                        if let Some(h) = shed_latency.as_mut() {
                            let _ = h.record(a.latency_us.max(1));
                        }
                    }
                }
                // Another answer or none: counted from the orders below.
                _ => {}
            }
        }
        // Orders of the phase not answered 201 or 503, including any whose
        // answer is not on record (a load connection abandoned at the end).
        let range = self.first..self.first + self.count;
        check.orders = written.iter().filter(|g| range.contains(g)).count() as u64;
        let answered_orders = check.created - check.lost + check.written_by_refused;
        check.written_otherwise = check.orders - answered_orders.min(check.orders);
        Round {
            capacity_rps: capacity.rps,
            capacity_cpu: capacity.cpu,
            overload_cpu: self.cpu,
            unloaded,
            overload: self.outcome.phase,
            shed,
            shed_latency: shed_latency.as_ref().map(Latency::of).unwrap_or_default(),
            shed_without_retry_after,
            shed_counted: self.shed_counted,
            written: check,
        }
    }
}

/// The requests of the scenario, each numbered: request `g` is an order by
/// user `first_user + g % users` of a course no other request gives that
/// user, so none is refused as already enrolled, and every order in the
/// database names the request that wrote it.
struct Orders {
    first_user: i64,
    users: u64,
    courses: u64,
    /// The next number not taken.
    next: Arc<AtomicU64>,
}

impl Orders {
    /// A block of fresh users of the seeded ones, a twentieth of them: each
    /// places an order of a different course every few seconds at most.
    fn reserve(ctx: &Ctx) -> Result<Self> {
        let users = (ctx.scale.users / 20).max(1);
        let first_user = ctx.next_user.fetch_add(users, Ordering::Relaxed);
        ensure!(
            first_user + users - 1 <= ctx.scale.users,
            "the overload scenario needs {users} fresh users, and the earlier scenarios left fewer"
        );
        Ok(Orders {
            first_user,
            users: users as u64,
            courses: (ctx.scale.courses as u64).max(1),
            next: Arc::new(AtomicU64::new(0)),
        })
    }

    /// The user and course of request `g`.
    fn order(&self, g: u64) -> (i64, i64) {
        let (u, k) = (g % self.users, g / self.users);
        let course = 1 + (k + mix(u) % self.courses) % self.courses;
        (self.first_user + u as i64, course as i64)
    }

    /// The request that placed an order of `course` by `user`.
    fn request(&self, user: i64, course: i64) -> Option<u64> {
        let u = u64::try_from(user - self.first_user).ok()?;
        let c = u64::try_from(course - 1).ok()?;
        (u < self.users && c < self.courses).then(|| {
            let k = (c + self.courses - mix(u) % self.courses) % self.courses;
            k * self.users + u
        })
    }

    /// Every number below this is unique to its request (see `order`).
    fn ensure_unique(&self) -> Result<()> {
        let used = self.next.load(Ordering::Relaxed);
        ensure!(
            used <= self.users * self.courses,
            "the overload scenario sent {used} orders, more than its users can place without repeating a course"
        );
        Ok(())
    }

    fn make(orders: &Arc<Self>, g: u64) -> hyper::Request<load::Body> {
        let (user, course) = orders.order(g);
        let body = format!(r#"{{"user_id":{user},"course_ids":[{course}]}}"#);
        load::post_json(
            "/v1/orders",
            body.into_bytes(),
            &[("idempotency-key", format!("bench-overload-{g}"))],
        )
    }

    /// Requests that take the next number each.
    fn counted(self: &Arc<Self>) -> MakeRequest {
        let orders = self.clone();
        Arc::new(move |_| {
            let g = orders.next.fetch_add(1, Ordering::Relaxed);
            Self::make(&orders, g)
        })
    }

    /// Requests numbered from the returned first number on (request `n` of
    /// the phase is `first + n`), `count` of them reserved.
    fn numbered(self: &Arc<Self>, count: u64) -> (u64, MakeRequest) {
        let first = self.next.fetch_add(count, Ordering::Relaxed);
        let orders = self.clone();
        (
            first,
            Arc::new(move |n| {
                // Past the reservation (never, on a fixed schedule), a
                // number of its own, so no two requests share one.
                let g = if n < count {
                    first + n
                } else {
                    orders.next.fetch_add(1, Ordering::Relaxed)
                };
                Self::make(&orders, g)
            }),
        )
    }

    /// The numbers of the requests whose order is in the database.
    async fn written(&self, db: &mut PgConnection) -> Result<HashSet<u64>> {
        let last = self.first_user + self.users as i64 - 1;
        let rows: Vec<(i64, i64)> = sqlx::query_as(
            "SELECT o.user_id, i.course_id FROM orders o JOIN order_items i ON i.order_id = o.id \
             WHERE o.user_id BETWEEN $1 AND $2",
        )
        .bind(self.first_user)
        .bind(last)
        .fetch_all(&mut *db)
        .await
        .context("reading the overload's orders back")?;
        let mut out = HashSet::with_capacity(rows.len());
        for (user, course) in rows {
            let g = self.request(user, course).with_context(|| {
                format!("an order of course {course} by user {user} that no request placed")
            })?;
            ensure!(out.insert(g), "request {g} placed two orders");
        }
        Ok(out)
    }
}

/// `command_api_requests_shed_total` by reason (empty when unreadable).
async fn shed_counts(addr: SocketAddr) -> BTreeMap<String, f64> {
    let Ok((200, body)) = load::get(addr, "/metrics").await else {
        return BTreeMap::new();
    };
    let mut out = BTreeMap::new();
    for line in String::from_utf8_lossy(&body).lines() {
        let Some(rest) = line.strip_prefix("command_api_requests_shed_total{") else {
            continue;
        };
        let Some((labels, value)) = rest.split_once("} ") else {
            continue;
        };
        let reason = labels
            .split(',')
            .find_map(|l| l.strip_prefix("reason=\""))
            .map(|r| r.trim_end_matches('"'))
            .unwrap_or("");
        if let Ok(value) = value.trim().parse::<f64>() {
            *out.entry(reason.to_owned()).or_insert(0.0) += value;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn orders(users: u64, courses: u64) -> Orders {
        Orders {
            first_user: 1_001,
            users,
            courses,
            next: Arc::new(AtomicU64::new(0)),
        }
    }

    #[test]
    fn every_request_is_its_own_user_and_course_and_is_found_again() {
        let o = orders(7, 5);
        let mut pairs = HashSet::new();
        for g in 0..35 {
            let (user, course) = o.order(g);
            assert!((1_001..1_008).contains(&user), "{user}");
            assert!((1..=5).contains(&course), "{course}");
            assert!(pairs.insert((user, course)), "request {g} repeats a pair");
            assert_eq!(o.request(user, course), Some(g));
        }
        assert_eq!(o.request(1_000, 1), None);
        assert_eq!(o.request(1_008, 1), None);
        assert_eq!(o.request(1_001, 6), None);
    }

    #[test]
    fn answers_are_set_against_the_orders_written() {
        let answer = |n: u64, status: u16, header: Option<&str>| load::Answer {
            n,
            start_us: 2_000_000,
            done_us: 2_001_000,
            latency_us: 1_000,
            status,
            header: header.map(str::to_owned),
        };
        let phase = |ok| Phase {
            label: String::new(),
            mode: "fixed rate".into(),
            connections: 1,
            offered_rps: Some(1.0),
            achieved_rps: 1.0,
            ok,
            errors: 0,
            statuses: BTreeMap::new(),
            duration_s: 1.0,
            latency: Latency::default(),
            timeline: Vec::new(),
        };
        let run = Overloaded {
            outcome: Outcome {
                phase: phase(2),
                captured: Vec::new(),
                answers: vec![
                    answer(0, 201, None),
                    answer(1, 201, None),
                    answer(2, 503, Some("1")),
                    answer(3, 503, None),
                    answer(4, 0, None),
                ],
                window_us: (1_000_000, 3_000_000),
            },
            first: 100,
            count: 6,
            shed_counted: BTreeMap::new(),
            cpu: Cpu::default(),
        };
        // 101 was answered 201 but is missing; 102 was refused but written.
        // 200 belongs to another phase.
        let written: HashSet<u64> = [100, 102, 104, 200].into();
        let capacity = Capacity {
            rps: 1.0,
            cpu: Cpu::default(),
        };
        let a = run.round(capacity, phase(1), &written);
        assert_eq!(a.shed, 2);
        assert_eq!(a.shed_without_retry_after, 1);
        let w = a.written;
        assert_eq!((w.requests, w.created, w.refused, w.orders), (5, 2, 2, 3));
        assert_eq!(
            (w.lost, w.written_by_refused, w.written_otherwise),
            (1, 1, 1)
        );
        assert_eq!(w.untrue(), 3);
    }

    /// A phase of `ok` answers and `failed` with no answer, its p99 `p99_ms`.
    fn phase(achieved_rps: f64, ok: u64, failed: u64, p99_ms: f64) -> Phase {
        Phase {
            label: String::new(),
            mode: "fixed rate".into(),
            connections: 1,
            offered_rps: Some(1.0),
            achieved_rps,
            ok,
            errors: failed,
            statuses: [(201, ok), (0, failed)].into(),
            duration_s: 1.0,
            latency: Latency {
                p99_ms,
                ..Latency::default()
            },
            timeline: Vec::new(),
        }
    }

    fn round(unloaded: Phase, overload: Phase) -> Round {
        Round {
            capacity_rps: 100.0,
            capacity_cpu: Cpu::default(),
            overload_cpu: Cpu::default(),
            unloaded,
            overload,
            shed: 0,
            shed_latency: Latency::default(),
            shed_without_retry_after: 0,
            shed_counted: BTreeMap::new(),
            written: Written::default(),
        }
    }

    #[test]
    fn a_round_that_was_not_the_load_it_states_gives_no_ratio_and_says_why() {
        let calm = || phase(50.0, 500, 0, 10.0);
        let admission = Admission {
            key: "new".into(),
            label: String::new(),
            rounds: vec![
                round(calm(), phase(90.0, 900, 0, 20.0)),
                // Half the capacity was an overload too: no p99 ratio.
                round(phase(40.0, 400, 100, 300.0), phase(80.0, 800, 0, 30.0)),
                // The client could not send its load: no ratio at all.
                round(calm(), phase(10.0, 100, 50, 90.0)),
            ],
        };
        let goodput: Vec<_> = admission.rounds.iter().map(Round::goodput_ratio).collect();
        assert_eq!(goodput, [Some(0.9), Some(0.8), None]);
        let p99: Vec<_> = admission.rounds.iter().map(Round::p99_ratio).collect();
        assert_eq!(p99, [Some(2.0), None, None]);
        // Medians of what was measured (the upper of two).
        assert_eq!(admission.goodput_ratio(), Some(0.9));
        assert_eq!(admission.p99_ratio(), Some(2.0));
        assert!(admission.unmeasured(true).is_none());

        let busy = Admission {
            rounds: admission.rounds[1..].to_vec(),
            ..admission
        };
        assert_eq!(busy.p99_ratio(), None);
        let why = busy.unmeasured(true).expect("a reason");
        assert!(why.starts_with("of 2 rounds, 1 had more than 1%"), "{why}");
        assert!(
            why.contains("and 1 had more than 1% of the orders at half the capacity"),
            "{why}"
        );
        assert!(busy.unmeasured(false).is_none());
    }
}
