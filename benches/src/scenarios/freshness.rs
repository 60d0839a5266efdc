//! Freshness: how long after the command API acknowledged an order the
//! projection has applied it, at fixed order rates.
//!
//! A poller reads the live generation's watermark every millisecond; the
//! projector moves it only after the views up to it are written, so the
//! first time it reaches an order's token is when the order became visible.
//! Lag counts from the acknowledgement, the earliest a client could look.
//! The rush scenario also times a page the query API serves showing it.

use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use fred::prelude::*;
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use views::{Keys, Lsn};

use sqlx::{Connection, PgConnection};

use super::{
    orders::{order_requests, spread_courses},
    Ctx,
};
use crate::load::{self, Mode, Spec};

/// Lags at one offered order rate.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Freshness {
    pub offered_rps: f64,
    pub achieved_rps: f64,
    pub orders: u64,
    pub errors: u64,
    /// Orders whose token the watermark had not reached when the wait ended.
    pub unseen: u64,
    pub p50_ms: f64,
    pub p95_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    /// (seconds into the phase, lag in ms), thinned to a few thousand points.
    pub samples: Vec<(f64, f64)>,
}

/// The live generation's watermark key under `prefix`.
pub async fn watermark_key(redis: &Client, prefix: &str) -> Result<String> {
    let keys = Keys::new(prefix);
    Ok(keys.watermark(super::live_generation(redis, &keys).await?))
}

/// Where an order is looked for.
#[derive(Clone)]
pub enum Visible {
    /// The live generation's watermark in Redis, read every millisecond:
    /// the projection has applied the order, so a read with its token gets it.
    Watermark { redis: Client, key: String },
    /// The `X-Projection-Lsn` of a page the query API serves, revalidated
    /// with its `ETag` every 5 ms (a page costs the server more than a GET
    /// costs Redis): the page shows the order.
    Served { addr: SocketAddr, path: String },
}

/// Longest wait, after the last order, for a source to reach it.
const SETTLE_LIMIT: Duration = Duration::from_secs(10);

/// Polls `source` and keeps each new LSN with the moment it was first seen,
/// until it reaches the LSN sent on `until` (or [`SETTLE_LIMIT`] after it
/// was sent).
async fn poll(source: Visible, mut until: watch::Receiver<Option<Lsn>>) -> Vec<(Instant, Lsn)> {
    let mut seen = Vec::new();
    let mut last = Lsn(0);
    let mut deadline: Option<Instant> = None;
    let (mut connection, every) = match &source {
        Visible::Served { addr, .. } => {
            (Some(load::Connection::new(*addr)), Duration::from_millis(5))
        }
        Visible::Watermark { .. } => (None, Duration::from_millis(1)),
    };
    let mut etag: Option<String> = None;
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tick.tick().await;
        if let Some(target) = *until.borrow_and_update() {
            if last >= target || deadline.is_some_and(|d| Instant::now() > d) {
                break;
            }
            deadline.get_or_insert_with(|| Instant::now() + SETTLE_LIMIT);
        }
        let lsn = match (&source, connection.as_mut()) {
            (Visible::Watermark { redis, key }, _) => redis
                .get::<Option<String>, _>(key)
                .await
                .ok()
                .flatten()
                .and_then(|v| v.parse::<Lsn>().ok()),
            (Visible::Served { path, .. }, Some(connection)) => {
                let mut request = load::get_request(path);
                if let Some(tag) = etag.as_deref().and_then(|t| t.parse().ok()) {
                    request
                        .headers_mut()
                        .insert(hyper::header::IF_NONE_MATCH, tag);
                }
                match connection.send(request).await {
                    Ok((200 | 304, headers)) => {
                        let text = |name| headers.get(name).and_then(|v| v.to_str().ok());
                        if let Some(tag) = text(hyper::header::ETAG) {
                            etag = Some(tag.to_owned());
                        }
                        text(hyper::header::HeaderName::from_static("x-projection-lsn"))
                            .and_then(|v| v.parse::<Lsn>().ok())
                    }
                    _ => None,
                }
            }
            (Visible::Served { .. }, None) => None,
        };
        if let Some(lsn) = lsn {
            if lsn > last {
                last = lsn;
                seen.push((Instant::now(), lsn));
            }
        }
    }
    seen
}

/// Runs `orders` (a load phase capturing `X-Commit-Lsn`, offered at `rate`)
/// while every source is polled, until each has reached the last order;
/// returns the phase and the orders' lags by source, in their order.
pub async fn watched(
    rate: f64,
    sources: Vec<Visible>,
    orders: impl std::future::Future<Output = Result<load::Outcome>>,
) -> Result<(load::Outcome, Vec<Freshness>)> {
    let (until_tx, until_rx) = watch::channel(None);
    let pollers: Vec<_> = sources
        .into_iter()
        .map(|source| tokio::spawn(poll(source, until_rx.clone())))
        .collect();
    let outcome = orders.await;
    let tokens: Vec<(Instant, Lsn)> = outcome
        .as_ref()
        .map(|o| {
            o.captured
                .iter()
                .filter_map(|c| c.value.parse::<Lsn>().ok().map(|l| (c.done, l)))
                .collect()
        })
        .unwrap_or_default();
    let newest = tokens.iter().map(|(_, l)| *l).max().unwrap_or_default();
    let _ = until_tx.send(Some(newest));
    let mut seen = Vec::with_capacity(pollers.len());
    for poller in pollers {
        seen.push(poller.await.context("a visibility poller failed")?);
    }
    let outcome = outcome?;
    let lags = seen
        .iter()
        .map(|seen| lags(rate, &outcome.phase, &tokens, seen))
        .collect::<Result<_>>()?;
    Ok((outcome, lags))
}

/// Waits until the watermark under `prefix` reaches `target` (or `limit` passes).
pub async fn wait_for_watermark(
    redis: &Client,
    prefix: &str,
    target: Lsn,
    limit: Duration,
) -> Result<bool> {
    let deadline = Instant::now() + limit;
    loop {
        if let Ok(key) = watermark_key(redis, prefix).await {
            let value: Option<String> = redis.get(&key).await?;
            if value
                .and_then(|v| v.parse::<Lsn>().ok())
                .unwrap_or_default()
                >= target
            {
                return Ok(true);
            }
        }
        if Instant::now() > deadline {
            return Ok(false);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// One fixed-rate phase of orders per rate, with the watermark polled throughout.
pub async fn run(ctx: &Ctx, command: SocketAddr, prefix: &str) -> Result<Vec<Freshness>> {
    let redis = ctx.env.redis().await?;
    let key = watermark_key(&redis, prefix).await?;
    let mut out = Vec::new();
    for &rate in &ctx.scale.freshness_rates {
        tracing::info!(rate, "freshness");
        let make = order_requests(ctx.next_user.clone(), spread_courses(&ctx.scale));
        let source = Visible::Watermark {
            redis: redis.clone(),
            key: key.clone(),
        };
        let (_, lags) = at_rate(ctx, command, make, source, rate).await?;
        out.push(lags);
    }
    Ok(out)
}

/// `make`'s orders to `command` at `rate` for a freshness phase, with
/// `source` polled throughout: the phase and the orders' lags.
pub async fn at_rate(
    ctx: &Ctx,
    command: SocketAddr,
    make: load::MakeRequest,
    source: Visible,
    rate: f64,
) -> Result<(load::Phase, Freshness)> {
    let spec = Spec {
        label: format!("orders at {rate:.0}/s"),
        mode: Mode::Rate {
            per_second: rate,
            connections: ctx.scale.rate_connections,
        },
        warmup: ctx.scale.warmup,
        duration: ctx.scale.freshness_phase,
        capture: Some("x-commit-lsn"),
    };
    let (outcome, mut lags) = watched(rate, vec![source], load::run(command, make, &spec)).await?;
    let lags = lags.pop().context("no lags of the orders")?;
    Ok((outcome.phase, lags))
}

/// Vacuums and checkpoints the write model at `url`, then waits until the
/// projection under `prefix` has caught up with it: the work earlier
/// phases left behind does not land in the next ones.
pub async fn catch_up(ctx: &Ctx, url: &str, prefix: &str, limit: Duration) -> Result<()> {
    let mut conn = PgConnection::connect(url).await?;
    sqlx::raw_sql("VACUUM (ANALYZE)").execute(&mut conn).await?;
    sqlx::raw_sql("CHECKPOINT").execute(&mut conn).await?;
    let now: String = sqlx::query_scalar("SELECT pg_current_wal_insert_lsn()::text")
        .fetch_one(&mut conn)
        .await?;
    conn.close().await?;
    let redis = ctx.env.redis().await?;
    let reached = wait_for_watermark(&redis, prefix, now.parse()?, limit).await?;
    anyhow::ensure!(reached, "the projector did not catch up with the orders");
    Ok(())
}

fn lags(
    rate: f64,
    phase: &load::Phase,
    tokens: &[(Instant, Lsn)],
    seen: &[(Instant, Lsn)],
) -> Result<Freshness> {
    let mut histogram = Histogram::<u64>::new_with_bounds(1, 600_000_000, 3)?;
    let first = tokens.iter().map(|(t, _)| *t).min();
    let mut samples = Vec::with_capacity(tokens.len());
    let mut unseen = 0;
    for (done, lsn) in tokens {
        // `seen` rises in both time and LSN: the first entry at or past the token.
        let i = seen.partition_point(|(_, l)| l < lsn);
        match seen.get(i) {
            Some((at, _)) => {
                let lag = at.saturating_duration_since(*done);
                let _ = histogram.record((lag.as_micros() as u64).max(1));
                let t = first
                    .map(|f| done.saturating_duration_since(f).as_secs_f64())
                    .unwrap_or(0.0);
                samples.push((t, lag.as_secs_f64() * 1000.0));
            }
            None => unseen += 1,
        }
    }
    let step = (samples.len() / 3000).max(1);
    let samples = samples.into_iter().step_by(step).collect();
    let ms = |q: f64| {
        if histogram.is_empty() {
            0.0
        } else {
            histogram.value_at_quantile(q) as f64 / 1000.0
        }
    };
    Ok(Freshness {
        offered_rps: rate,
        achieved_rps: phase.achieved_rps,
        orders: tokens.len() as u64,
        errors: phase.errors,
        unseen,
        p50_ms: ms(0.50),
        p95_ms: ms(0.95),
        p99_ms: ms(0.99),
        max_ms: if histogram.is_empty() {
            0.0
        } else {
            histogram.max() as f64 / 1000.0
        },
        samples,
    })
}
