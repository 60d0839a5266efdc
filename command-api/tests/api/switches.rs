//! Ops flags on the running app: a flag file edited during the test turns
//! each checkout switch off within a second and back on again, a malformed
//! file keeps the last good flags, and the release toggle's statement writes
//! the same orders.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::helpers::{spawn_app_with, TestApp};

/// How soon an edited flag file must take effect.
const WITHIN: Duration = Duration::from_secs(1);

/// A flag file of the test's own, replaced the way editors and config
/// syncs do (write beside, rename over).
struct FlagFile {
    dir: PathBuf,
    path: PathBuf,
}

impl FlagFile {
    fn new(flags: Value) -> Self {
        let dir = std::env::temp_dir().join(format!("flags-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).expect("a temporary directory");
        let file = FlagFile {
            path: dir.join("flags.json"),
            dir,
        };
        file.set(flags);
        file
    }

    fn set(&self, flags: Value) {
        self.write(&json!({ "flags": flags }).to_string());
    }

    fn write(&self, text: &str) {
        let beside = self.dir.join("flags.json.new");
        std::fs::write(&beside, text).expect("written");
        std::fs::rename(&beside, &self.path).expect("renamed");
    }
}

impl Drop for FlagFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A boolean flag whose default variant is `on`.
fn switch(on: bool) -> Value {
    json!({"state": "ENABLED", "variants": {"on": true, "off": false},
           "defaultVariant": if on { "on" } else { "off" }})
}

async fn spawn_with_flags(file: &FlagFile, admin_token: Option<&str>) -> TestApp {
    let path = file.path.clone();
    let admin = service::AdminToken::new(admin_token);
    spawn_app_with(move |config| {
        config.flags.flags_file = Some(path);
        config.admin = admin;
        config.idempotency_sweep_interval = Duration::from_millis(100);
    })
    .await
}

/// Sends `request` until its status is `status` (then returns the
/// response and how long it took) or `WITHIN` has passed (then fails).
async fn until_status<F, Fut>(status: u16, mut request: F) -> (reqwest::Response, Duration)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = reqwest::Response>,
{
    let start = Instant::now();
    loop {
        let response = request().await;
        if response.status() == status {
            return (response, start.elapsed());
        }
        assert!(
            start.elapsed() < WITHIN,
            "still {} after {:?}, expected {status}",
            response.status(),
            start.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// A 503 `feature_disabled` naming `flag`, with `Retry-After`.
async fn assert_switched_off(response: reqwest::Response, flag: &str) {
    assert_eq!(response.status(), 503);
    assert!(response.headers().get("retry-after").is_some());
    let body: Value = response.json().await.expect("json");
    assert_eq!(body["error"]["code"], "feature_disabled", "{body}");
    let message = body["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains(flag), "{message}");
}

/// `POST /v1/orders` of `body` under `key`, owning both.
async fn order(app: &TestApp, key: String, body: Value) -> reqwest::Response {
    app.post_order(&key, &body).await
}

/// An order of a course that does not exist: 422 when admitted, so probing
/// with it writes nothing whichever way a switch stands.
fn probe_order(user: i64, event_id: Option<i64>) -> Value {
    json!({ "user_id": user, "course_ids": [987_654_321], "event_id": event_id })
}

#[tokio::test]
async fn each_checkout_switch_takes_effect_within_a_second_and_back_again() {
    let file = FlagFile::new(json!({}));
    let app = spawn_with_flags(&file, None).await;
    let user = app.create_user("switches@example.com", None).await;
    let course = app.create_course("Rust at scale", 50_000).await;
    let free = app.create_course("Intro", 0).await;
    let event = app.create_event(50, true, &[(course, Some(3))]).await;
    let mut keys = 0;
    let mut key = move || {
        keys += 1;
        format!("probe-{keys}")
    };

    // Maintenance: every order and enrollment off, then on again.
    file.set(json!({ "checkout-orders": switch(false) }));
    let (refused, took) = until_status(503, || order(&app, key(), probe_order(user, None))).await;
    assert_switched_off(refused, "checkout-orders").await;
    let enrollment = json!({ "user_id": user, "course_id": free });
    let refused = app.post_json("/v1/enrollments", &enrollment).await;
    assert_switched_off(refused, "checkout-orders").await;
    assert!(took < WITHIN, "{took:?}");
    file.set(json!({ "checkout-orders": switch(true) }));
    until_status(422, || order(&app, key(), probe_order(user, None))).await;

    // Direct enrollments off: orders still taken.
    file.set(json!({ "checkout-enrollments": switch(false) }));
    let unknown = json!({ "user_id": user, "course_id": 987_654_321 });
    let (refused, _) = until_status(503, || app.post_json("/v1/enrollments", &unknown)).await;
    assert_switched_off(refused, "checkout-enrollments").await;
    let plain = app
        .post_order("plain", &json!({ "user_id": user, "course_ids": [course] }))
        .await;
    assert_eq!(plain.status(), 201);
    file.set(json!({}));
    until_status(201, || app.post_json("/v1/enrollments", &enrollment)).await;

    // One sale event's purchases paused: seats untouched, other purchases go on.
    let buyer = app.create_user("buyer@example.com", None).await;
    let mut paused = switch(true);
    paused["targeting"] = json!({"if": [{"in": [{"var": "eventId"}, [event]]}, "off", null]});
    file.set(json!({ "checkout-event-purchases": paused }));
    let in_event = json!({ "user_id": buyer, "course_ids": [course], "event_id": event });
    let (refused, _) =
        until_status(503, || order(&app, key(), probe_order(buyer, Some(event)))).await;
    assert_switched_off(refused, "checkout-event-purchases").await;
    let refused = app.post_order("in-event", &in_event).await;
    assert_switched_off(refused, "checkout-event-purchases").await;
    let enrollment_in_event = json!({ "user_id": buyer, "course_id": course, "event_id": event });
    let refused = app.post_json("/v1/enrollments", &enrollment_in_event).await;
    assert_switched_off(refused, "checkout-event-purchases").await;
    let claimed = "SELECT count(*) FROM event_seats WHERE order_id IS NOT NULL";
    assert_eq!(app.count(claimed).await, 0, "no seat claimed");
    let buyer_orders = app.count("SELECT count(*) FROM orders").await;
    assert_eq!(buyer_orders, 2, "only the earlier order and enrollment");
    file.set(json!({}));
    let (placed, _) = until_status(201, || order(&app, key(), in_event.clone())).await;
    let receipt: Value = placed.json().await.expect("json");
    assert_eq!(receipt["total_krw"], 25_000);
    assert_eq!(app.count(claimed).await, 1);

    // Order intake capped at 2 a second: a burst past it is refused.
    file.set(json!({ "checkout-order-rate": {"state": "ENABLED",
        "variants": {"capped": 2, "open": 0}, "defaultVariant": "capped"} }));
    let (refused, _) = until_status(503, || order(&app, key(), probe_order(user, None))).await;
    assert!(refused.headers().get("retry-after").is_some());
    let body: Value = refused.json().await.expect("json");
    assert_eq!(body["error"]["code"], "unavailable");
    assert!(body["error"]["message"]
        .as_str()
        .is_some_and(|m| m.contains("checkout-order-rate")));
    // Direct enrollments are written as orders: the same cap holds them.
    let enrollment = json!({ "user_id": user, "course_id": course });
    let (refused, _) = until_status(503, || app.post_json("/v1/enrollments", &enrollment)).await;
    let body: Value = refused.json().await.expect("json");
    assert!(body["error"]["message"]
        .as_str()
        .is_some_and(|m| m.contains("checkout-order-rate")));
    file.set(json!({}));
    // Uncapped, a burst is taken whole.
    let start = Instant::now();
    loop {
        let mut statuses = Vec::new();
        for _ in 0..10 {
            statuses.push(order(&app, key(), probe_order(user, None)).await.status());
        }
        if statuses.iter().all(|s| *s == 422) {
            break;
        }
        assert!(start.elapsed() < WITHIN, "still capped: {statuses:?}");
    }
}

#[tokio::test]
async fn a_malformed_flag_file_keeps_the_last_good_values_and_says_why() {
    let file = FlagFile::new(json!({ "checkout-orders": switch(false) }));
    let app = spawn_with_flags(&file, Some("ops-secret")).await;
    let user = 1;
    let refused = app.post_order("k1", &probe_order(user, None)).await;
    assert_switched_off(refused, "checkout-orders").await;

    for broken in [
        "{ \"flags\": ",
        r#"{"flags": {"checkout-orders": {"state": "ENABLED", "variants": {"on": 1}, "defaultVariant": "on"}}}"#,
    ] {
        file.write(broken);
        let start = Instant::now();
        let listing = loop {
            let listing: Value = app
                .client
                .get(app.url("/v1/ops/flags"))
                .bearer_auth("ops-secret")
                .send()
                .await
                .expect("answered")
                .json()
                .await
                .expect("json");
            if listing["file_problem"].is_string() {
                break listing;
            }
            assert!(start.elapsed() < WITHIN, "the bad file was not noticed");
            tokio::time::sleep(Duration::from_millis(25)).await;
        };
        let orders = listing["flags"]
            .as_array()
            .and_then(|flags| flags.iter().find(|f| f["flag"] == "checkout-orders"))
            .cloned()
            .expect("listed");
        assert_eq!(orders["value"], false, "{listing}");
        let refused = app.post_order("k2", &probe_order(user, None)).await;
        assert_switched_off(refused, "checkout-orders").await;
        let metrics = app.metrics().await;
        assert!(metrics.contains("flags_file_ok 0"), "{metrics}");
        assert!(
            metrics.contains("flag_value{flag=\"checkout-orders\"} 0"),
            "{metrics}"
        );
    }
    // A missing file too.
    std::fs::remove_file(&file.path).expect("removed");
    file.set(json!({}));
    until_status(422, || {
        order(&app, "k3".to_owned(), probe_order(user, None))
    })
    .await;
    let metrics = app.metrics().await;
    assert!(metrics.contains("flags_file_ok 1"), "{metrics}");
    assert!(metrics.contains("flag_value{flag=\"checkout-orders\"} 1"));
}

#[tokio::test]
async fn the_flags_route_needs_the_admin_token_and_lists_every_flag() {
    let file = FlagFile::new(json!({ "checkout-enrollments": switch(false) }));
    let app = spawn_with_flags(&file, Some("ops-secret")).await;
    let anonymous = app.get("/v1/ops/flags").await;
    assert_eq!(anonymous.status(), 401);
    let listing: Value = app
        .client
        .get(app.url("/v1/ops/flags"))
        .bearer_auth("ops-secret")
        .send()
        .await
        .expect("answered")
        .json()
        .await
        .expect("json");
    let flags = listing["flags"].as_array().expect("a list");
    let value = |key: &str| {
        flags
            .iter()
            .find(|f| f["flag"] == key)
            .map(|f| f["value"].clone())
    };
    assert_eq!(value("checkout-enrollments"), Some(json!(false)));
    assert_eq!(value("checkout-orders"), Some(json!(true)));
    assert_eq!(value("checkout-order-rate"), Some(json!(0)));
    assert_eq!(value("idempotency-key-expiry"), Some(json!(true)));
    assert_eq!(value("checkout-joined-lookup"), Some(json!(true)));

    // Without a configured token the route is off.
    let open = spawn_with_flags(&file, None).await;
    assert_eq!(open.get("/v1/ops/flags").await.status(), 401);
}

#[tokio::test]
async fn the_key_expiry_pauses_while_its_switch_is_off() {
    let file = FlagFile::new(json!({ "idempotency-key-expiry": switch(false) }));
    let app = spawn_with_flags(&file, None).await;
    sqlx::query(
        "INSERT INTO idempotency_keys (user_id, key, request, created_at) \
         VALUES (1, 'old', '{}', now() - interval '3 days')",
    )
    .execute(&app.db)
    .await
    .expect("an expired key");
    let kept = "SELECT count(*) FROM idempotency_keys";
    // Several sweeps come and go, skipped: nothing is deleted.
    let start = Instant::now();
    loop {
        let metrics = app.metrics().await;
        let skipped = metrics
            .lines()
            .find_map(|l| l.strip_prefix("command_api_idempotency_sweeps_skipped_total "))
            .and_then(|v| v.trim().parse::<u64>().ok())
            .unwrap_or(0);
        if skipped >= 3 {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "no sweep came: {skipped}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert_eq!(app.count(kept).await, 1);
    file.set(json!({}));
    let start = Instant::now();
    while app.count(kept).await > 0 {
        assert!(
            start.elapsed() < WITHIN + Duration::from_millis(200),
            "not swept"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

#[tokio::test]
async fn users_rolled_back_to_a_statement_a_step_get_the_same_orders() {
    let mut everyone = switch(true);
    everyone["targeting"] = json!({"fractional": [["on", 0], ["off", 100]]});
    let file = FlagFile::new(json!({ "checkout-joined-lookup": everyone }));
    let app = spawn_with_flags(&file, None).await;
    let user = app.create_user("rollout@example.com", Some("Acme")).await;
    let a = app.create_course("A", 10_000).await;
    let b = app.create_course("B", 20_000).await;
    let placed = app
        .post_order("r1", &json!({ "user_id": user, "course_ids": [a, b] }))
        .await;
    assert_eq!(placed.status(), 201);
    let receipt: Value = placed.json().await.expect("json");
    assert_eq!(receipt["total_krw"], 30_000);
    let company: Option<String> = sqlx::query_scalar("SELECT company FROM enrollments LIMIT 1")
        .fetch_one(&app.db)
        .await
        .expect("an enrollment");
    assert_eq!(company.as_deref(), Some("Acme"));
    // Unknown users and courses are named as before.
    let refused = app
        .post_order(
            "r2",
            &json!({ "user_id": 999_999, "course_ids": [a, 777_777] }),
        )
        .await;
    assert_eq!(refused.status(), 422);
    let body: Value = refused.json().await.expect("json");
    assert!(body["error"]["fields"]["user_id"].is_string(), "{body}");
    let refused = app
        .post_order("r3", &json!({ "user_id": user, "course_ids": [777_777] }))
        .await;
    let body: Value = refused.json().await.expect("json");
    assert!(body["error"]["fields"]["course_ids"].is_string(), "{body}");
    let metrics = app.metrics().await;
    assert!(
        metrics.contains("command_api_checkout_lookups_total{lookup=\"separate\"} 1"),
        "{metrics}"
    );
}
