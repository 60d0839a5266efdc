//! Freshness: how long after the command API acknowledged an order the
//! projection has applied it, at fixed order rates.
//!
//! A poller reads the live generation's watermark every millisecond; the
//! projector moves it only after the views up to it are written, so the
//! first time it reaches an order's token is when the order became visible.
//! Lag counts from the acknowledgement, the earliest a client could look.

use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use fred::prelude::*;
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use views::{GenerationMarker, Keys, Lsn};

use super::{mix, orders::order_requests, Ctx};
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
    let marker: Option<String> = redis.get(keys.generation_marker()).await?;
    let marker: GenerationMarker =
        serde_json::from_str(&marker.context("no live generation: is the projector running?")?)?;
    Ok(keys.watermark(marker.generation))
}

/// Reads the watermark every millisecond and keeps each new value with
/// the moment it was first seen.
async fn poll(redis: Client, key: String, mut stop: watch::Receiver<bool>) -> Vec<(Instant, Lsn)> {
    let mut seen = Vec::new();
    let mut last = Lsn(0);
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tokio::select! {
            _ = stop.changed() => break,
            _ = tick.tick() => {
                if let Ok(Some(value)) = redis.get::<Option<String>, _>(&key).await {
                    if let Ok(lsn) = value.parse::<Lsn>() {
                        if lsn > last {
                            last = lsn;
                            seen.push((Instant::now(), lsn));
                        }
                    }
                }
            }
        }
    }
    seen
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
    let courses = ctx.scale.courses as u64;
    let mut out = Vec::new();
    for &rate in &ctx.scale.freshness_rates {
        tracing::info!(rate, "freshness");
        let (stop_tx, stop_rx) = watch::channel(false);
        let poller = tokio::spawn(poll(redis.clone(), key.clone(), stop_rx));
        let make = order_requests(
            ctx.next_user.clone(),
            std::sync::Arc::new(move |n| 1 + (mix(n) % courses) as i64),
        );
        let outcome = load::run(
            command,
            make,
            &Spec {
                label: format!("orders at {rate:.0}/s"),
                mode: Mode::Rate {
                    per_second: rate,
                    connections: ctx.scale.rate_connections,
                },
                warmup: ctx.scale.warmup,
                duration: ctx.scale.freshness_phase,
                capture: Some("x-commit-lsn"),
            },
        )
        .await?;
        let tokens: Vec<(Instant, Lsn)> = outcome
            .captured
            .iter()
            .filter_map(|c| c.value.parse::<Lsn>().ok().map(|l| (c.done, l)))
            .collect();
        let newest = tokens.iter().map(|(_, l)| *l).max().unwrap_or_default();
        wait_for_watermark(&redis, prefix, newest, Duration::from_secs(10)).await?;
        tokio::time::sleep(Duration::from_millis(5)).await;
        let _ = stop_tx.send(true);
        let seen = poller.await.context("the watermark poller failed")?;
        out.push(lags(rate, &outcome.phase, &tokens, &seen)?);
    }
    Ok(out)
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
