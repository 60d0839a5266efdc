//! `POST /v1/orders`: pricing, seats, enrollments and idempotency.

use std::sync::Arc;

use serde_json::{json, Value};

use crate::helpers::{assert_error, spawn_app, spawn_app_with, TestApp};

/// A user and two courses (10,000 and 25,000 won).
async fn shop(app: &TestApp) -> (i64, i64, i64) {
    let user = app.create_user("buyer@example.com", Some("Acme")).await;
    let rust = app.create_course("Rust from scratch", 10_000).await;
    let sql = app.create_course("PostgreSQL internals", 25_000).await;
    (user, rust, sql)
}

/// Parses `X/X` (hex halves of a 64-bit LSN).
fn parse_lsn(text: &str) -> Option<u64> {
    let (high, low) = text.split_once('/')?;
    let high = u64::from_str_radix(high, 16).ok()?;
    let low = u64::from_str_radix(low, 16).ok()?;
    (high <= u64::from(u32::MAX) && low <= u64::from(u32::MAX)).then_some((high << 32) | low)
}

/// The `X-Commit-Lsn` of `response`, as a number.
fn token(response: &reqwest::Response) -> u64 {
    response
        .headers()
        .get("x-commit-lsn")
        .and_then(|value| value.to_str().ok())
        .and_then(parse_lsn)
        .expect("an X-Commit-Lsn")
}

#[tokio::test]
async fn the_token_is_at_or_past_the_end_of_the_commit_record_and_the_connection_goes_on() {
    // One connection: every write below reuses the session the one before
    // committed on, with the COMMIT and the token read in one round trip.
    let app = spawn_app_with(|config| config.db_pool_size = 1).await;
    let (user, rust, sql) = shop(&app).await;
    let slot = format!("token_{}", uuid::Uuid::new_v4().simple());
    sqlx::query("SELECT pg_create_logical_replication_slot($1, 'test_decoding')")
        .bind(&slot)
        .execute(&app.db)
        .await
        .expect("a slot");

    let placed = app
        .post_order("one", &json!({ "user_id": user, "course_ids": [rust] }))
        .await;
    // Where each transaction's commit record ends, as logical decoding says.
    let commits: Vec<String> = sqlx::query_scalar(
        "SELECT lsn::text FROM pg_logical_slot_peek_changes($1, NULL, NULL) \
         WHERE data LIKE 'COMMIT%'",
    )
    .bind(&slot)
    .fetch_all(&app.db)
    .await
    .expect("the slot's changes");
    sqlx::query("SELECT pg_drop_replication_slot($1)")
        .bind(&slot)
        .execute(&app.db)
        .await
        .expect("the slot dropped");

    assert_eq!(placed.status(), 201);
    assert_eq!(commits.len(), 1, "{commits:?}");
    let commit_end = parse_lsn(&commits[0]).expect("an lsn");
    let first = token(&placed);
    assert!(
        first >= commit_end,
        "token {first} before the commit's end {commit_end}"
    );

    // The session goes on: each later write commits and answers a token past
    // the one before.
    let order_id = placed.json::<Value>().await.expect("json")["id"]
        .as_i64()
        .expect("an id");
    let cancelled = app.cancel_order(order_id).await;
    assert_eq!(cancelled.status(), 200);
    let second = token(&cancelled);
    let again = app
        .post_order("two", &json!({ "user_id": user, "course_ids": [sql] }))
        .await;
    assert_eq!(again.status(), 201);
    let third = token(&again);
    assert!(first < second && second < third, "{first} {second} {third}");
    assert_eq!(app.count("SELECT count(*) FROM orders").await, 2);
    assert_eq!(
        app.count("SELECT count(*) FROM enrollments WHERE revoked_at IS NULL")
            .await,
        1
    );
}

#[tokio::test]
async fn an_order_returns_201_with_items_total_and_a_commit_lsn() {
    let app = spawn_app().await;
    let (user, rust, sql) = shop(&app).await;

    let response = app
        .post_order(
            "order-1",
            &json!({ "user_id": user, "course_ids": [sql, rust] }),
        )
        .await;

    assert_eq!(response.status(), 201);
    assert!(response.headers().get("idempotent-replayed").is_none());
    let lsn = response
        .headers()
        .get("x-commit-lsn")
        .and_then(|value| value.to_str().ok())
        .expect("X-Commit-Lsn")
        .to_owned();
    assert!(parse_lsn(&lsn).is_some_and(|lsn| lsn > 0), "lsn {lsn}");
    let body: Value = response.json().await.expect("json");
    assert!(body["id"].as_i64().is_some_and(|id| id > 0));
    assert_eq!(body["user_id"], user);
    assert_eq!(body["status"], "completed");
    assert_eq!(body["total_krw"], 35_000);
    assert_eq!(
        body["items"],
        json!([{ "course_id": sql, "price_krw": 25_000 }, { "course_id": rust, "price_krw": 10_000 }])
    );
    assert!(body["created_at"].is_string());

    // The facts the projector reads: one order, its items, one enrollment per
    // course carrying the buyer's company.
    assert_eq!(app.count("SELECT count(*) FROM orders").await, 1);
    assert_eq!(app.count("SELECT count(*) FROM order_items").await, 2);
    assert_eq!(
        app.count(
            "SELECT count(*) FROM enrollments \
             WHERE company = 'Acme' AND order_id IS NOT NULL AND event_id IS NULL"
        )
        .await,
        2
    );
    // The commit LSN is at or after the order's commit: not past the insert
    // position read afterwards (the write position may lag it).
    let current: String = sqlx::query_scalar("SELECT pg_current_wal_insert_lsn()::text")
        .fetch_one(&app.db)
        .await
        .expect("lsn");
    assert!(parse_lsn(&current) >= parse_lsn(&lsn));
}

#[tokio::test]
async fn an_order_in_a_running_event_pays_the_sale_price_and_takes_a_seat() {
    let app = spawn_app().await;
    let (user, rust, sql) = shop(&app).await;
    let event = app.create_event(35, true, &[(rust, Some(3))]).await;

    let response = app
        .post_order(
            "sale-1",
            &json!({ "user_id": user, "course_ids": [rust, sql], "event_id": event }),
        )
        .await;

    assert_eq!(response.status(), 201);
    let body: Value = response.json().await.expect("json");
    // 10,000 * 65 / 100 for the event's course; list price for the other.
    assert_eq!(
        body["items"],
        json!([{ "course_id": rust, "price_krw": 6_500 }, { "course_id": sql, "price_krw": 25_000 }])
    );
    assert_eq!(body["total_krw"], 31_500);
    assert_eq!(body["event_id"], event);
    assert_eq!(
        app.count("SELECT count(*) FROM event_seats WHERE order_id IS NOT NULL")
            .await,
        1
    );
    assert_eq!(
        app.count("SELECT count(*) FROM enrollments WHERE event_id IS NOT NULL")
            .await,
        1
    );
}

#[tokio::test]
async fn when_the_last_seat_is_gone_the_whole_order_is_409_sold_out() {
    let app = spawn_app().await;
    let (first, rust, sql) = shop(&app).await;
    let second = app.create_user("second@example.com", None).await;
    let event = app
        .create_event(100, true, &[(rust, Some(1)), (sql, None)])
        .await;

    let bought = app
        .post_order(
            "a",
            &json!({ "user_id": first, "course_ids": [rust], "event_id": event }),
        )
        .await;
    assert_eq!(bought.status(), 201);
    let body: Value = bought.json().await.expect("json");
    assert_eq!(body["total_krw"], 0);

    let refused = app
        .post_order(
            "b",
            &json!({ "user_id": second, "course_ids": [sql, rust], "event_id": event }),
        )
        .await;

    assert_error(refused, 409, "sold_out").await;
    // All or nothing: the unlimited course was not bought either.
    assert_eq!(app.count("SELECT count(*) FROM orders").await, 1);
    assert_eq!(app.count("SELECT count(*) FROM enrollments").await, 1);
    assert_eq!(app.count("SELECT count(*) FROM idempotency_keys").await, 1);
}

#[tokio::test]
async fn concurrent_buyers_never_oversell_the_seats() {
    // Admission is not under test here: the 20 buyers get all the time a
    // shared machine may need to open the pool's connections.
    let app =
        spawn_app_with(|config| config.db_acquire_timeout = std::time::Duration::from_secs(30))
            .await;
    let course = app.create_course("Rust from scratch", 10_000).await;
    let event = app.create_event(50, true, &[(course, Some(5))]).await;
    let mut users = Vec::new();
    for n in 0..20 {
        users.push(
            app.create_user(&format!("buyer{n}@example.com"), None)
                .await,
        );
    }
    let app = std::sync::Arc::new(app);

    let mut tasks = tokio::task::JoinSet::new();
    for user in users {
        let app = app.clone();
        tasks.spawn(async move {
            app.post_order(
                "seat",
                &json!({ "user_id": user, "course_ids": [course], "event_id": event }),
            )
            .await
            .status()
            .as_u16()
        });
    }
    let mut statuses = Vec::new();
    while let Some(status) = tasks.join_next().await {
        statuses.push(status.expect("task"));
    }

    assert_eq!(
        statuses.iter().filter(|s| **s == 201).count(),
        5,
        "{statuses:?}"
    );
    assert_eq!(
        statuses.iter().filter(|s| **s == 409).count(),
        15,
        "{statuses:?}"
    );
    assert_eq!(app.count("SELECT count(*) FROM enrollments").await, 5);
    assert_eq!(
        app.count("SELECT count(DISTINCT order_id) FROM event_seats WHERE order_id IS NOT NULL")
            .await,
        5
    );
}

#[tokio::test]
async fn an_event_that_has_not_started_has_ended_or_is_missing_is_422_on_event_id() {
    let app = spawn_app().await;
    let (user, rust, _) = shop(&app).await;
    let later = app.create_event(50, false, &[(rust, None)]).await;

    let upcoming = app
        .post_order(
            "k",
            &json!({ "user_id": user, "course_ids": [rust], "event_id": later }),
        )
        .await;
    let body = assert_error(upcoming, 422, "validation_failed").await;
    assert!(body["error"]["fields"]["event_id"].is_string(), "{body}");

    // The window is half-open: an event that ended a second ago is over.
    let ended: i64 = sqlx::query_scalar(
        "INSERT INTO sale_events (name, starts_at, ends_at, discount_percent) \
         VALUES ('ended', now() - interval '1 hour', now() - interval '1 second', 50) RETURNING id",
    )
    .fetch_one(&app.db)
    .await
    .expect("event inserted");
    sqlx::query("INSERT INTO sale_event_courses (event_id, course_id) VALUES ($1, $2)")
        .bind(ended)
        .bind(rust)
        .execute(&app.db)
        .await
        .expect("event course inserted");
    let over = app
        .post_order(
            "k",
            &json!({ "user_id": user, "course_ids": [rust], "event_id": ended }),
        )
        .await;
    let body = assert_error(over, 422, "validation_failed").await;
    assert!(body["error"]["fields"]["event_id"].is_string(), "{body}");

    let missing = app
        .post_order(
            "k",
            &json!({ "user_id": user, "course_ids": [rust], "event_id": 999 }),
        )
        .await;
    let body = assert_error(missing, 422, "validation_failed").await;
    assert!(body["error"]["fields"]["event_id"].is_string(), "{body}");
}

#[tokio::test]
async fn unknown_users_and_courses_are_422_naming_the_fields() {
    let app = spawn_app().await;
    let (_, rust, _) = shop(&app).await;

    let response = app
        .post_order("k", &json!({ "user_id": 999, "course_ids": [rust, 777] }))
        .await;

    let body = assert_error(response, 422, "validation_failed").await;
    assert!(body["error"]["fields"]["user_id"].is_string(), "{body}");
    let problem = body["error"]["fields"]["course_ids"]
        .as_str()
        .expect("course_ids");
    assert!(problem.contains("777"), "{problem}");
    assert_eq!(app.count("SELECT count(*) FROM idempotency_keys").await, 0);
}

#[tokio::test]
async fn empty_repeated_or_too_many_course_ids_are_422() {
    let app = spawn_app().await;
    let (user, rust, _) = shop(&app).await;
    let too_many: Vec<i64> = (1..=501).collect();

    for course_ids in [json!([]), json!([rust, rust]), json!(too_many)] {
        let response = app
            .post_order("k", &json!({ "user_id": user, "course_ids": course_ids }))
            .await;
        let body = assert_error(response, 422, "validation_failed").await;
        assert!(body["error"]["fields"]["course_ids"].is_string(), "{body}");
    }
}

#[tokio::test]
async fn retrying_with_the_same_key_and_body_replays_the_stored_order() {
    let app = spawn_app().await;
    let (user, rust, sql) = shop(&app).await;
    let request = json!({ "user_id": user, "course_ids": [rust, sql] });
    let first = app.post_order("retry-me", &request).await;
    assert_eq!(first.status(), 201);
    let first: Value = first.json().await.expect("json");

    // The same JSON, written differently: keys reordered.
    let retry = app
        .client
        .post(app.url("/v1/orders"))
        .header("Idempotency-Key", "retry-me")
        .header("content-type", "application/json")
        .body(format!(
            r#"{{ "course_ids": [{rust}, {sql}],  "user_id": {user} }}"#
        ))
        .send()
        .await
        .expect("answered");

    assert_eq!(retry.status(), 200);
    assert_eq!(
        retry
            .headers()
            .get("idempotent-replayed")
            .map(|v| v.as_bytes()),
        Some(&b"true"[..])
    );
    assert!(retry.headers().contains_key("x-commit-lsn"));
    let replayed: Value = retry.json().await.expect("json");
    assert_eq!(replayed, first);
    assert_eq!(app.count("SELECT count(*) FROM orders").await, 1);
    assert_eq!(app.count("SELECT count(*) FROM enrollments").await, 2);
}

#[tokio::test]
async fn the_same_key_with_a_different_body_is_409_idempotency_key_reused() {
    let app = spawn_app().await;
    let (user, rust, sql) = shop(&app).await;
    let first = app
        .post_order("one-key", &json!({ "user_id": user, "course_ids": [rust] }))
        .await;
    assert_eq!(first.status(), 201);

    let second = app
        .post_order("one-key", &json!({ "user_id": user, "course_ids": [sql] }))
        .await;

    assert_error(second, 409, "idempotency_key_reused").await;
    assert_eq!(app.count("SELECT count(*) FROM orders").await, 1);
}

#[tokio::test]
async fn keys_are_scoped_per_user() {
    let app = spawn_app().await;
    let (first, rust, _) = shop(&app).await;
    let second = app.create_user("second@example.com", None).await;

    let a = app
        .post_order("shared", &json!({ "user_id": first, "course_ids": [rust] }))
        .await;
    let b = app
        .post_order(
            "shared",
            &json!({ "user_id": second, "course_ids": [rust] }),
        )
        .await;

    assert_eq!(a.status(), 201);
    assert_eq!(b.status(), 201);
    assert_eq!(app.count("SELECT count(*) FROM orders").await, 2);
}

#[tokio::test]
async fn a_failed_order_stores_nothing_so_a_corrected_retry_may_reuse_the_key() {
    let app = spawn_app().await;
    let (user, rust, _) = shop(&app).await;

    let failed = app
        .post_order(
            "fix-me",
            &json!({ "user_id": user, "course_ids": [rust, 999] }),
        )
        .await;
    assert_error(failed, 422, "validation_failed").await;

    let corrected = app
        .post_order("fix-me", &json!({ "user_id": user, "course_ids": [rust] }))
        .await;
    assert_eq!(corrected.status(), 201);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_simultaneous_identical_orders_create_one_order_and_all_get_it_back() {
    // Admission is not under test here: the 100 requests are all admitted
    // and get all the time a shared machine may need for a connection.
    let app = std::sync::Arc::new(
        spawn_app_with(|config| {
            config.concurrency_limit = Some(256);
            config.db_acquire_timeout = std::time::Duration::from_secs(30);
        })
        .await,
    );
    let (user, rust, sql) = shop(&app).await;
    let request = json!({ "user_id": user, "course_ids": [rust, sql] });

    let start = std::sync::Arc::new(tokio::sync::Barrier::new(100));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..100 {
        let app = app.clone();
        let request = request.clone();
        let start = start.clone();
        tasks.spawn(async move {
            start.wait().await;
            let response = app.post_order("double-click", &request).await;
            let status = response.status().as_u16();
            let replayed = response.headers().contains_key("idempotent-replayed");
            let body: Value = response.json().await.expect("json");
            (status, replayed, body)
        });
    }
    let mut answers = Vec::new();
    while let Some(answer) = tasks.join_next().await {
        answers.push(answer.expect("task"));
    }

    let created: Vec<&Value> = answers
        .iter()
        .filter(|(status, replayed, _)| *status == 201 && !replayed)
        .map(|(_, _, body)| body)
        .collect();
    let replayed = answers
        .iter()
        .filter(|(status, replayed, _)| *status == 200 && *replayed)
        .count();
    assert_eq!((created.len(), replayed), (1, 99), "{answers:?}");
    let order = created[0];
    assert!(order["id"].is_i64());
    assert!(
        answers.iter().all(|(_, _, body)| body == order),
        "every answer is the same order"
    );
    assert_eq!(app.count("SELECT count(*) FROM orders").await, 1);
    assert_eq!(app.count("SELECT count(*) FROM order_items").await, 2);
    assert_eq!(app.count("SELECT count(*) FROM enrollments").await, 2);
    assert_eq!(app.count("SELECT count(*) FROM idempotency_keys").await, 1);
}

#[tokio::test]
async fn buying_a_course_twice_is_409_already_enrolled() {
    let app = spawn_app().await;
    let (user, rust, sql) = shop(&app).await;
    let first = app
        .post_order("first", &json!({ "user_id": user, "course_ids": [rust] }))
        .await;
    assert_eq!(first.status(), 201);

    let second = app
        .post_order(
            "second",
            &json!({ "user_id": user, "course_ids": [sql, rust] }),
        )
        .await;

    let body = assert_error(second, 409, "already_enrolled").await;
    let message = body["error"]["message"].as_str().expect("message");
    assert!(message.contains(&rust.to_string()), "{message}");
    assert_eq!(app.count("SELECT count(*) FROM orders").await, 1);
}

#[tokio::test]
async fn concurrent_orders_of_one_user_for_one_course_enroll_once() {
    let app = std::sync::Arc::new(spawn_app().await);
    let (user, rust, sql) = shop(&app).await;

    let mut tasks = tokio::task::JoinSet::new();
    for n in 0..10 {
        let app = app.clone();
        // Overlapping orders in both course orders, each with its own key.
        let course_ids = if n % 2 == 0 {
            json!([rust, sql])
        } else {
            json!([sql, rust])
        };
        tasks.spawn(async move {
            app.post_order(
                &format!("key-{n}"),
                &json!({ "user_id": user, "course_ids": course_ids }),
            )
            .await
            .status()
            .as_u16()
        });
    }
    let mut statuses = Vec::new();
    while let Some(status) = tasks.join_next().await {
        statuses.push(status.expect("task"));
    }

    assert_eq!(
        statuses.iter().filter(|s| **s == 201).count(),
        1,
        "{statuses:?}"
    );
    assert_eq!(
        statuses.iter().filter(|s| **s == 409).count(),
        9,
        "{statuses:?}"
    );
    assert_eq!(app.count("SELECT count(*) FROM enrollments").await, 2);
}

/// The message of the 409 that `send`'s request gets when a concurrent
/// transaction enrolls `user` in `course` after the request read the facts:
/// the enrollment is held uncommitted until the request waits at the
/// unique key, then committed.
async fn refused_by_a_concurrent_enrollment<F>(
    app: &Arc<TestApp>,
    user: i64,
    course: i64,
    send: impl FnOnce(Arc<TestApp>) -> F,
) -> String
where
    F: std::future::Future<Output = reqwest::Response> + Send + 'static,
{
    let mut holder = app.db.begin().await.expect("begin");
    sqlx::query("INSERT INTO enrollments (user_id, course_id) VALUES ($1, $2)")
        .bind(user)
        .bind(course)
        .execute(&mut *holder)
        .await
        .expect("enrollment held");
    let waiting = tokio::spawn(send(app.clone()));
    app.wait_for_a_lock_wait().await;

    holder.commit().await.expect("commit");

    let body = assert_error(waiting.await.expect("task"), 409, "already_enrolled").await;
    body["error"]["message"]
        .as_str()
        .expect("message")
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_order_refused_by_a_concurrent_enrollment_names_the_course_it_would_have_doubled() {
    let app = Arc::new(spawn_app().await);
    let (user, rust, sql) = shop(&app).await;

    let message = refused_by_a_concurrent_enrollment(&app, user, rust, |app| async move {
        let order = json!({ "user_id": user, "course_ids": [sql, rust] });
        app.post_order("race", &order).await
    })
    .await;

    assert!(message.contains(&format!("course(s) {rust}")), "{message}");
    assert!(!message.contains(&sql.to_string()), "{message}");
    assert_eq!(app.count("SELECT count(*) FROM orders").await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_direct_enrollment_refused_by_a_concurrent_one_names_its_course() {
    let app = Arc::new(spawn_app().await);
    let user = app.create_user("learner@example.com", None).await;
    let free = app.create_course("Free intro", 0).await;

    let message = refused_by_a_concurrent_enrollment(&app, user, free, |app| async move {
        let enrollment = json!({ "user_id": user, "course_id": free });
        app.post_json("/v1/enrollments", &enrollment).await
    })
    .await;

    assert!(message.contains(&format!("course(s) {free}")), "{message}");
}

#[tokio::test]
async fn an_order_without_an_idempotency_key_is_428() {
    let app = spawn_app().await;
    let (user, rust, _) = shop(&app).await;

    let response = app
        .post_json(
            "/v1/orders",
            &json!({ "user_id": user, "course_ids": [rust] }),
        )
        .await;

    assert_error(response, 428, "idempotency_key_required").await;
}

#[tokio::test]
async fn a_malformed_idempotency_key_is_400() {
    let app = spawn_app().await;
    let (user, rust, _) = shop(&app).await;
    let request = json!({ "user_id": user, "course_ids": [rust] });

    for key in ["", "has space", &"k".repeat(129)] {
        let response = app.post_order(key, &request).await;
        assert_error(response, 400, "bad_request").await;
    }
    let longest = app.post_order(&"k".repeat(128), &request).await;
    assert_eq!(longest.status(), 201);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_order_waits_for_a_concurrent_holder_of_its_key_and_proceeds_when_it_rolls_back() {
    let app = std::sync::Arc::new(spawn_app().await);
    let (user, rust, _) = shop(&app).await;
    // Another attempt with the same key is in flight: its row is not committed.
    let holder = app.hold_key(user, "held").await;
    let waiting = app.order_waiting_on_held_key(user, rust).await;

    holder.rollback().await.expect("rollback");
    assert_eq!(waiting.await.expect("task"), 201);
    assert_eq!(app.count("SELECT count(*) FROM orders").await, 1);
}

#[tokio::test]
async fn expired_idempotency_keys_are_deleted_and_fresh_ones_kept() {
    let app = spawn_app_with(|config| {
        config.idempotency_sweep_interval = std::time::Duration::from_millis(50);
    })
    .await;
    sqlx::query(
        "INSERT INTO idempotency_keys (user_id, key, request, created_at) VALUES \
         (1, 'old', '{}', now() - interval '25 hours'), (1, 'fresh', '{}', now())",
    )
    .execute(&app.db)
    .await
    .expect("keys inserted");

    for _ in 0..100 {
        if app
            .count("SELECT count(*) FROM idempotency_keys WHERE key = 'old'")
            .await
            == 0
        {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }

    assert_eq!(
        app.count("SELECT count(*) FROM idempotency_keys WHERE key = 'old'")
            .await,
        0
    );
    assert_eq!(
        app.count("SELECT count(*) FROM idempotency_keys WHERE key = 'fresh'")
            .await,
        1
    );
}

#[tokio::test]
async fn a_statement_past_the_statement_timeout_is_503_and_stores_nothing() {
    let app = spawn_app_with(|config| {
        config.db_statement_timeout = std::time::Duration::from_millis(300);
    })
    .await;
    let (user, rust, _) = shop(&app).await;
    let mut holder = app.db.begin().await.expect("begin");
    sqlx::query("INSERT INTO idempotency_keys (user_id, key, request) VALUES ($1, 'held', '{}')")
        .bind(user)
        .execute(&mut *holder)
        .await
        .expect("key held");

    // The order's INSERT waits on the held key until PostgreSQL cancels it.
    let started = std::time::Instant::now();
    let response = app
        .post_order("held", &json!({ "user_id": user, "course_ids": [rust] }))
        .await;

    // Well before the 10s request deadline: the statement timeout fired.
    assert!(started.elapsed() < std::time::Duration::from_secs(5));

    assert!(response.headers().contains_key("retry-after"));
    assert_error(response, 503, "unavailable").await;
    holder.rollback().await.expect("rollback");
    assert_eq!(app.count("SELECT count(*) FROM orders").await, 0);
    assert_eq!(app.count("SELECT count(*) FROM idempotency_keys").await, 0);
}
