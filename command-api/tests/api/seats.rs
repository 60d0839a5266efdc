//! Event seats claimed by many buyers at once, and cancellation giving them
//! back.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::sync::Barrier;

use crate::helpers::{assert_error, spawn_app, spawn_app_with, TestApp};

/// Inserts `count` users and returns their ids.
async fn users(app: &TestApp, count: i64) -> Vec<i64> {
    sqlx::query_scalar(
        "INSERT INTO users (email, name, company) \
         SELECT 'buyer' || n || '@example.com', 'Buyer ' || n, 'Company ' || (n % 7) \
         FROM generate_series(1, $1) AS n RETURNING id",
    )
    .bind(count)
    .fetch_all(&app.db)
    .await
    .expect("users inserted")
}

async fn order_in_event(
    app: &TestApp,
    key: &str,
    user: i64,
    course: i64,
    event: i64,
) -> (u16, Value) {
    let response = app
        .post_order(
            key,
            &json!({ "user_id": user, "course_ids": [course], "event_id": event }),
        )
        .await;
    let status = response.status().as_u16();
    let body: Value = response.json().await.expect("a JSON body");
    (status, body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixty_four_buyers_for_the_last_ten_seats_get_exactly_ten_orders_and_a_cancel_gives_one_back(
) {
    // Admission is not under test here: the 64 requests are all admitted
    // and get all the time a shared machine may need for a connection.
    let app = Arc::new(
        spawn_app_with(|config| {
            config.concurrency_limit = Some(256);
            config.db_acquire_timeout = Duration::from_secs(30);
        })
        .await,
    );
    let course = app.create_course("Rust from scratch", 10_000).await;
    let event = app.create_event(50, true, &[(course, Some(25))]).await;
    let early = users(&app, 15).await;
    for (n, user) in early.iter().enumerate() {
        let (status, _) = order_in_event(&app, &format!("early-{n}"), *user, course, event).await;
        assert_eq!(status, 201, "early buyer {n}");
    }
    assert_eq!(
        app.count("SELECT count(*) FROM event_seats WHERE order_id IS NULL")
            .await,
        10,
        "ten seats left"
    );
    let late: Vec<i64> = sqlx::query_scalar(
        "INSERT INTO users (email, name) \
         SELECT 'late' || n || '@example.com', 'Late ' || n FROM generate_series(1, 64) AS n \
         RETURNING id",
    )
    .fetch_all(&app.db)
    .await
    .expect("late buyers inserted");

    // Act: 64 buyers released at the same instant against one server.
    let start = Arc::new(Barrier::new(late.len()));
    let mut tasks = tokio::task::JoinSet::new();
    for user in late.clone() {
        let app = app.clone();
        let start = start.clone();
        tasks.spawn(async move {
            start.wait().await;
            let answer = order_in_event(&app, &format!("late-{user}"), user, course, event).await;
            (user, answer)
        });
    }
    let mut winners = Vec::new();
    let mut losers = Vec::new();
    while let Some(joined) = tasks.join_next().await {
        let (user, (status, body)) = joined.expect("task");
        match status {
            201 => winners.push((user, body)),
            409 => {
                assert_eq!(body["error"]["code"], "sold_out", "{body}");
                losers.push(user);
            }
            other => panic!("unexpected status {other}: {body}"),
        }
    }

    // Exactly ten more orders, at the sale price, and the seat rows agree.
    assert_eq!((winners.len(), losers.len()), (10, 54));
    for (_, body) in &winners {
        assert_eq!(body["total_krw"], 5_000, "{body}");
    }
    assert_eq!(
        app.count(
            "SELECT count(*) FROM orders WHERE status = 'completed' AND event_id IS NOT NULL"
        )
        .await,
        25
    );
    assert_eq!(
        app.count("SELECT count(*) FROM event_seats WHERE order_id IS NULL")
            .await,
        0
    );
    assert_eq!(
        app.count("SELECT count(DISTINCT order_id) FROM event_seats")
            .await,
        25,
        "one seat per order, no seat shared"
    );
    assert_eq!(
        app.count(
            "SELECT count(*) FROM orders o \
             WHERE NOT EXISTS (SELECT 1 FROM event_seats s WHERE s.order_id = o.id)"
        )
        .await,
        0,
        "no order without its seat"
    );
    assert_eq!(
        app.count(
            "SELECT count(*) FROM enrollments WHERE event_id IS NOT NULL AND revoked_at IS NULL"
        )
        .await,
        25
    );
    // Refused attempts stored nothing, not even their key.
    assert_eq!(app.count("SELECT count(*) FROM idempotency_keys").await, 25);

    // Cancelling one order gives its seat back: one more buyer gets it, and
    // the next one hears sold_out again.
    let cancelled_id = winners[0].1["id"].as_i64().expect("order id");
    let cancelled = app.cancel_order(cancelled_id).await;
    assert_eq!(cancelled.status(), 200);
    assert_eq!(
        app.count("SELECT count(*) FROM event_seats WHERE order_id IS NULL")
            .await,
        1
    );
    let (status, _) = order_in_event(
        &app,
        &format!("late-{}", losers[0]),
        losers[0],
        course,
        event,
    )
    .await;
    assert_eq!(status, 201, "a refused buyer may retry with the same key");
    let (status, body) = order_in_event(
        &app,
        &format!("late-{}", losers[1]),
        losers[1],
        course,
        event,
    )
    .await;
    assert_eq!((status, &body["error"]["code"]), (409, &json!("sold_out")));
    assert_eq!(
        app.count("SELECT count(*) FROM event_seats WHERE order_id IS NULL")
            .await,
        0
    );
    assert_eq!(
        app.count(
            "SELECT count(*) FROM enrollments WHERE event_id IS NOT NULL AND revoked_at IS NULL"
        )
        .await,
        25
    );
}

/// The state a cancel touches, as text: the order, its enrollments and the
/// event's seats, each row with its `xmin` (which changes on any update).
async fn cancel_footprint(app: &TestApp, order_id: i64) -> String {
    sqlx::query_scalar(
        "SELECT concat_ws(' | ', \
             (SELECT string_agg(concat_ws(',', xmin, status, cancelled_at), ';') \
              FROM orders WHERE id = $1), \
             (SELECT string_agg(concat_ws(',', xmin, id, revoked_at), ';' ORDER BY id) \
              FROM enrollments WHERE order_id = $1), \
             (SELECT string_agg(concat_ws(',', xmin, seat_no, order_id), ';' ORDER BY seat_no) \
              FROM event_seats))",
    )
    .bind(order_id)
    .fetch_one(&app.db)
    .await
    .expect("footprint")
}

#[tokio::test]
async fn cancelling_an_order_twice_is_a_no_op_that_writes_nothing() {
    let app = spawn_app().await;
    let user = app.create_user("buyer@example.com", None).await;
    let rust = app.create_course("Rust from scratch", 10_000).await;
    let sql = app.create_course("PostgreSQL internals", 20_000).await;
    let event = app.create_event(30, true, &[(rust, Some(2))]).await;
    let order = app
        .post_order(
            "k",
            &json!({ "user_id": user, "course_ids": [rust, sql], "event_id": event }),
        )
        .await;
    let order: Value = order.json().await.expect("json");
    let order_id = order["id"].as_i64().expect("order id");
    let first = app.cancel_order(order_id).await;
    assert_eq!(first.status(), 200);
    let first: Value = first.json().await.expect("json");
    let after_first = cancel_footprint(&app, order_id).await;

    let second = app.cancel_order(order_id).await;

    assert_eq!(second.status(), 200);
    let second: Value = second.json().await.expect("json");
    assert_eq!(second, first, "the same answer");
    assert_eq!(second["status"], "cancelled");
    assert_eq!(
        cancel_footprint(&app, order_id).await,
        after_first,
        "no row was written again"
    );
    assert_eq!(
        app.count("SELECT count(*) FROM enrollments WHERE revoked_at IS NOT NULL")
            .await,
        2
    );
    assert_eq!(
        app.count("SELECT count(*) FROM event_seats WHERE order_id IS NULL")
            .await,
        2
    );
}

#[tokio::test]
async fn a_cancel_that_fails_half_way_changes_nothing() {
    let app = spawn_app().await;
    let user = app.create_user("buyer@example.com", None).await;
    let rust = app.create_course("Rust from scratch", 10_000).await;
    let event = app.create_event(30, true, &[(rust, Some(1))]).await;
    let order = app
        .post_order(
            "k",
            &json!({ "user_id": user, "course_ids": [rust], "event_id": event }),
        )
        .await;
    let order: Value = order.json().await.expect("json");
    let order_id = order["id"].as_i64().expect("order id");
    // Returning the seat is the cancel's last step: make it fail, after the
    // order and the enrollment were already updated in the same transaction.
    sqlx::raw_sql(
        "CREATE FUNCTION refuse_seat_return() RETURNS trigger LANGUAGE plpgsql AS $$ \
         BEGIN \
             IF NEW.order_id IS NULL THEN \
                 RAISE EXCEPTION 'seat return refused' USING ERRCODE = 'serialization_failure'; \
             END IF; \
             RETURN NEW; \
         END $$; \
         CREATE TRIGGER refuse_seat_return BEFORE UPDATE ON event_seats \
         FOR EACH ROW EXECUTE FUNCTION refuse_seat_return();",
    )
    .execute(&app.db)
    .await
    .expect("trigger installed");
    let before = cancel_footprint(&app, order_id).await;

    let failed = app.cancel_order(order_id).await;

    assert!(failed.headers().contains_key("retry-after"));
    assert_error(failed, 503, "unavailable").await;
    assert_eq!(cancel_footprint(&app, order_id).await, before);
    assert_eq!(
        app.count("SELECT count(*) FROM orders WHERE status = 'completed'")
            .await,
        1
    );
    assert_eq!(
        app.count("SELECT count(*) FROM enrollments WHERE revoked_at IS NULL")
            .await,
        1
    );

    // Once the fault is gone, the same cancel does all three at once.
    sqlx::raw_sql("DROP TRIGGER refuse_seat_return ON event_seats")
        .execute(&app.db)
        .await
        .expect("trigger dropped");
    let cancelled = app.cancel_order(order_id).await;
    assert_eq!(cancelled.status(), 200);
    assert_eq!(
        app.count(
            "SELECT count(*) FROM orders WHERE status = 'cancelled' AND cancelled_at IS NOT NULL"
        )
        .await,
        1
    );
    assert_eq!(
        app.count("SELECT count(*) FROM enrollments WHERE revoked_at IS NOT NULL")
            .await,
        1
    );
    assert_eq!(
        app.count("SELECT count(*) FROM event_seats WHERE order_id IS NULL")
            .await,
        1
    );
}
