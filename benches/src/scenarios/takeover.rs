//! Takeover: an active and a standby projector on one slot while orders
//! stream in; the active one is SIGKILLed again and again, and each time
//! the clock runs until an order written after the kill can be read
//! through the query API. The killed one comes back as the new standby.

use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use super::{
    orders::{order_requests, spread_courses},
    Ctx,
};
use crate::{
    load::{self, Mode, Spec},
    stack::{free_addr, Program},
};

/// One SIGKILL of the active projector.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Kill {
    /// From the SIGKILL to the command API's answer to the order written
    /// after it.
    pub written_ms: f64,
    /// From the SIGKILL to the first answer of the query API holding that
    /// order (read-your-writes with its `X-Commit-Lsn`).
    pub visible_ms: f64,
}

/// Every kill, and the orders streamed meanwhile.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Takeover {
    pub kills: Vec<Kill>,
    /// Of `visible_ms` over the kills (the median by nearest rank).
    pub p50_ms: f64,
    pub max_ms: f64,
    /// Orders per second offered by the stream, and what it got answered.
    pub stream_rate: f64,
    pub stream_orders: u64,
    pub stream_errors: u64,
}

/// Longest wait for one takeover before the scenario gives up.
const TAKEOVER_LIMIT: Duration = Duration::from_secs(60);

/// Connections of the order stream: an order takes a few milliseconds, so
/// these carry the stream's rate, and none is opened only to be dropped.
const STREAM_CONNECTIONS: usize = 8;

/// Runs the kills against the views under `prefix`, with orders through
/// `command`; `projector_env` gives the settings of a projector on an
/// address (every one on the same slot and prefix).
pub async fn run(
    ctx: &Ctx,
    command: SocketAddr,
    prefix: &str,
    projector_env: impl Fn(SocketAddr) -> Vec<(&'static str, String)>,
) -> Result<Takeover> {
    let env = &ctx.env;
    let query_addr = free_addr()?;
    let mut query = Program::workspace(
        env,
        "query-api-takeover",
        "query-api",
        &[
            ("REDIS_URL", env.redis_url.clone()),
            ("KEY_PREFIX", prefix.to_owned()),
            ("QUERY_API_ADDR", query_addr.to_string()),
        ],
        query_addr,
    )?;
    query.wait_ok("/ready", Duration::from_secs(60)).await?;
    let start = |name: &str, addr: SocketAddr| {
        Program::workspace(env, name, "projector", &projector_env(addr), addr)
    };
    let mut active = start("projector-takeover-a", free_addr()?)?;
    active.wait_ok("/ready", Duration::from_secs(1800)).await?;
    let mut standby = start("projector-takeover-b", free_addr()?)?;
    standby.wait_ok("/health", Duration::from_secs(60)).await?;

    // Orders stream in throughout, in one-second phases until told to stop.
    let (stop_tx, stop_rx) = watch::channel(false);
    let rate = ctx.scale.takeover_rate.max(1.0);
    let stream = tokio::spawn(stream_orders(
        command,
        order_requests(ctx.next_user.clone(), spread_courses(&ctx.scale)),
        rate,
        stop_rx,
    ));

    let kills = async {
        let mut kills = Vec::new();
        for round in 0..ctx.scale.takeover_kills.max(1) {
            // The standby has started and waits; orders keep the slot busy.
            tokio::time::sleep(ctx.scale.takeover_settle).await;
            tracing::info!(round, "killing the active projector");
            let (killed, killed_addr) = (active.name.clone(), active.addr);
            let kill = kill_and_time(ctx, command, query_addr, active)
                .await
                .with_context(|| format!("kill {}", round + 1))?;
            kills.push(kill);
            // The killed one comes back as the new standby; the old standby
            // holds the slot now.
            let restarted = start(&killed, killed_addr)?;
            active = std::mem::replace(&mut standby, restarted);
            standby.wait_ok("/health", Duration::from_secs(60)).await?;
            active.wait_ok("/ready", TAKEOVER_LIMIT).await?;
        }
        standby.stop().await?;
        active.stop().await?;
        anyhow::Ok(kills)
    }
    .await;
    let _ = stop_tx.send(true);
    let (stream_orders, stream_errors) = stream.await.context("the order stream failed")??;
    query.stop().await?;
    let kills = kills?;
    let mut visible: Vec<f64> = kills.iter().map(|k| k.visible_ms).collect();
    visible.sort_by(f64::total_cmp);
    let p50_ms = visible
        .get(visible.len().div_ceil(2).saturating_sub(1))
        .copied()
        .unwrap_or(0.0);
    Ok(Takeover {
        p50_ms,
        max_ms: visible.last().copied().unwrap_or(0.0),
        kills,
        stream_rate: rate,
        stream_orders,
        stream_errors,
    })
}

/// SIGKILLs `active`, writes an order and times until the query API has it.
async fn kill_and_time(
    ctx: &Ctx,
    command: SocketAddr,
    query: SocketAddr,
    active: Program,
) -> Result<Kill> {
    let order = order_requests(ctx.next_user.clone(), spread_courses(&ctx.scale));
    let killed_at = Instant::now();
    active.kill().await?;
    let (status, headers, body) = load::send(command, order(u64::MAX)).await?;
    let written = killed_at.elapsed();
    if status != 201 {
        bail!(
            "the order after the kill was answered {status}: {}",
            String::from_utf8_lossy(&body)
        );
    }
    let lsn = headers
        .get("x-commit-lsn")
        .and_then(|v| v.to_str().ok())
        .context("the order has no X-Commit-Lsn")?
        .to_owned();
    let id = serde_json::from_slice::<serde_json::Value>(&body)?["id"]
        .as_i64()
        .context("the order has no id")?;
    // Each read waits up to a second (the default X-Max-Wait-Ms) for the
    // projection to reach the token, then answers 503 not_yet_projected.
    let path = format!("/v1/orders/{id}?min_lsn={lsn}");
    loop {
        let (status, _) = load::get(query, &path).await?;
        if status == 200 {
            break;
        }
        if killed_at.elapsed() > TAKEOVER_LIMIT {
            bail!("order {id} ({lsn}) was not readable {TAKEOVER_LIMIT:?} after the kill (last answer {status})");
        }
        if status != 503 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    Ok(Kill {
        written_ms: written.as_secs_f64() * 1000.0,
        visible_ms: killed_at.elapsed().as_secs_f64() * 1000.0,
    })
}

/// Orders at `rate` per second until `stop`; returns those answered 2xx
/// and those that failed.
async fn stream_orders(
    command: SocketAddr,
    make: load::MakeRequest,
    rate: f64,
    mut stop: watch::Receiver<bool>,
) -> Result<(u64, u64)> {
    let (mut ok, mut errors) = (0, 0);
    while !*stop.borrow_and_update() {
        let outcome = load::run(
            command,
            make.clone(),
            &Spec {
                label: format!("orders at {rate:.0}/s during takeovers"),
                mode: Mode::Rate {
                    per_second: rate,
                    connections: STREAM_CONNECTIONS,
                },
                warmup: Duration::ZERO,
                duration: Duration::from_secs(1),
                capture: None,
            },
        )
        .await?;
        ok += outcome.phase.ok;
        errors += outcome.phase.errors;
    }
    Ok((ok, errors))
}
