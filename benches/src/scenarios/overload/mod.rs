//! Overload: orders offered at three times what the command API carries,
//! against its admission as shipped (about as many requests as the pool
//! has connections, a short wait for one) with the pool sized to the
//! database's cores as the README says and with the default pool, and as it was
//! (256 admitted, 2 s to wait), side by side in one run: the goodput, the
//! accepted orders' latency, how fast the rest were refused, and whether
//! every answer told the truth about what was written.

use std::{
    collections::{BTreeMap, HashSet},
    net::SocketAddr,
    sync::Arc,
    time::Duration,
};

use anyhow::{ensure, Result};
use hdrhistogram::Histogram;
use sqlx::{Connection, PgConnection};

mod figures;
mod orders;

pub use figures::{Admission, Cpu, Overload, Round, Written};
use orders::Orders;

use super::{median_of, saturate, Ctx, Target};
use crate::{
    load::{self, Latency, Mode, Outcome, Phase, Spec},
    stack::{self, free_addr, Program},
};

/// The admission before it followed the pool.
const OLD_ADMISSION: [(&str, &str); 2] = [
    ("COMMAND_API_CONCURRENCY_LIMIT", "256"),
    ("COMMAND_API_DB_ACQUIRE_TIMEOUT", "2s"),
];

/// The pool the README's sizing rule gives a database server with `cores`
/// cores: four per core. More connections than the server runs at once
/// queue inside it, where no admission limit sees the wait; fewer leave it
/// idle while answers travel and commits wait on the disk.
pub fn sized_pool(cores: usize) -> usize {
    4 * cores.max(1)
}

/// One command API of the scenario and its settings.
struct Subject {
    key: &'static str,
    label: String,
    settings: Vec<(&'static str, String)>,
}

/// Runs the scenario on the write model at `url`, with a command API of its
/// own per admission: the one the goals judge first, the old one last.
pub async fn run(ctx: &Ctx, url: &str) -> Result<Overload> {
    let orders = Arc::new(Orders::reserve(ctx)?);
    // The database runs on this machine: its cores are ours.
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    let pool = sized_pool(cores);
    let subjects = [
        Subject {
            key: "sized",
            label: format!(
                "as shipped with the pool sized as the README says (four per core of the database's {cores}: \
                 {pool}), admitting the pool plus a quarter ({}), 500 ms to get a connection",
                pool + (pool / 4).max(1)
            ),
            settings: vec![("COMMAND_API_DB_POOL_SIZE", pool.to_string())],
        },
        Subject {
            key: "default",
            label: "as shipped: the default pool of 16, admitting the pool plus a quarter (20), 500 ms to get a \
                    connection"
                .to_owned(),
            settings: Vec::new(),
        },
        Subject {
            key: "old",
            label: "the old admission: pool 16, admits 256, 2 s to get a connection".to_owned(),
            settings: OLD_ADMISSION.iter().map(|(k, v)| (*k, (*v).to_owned())).collect(),
        },
    ];
    let mut programs = Vec::new();
    for subject in &subjects {
        let addr = free_addr()?;
        let mut envs = vec![
            ("DATABASE_URL", stack::as_role(url, stack::COMMAND_ROLE)),
            ("COMMAND_API_ADDR", addr.to_string()),
        ];
        envs.extend(subject.settings.iter().cloned());
        let name = format!("command-api-admission-{}", subject.key);
        programs.push(Program::workspace(
            &ctx.env,
            &name,
            "command-api",
            &envs,
            addr,
        )?);
    }
    for program in &mut programs {
        program.wait_ok("/ready", Duration::from_secs(60)).await?;
    }
    let outcome = measure(ctx, url, &orders, &subjects, &programs).await;
    for program in programs {
        program.stop().await?;
    }
    outcome
}

async fn measure(
    ctx: &Ctx,
    url: &str,
    orders: &Arc<Orders>,
    subjects: &[Subject],
    programs: &[Program],
) -> Result<Overload> {
    // The old admission is last: it measures the capacity.
    let old = programs.last().expect("the old admission");
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
    let mut runs: Vec<Vec<(Capacity, Phase, Overloaded)>> =
        programs.iter().map(|_| Vec::new()).collect();
    let mut capacity_rounds = Vec::new();
    for round in 0..ctx.scale.overload_rounds.max(1) {
        let (saturation, cpu) = Cpu::of(old.pid(), saturate(ctx, &capacity_target, round)).await;
        let capacity = saturation?.achieved_rps;
        ensure!(capacity > 0.0, "no order was placed at saturation");
        capacity_rounds.push(capacity);
        let offered = capacity * factor;
        let measured = Capacity { rps: capacity, cpu };
        let mut unloaded_runs = Vec::new();
        for program in programs {
            unloaded_runs.push(unloaded(ctx, orders, program.addr, capacity).await?);
        }
        // The overloads take turns going first, so the work one leaves
        // behind (vacuum, dirty pages) lands on each in turn; a checkpoint
        // before each keeps the rest level.
        let mut overloads: Vec<Option<Overloaded>> = programs.iter().map(|_| None).collect();
        for k in 0..programs.len() {
            let i = (k + round) % programs.len();
            overloads[i] = Some(overloaded(ctx, orders, &mut db, &programs[i], offered).await?);
        }
        for ((run, unloaded), overload) in runs.iter_mut().zip(unloaded_runs).zip(overloads) {
            run.push((measured, unloaded, overload.expect("every admission ran")));
        }
    }
    let written = orders.written(&mut db).await?;
    db.close().await?;
    orders.ensure_unique()?;

    let admissions = subjects
        .iter()
        .zip(runs)
        .map(|(subject, runs)| Admission {
            key: subject.key.to_owned(),
            label: subject.label.clone(),
            rounds: runs
                .into_iter()
                .map(|(capacity, unloaded, run)| run.round(capacity, unloaded, &written))
                .collect(),
        })
        .collect();
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
}
