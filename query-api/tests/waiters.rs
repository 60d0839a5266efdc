//! Reads waiting for a read-your-writes token share one watermark poll:
//! the commands Redis receives while 50 reads wait are about those of one,
//! every one of them still gets its own answer at its own deadline, and
//! the poll stops once nobody waits.
//!
//! Counts commands on a `redis-server` of this test's own (other processes
//! use the shared one), so `redis-server` must be on PATH.

mod common;

use std::time::{Duration, Instant};

use common::{client, OwnRedis};
use fred::prelude::*;
use query_api::{Application, Config};
use views::{CoursePage, CourseStats, GenerationMarker, Keys, VIEW_SCHEMA_VERSION};

/// How long each read may wait for its token.
const WAIT_MS: &str = "1500";
/// A token the projection will not reach during the test.
const FAR_FUTURE: &str = "FFFF/0";

/// Generation 1 live at `lsn` with course 1 in it.
async fn views_at(redis: &Client, keys: &Keys, lsn: &str) -> anyhow::Result<()> {
    let marker = GenerationMarker::switched(None, 1, VIEW_SCHEMA_VERSION, 0);
    let page = CoursePage {
        id: 1,
        title: "course 1".into(),
        summary: "s".into(),
        description_html: "<p>d</p>".into(),
        category: "c".into(),
        instructor: "i".into(),
        price_krw: 1000,
        created_at: chrono::Utc::now(),
    };
    let stats = CourseStats {
        student_count: 0,
        top_companies: Vec::new(),
        lsn: lsn.into(),
        sales: Vec::new(),
    };
    let values: Vec<(String, Vec<u8>)> = vec![
        (
            keys.course_view(1, 1),
            views::encode(&serde_json::to_vec(&page)?),
        ),
        (
            keys.course_stats(1, 1),
            views::encode(&serde_json::to_vec(&stats)?),
        ),
        (keys.watermark(1), lsn.as_bytes().to_vec()),
        (keys.generation_marker(), serde_json::to_vec(&marker)?),
    ];
    let _: () = redis.mset(values).await?;
    Ok(())
}

/// Commands Redis processed since the last call (which resets the count).
async fn commands_since_reset(redis: &Client) -> anyhow::Result<u64> {
    let info: String = redis.info(Some(fred::types::InfoKind::Stats)).await?;
    let _: () = redis.config_resetstat().await?;
    info.lines()
        .find_map(|l| l.strip_prefix("total_commands_processed:"))
        .and_then(|n| n.trim().parse().ok())
        .ok_or_else(|| anyhow::anyhow!("no total_commands_processed in INFO stats"))
}

/// GET course 1 with `token`: status, `Retry-After`, error code, and
/// `X-Projection-Lsn`.
async fn read_with(
    http: &reqwest::Client,
    base: &str,
    token: &str,
) -> anyhow::Result<(u16, Option<String>, String, Option<String>)> {
    let response = http
        .get(format!("{base}/v1/courses/1"))
        .header("X-Min-Lsn", token)
        .header("X-Max-Wait-Ms", WAIT_MS)
        .send()
        .await?;
    let header = |name: &str| {
        response
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let (retry_after, projected) = (header("retry-after"), header("x-projection-lsn"));
    let status = response.status().as_u16();
    let body: serde_json::Value = response.json().await.unwrap_or_default();
    let code = body["error"]["code"].as_str().unwrap_or("").to_owned();
    Ok((status, retry_after, code, projected))
}

/// `n` reads at once on a far-future token: every one a 503
/// `not_yet_projected` with `Retry-After`; returns the commands Redis
/// received meanwhile per second.
async fn far_future_reads(
    redis: &Client,
    http: &reqwest::Client,
    base: &str,
    n: usize,
) -> anyhow::Result<f64> {
    commands_since_reset(redis).await?;
    let started = Instant::now();
    let reads = (0..n).map(|_| read_with(http, base, FAR_FUTURE));
    let answers = futures_util::future::join_all(reads).await;
    let took = started.elapsed();
    let commands = commands_since_reset(redis).await?;
    for answer in answers {
        let (status, retry_after, code, _) = answer?;
        assert_eq!((status, code.as_str()), (503, "not_yet_projected"));
        assert!(retry_after.is_some(), "a 503 says when to retry");
    }
    let rate = commands as f64 / took.as_secs_f64();
    eprintln!("{n} waiter(s): {commands} commands in {took:?} ({rate:.0}/s)");
    Ok(rate)
}

/// A query API on a `redis-server` of its own holding course 1 at `0/100`,
/// its settings changed by `tweak`.
struct Served {
    _server: OwnRedis,
    redis: Client,
    keys: Keys,
    base: String,
    http: reqwest::Client,
    _stop: tokio::sync::oneshot::Sender<()>,
}

impl Served {
    async fn start(prefix: &str, tweak: impl FnOnce(&mut Config)) -> anyhow::Result<Self> {
        let (server, url) = OwnRedis::start()?;
        let redis = client(&url).await?;
        let keys = Keys::new(prefix);
        views_at(&redis, &keys, "0/100").await?;
        let mut config = Config::for_tests(url.parse()?, keys.prefix());
        tweak(&mut config);
        let app = Application::build(config).await?;
        let base = format!("http://127.0.0.1:{}", app.port());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(app.run_until_stopped(async move {
            let _ = stopped.await;
        }));
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .pool_max_idle_per_host(64)
            .build()?;
        Ok(Self {
            _server: server,
            redis,
            keys,
            base,
            http,
            _stop: stop,
        })
    }
}

#[tokio::test]
async fn fifty_reads_waiting_for_a_token_cost_redis_about_what_one_does_and_each_gets_its_answer(
) -> anyhow::Result<()> {
    let served = Served::start("waiters", |_| {}).await?;
    let (redis, keys, base, http) = (&served.redis, &served.keys, &served.base, &served.http);

    let one = far_future_reads(redis, http, base, 1).await?;
    let fifty = far_future_reads(redis, http, base, 50).await?;
    // One poll each (today's 5 ms apart) whoever waits: each read adds only
    // its own first and last reads, so within a small factor; one poll per
    // waiter would be about fifty times.
    assert!(
        fifty <= 2.0 * one,
        "50 waiters: {fifty:.0} commands/s, one: {one:.0}/s"
    );

    // Nobody waits: the poll has stopped.
    commands_since_reset(redis).await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let idle = commands_since_reset(redis).await? as f64 / 0.5;
    eprintln!("idle: {idle:.0} commands/s");
    assert!(idle < one / 4.0, "idle {idle:.0}/s, one waiter {one:.0}/s");

    // A token reached during the wait is answered as soon as the poll
    // sees it, however many others wait on the far future meanwhile.
    let waiting = tokio::spawn({
        let (http, base) = (http.clone(), base.clone());
        async move { read_with(&http, &base, FAR_FUTURE).await }
    });
    let reached = tokio::spawn({
        let (http, base) = (http.clone(), base.clone());
        async move { read_with(&http, &base, "0/200").await }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    views_at(redis, keys, "0/200").await?;
    let (status, _, code, projected) = reached.await??;
    assert_eq!(status, 200, "{code}");
    assert_eq!(projected.as_deref(), Some("0/200"));
    let (status, _, code, _) = waiting.await??;
    assert_eq!((status, code.as_str()), (503, "not_yet_projected"));

    Ok(())
}

#[tokio::test]
async fn past_the_concurrency_limit_a_read_is_refused_at_once_and_counted_as_shed(
) -> anyhow::Result<()> {
    let served = Served::start("shed", |config| config.concurrency_limit = 1).await?;
    let (base, http) = (&served.base, &served.http);

    // One read waits on a token for 1.5 s, holding the only slot.
    let holder = tokio::spawn({
        let (http, base) = (http.clone(), base.clone());
        async move { read_with(&http, &base, FAR_FUTURE).await }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let started = Instant::now();
    let (status, retry_after, code, _) = read_with(http, base, "0/100").await?;
    let took = started.elapsed();
    assert_eq!((status, code.as_str()), (503, "unavailable"));
    assert!(retry_after.is_some(), "a 503 says when to retry");
    // Refused without waiting for the slot (which frees after 1.5 s).
    assert!(took < Duration::from_millis(1000), "{took:?}");
    let (status, _, code, _) = holder.await??;
    assert_eq!((status, code.as_str()), (503, "not_yet_projected"));

    let metrics = http
        .get(format!("{base}/metrics"))
        .send()
        .await?
        .text()
        .await?;
    for series in [
        r#"query_api_requests_shed_total{reason="concurrency"} 1"#,
        "query_api_request_timeouts_total 0",
    ] {
        assert!(metrics.contains(series), "{series} in {metrics}");
    }
    Ok(())
}
