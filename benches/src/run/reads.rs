//! The reads scenario's set-up: a warmed and an unwarmed query API, the bare
//! endpoint answering the hot page's bytes (and one Redis `GET` of its stored
//! view), and the counters of their metrics.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use anyhow::{Context, Result};

use crate::{
    load,
    results::Results,
    scenarios::{
        profile_load,
        reads::{self, ReadTargets},
        Ctx,
    },
    stack::{free_addr, metric_sum, Program},
};

/// The reads against the live views in `prefix`: the query API, the bare
/// endpoint answering the hot page's very bytes, and the monolith at
/// `mono_addr`; then, with perf, profiles of the query API.
pub(super) async fn measure(
    ctx: &Ctx,
    results: &mut Results,
    prefix: &str,
    mono_addr: SocketAddr,
) -> Result<()> {
    let env = &ctx.env;
    let mut query = super::start_query_api(ctx, "query-api", prefix, "10m")?;
    let query_addr = query.addr;
    query.wait_ok("/ready", Duration::from_secs(60)).await?;
    // A second instance with pre-warming off, for the hot course's page
    // read from Redis (the very bytes the bare endpoint and the warmed read
    // send): its metrics then count the Redis-path reads alone.
    let mut unwarmed = super::start_query_api(ctx, "query-api-unwarmed", prefix, "0")?;
    let unwarmed_addr = unwarmed.addr;
    unwarmed.wait_ok("/ready", Duration::from_secs(60)).await?;

    // Reads, with the bare endpoint answering the hot page's very bytes.
    let (status, page) = load::get(query_addr, "/v1/courses/1").await?;
    anyhow::ensure!(
        status == 200,
        "the query API answered {status} for the hot course"
    );
    results.hot_page_bytes = page.len();
    let reached_lsn = serde_json::from_slice::<serde_json::Value>(&page)?["lsn"]
        .as_str()
        .context("the hot course's page has no lsn")?
        .to_owned();
    let page_file = env.log_dir.join("hot-page.json");
    std::fs::create_dir_all(&env.log_dir)?;
    std::fs::write(&page_file, &page)?;
    let bare_addr = free_addr()?;
    let page_arg = page_file.to_string_lossy().into_owned();
    let (stored_key, stored_bytes) = hot_view(ctx, prefix).await?;
    results.hot_stored_bytes = stored_bytes;
    let mut bare = Program::spawn(
        env,
        "bare",
        &env.bench_exe,
        &[
            "serve-bare",
            "--addr",
            &bare_addr.to_string(),
            "--body",
            &page_arg,
            "--redis-url",
            &env.redis_url,
            "--redis-key",
            &stored_key,
        ],
        &[],
        bare_addr,
    )?;
    bare.wait_ok("/health", Duration::from_secs(30)).await?;
    let before = cache_hits(query_addr).await;
    let unwarmed_before = round_trips(unwarmed_addr).await;
    let targets = ReadTargets {
        query: query_addr,
        unwarmed: unwarmed_addr,
        query_pid: query.pid(),
        unwarmed_pid: unwarmed.pid(),
        bare_pid: bare.pid(),
        reached_lsn,
        bare: bare_addr,
        monolith: mono_addr,
    };
    if let Some((subjects, cart, cpu)) = results.record("reads", reads::run(ctx, &targets).await) {
        results.reads = subjects;
        results.cart = Some(cart);
        results.read_cpu = cpu;
    }
    if let (Some((requests_a, trips_a, mgets_a)), Some((requests_b, trips_b, mgets_b))) =
        (unwarmed_before, round_trips(unwarmed_addr).await)
    {
        let (requests, trips, mgets) = (
            requests_b - requests_a,
            trips_b - trips_a,
            mgets_b - mgets_a,
        );
        if requests > 0.0 && mgets > 0.0 {
            results.notes.push(format!(
                "The hot course's Redis-path reads: {requests:.0} answered, {trips:.0} Redis round trips waited \
                 for ({:.2} per read); {mgets:.0} MGETs carried them ({:.2} reads per MGET).",
                trips / requests,
                requests / mgets
            ));
        }
    }
    match (before, cache_hits(query_addr).await) {
        (Some(a), Some(b)) => results.notes.push(format!(
            "The query API counted {:.0} in-process cache hits during the reads.",
            b - a
        )),
        _ => results.notes.push(
            "The query API exposes no in-process cache counters, so its cache hits during the reads were not \
             counted."
                .to_owned(),
        ),
    }
    if ctx.profile {
        let outcome = profile_load(
            ctx,
            query.pid(),
            "query API process, hot course read at saturation",
            query_addr,
            Arc::new(|_| load::get_request("/v1/courses/1")),
            ctx.scale.read_connections,
        )
        .await;
        if let Some(p) = results.record("profile (reads)", outcome) {
            results.profiles.push(p);
        }
        let hot_redis = format!("/v1/courses/1?min_lsn={}", targets.reached_lsn);
        let outcome = profile_load(
            ctx,
            unwarmed.pid(),
            "query API process, hot course, Redis path (read-your-writes token) at saturation",
            unwarmed_addr,
            Arc::new(move |_| load::get_request(&hot_redis)),
            ctx.scale.read_connections,
        )
        .await;
        if let Some(p) = results.record("profile (reads)", outcome) {
            results.profiles.push(p);
        }
        let courses = ctx.scale.courses as u64;
        let outcome = profile_load(
            ctx,
            query.pid(),
            "query API process, random course reads (Redis path) at saturation",
            query_addr,
            Arc::new(move |n| {
                load::get_request(&format!(
                    "/v1/courses/{}",
                    1 + crate::scenarios::mix(n) % courses
                ))
            }),
            ctx.scale.read_connections,
        )
        .await;
        if let Some(p) = results.record("profile (reads)", outcome) {
            results.profiles.push(p);
        }
    }
    bare.stop().await?;
    unwarmed.stop().await?;
    query.stop().await?;
    Ok(())
}

/// The key of the hot course's stored view in the live generation under
/// `prefix` (what the one-round-trip ceiling reads), and its length.
async fn hot_view(ctx: &Ctx, prefix: &str) -> Result<(String, usize)> {
    use fred::prelude::KeysInterface;
    let keys = views::Keys::new(prefix);
    let redis = ctx.env.redis().await?;
    let generation = crate::scenarios::live_generation(&redis, &keys).await?;
    let key = keys.course_view(generation, 1);
    let bytes: usize = redis.strlen(&key).await?;
    anyhow::ensure!(bytes > 0, "the hot course has no stored view");
    Ok((key, bytes))
}

/// The query API's in-process cache hits so far, when it counts them.
async fn cache_hits(addr: SocketAddr) -> Option<f64> {
    metric_sum(addr, |name| {
        name.contains("hit") && (name.contains("cache") || name.contains("prewarm"))
    })
    .await
}

/// The query API's requests answered, Redis round trips waited for and
/// MGETs sent so far.
async fn round_trips(addr: SocketAddr) -> Option<(f64, f64, f64)> {
    let requests = metric_sum(addr, |name| name == "query_api_requests_total").await?;
    let trips = metric_sum(addr, |name| {
        name == "query_api_redis_roundtrip_seconds_count"
    })
    .await?;
    let mgets = metric_sum(addr, |name| name == "query_api_redis_mgets_total").await?;
    Some((requests, trips, mgets))
}
