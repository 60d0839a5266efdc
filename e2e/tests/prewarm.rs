//! Pre-warming: a sale event's views are held in process before and during
//! the event, stay fresh within a second, and never outlive a sale boundary.

use std::time::{Duration, Instant};

use chrono::Utc;
use e2e::{Answer, Stack};
use reqwest::StatusCode;
use serde_json::json;

/// A second query API on the stack's key prefix, with an admin token.
async fn warm_query_api(
    stack: &Stack,
) -> anyhow::Result<(String, tokio::sync::oneshot::Sender<()>)> {
    let mut config = query_api::Config::for_tests(stack.redis_url.parse()?, &stack.prefix);
    config.admin = service::AdminToken::new(Some("ops-secret"));
    config.prewarm_refresh_ms = 50;
    let app = query_api::Application::build(config).await?;
    let base = format!("http://127.0.0.1:{}", app.port());
    let (tx, rx) = tokio::sync::oneshot::channel();
    tokio::spawn(app.run_until_stopped(async move {
        let _ = rx.await;
    }));
    Ok((base, tx))
}

async fn get(stack: &Stack, url: String, token: Option<&str>) -> anyhow::Result<Answer> {
    let mut request = stack.http.get(url);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    stack.send(request).await
}

fn metric(text: &str, name: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_events_views_are_warm_fresh_within_a_second_and_cut_at_its_end(
) -> anyhow::Result<()> {
    let mut stack = Stack::start().await?;
    let a = stack.course("Warm A", "<p>a</p>", 10_000).await?;
    let b = stack.course("Warm B", "<p>b</p>", 20_000).await?;
    stack.start_projector().await?;
    // The event runs now and ends in a few seconds.
    let ends = Utc::now() + chrono::Duration::seconds(6);
    let event_id = stack
        .post(
            "/v1/events",
            &json!({
                "name": "Flash sale",
                "starts_at": (Utc::now() - chrono::Duration::minutes(1)).to_rfc3339(),
                "ends_at": ends.to_rfc3339(),
                "discount_percent": 50,
                "courses": [{"course_id": a, "seat_limit": 10}, {"course_id": b}],
            }),
        )
        .await?
        .created_id()?;
    let (warm, _stop) = warm_query_api(&stack).await?;

    // Off without the token.
    assert_eq!(
        get(&stack, format!("{warm}/v1/ops/prewarm"), None)
            .await?
            .status,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        get(&stack, format!("{warm}/v1/ops/prewarm"), Some("wrong"))
            .await?
            .status,
        StatusCode::UNAUTHORIZED
    );

    // Warm within moments of the projection: the event and, for each of its
    // two courses, the page, the stats and the card.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let ops = get(&stack, format!("{warm}/v1/ops/prewarm"), Some("ops-secret")).await?;
        assert_eq!(ops.status, StatusCode::OK);
        if ops.body["events"][0]["event_id"] == event_id {
            assert_eq!(ops.body["events"][0]["entries"], 7);
            break;
        }
        assert!(
            Instant::now() < deadline,
            "event never warmed: {}",
            ops.body
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Served from memory: hits count up, the sale is on.
    let before = metric(
        &get(&stack, format!("{warm}/metrics"), None)
            .await?
            .raw
            .iter()
            .map(|&b| b as char)
            .collect::<String>(),
        "query_api_prewarm_hits_total",
    );
    let page = get(&stack, format!("{warm}/v1/courses/{a}"), None).await?;
    assert_eq!(page.status, StatusCode::OK);
    assert_eq!(page.body["sale"]["price_krw"], 5_000);
    assert_eq!(page.body["sale"]["seats_left"], 10);
    let event_page = get(&stack, format!("{warm}/v1/events/{event_id}"), None).await?;
    assert_eq!(event_page.body["courses"].as_array().map(Vec::len), Some(2));
    // A cart of warm courses, in the order asked with a duplicate, each
    // card with the sale picked.
    let cart = get(&stack, format!("{warm}/v1/courses?ids={b},{a},{b}"), None).await?;
    assert_eq!(cart.status, StatusCode::OK);
    let ids: Vec<_> = cart.body["courses"]
        .as_array()
        .expect("cards")
        .iter()
        .map(|c| c["id"].as_i64())
        .collect();
    assert_eq!(ids, [Some(b), Some(a), Some(b)]);
    assert_eq!(cart.body["courses"][0]["sale"]["price_krw"], 10_000);
    assert_eq!(cart.body["courses"][1]["sale"]["price_krw"], 5_000);
    assert_eq!(cart.body["courses"][1]["sale"]["seats_left"], 10);
    assert_eq!(cart.body["missing"], json!([]));
    let after = metric(
        &get(&stack, format!("{warm}/metrics"), None)
            .await?
            .raw
            .iter()
            .map(|&b| b as char)
            .collect::<String>(),
        "query_api_prewarm_hits_total",
    );
    assert!(after >= before + 3, "hits {before} -> {after}");

    // A price change of a warm course is visible within one second.
    let patched_at = Instant::now();
    let patch = stack
        .send(
            stack
                .http
                .patch(format!("{}/v1/courses/{a}", stack.command))
                .json(&json!({"price_krw": 30_000})),
        )
        .await?;
    assert_eq!(patch.status, StatusCode::OK);
    loop {
        let page = get(&stack, format!("{warm}/v1/courses/{a}"), None).await?;
        if page.body["price_krw"] == 30_000 {
            assert_eq!(page.body["sale"]["price_krw"], 15_000);
            break;
        }
        assert!(
            patched_at.elapsed() < Duration::from_secs(1),
            "not visible within 1 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // At the event's end the warm page drops the sale at once (the clock
    // picks the sale at every request), and the event leaves the warm set.
    let wait = (ends - Utc::now()).to_std().unwrap_or_default() + Duration::from_millis(20);
    tokio::time::sleep(wait).await;
    let ended = get(&stack, format!("{warm}/v1/courses/{a}"), None).await?;
    assert!(
        ended.body["sale"].is_null(),
        "sale after the end: {}",
        ended.body["sale"]
    );
    let cart = get(&stack, format!("{warm}/v1/courses?ids={a},{b}"), None).await?;
    assert_eq!(cart.status, StatusCode::OK);
    assert!(
        cart.body["courses"][0]["sale"].is_null() && cart.body["courses"][1]["sale"].is_null(),
        "cart sales after the end: {}",
        cart.body
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    let ops = get(&stack, format!("{warm}/v1/ops/prewarm"), Some("ops-secret")).await?;
    assert_eq!(ops.body["events"], json!([]));
    stack.cleanup().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_is_warm_only_inside_its_window() -> anyhow::Result<()> {
    let mut stack = Stack::start().await?;
    let a = stack.course("Later", "<p>a</p>", 10_000).await?;
    stack.start_projector().await?;
    let far = stack
        .post(
            "/v1/events",
            &json!({
                "name": "Next month",
                "starts_at": (Utc::now() + chrono::Duration::days(30)).to_rfc3339(),
                "ends_at": (Utc::now() + chrono::Duration::days(31)).to_rfc3339(),
                "discount_percent": 10,
                "courses": [{"course_id": a}],
            }),
        )
        .await?;
    let soon = stack
        .post(
            "/v1/events",
            &json!({
                "name": "In five minutes",
                "starts_at": (Utc::now() + chrono::Duration::minutes(5)).to_rfc3339(),
                "ends_at": (Utc::now() + chrono::Duration::hours(1)).to_rfc3339(),
                "discount_percent": 10,
                "courses": [{"course_id": a}],
            }),
        )
        .await?;
    let (warm, _stop) = warm_query_api(&stack).await?;
    stack
        .get_fresh(&format!("/v1/courses/{a}"), soon.header("x-commit-lsn"))
        .await?;
    let deadline = Instant::now() + Duration::from_secs(10);
    let ops = loop {
        let ops = get(&stack, format!("{warm}/v1/ops/prewarm"), Some("ops-secret")).await?;
        if ops.body["events"].as_array().is_some_and(|e| !e.is_empty()) || Instant::now() > deadline
        {
            break ops;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let ids: Vec<i64> = ops.body["events"]
        .as_array()
        .map(|e| e.iter().filter_map(|e| e["event_id"].as_i64()).collect())
        .unwrap_or_default();
    assert_eq!(
        ids,
        vec![soon.body["id"].as_i64().expect("id")],
        "only the event within 10 minutes"
    );
    assert_ne!(far.body["id"], soon.body["id"]);
    stack.cleanup().await
}
