//! Redis unreachable: the query API stays up and says so at once, never a
//! 500, and serves again once Redis answers.

mod common;

use std::time::{Duration, Instant};

use common::OwnRedis;
use query_api::{Application, Config};

/// A 503 `unavailable` must not wait out a Redis timeout: the client knows
/// Redis is down, so the answer is immediate; this leaves ample room for a
/// loaded machine.
const PROMPT: Duration = Duration::from_secs(1);

/// A query API on `redis_url`, and its base URL.
async fn start(redis_url: &str) -> anyhow::Result<(String, tokio::sync::oneshot::Sender<()>)> {
    let app = Application::build(Config::for_tests(redis_url.parse()?, "down")).await?;
    let base = format!("http://127.0.0.1:{}", app.port());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(app.run_until_stopped(async move {
        let _ = stopped.await;
    }));
    Ok((base, stop))
}

/// GET `url`: status, `Retry-After`, error code, and how long it took.
async fn get(http: &reqwest::Client, url: &str) -> anyhow::Result<(u16, String, String, Duration)> {
    let sent = Instant::now();
    let response = http.get(url).send().await?;
    let status = response.status().as_u16();
    let retry_after = response
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let body: serde_json::Value = response.json().await.unwrap_or_default();
    let took = sent.elapsed();
    let code = body["error"]["code"].as_str().unwrap_or("").to_owned();
    Ok((status, retry_after, code, took))
}

#[tokio::test]
async fn with_redis_unreachable_reads_are_503_unavailable_at_once_and_the_process_stays_healthy(
) -> anyhow::Result<()> {
    // Nothing listens on port 1: every connection attempt is refused.
    let (base, stop) = start("redis://127.0.0.1:1").await?;
    let http = reqwest::Client::new();

    for path in [
        "/v1/courses/1",
        "/v1/courses?ids=1,2",
        "/v1/events/1",
        "/v1/orders/1",
        "/v1/users/1/courses",
        "/v1/categories/rust/courses",
        "/v1/courses/1?min_lsn=0/1",
        "/ready",
    ] {
        let (status, retry_after, code, took) = get(&http, &format!("{base}{path}")).await?;
        assert_eq!(status, 503, "{path}");
        assert_eq!(retry_after, "1", "{path}");
        assert_eq!(code, "unavailable", "{path}");
        assert!(took < PROMPT, "{path} took {took:?}");
    }
    assert_eq!(
        http.get(format!("{base}/health")).send().await?.status(),
        200
    );
    let _ = stop.send(());
    Ok(())
}

/// Polls `url` until its error code is `code`, for at most `within`.
async fn until_code(
    http: &reqwest::Client,
    url: &str,
    code: &str,
    within: Duration,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + within;
    loop {
        let (_, _, seen, _) = get(http, url).await?;
        if seen == code {
            return Ok(());
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "{url}: still {seen:?}, not {code:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_query_api_started_before_redis_serves_once_it_answers_and_fails_fast_once_it_dies(
) -> anyhow::Result<()> {
    // A private Redis on a port free a moment ago, so it can be killed
    // without touching the Redis other tests share.
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let (base, stop) = start(&format!("redis://127.0.0.1:{port}")).await?;
    let http = reqwest::Client::new();
    let course = format!("{base}/v1/courses/1");

    let (status, _, code, took) = get(&http, &course).await?;
    assert_eq!((status, code.as_str()), (503, "unavailable"));
    assert!(took < PROMPT, "took {took:?}");

    // Redis comes up: the client connects on its own (no restart) and the
    // read reaches Redis, where no view generation is live yet.
    let redis = OwnRedis::start_on(port)?;
    until_code(&http, &course, "rebuilding", Duration::from_secs(15)).await?;

    // Redis dies: reads are 503 `unavailable` again, each one at once.
    drop(redis);
    until_code(&http, &course, "unavailable", Duration::from_secs(5)).await?;
    for path in ["/v1/courses/1", "/v1/courses?ids=1,2", "/ready"] {
        let (status, _, code, took) = get(&http, &format!("{base}{path}")).await?;
        assert_eq!((status, code.as_str()), (503, "unavailable"), "{path}");
        assert!(took < PROMPT, "{path} took {took:?}");
    }
    let _ = stop.send(());
    Ok(())
}
