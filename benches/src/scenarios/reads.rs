//! Reads of the same course page from the bare HTTP ceiling, the query API
//! and the monolith; the cart against a single page at the same rate.

use std::{net::SocketAddr, sync::Arc};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use super::{at_rate, measure_all, mix, process_cpu_s, redis_cpu_s, Ctx, Subject, Target};
use crate::load::{self, get_request, MakeRequest, Mode, Phase, Spec};

/// Where the read paths listen, and the processes that answer them.
pub struct ReadTargets {
    pub query: SocketAddr,
    pub query_pid: Option<u32>,
    pub unwarmed_pid: Option<u32>,
    pub bare_pid: Option<u32>,
    /// A query API with pre-warming off, for the Redis-path reads alone.
    pub unwarmed: SocketAddr,
    /// A read-your-writes token the projection has reached (the hot
    /// course's `lsn`): a read carrying it reads Redis itself.
    pub reached_lsn: String,
    pub bare: SocketAddr,
    pub monolith: SocketAddr,
}

/// CPU spent per read of one subject at a fixed rate, by process: user
/// and system time over the reads answered.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ReadCpu {
    pub key: String,
    pub label: String,
    pub rate: f64,
    pub answered: u64,
    /// The process answering the reads (the bare server or a query API).
    pub server_us: f64,
    /// Redis; absent for the reads that do not reach it.
    pub redis_us: Option<f64>,
    /// This process: the load generator.
    pub load_us: f64,
}

impl ReadCpu {
    pub fn total_us(&self) -> f64 {
        self.server_us + self.redis_us.unwrap_or(0.0) + self.load_us
    }
}

/// The cart and a single page, at the same fixed rate.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CartComparison {
    pub rate: f64,
    pub cart: Phase,
    pub single: Phase,
}

/// GETs of the path `paths` names for each request.
pub(crate) fn gets(paths: impl Fn(u64) -> String + Send + Sync + 'static) -> MakeRequest {
    Arc::new(move |n| get_request(&paths(n)))
}

/// Every read subject, then the cart comparison, then the CPU per read of
/// the page's paths.
pub async fn run(
    ctx: &Ctx,
    at: &ReadTargets,
) -> Result<(Vec<Subject>, CartComparison, Vec<ReadCpu>)> {
    let scale = &ctx.scale;
    let courses = scale.courses as u64;
    let random = move |n: u64| 1 + mix(n) % courses;
    let cart_ids = scale.cart_ids();
    let cart_path = format!(
        "/v1/courses?ids={}",
        cart_ids
            .iter()
            .map(i64::to_string)
            .collect::<Vec<_>>()
            .join(",")
    );
    // With a token, no in-process copy answers and no answer is shared:
    // each request waits for its own round trip to Redis.
    let hot_redis_path = format!("/v1/courses/1?min_lsn={}", at.reached_lsn);
    let target = |key: &str, label: &str, addr, make, rates| Target {
        key: key.to_owned(),
        label: label.to_owned(),
        addr,
        make,
        connections: scale.read_connections,
        rates,
    };
    let targets = vec![
        target(
            "bare",
            "bare axum, same bytes (HTTP ceiling)",
            at.bare,
            gets(|_| "/page".to_owned()),
            true,
        ),
        target(
            "redis_get",
            "bare axum, one Redis GET of the stored page (one-round-trip ceiling)",
            at.bare,
            gets(|_| "/stored".to_owned()),
            true,
        ),
        target(
            "hot",
            "query API, hot course (warmed read)",
            at.query,
            gets(|_| "/v1/courses/1".to_owned()),
            true,
        ),
        target(
            "hot_redis",
            "query API, hot course, Redis path (read-your-writes token)",
            at.unwarmed,
            gets(move |_| hot_redis_path.clone()),
            true,
        ),
        target(
            "random",
            "query API, random course of all (Redis path)",
            at.query,
            gets(move |n| format!("/v1/courses/{}", random(n))),
            true,
        ),
        target(
            "pg_count",
            "monolith, random course, page with student count (PostgreSQL path)",
            at.monolith,
            gets(move |n| format!("/v1/courses/{}", random(n))),
            true,
        ),
        target(
            "pg_companies",
            "monolith, random course, page with top companies",
            at.monolith,
            gets(move |n| format!("/v1/courses/{}/with-companies", random(n))),
            true,
        ),
        target(
            "pg_companies_hot",
            "monolith, hot course, page with top companies",
            at.monolith,
            gets(|_| "/v1/courses/1/with-companies".to_owned()),
            false,
        ),
        target(
            "cart",
            "query API, 125-id cart (GET /v1/courses?ids=...)",
            at.query,
            gets(move |_| cart_path.clone()),
            true,
        ),
    ];
    let subjects = measure_all(ctx, &targets).await?;

    // The cart against one page of a cart course, at half the cart's maximum.
    let cart = subjects
        .iter()
        .find(|s| s.key == "cart")
        .context("the cart was not measured")?;
    let rate = (cart.max_rps() * 0.5).max(1.0);
    let cart = cart
        .at_50
        .clone()
        .context("the cart subject has no fixed-rate phase")?;
    let ids = cart_ids.clone();
    let single = target(
        "single",
        "query API, one course of the cart, at the cart's rate",
        at.query,
        gets(move |n| format!("/v1/courses/{}", ids[(mix(n) % ids.len() as u64) as usize])),
        true,
    );
    let single = at_rate(ctx, &single, rate, "the cart's rate").await?;

    // The same page by each path at one rate (half the slowest's maximum),
    // so that the CPU each read costs compares without batching effects.
    let paths = [
        ("bare", at.bare_pid, false),
        ("redis_get", at.bare_pid, true),
        ("hot", at.query_pid, false),
        ("hot_redis", at.unwarmed_pid, true),
        ("random", at.query_pid, true),
    ];
    let slowest = paths
        .iter()
        .filter_map(|(key, ..)| subjects.iter().find(|s| s.key == *key))
        .map(Subject::max_rps)
        .fold(f64::INFINITY, f64::min);
    let mut cpu = Vec::new();
    if slowest.is_finite() && slowest > 0.0 {
        let redis = ctx.env.redis().await?;
        for (key, pid, uses_redis) in paths {
            let (Some(target), Some(pid)) = (targets.iter().find(|t| t.key == key), pid) else {
                continue;
            };
            let redis = uses_redis.then_some(&redis);
            cpu.push(cpu_per_read(ctx, target, slowest * 0.5, pid, redis).await?);
        }
    }
    Ok((subjects, CartComparison { rate, cart, single }, cpu))
}

/// The CPU per read of `target` at `rate`: the server `pid`, Redis (when
/// `redis` is given) and this process, around a fixed-rate phase (after a
/// warm-up outside the count).
async fn cpu_per_read(
    ctx: &Ctx,
    target: &Target,
    rate: f64,
    pid: u32,
    redis: Option<&fred::prelude::Client>,
) -> Result<ReadCpu> {
    tracing::info!(key = %target.key, rate = rate as u64, "cpu per read");
    let spec = |duration| Spec {
        label: format!("{}: cpu per read", target.label),
        mode: Mode::Rate {
            per_second: rate,
            connections: ctx.scale.rate_connections,
        },
        warmup: std::time::Duration::ZERO,
        duration,
        capture: None,
    };
    load::run(target.addr, target.make.clone(), &spec(ctx.scale.warmup)).await?;
    let me = std::process::id();
    let redis_cpu = || async {
        match redis {
            Some(r) => redis_cpu_s(r).await,
            None => None,
        }
    };
    let before = (process_cpu_s(pid), redis_cpu().await, process_cpu_s(me));
    let phase = load::run(
        target.addr,
        target.make.clone(),
        &spec(ctx.scale.rate_phase),
    )
    .await?
    .phase;
    let after = (process_cpu_s(pid), redis_cpu().await, process_cpu_s(me));
    let per =
        |a: Option<f64>, b: Option<f64>| Some((b? - a?).max(0.0) * 1e6 / phase.ok.max(1) as f64);
    Ok(ReadCpu {
        key: target.key.clone(),
        label: target.label.clone(),
        rate,
        answered: phase.ok,
        server_us: per(before.0, after.0).context("the server's CPU time is unreadable")?,
        redis_us: per(before.1, after.1),
        load_us: per(before.2, after.2).context("this process's CPU time is unreadable")?,
    })
}
