//! All-in-one: the three programs in one process against the same three as
//! separate processes, each deployment on its own copy of the same data:
//! reads, orders at saturation, commit to visible at a fixed rate, and the
//! cores each process used.
//!
//! Both deployments stay up; in each round they take turns, one running load
//! while the other idles, and the first to go alternates. Each figure is the
//! median of a deployment's rounds.

use std::{
    net::SocketAddr,
    sync::{atomic::AtomicI64, Arc},
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use fred::prelude::Client;
use serde::{Deserialize, Serialize};

use super::{
    freshness::{self, Freshness, Visible},
    median_of,
    orders::{order_requests, spread_courses},
    process_cpu_s,
    reads::gets,
    rush::{carried, metered, Cores, Pids},
    saturate, Ctx, Target,
};
use crate::load::{self, Phase};

/// One deployment, running: where it answers and what runs it.
pub struct Deployment {
    /// `one` (the all-in-one) or `three` (three processes).
    pub key: &'static str,
    pub label: String,
    pub command: SocketAddr,
    pub query: SocketAddr,
    /// Its own copy of the write model (the superuser's URL).
    pub database_url: String,
    /// Its views' key prefix (and its slot's name).
    pub prefix: String,
    pub pids: Pids,
    /// From the projector's start to its views built.
    pub initial_build_s: f64,
}

/// One deployment's turn in one round.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Round {
    /// The hot course's page, warmed, at saturation.
    pub hot: Phase,
    pub hot_cores: Cores,
    /// The same page read from Redis (a reached read-your-writes token).
    pub hot_redis: Phase,
    pub hot_redis_cores: Cores,
    /// Orders on the fixed schedule and their commit-to-visible lags.
    pub fresh_orders: Phase,
    pub freshness: Freshness,
    pub freshness_cores: Cores,
    /// Orders spread over the catalogue at saturation.
    pub orders: Phase,
    pub orders_cores: Cores,
    /// Cores the other deployment's programs used meanwhile, idle: what
    /// it took from this turn.
    #[serde(default)]
    pub other_idle_cores: Option<f64>,
}

/// Everything one deployment measured.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Measured {
    pub key: String,
    pub label: String,
    pub initial_build_s: f64,
    pub rounds: Vec<Round>,
}

impl Measured {
    /// The median of a figure over the rounds.
    pub fn median(&self, figure: impl Fn(&Round) -> f64) -> f64 {
        median_of(self.rounds.iter().map(figure)).unwrap_or(0.0)
    }

    /// The median of the lag p99s of the rounds that carried the rate.
    pub fn freshness_p99(&self) -> Option<f64> {
        median_of(
            self.rounds
                .iter()
                .filter(|r| r.freshness.orders > 0 && carried(&r.fresh_orders))
                .map(|r| r.freshness.p99_ms),
        )
    }

    /// The median of each process's cores in one phase of the rounds.
    pub fn cores(&self, of: impl Fn(&Round) -> Cores) -> Cores {
        Cores::median(&self.rounds.iter().map(of).collect::<Vec<_>>())
    }

    /// Rounds whose orders on the schedule had more than 1% failed.
    pub fn short_rounds(&self) -> usize {
        self.rounds
            .iter()
            .filter(|r| !carried(&r.fresh_orders))
            .count()
    }
}

/// The two deployments side by side.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AllInOne {
    /// Orders per second of the freshness phases.
    pub order_rate: f64,
    pub read_connections: usize,
    pub order_connections: usize,
    pub deployments: Vec<Measured>,
}

impl AllInOne {
    pub fn deployment(&self, key: &str) -> Option<&Measured> {
        self.deployments.iter().find(|d| d.key == key)
    }

    /// A figure of the all-in-one over the same of the three processes.
    pub fn ratio(&self, figure: impl Fn(&Measured) -> Option<f64>) -> Option<f64> {
        let one = figure(self.deployment("one")?)?;
        let three = figure(self.deployment("three")?)?;
        (three > 0.0).then(|| one / three)
    }
}

/// What one deployment's turn sends where.
struct Turn<'a> {
    deployment: &'a Deployment,
    hot: Target,
    hot_redis: Target,
    orders: Target,
    /// The orders of the freshness phase, from the same users as `orders`.
    fresh_orders: load::MakeRequest,
    watermark: Visible,
}

/// Longest wait for a deployment's projector to catch up before its turn.
const CATCH_UP_LIMIT: Duration = Duration::from_secs(300);

/// Runs the rounds; the deployments are up, their views built.
pub async fn run(ctx: &Ctx, deployments: &[Deployment]) -> Result<AllInOne> {
    let scale = &ctx.scale;
    // The freshness scenario's middle rate: both deployments must carry it
    // for the lags to compare, and on a shared 2-core machine orders
    // saturate near its top rate.
    let rate = median_of(scale.freshness_rates.iter().copied())
        .unwrap_or(1.0)
        .max(1.0);
    let redis = ctx.env.redis().await?;
    let mut turns = Vec::with_capacity(deployments.len());
    for d in deployments {
        turns.push(turn(ctx, &redis, d).await?);
    }
    let rounds = scale.rounds.max(1);
    let mut measured: Vec<Vec<Round>> = vec![Vec::with_capacity(rounds); turns.len()];
    for round in 0..rounds {
        for k in 0..turns.len() {
            let i = (k + round) % turns.len();
            let turn = &turns[i];
            tracing::info!(round, deployment = turn.deployment.key, "all-in-one");
            let others: Vec<u32> = deployments
                .iter()
                .filter(|d| d.key != turn.deployment.key)
                .flat_map(|d| d.pids.programs())
                .collect();
            measured[i].push(run_turn(ctx, &redis, turn, &others, round, rate).await?);
        }
    }
    Ok(AllInOne {
        order_rate: rate,
        read_connections: scale.read_connections,
        order_connections: scale.order_connections,
        deployments: deployments
            .iter()
            .zip(measured)
            .map(|(d, rounds)| Measured {
                key: d.key.to_owned(),
                label: d.label.clone(),
                initial_build_s: d.initial_build_s,
                rounds,
            })
            .collect(),
    })
}

/// `d`'s targets: its hot page (with a token its projection has reached
/// for the Redis path) and its orders.
async fn turn<'a>(ctx: &Ctx, redis: &Client, d: &'a Deployment) -> Result<Turn<'a>> {
    let (status, page) = load::get(d.query, "/v1/courses/1").await?;
    anyhow::ensure!(
        status == 200,
        "{}: the query API answered {status} for the hot course",
        d.key
    );
    let reached = serde_json::from_slice::<serde_json::Value>(&page)?["lsn"]
        .as_str()
        .context("the hot course's page has no lsn")?
        .to_owned();
    // With a token, no in-process copy answers: each read goes to Redis.
    let hot_redis_path = format!("/v1/courses/1?min_lsn={reached}");
    // Each deployment has its own copy of the database, taken before any
    // order: every user above the seeded enrollments' pool is fresh in it.
    let users = Arc::new(AtomicI64::new(ctx.scale.enrolled_pool() + 1));
    let target = |key: &str, what: &str, addr, make, connections| Target {
        key: format!("{}_{key}", d.key),
        label: format!("{}, {what}", d.label),
        addr,
        make,
        connections,
        rates: false,
    };
    let read_connections = ctx.scale.read_connections;
    Ok(Turn {
        deployment: d,
        hot: target(
            "hot",
            "hot course (warmed read)",
            d.query,
            gets(|_| "/v1/courses/1".to_owned()),
            read_connections,
        ),
        hot_redis: target(
            "hot_redis",
            "hot course, Redis path (read-your-writes token)",
            d.query,
            gets(move |_| hot_redis_path.clone()),
            read_connections,
        ),
        orders: target(
            "orders",
            "orders spread at saturation",
            d.command,
            order_requests(users.clone(), spread_courses(&ctx.scale)),
            ctx.scale.order_connections,
        ),
        fresh_orders: order_requests(users, spread_courses(&ctx.scale)),
        watermark: Visible::Watermark {
            redis: redis.clone(),
            key: freshness::watermark_key(redis, &d.prefix).await?,
        },
    })
}

/// One deployment's turn: caught up first, then the reads, the orders on
/// the schedule and the orders at saturation (last, so their backlog is
/// drained before the next turn of either deployment).
async fn run_turn(
    ctx: &Ctx,
    redis: &Client,
    turn: &Turn<'_>,
    others: &[u32],
    round: usize,
    rate: f64,
) -> Result<Round> {
    let d = turn.deployment;
    freshness::catch_up(ctx, &d.database_url, &d.prefix, CATCH_UP_LIMIT)
        .await
        .with_context(|| format!("{} catching up", d.key))?;
    let idle = |pids: &[u32]| {
        pids.iter()
            .map(|&pid| process_cpu_s(pid))
            .sum::<Option<f64>>()
    };
    let (idle_before, started) = (idle(others), Instant::now());
    let (hot, hot_cores) = metered(&d.pids, redis, saturate(ctx, &turn.hot, round)).await;
    let (hot_redis, hot_redis_cores) =
        metered(&d.pids, redis, saturate(ctx, &turn.hot_redis, round)).await;
    let (fresh, freshness_cores) = metered(
        &d.pids,
        redis,
        freshness::at_rate(
            ctx,
            d.command,
            turn.fresh_orders.clone(),
            turn.watermark.clone(),
            rate,
        ),
    )
    .await;
    let (fresh_orders, freshness) = fresh?;
    let (orders, orders_cores) = metered(&d.pids, redis, saturate(ctx, &turn.orders, round)).await;
    let other_idle_cores = match (idle_before, idle(others)) {
        (Some(a), Some(b)) if !others.is_empty() => {
            Some((b - a).max(0.0) / started.elapsed().as_secs_f64().max(f64::EPSILON))
        }
        _ => None,
    };
    Ok(Round {
        hot: hot?,
        hot_cores,
        hot_redis: hot_redis?,
        hot_redis_cores,
        fresh_orders,
        freshness,
        freshness_cores,
        orders: orders?,
        orders_cores,
        other_idle_cores,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scenarios::rush::tests::{lags, phase};

    /// A turn: `reads` req/s on both read paths, `orders` orders/s at
    /// saturation, and `failed` of the scheduled orders failed.
    fn round(reads: f64, orders: f64, failed: u64, lag_p99_ms: f64) -> Round {
        Round {
            hot: phase(reads, 1_000, 0, 1.0),
            hot_cores: Cores::default(),
            hot_redis: phase(reads / 2.0, 1_000, 0, 1.0),
            hot_redis_cores: Cores::default(),
            fresh_orders: phase(1_000.0, 8_000 - failed, failed, 5.0),
            freshness: lags(8_000 - failed, lag_p99_ms),
            freshness_cores: Cores::default(),
            orders: phase(orders, 1_000, 0, 20.0),
            orders_cores: Cores::default(),
            other_idle_cores: Some(0.01),
        }
    }

    fn deployments(one: Vec<Round>, three: Vec<Round>) -> AllInOne {
        let measured = |key: &str, rounds| Measured {
            key: key.to_owned(),
            label: key.to_owned(),
            initial_build_s: 3.0,
            rounds,
        };
        AllInOne {
            order_rate: 1_000.0,
            read_connections: 32,
            order_connections: 32,
            deployments: vec![measured("three", three), measured("one", one)],
        }
    }

    #[test]
    fn a_ratio_divides_the_all_in_ones_median_round_by_the_three_processes() {
        let x = deployments(
            vec![
                round(900.0, 1_400.0, 0, 8.0),
                round(700.0, 1_000.0, 0, 9.0),
                round(800.0, 1_200.0, 0, 30.0),
            ],
            vec![
                round(1_000.0, 1_500.0, 0, 6.0),
                round(1_000.0, 1_500.0, 0, 7.0),
            ],
        );
        let hot = x.ratio(|d| Some(d.median(|r| r.hot.achieved_rps)));
        assert_eq!(hot, Some(0.8));
        let orders = x.ratio(|d| Some(d.median(|r| r.orders.achieved_rps)));
        assert_eq!(orders, Some(0.8));
        assert_eq!(
            x.deployment("one").and_then(Measured::freshness_p99),
            Some(9.0)
        );
        // The upper median of an even count.
        assert_eq!(x.ratio(Measured::freshness_p99), Some(9.0 / 7.0));
    }

    #[test]
    fn rounds_whose_scheduled_orders_were_shed_give_no_lag() {
        let x = deployments(
            vec![
                round(900.0, 1_400.0, 500, 8.0),
                round(900.0, 1_400.0, 0, 12.0),
            ],
            vec![round(1_000.0, 1_500.0, 500, 6.0)],
        );
        let one = x.deployment("one").expect("the all-in-one");
        assert_eq!(one.freshness_p99(), Some(12.0));
        assert_eq!(one.short_rounds(), 1);
        assert_eq!(
            x.deployment("three").and_then(Measured::freshness_p99),
            None
        );
        assert_eq!(x.ratio(Measured::freshness_p99), None);
    }
}
