//! Ops flags on the storefront: a flag file edited while the stack runs
//! turns each storefront switch off within a second and back on, a warm
//! event's pages outlive a Redis outage (marked stale), and the readiness
//! check says false until the event is warm and true after.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use chrono::Utc;
use e2e::{redis_server::RedisServer, Answer, Stack};
use reqwest::StatusCode;
use serde_json::{json, Value};

/// How soon an edited flag file must take effect.
const WITHIN: Duration = Duration::from_secs(1);
const TOKEN: &str = "ops-secret";

/// A flag file of the test's own, replaced by rename as editors do.
struct FlagFile {
    dir: PathBuf,
    path: PathBuf,
}

impl FlagFile {
    fn new(name: &str) -> anyhow::Result<Self> {
        let dir = std::env::temp_dir().join(format!("flags-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let file = FlagFile {
            path: dir.join("flags.json"),
            dir,
        };
        file.set(json!({}))?;
        Ok(file)
    }

    fn set(&self, flags: Value) -> anyhow::Result<()> {
        let beside = self.dir.join("flags.json.new");
        std::fs::write(&beside, json!({ "flags": flags }).to_string())?;
        std::fs::rename(&beside, &self.path)?;
        Ok(())
    }
}

impl Drop for FlagFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn off() -> Value {
    json!({"state": "ENABLED", "variants": {"on": true, "off": false}, "defaultVariant": "off"})
}

/// A query API on the stack's views reading `flags`, with the admin token
/// and pre-warming `window` ahead of a sale.
async fn query_api(
    stack: &Stack,
    flags: &FlagFile,
    window: Duration,
) -> anyhow::Result<(String, tokio::sync::oneshot::Sender<()>)> {
    let mut config = query_api::Config::for_tests(stack.redis_url.parse()?, &stack.prefix);
    config.admin = service::AdminToken::new(Some(TOKEN));
    config.prewarm_refresh_ms = 50;
    config.prewarm_window = window;
    config.flags.flags_file = Some(flags.path.clone());
    let app = query_api::Application::build(config).await?;
    let base = format!("http://127.0.0.1:{}", app.port());
    let (tx, rx) = tokio::sync::oneshot::channel();
    tokio::spawn(app.run_until_stopped(async move {
        let _ = rx.await;
    }));
    Ok((base, tx))
}

/// Sends `request()` until `done` holds for the answer, for at most `within`.
async fn until<F>(
    stack: &Stack,
    within: Duration,
    mut request: F,
    done: impl Fn(&Answer) -> bool,
) -> anyhow::Result<Answer>
where
    F: FnMut() -> reqwest::RequestBuilder,
{
    let start = Instant::now();
    loop {
        let answer = stack.send(request()).await?;
        if done(&answer) {
            return Ok(answer);
        }
        anyhow::ensure!(
            start.elapsed() < within,
            "not there after {:?}: {} {}",
            start.elapsed(),
            answer.status,
            answer.body
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

fn switched_off(answer: &Answer, flag: &str) -> bool {
    answer.status == StatusCode::SERVICE_UNAVAILABLE
        && answer.body["error"]["code"] == "feature_disabled"
        && answer.body["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains(flag))
        && !answer.header("retry-after").is_empty()
}

fn check<'a>(readiness: &'a Answer, name: &str) -> &'a Value {
    readiness.body["checks"]
        .as_array()
        .and_then(|checks| checks.iter().find(|c| c["name"] == name))
        .unwrap_or(&Value::Null)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn storefront_switches_take_effect_within_a_second_and_back_again() -> anyhow::Result<()> {
    let mut stack = Stack::start().await?;
    let course = stack.course("Switch A", "<p>a</p>", 10_000).await?;
    stack.start_projector().await?;
    let flags = FlagFile::new("storefront")?;
    let (query, _stop) = query_api(&stack, &flags, Duration::from_secs(600)).await?;
    let http = stack.http.clone();
    let rankings = || http.get(format!("{query}/v1/categories/programming/courses"));
    until(&stack, Duration::from_secs(10), rankings, |a| {
        a.status == StatusCode::OK
    })
    .await?;

    // Category rankings off, and on again.
    flags.set(json!({ "category-rankings": off() }))?;
    until(&stack, WITHIN, rankings, |a| {
        switched_off(a, "category-rankings")
    })
    .await?;
    flags.set(json!({}))?;
    until(&stack, WITHIN, rankings, |a| a.status == StatusCode::OK).await?;

    // A token far ahead: waited for (and refused) while waits are on,
    // answered at once from what is there, marked, while they are off.
    let ahead = || {
        http.get(format!("{query}/v1/courses/{course}"))
            .header("X-Min-Lsn", "FF/0")
            .header("X-Max-Wait-Ms", "100")
    };
    let waited = stack.send(ahead()).await?;
    assert_eq!(waited.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(waited.body["error"]["code"], "not_yet_projected");
    flags.set(json!({ "read-your-writes-wait": off() }))?;
    let ignored = until(&stack, WITHIN, ahead, |a| a.status == StatusCode::OK).await?;
    assert_eq!(ignored.header("x-min-lsn-ignored"), "true");
    assert_eq!(ignored.body["id"], course);
    // Every answer made from what was there says so: a 304 for the ETag
    // held, and a 404 (maybe a write the projection has not reached).
    let unchanged = stack
        .send(ahead().header("If-None-Match", ignored.header("etag")))
        .await?;
    assert_eq!(unchanged.status, StatusCode::NOT_MODIFIED);
    assert_eq!(unchanged.header("x-min-lsn-ignored"), "true");
    let unseen = stack
        .send(
            http.get(format!("{query}/v1/courses/{}", course + 1_000_000))
                .header("X-Min-Lsn", "FF/0"),
        )
        .await?;
    assert_eq!(unseen.status, StatusCode::NOT_FOUND);
    assert_eq!(unseen.header("x-min-lsn-ignored"), "true");
    // The query twin too; a malformed token is still refused.
    let twin = stack
        .send(http.get(format!("{query}/v1/courses/{course}?min_lsn=FF/0")))
        .await?;
    assert_eq!(twin.status, StatusCode::OK);
    assert_eq!(twin.header("x-min-lsn-ignored"), "true");
    // Percent-encoded as a form would send it: the same token.
    let encoded = stack
        .send(http.get(format!("{query}/v1/courses/{course}?min_lsn=FF%2F0")))
        .await?;
    assert_eq!(encoded.status, StatusCode::OK);
    assert_eq!(encoded.header("x-min-lsn-ignored"), "true");
    let malformed = stack
        .send(
            http.get(format!("{query}/v1/courses/{course}"))
                .header("X-Min-Lsn", "nope"),
        )
        .await?;
    assert_eq!(malformed.status, StatusCode::BAD_REQUEST);
    assert_eq!(malformed.header("x-min-lsn-ignored"), "");
    flags.set(json!({}))?;
    until(&stack, WITHIN, ahead, |a| {
        a.body["error"]["code"] == "not_yet_projected"
    })
    .await?;

    // The flags as the query API evaluates them, and in its metrics.
    flags.set(json!({ "category-rankings": off() }))?;
    let listing = until(
        &stack,
        WITHIN,
        || http.get(format!("{query}/v1/ops/flags")).bearer_auth(TOKEN),
        |a| a.body["flags"][2]["value"] == false,
    )
    .await?;
    assert_eq!(listing.body["flags"][2]["flag"], "category-rankings");
    let metrics = stack.send(http.get(format!("{query}/metrics"))).await?;
    let text = String::from_utf8_lossy(&metrics.raw);
    assert!(
        text.contains("flag_value{flag=\"category-rankings\"} 0"),
        "{text}"
    );
    assert!(
        text.contains("flag_value{flag=\"read-your-writes-wait\"} 1"),
        "{text}"
    );
    let anonymous = stack
        .send(http.get(format!("{query}/v1/ops/flags")))
        .await?;
    assert_eq!(anonymous.status, StatusCode::UNAUTHORIZED);
    stack.cleanup().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_is_false_until_the_event_is_warm_and_true_after() -> anyhow::Result<()> {
    let mut stack = Stack::start().await?;
    let a = stack.course("Ready A", "<p>a</p>", 10_000).await?;
    let b = stack.course("Ready B", "<p>b</p>", 20_000).await?;
    stack.start_projector().await?;
    let flags = FlagFile::new("readiness")?;
    // Warmed 3 s ahead of a sale that starts in 6 s: cold at first.
    let (query, _stop) = query_api(&stack, &flags, Duration::from_secs(3)).await?;
    let event_id = stack
        .post(
            "/v1/events",
            &json!({
                "name": "Nine pm sale",
                "starts_at": (Utc::now() + chrono::Duration::seconds(6)).to_rfc3339(),
                "ends_at": (Utc::now() + chrono::Duration::hours(1)).to_rfc3339(),
                "discount_percent": 30,
                "courses": [{"course_id": a, "seat_limit": 5}, {"course_id": b}],
            }),
        )
        .await?
        .created_id()?;
    let http = stack.http.clone();
    let readiness = || {
        http.get(format!("{query}/v1/ops/events/{event_id}/readiness"))
            .bearer_auth(TOKEN)
    };
    let unknown = stack
        .send(
            http.get(format!("{query}/v1/ops/events/987654321/readiness"))
                .bearer_auth(TOKEN),
        )
        .await?;
    assert_eq!(unknown.status, StatusCode::NOT_FOUND);
    assert_eq!(unknown.body["error"]["code"], "not_found");
    let anonymous = stack
        .send(http.get(format!("{query}/v1/ops/events/{event_id}/readiness")))
        .await?;
    assert_eq!(anonymous.status, StatusCode::UNAUTHORIZED);

    // Projected but not warm: not ready, and the check says why.
    let cold = until(&stack, Duration::from_secs(10), readiness, |a| {
        a.status == StatusCode::OK
    })
    .await?;
    assert_eq!(cold.body["ready"], false, "{}", cold.body);
    assert_eq!(cold.body["event_id"], event_id);
    assert_eq!(check(&cold, "views_warm")["ok"], false);
    assert_eq!(check(&cold, "views_warm")["value"], 0);
    assert_eq!(check(&cold, "views_warm")["limit"], 7);
    assert_eq!(check(&cold, "rebuilding")["ok"], true);

    // Warm once its window opens: ready, every check passing with its figure.
    let warm = until(&stack, Duration::from_secs(10), readiness, |a| {
        a.body["ready"] == true
    })
    .await?;
    assert_eq!(check(&warm, "views_warm")["value"], 7);
    assert!(check(&warm, "warm_set_age_ms")["value"].as_u64() < Some(900));
    assert_eq!(check(&warm, "checkout-event-purchases")["ok"], true);

    // A switch that stops this event's sale makes it not ready, within a second.
    let mut paused = off();
    paused["defaultVariant"] = json!("on");
    paused["targeting"] = json!({"if": [{"==": [{"var": "eventId"}, event_id]}, "off", null]});
    flags.set(json!({ "checkout-event-purchases": paused }))?;
    let stopped = until(&stack, WITHIN, readiness, |a| a.body["ready"] == false).await?;
    assert_eq!(check(&stopped, "checkout-event-purchases")["ok"], false);
    flags.set(json!({}))?;
    until(&stack, WITHIN, readiness, |a| a.body["ready"] == true).await?;
    stack.cleanup().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_warm_events_pages_outlive_a_redis_outage_marked_stale() -> anyhow::Result<()> {
    let mut redis = RedisServer::start().await?;
    let mut stack = Stack::start_with_redis(&redis.url()).await?;
    let a = stack.course("Outage A", "<p>a</p>", 10_000).await?;
    let cold = stack.course("Outage cold", "<p>c</p>", 10_000).await?;
    stack.start_projector().await?;
    let event_id = stack
        .post(
            "/v1/events",
            &json!({
                "name": "Outage sale",
                "starts_at": (Utc::now() - chrono::Duration::minutes(1)).to_rfc3339(),
                "ends_at": (Utc::now() + chrono::Duration::hours(1)).to_rfc3339(),
                "discount_percent": 50,
                "courses": [{"course_id": a, "seat_limit": 5}],
            }),
        )
        .await?
        .created_id()?;
    let flags = FlagFile::new("outage")?;
    let (query, _stop) = query_api(&stack, &flags, Duration::from_secs(600)).await?;
    let http = stack.http.clone();
    let readiness = || {
        http.get(format!("{query}/v1/ops/events/{event_id}/readiness"))
            .bearer_auth(TOKEN)
    };
    until(&stack, Duration::from_secs(10), readiness, |a| {
        a.body["ready"] == true
    })
    .await?;
    stack.stop_projector().await?;
    redis.kill()?;

    // Redis gone: the warm event's pages are served, marked stale; a course
    // outside any warm event is 503 as before.
    let page = || http.get(format!("{query}/v1/courses/{a}"));
    let stale = until(&stack, Duration::from_secs(3), page, |a| {
        a.header("x-view-stale") == "true"
    })
    .await?;
    assert_eq!(stale.status, StatusCode::OK);
    assert_eq!(stale.body["sale"]["price_krw"], 5_000);
    let event = stack
        .send(http.get(format!("{query}/v1/events/{event_id}")))
        .await?;
    assert_eq!(event.status, StatusCode::OK);
    assert_eq!(event.header("x-view-stale"), "true");
    let outside = stack
        .send(http.get(format!("{query}/v1/courses/{cold}")))
        .await?;
    assert_eq!(outside.status, StatusCode::SERVICE_UNAVAILABLE);

    // Switched off: 503 like any read while Redis is away; on again: stale pages.
    flags.set(json!({ "stale-views-on-redis-outage": off() }))?;
    until(&stack, WITHIN, page, |a| {
        a.status == StatusCode::SERVICE_UNAVAILABLE
    })
    .await?;
    flags.set(json!({}))?;
    until(&stack, WITHIN, page, |a| a.status == StatusCode::OK).await?;
    redis.restart_empty().await?;
    stack.cleanup().await
}
