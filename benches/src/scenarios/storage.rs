//! What a view costs in Redis (bytes stored against the JSON it holds), and
//! redis-benchmark GETs of those very values: Redis's own ceiling.

use anyhow::{Context, Result};
use fred::prelude::*;
use serde::{Deserialize, Serialize};
use tokio::process::Command;
use views::Keys;

use super::Ctx;
use crate::tools::{self, RedisBench};

/// Bytes per view, raw JSON against what Redis holds.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Storage {
    /// Course detail views read.
    pub views: u64,
    pub view_raw_bytes: u64,
    pub view_stored_bytes: u64,
    /// Stored / raw for course views (LZ4 block, format byte, length prefix).
    pub view_ratio: f64,
    pub mean_description_bytes: f64,
    pub mean_view_raw_bytes: f64,
    pub mean_view_stored_bytes: f64,
    pub cards: u64,
    pub mean_card_raw_bytes: f64,
    pub mean_card_stored_bytes: f64,
    /// `MEMORY USAGE` of the hot course's view (value plus Redis's overhead).
    pub hot_view_memory_usage: i64,
    pub hot_view_stored_bytes: u64,
    pub hot_card_stored_bytes: u64,
}

/// Reads every course view and card of the live generation under `prefix`.
/// Also returns the stored values of the hot course's view and card.
pub async fn run(ctx: &Ctx, prefix: &str) -> Result<(Storage, Vec<u8>, Vec<u8>)> {
    let redis = ctx.env.redis().await?;
    let keys = Keys::new(prefix);
    let generation = super::live_generation(&redis, &keys).await?;
    let mut s = Storage::default();
    let (mut description_bytes, mut card_raw, mut card_stored) = (0u64, 0u64, 0u64);
    let ids: Vec<i64> = (1..=ctx.scale.courses).collect();
    for chunk in ids.chunks(500) {
        let view_keys: Vec<String> = chunk
            .iter()
            .map(|id| keys.course_view(generation, *id))
            .collect();
        let card_keys: Vec<String> = chunk
            .iter()
            .map(|id| keys.course_card(generation, *id))
            .collect();
        let views: Vec<Option<Vec<u8>>> = redis.mget(view_keys).await?;
        let cards: Vec<Option<Vec<u8>>> = redis.mget(card_keys).await?;
        for value in views.into_iter().flatten() {
            let json = views::decode(&value).context("a stored view does not decode")?;
            s.views += 1;
            s.view_raw_bytes += json.len() as u64;
            s.view_stored_bytes += value.len() as u64;
            let detail: serde_json::Value = serde_json::from_slice(&json)?;
            description_bytes += detail["description_html"]
                .as_str()
                .map(str::len)
                .unwrap_or(0) as u64;
        }
        for value in cards.into_iter().flatten() {
            let json = views::decode(&value).context("a stored card does not decode")?;
            s.cards += 1;
            card_raw += json.len() as u64;
            card_stored += value.len() as u64;
        }
    }
    anyhow::ensure!(s.views > 0, "no course view found under {prefix}");
    let n = s.views as f64;
    s.view_ratio = s.view_stored_bytes as f64 / s.view_raw_bytes.max(1) as f64;
    s.mean_description_bytes = description_bytes as f64 / n;
    s.mean_view_raw_bytes = s.view_raw_bytes as f64 / n;
    s.mean_view_stored_bytes = s.view_stored_bytes as f64 / n;
    s.mean_card_raw_bytes = card_raw as f64 / (s.cards.max(1)) as f64;
    s.mean_card_stored_bytes = card_stored as f64 / (s.cards.max(1)) as f64;
    let hot_view: Vec<u8> = redis
        .get::<Option<Vec<u8>>, _>(keys.course_view(generation, 1))
        .await?
        .context("the hot course has no view")?;
    let hot_card: Vec<u8> = redis
        .get::<Option<Vec<u8>>, _>(keys.course_card(generation, 1))
        .await?
        .context("the hot course has no card")?;
    s.hot_view_memory_usage = redis
        .custom(
            fred::cmd!("MEMORY"),
            vec!["USAGE".to_owned(), keys.course_view(generation, 1)],
        )
        .await
        .unwrap_or(0);
    s.hot_view_stored_bytes = hot_view.len() as u64;
    s.hot_card_stored_bytes = hot_card.len() as u64;
    Ok((s, hot_view, hot_card))
}

/// redis-benchmark: GET of `value` (stored under this run's own key).
pub async fn redis_benchmark(ctx: &Ctx, what: &str, value: &[u8]) -> Result<RedisBench> {
    let redis = ctx.env.redis().await?;
    let key = format!("{}:redis-benchmark:{what}", ctx.env.name("rb"));
    let _: () = redis.set(&key, value.to_vec(), None, None, false).await?;
    let (host, port) = ctx.env.redis_host_port();
    let connections = ctx.scale.read_connections;
    let mut command = Command::new(
        tools::on_path("redis-benchmark")
            .context("redis-benchmark not found (it ships with Redis)")?,
    );
    command
        .args(["-h", &host, "-p", &port.to_string()])
        .args([
            "-n",
            &ctx.scale.redis_requests.to_string(),
            "-c",
            &connections.to_string(),
        ])
        .args(["--csv", "GET", &key]);
    let result = tools::output(command, std::time::Duration::from_secs(120)).await;
    let _: i64 = redis.del(&key).await?;
    let (rps, p50_ms, p99_ms, max_ms) = tools::parse_redis_benchmark(&result?)?;
    Ok(RedisBench {
        value_bytes: value.len(),
        what: what.to_owned(),
        requests: ctx.scale.redis_requests,
        connections,
        rps,
        p50_ms,
        p99_ms,
        max_ms,
    })
}
