//! The hot-row rule: checkout, cancellation and direct enrollment insert facts
//! and touch only their own order's rows, never a row many buyers share.

use serde_json::{json, Value};

use crate::helpers::{assert_error, course_body, spawn_app};

/// A trap in the test database: any UPDATE statement on a shared table
/// fails, naming the table, even one that matches no row.
const SHARED_ROW_TRAP: &str = "\
    CREATE FUNCTION refuse_shared_row_update() RETURNS trigger LANGUAGE plpgsql AS $$ \
    BEGIN \
        RAISE EXCEPTION 'a write path updated a shared row of %', TG_TABLE_NAME; \
    END $$; \
    CREATE TRIGGER refuse_update BEFORE UPDATE ON courses \
        FOR EACH STATEMENT EXECUTE FUNCTION refuse_shared_row_update(); \
    CREATE TRIGGER refuse_update BEFORE UPDATE ON users \
        FOR EACH STATEMENT EXECUTE FUNCTION refuse_shared_row_update(); \
    CREATE TRIGGER refuse_update BEFORE UPDATE ON sale_events \
        FOR EACH STATEMENT EXECUTE FUNCTION refuse_shared_row_update(); \
    CREATE TRIGGER refuse_update BEFORE UPDATE ON sale_event_courses \
        FOR EACH STATEMENT EXECUTE FUNCTION refuse_shared_row_update();";

#[tokio::test]
async fn checkout_cancel_and_enrollment_never_update_a_course_user_or_event_row() {
    let app = spawn_app().await;
    let buyer = app.create_user("buyer@example.com", Some("Acme")).await;
    let other = app.create_user("other@example.com", None).await;
    let paid = app.create_course("Rust from scratch", 10_000).await;
    let limited = app.create_course("PostgreSQL internals", 20_000).await;
    let free = app.create_course("Hello, Rust", 0).await;
    let giveaway = app.create_course("Async Rust", 30_000).await;
    let sale = app
        .create_event(40, true, &[(limited, Some(1)), (paid, None)])
        .await;
    let free_event = app.create_event(100, true, &[(giveaway, Some(5))]).await;
    sqlx::raw_sql(SHARED_ROW_TRAP)
        .execute(&app.db)
        .await
        .expect("trap installed");
    let status = |response: reqwest::Response| response.status().as_u16();

    // Every write path a buyer has, successes and refusals alike.
    let order = json!({ "user_id": buyer, "course_ids": [paid, limited], "event_id": sale });
    let placed = app.post_order("one", &order).await;
    assert_eq!(placed.status(), 201);
    let placed: Value = placed.json().await.expect("json");
    assert_eq!(status(app.post_order("one", &order).await), 200, "replay");
    let reused = app
        .post_order("one", &json!({ "user_id": buyer, "course_ids": [free] }))
        .await;
    assert_error(reused, 409, "idempotency_key_reused").await;
    let sold_out = app
        .post_order(
            "two",
            &json!({ "user_id": other, "course_ids": [limited], "event_id": sale }),
        )
        .await;
    assert_error(sold_out, 409, "sold_out").await;
    let enrolled = app
        .post_order("three", &json!({ "user_id": buyer, "course_ids": [paid] }))
        .await;
    assert_error(enrolled, 409, "already_enrolled").await;
    let order_id = placed["id"].as_i64().expect("order id");
    assert_eq!(status(app.cancel_order(order_id).await), 200);
    assert_eq!(status(app.cancel_order(order_id).await), 200);
    let direct = app
        .post_json(
            "/v1/enrollments",
            &json!({ "user_id": buyer, "course_id": free }),
        )
        .await;
    assert_eq!(direct.status(), 201);
    let seated = app
        .post_json(
            "/v1/enrollments",
            &json!({ "user_id": other, "course_id": giveaway, "event_id": free_event }),
        )
        .await;
    assert_eq!(seated.status(), 201);
    let again = app
        .post_order(
            "four",
            &json!({ "user_id": other, "course_ids": [limited, paid], "event_id": sale }),
        )
        .await;
    assert_eq!(again.status(), 201, "the cancelled seat sells again");

    // The trap works: a back-office course update does hit it.
    let patched = app
        .patch_json(&format!("/v1/courses/{paid}"), &course_body("x", 1))
        .await;
    assert_eq!(patched.status(), 500);
}
