//! Redis unreachable: the query API stays up and says so, never a 500.

use query_api::{Application, Config};

#[tokio::test]
async fn with_redis_unreachable_reads_are_503_unavailable_and_the_process_stays_healthy(
) -> anyhow::Result<()> {
    // Nothing listens on port 1: every Redis call fails fast.
    let app = Application::build(Config::for_tests("redis://127.0.0.1:1", "down")).await?;
    let base = format!("http://127.0.0.1:{}", app.port());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(app.run_until_stopped(async move {
        let _ = stopped.await;
    }));
    let http = reqwest::Client::new();

    for path in [
        "/v1/courses/1",
        "/v1/courses?ids=1,2",
        "/v1/events/1",
        "/v1/orders/1",
        "/v1/users/1/courses",
        "/ready",
    ] {
        let response = http.get(format!("{base}{path}")).send().await?;
        assert_eq!(response.status(), 503, "{path}");
        assert_eq!(response.headers()["retry-after"], "1", "{path}");
        let body: serde_json::Value = response.json().await?;
        assert_eq!(body["error"]["code"], "unavailable", "{path}");
    }
    assert_eq!(
        http.get(format!("{base}/health")).send().await?.status(),
        200
    );
    let _ = stop.send(());
    Ok(())
}
