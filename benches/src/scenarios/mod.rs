//! The scenarios, each next to its baseline: reads, orders, freshness, the
//! projector against pg_recvlogical, what a view costs in Redis, how fast a
//! standby projector takes over, what admission keeps under overload, a
//! sale's reads and orders together against each alone, and the all-in-one
//! process against the three processes.

pub mod all_in_one;
pub mod freshness;
pub mod orders;
pub mod overload;
pub mod reads;
pub mod rush;
pub mod storage;
pub mod stream;
pub mod takeover;

pub use crate::cpu::{machine_cpu_s, parent_pid, postgres_cpu_s, process_cpu_s};

use std::{
    net::SocketAddr,
    sync::{atomic::AtomicI64, Arc},
    time::Duration,
};

use anyhow::Result;
use serde::{Deserialize, Serialize};

use crate::{
    load::{self, MakeRequest, Mode, Phase, Spec},
    scale::Scale,
    stack::Env,
    tools,
};

/// The generation live under `keys`, by its marker.
pub(crate) async fn live_generation(
    redis: &fred::prelude::Client,
    keys: &views::Keys,
) -> Result<u64> {
    use anyhow::Context;
    use fred::prelude::KeysInterface;
    let marker: Option<String> = redis.get(keys.generation_marker()).await?;
    let marker = marker.context("no live generation: is the projector running?")?;
    Ok(serde_json::from_str::<views::GenerationMarker>(&marker)?.generation)
}

/// What every scenario gets.
pub struct Ctx {
    pub env: Env,
    pub scale: Scale,
    /// The next user to place an order: one fresh user per order, so no
    /// order meets an enrollment it would conflict with.
    pub next_user: Arc<AtomicI64>,
    /// Profile the paths behind the ratios with perf (full runs, when perf works).
    pub profile: bool,
}

/// One thing measured at saturation and, optionally, at 50% and 90% of
/// that maximum on a fixed schedule.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Subject {
    /// Stable key the ratios refer to.
    pub key: String,
    /// What it is, for people.
    pub label: String,
    /// The median round at saturation.
    pub saturation: Phase,
    /// Throughput of every saturation round, in the order run.
    pub rounds: Vec<f64>,
    /// What the database server did in each saturation round (write
    /// scenarios), in the order run.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub activity: Vec<crate::steady::Activity>,
    pub at_50: Option<Phase>,
    pub at_90: Option<Phase>,
}

impl Subject {
    /// Throughput at saturation (the median round).
    pub fn max_rps(&self) -> f64 {
        self.saturation.achieved_rps
    }

    /// The fastest round over the slowest: 1 when the rounds agree.
    pub fn spread(&self) -> Option<f64> {
        rounds_spread(&self.rounds)
    }
}

/// The largest of `rounds` over the smallest (`None` without a round above 0).
pub fn rounds_spread(rounds: &[f64]) -> Option<f64> {
    let min = rounds.iter().copied().fold(f64::INFINITY, f64::min);
    let max = rounds.iter().copied().fold(0.0, f64::max);
    (min > 0.0 && min.is_finite()).then(|| max / min)
}

/// What a subject sends where, and how.
#[derive(Clone)]
pub struct Target {
    pub key: String,
    pub label: String,
    pub addr: SocketAddr,
    pub make: MakeRequest,
    /// Connections at saturation.
    pub connections: usize,
    /// Also measure latency at 50% and 90% of the maximum.
    pub rates: bool,
}

/// One saturation round of `target`.
pub async fn saturate(ctx: &Ctx, target: &Target, round: usize) -> Result<Phase> {
    tracing::info!(key = %target.key, round, "saturation");
    Ok(load::run(
        target.addr,
        target.make.clone(),
        &Spec {
            label: format!("{}: saturation", target.label),
            mode: Mode::Saturate {
                connections: target.connections,
            },
            warmup: ctx.scale.warmup,
            duration: ctx.scale.round,
            capture: None,
        },
    )
    .await?
    .phase)
}

/// The median of `rounds` (by throughput) and every round's throughput.
pub fn median(mut rounds: Vec<Phase>) -> Result<(Phase, Vec<f64>)> {
    let all: Vec<f64> = rounds.iter().map(|p| p.achieved_rps).collect();
    rounds.sort_by(|a, b| a.achieved_rps.total_cmp(&b.achieved_rps));
    let mid = rounds.len() / 2;
    let phase = rounds
        .into_iter()
        .nth(mid)
        .ok_or_else(|| anyhow::anyhow!("no saturation round ran"))?;
    Ok((phase, all))
}

/// Saturation rounds of every target, the targets taking turns; then, for
/// targets that ask for it, latency at 50% and 90% of the median maximum.
pub async fn measure_all(ctx: &Ctx, targets: &[Target]) -> Result<Vec<Subject>> {
    let mut rounds: Vec<Vec<Phase>> = vec![Vec::new(); targets.len()];
    for round in 0..ctx.scale.rounds.max(1) {
        for (i, target) in targets.iter().enumerate() {
            rounds[i].push(saturate(ctx, target, round).await?);
        }
    }
    let mut out = Vec::with_capacity(targets.len());
    for (target, rounds) in targets.iter().zip(rounds) {
        let (saturation, all) = median(rounds)?;
        let (at_50, at_90) = if target.rates {
            let at_50 = at_rate(ctx, target, saturation.achieved_rps * 0.5, "50% of max").await?;
            let at_90 = at_rate(ctx, target, saturation.achieved_rps * 0.9, "90% of max").await?;
            (Some(at_50), Some(at_90))
        } else {
            (None, None)
        };
        out.push(Subject {
            key: target.key.clone(),
            label: target.label.clone(),
            saturation,
            rounds: all,
            activity: Vec::new(),
            at_50,
            at_90,
        });
    }
    Ok(out)
}

/// The median (the upper one of an even count).
pub(crate) fn median_of(values: impl Iterator<Item = f64>) -> Option<f64> {
    let mut values: Vec<f64> = values.collect();
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied()
}

/// `target` on a fixed schedule of `rate` requests per second.
pub async fn at_rate(ctx: &Ctx, target: &Target, rate: f64, what: &str) -> Result<Phase> {
    tracing::info!(key = %target.key, rate = rate as u64, "fixed rate");
    at_rate_of(
        ctx,
        target.addr,
        target.make.clone(),
        format!("{}: {what}", target.label),
        rate,
    )
    .await
}

/// `make`'s requests to `addr` at `rate` a second, on a fixed schedule.
pub async fn at_rate_of(
    ctx: &Ctx,
    addr: SocketAddr,
    make: MakeRequest,
    label: String,
    rate: f64,
) -> Result<Phase> {
    let rate = rate.max(1.0);
    Ok(load::run(
        addr,
        make,
        &Spec {
            label,
            mode: Mode::Rate {
                per_second: rate,
                connections: ctx.scale.rate_connections,
            },
            warmup: ctx.scale.warmup,
            duration: ctx.scale.rate_phase,
            capture: None,
        },
    )
    .await?
    .phase)
}

/// CPU seconds Redis has used so far (`INFO cpu`).
pub async fn redis_cpu_s(redis: &fred::prelude::Client) -> Option<f64> {
    use fred::prelude::*;
    let info: String = redis.info(Some(fred::types::InfoKind::Cpu)).await.ok()?;
    let field = |name: &str| {
        info.lines().find_map(|l| {
            l.strip_prefix(name)?
                .strip_prefix(':')?
                .trim()
                .parse::<f64>()
                .ok()
        })
    };
    Some(field("used_cpu_user")? + field("used_cpu_sys")?)
}

/// A well-mixed pseudo-random number for request `n` (the same every run).
pub fn mix(n: u64) -> u64 {
    crate::corpus::SplitMix(n ^ 0xA5A5_5A5A).next_u64()
}

/// Seconds each profile samples.
const PROFILE_SECONDS: u64 = 6;

/// Saturates `addr` with `make` while perf samples `pid` (or the machine).
pub async fn profile_load(
    ctx: &Ctx,
    pid: Option<u32>,
    what: &str,
    addr: SocketAddr,
    make: load::MakeRequest,
    connections: usize,
) -> Result<tools::Profile> {
    tracing::info!(what, "profiling");
    let spec = load::Spec {
        label: format!("profile: {what}"),
        mode: load::Mode::Saturate { connections },
        warmup: Duration::from_millis(500),
        duration: Duration::from_secs(PROFILE_SECONDS),
        capture: None,
    };
    let (_, profile) = tools::profile_while(
        pid,
        PROFILE_SECONDS,
        what,
        &ctx.env.log_dir,
        load::run(addr, make, &spec),
    )
    .await?;
    Ok(profile)
}
