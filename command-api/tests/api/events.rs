//! `POST /v1/events`, `POST /v1/orders/{id}/cancel` and `POST /v1/enrollments`.

use serde_json::{json, Value};

use crate::helpers::{assert_error, spawn_app, spawn_app_with};

#[tokio::test]
async fn creating_an_event_returns_201_and_its_seats_sell_at_the_sale_price() {
    let app = spawn_app().await;
    let user = app.create_user("buyer@example.com", None).await;
    let rust = app.create_course("Rust from scratch", 9_999).await;
    let sql = app.create_course("PostgreSQL internals", 20_000).await;

    let response = app
        .post_json(
            "/v1/events",
            &json!({
                "name": "Spring sale",
                "starts_at": "2020-01-01T09:00:00+09:00",
                "ends_at": "2999-01-01T00:00:00Z",
                "discount_percent": 50,
                "courses": [{ "course_id": rust, "seat_limit": 3 }, { "course_id": sql }],
            }),
        )
        .await;

    assert_eq!(response.status(), 201);
    assert!(response.headers().contains_key("x-commit-lsn"));
    let event: Value = response.json().await.expect("json");
    let event_id = event["id"].as_i64().expect("event id");
    assert_eq!(event["name"], "Spring sale");
    assert_eq!(event["starts_at"], "2020-01-01T00:00:00Z");
    assert_eq!(event["discount_percent"], 50);
    assert_eq!(
        event["courses"],
        json!([{ "course_id": rust, "seat_limit": 3 }, { "course_id": sql, "seat_limit": null }])
    );
    assert_eq!(app.count("SELECT count(*) FROM event_seats").await, 3);

    let order = app
        .post_order(
            "sale",
            &json!({ "user_id": user, "course_ids": [rust, sql], "event_id": event_id }),
        )
        .await;
    assert_eq!(order.status(), 201);
    let order: Value = order.json().await.expect("json");
    assert_eq!(order["total_krw"], 4_999 + 10_000);
    assert_eq!(
        app.count("SELECT count(*) FROM event_seats WHERE order_id IS NULL")
            .await,
        2
    );
}

#[tokio::test]
async fn an_event_with_bad_values_is_422_naming_each_field() {
    let app = spawn_app().await;
    let rust = app.create_course("Rust from scratch", 10_000).await;

    let response = app
        .post_json(
            "/v1/events",
            &json!({
                "name": " ",
                "starts_at": "2030-01-02T00:00:00Z",
                "ends_at": "2030-01-01T00:00:00Z",
                "discount_percent": 101,
                "courses": [{ "course_id": rust }, { "course_id": rust, "seat_limit": -1 }],
            }),
        )
        .await;

    let body = assert_error(response, 422, "validation_failed").await;
    let fields = &body["error"]["fields"];
    for field in ["name", "ends_at", "discount_percent", "courses"] {
        assert!(fields[field].is_string(), "{field} in {body}");
    }

    let unknown = app
        .post_json(
            "/v1/events",
            &json!({
                "name": "Sale",
                "starts_at": "2030-01-01T00:00:00Z",
                "ends_at": "2030-01-02T00:00:00Z",
                "discount_percent": 10,
                "courses": [{ "course_id": 4242 }],
            }),
        )
        .await;
    let body = assert_error(unknown, 422, "validation_failed").await;
    assert!(body["error"]["fields"]["courses"]
        .as_str()
        .is_some_and(|p| p.contains("4242")));
    assert_eq!(app.count("SELECT count(*) FROM sale_events").await, 0);
}

#[tokio::test]
async fn an_event_with_an_unparseable_time_is_400() {
    let app = spawn_app().await;

    let response = app
        .post_json(
            "/v1/events",
            &json!({
                "name": "Sale",
                "starts_at": "tomorrow",
                "ends_at": "2030-01-02T00:00:00Z",
                "discount_percent": 10,
                "courses": [],
            }),
        )
        .await;

    assert_error(response, 400, "bad_request").await;
}

#[tokio::test]
async fn creating_an_event_needs_the_admin_token_when_one_is_configured() {
    let app =
        spawn_app_with(|config| config.admin = service::AdminToken::new(Some("s3cret"))).await;

    let response = app
        .post_json(
            "/v1/events",
            &json!({
                "name": "Sale",
                "starts_at": "2030-01-01T00:00:00Z",
                "ends_at": "2030-01-02T00:00:00Z",
                "discount_percent": 10,
                "courses": [],
            }),
        )
        .await;

    assert_error(response, 401, "unauthorized").await;
}

#[tokio::test]
async fn cancelling_an_order_revokes_its_enrollments_and_gives_its_seat_back() {
    let app = spawn_app().await;
    let first = app.create_user("first@example.com", None).await;
    let second = app.create_user("second@example.com", None).await;
    let rust = app.create_course("Rust from scratch", 10_000).await;
    let event = app.create_event(100, true, &[(rust, Some(1))]).await;
    let order = app
        .post_order(
            "a",
            &json!({ "user_id": first, "course_ids": [rust], "event_id": event }),
        )
        .await;
    let order: Value = order.json().await.expect("json");
    let order_id = order["id"].as_i64().expect("order id");
    let sold_out = app
        .post_order(
            "b",
            &json!({ "user_id": second, "course_ids": [rust], "event_id": event }),
        )
        .await;
    assert_error(sold_out, 409, "sold_out").await;

    let response = app
        .client
        .post(app.url(&format!("/v1/orders/{order_id}/cancel")))
        .send()
        .await
        .expect("answered");

    assert_eq!(response.status(), 200);
    assert!(response.headers().contains_key("x-commit-lsn"));
    let cancelled: Value = response.json().await.expect("json");
    assert_eq!(cancelled["id"], order_id);
    assert_eq!(cancelled["status"], "cancelled");
    assert_eq!(
        cancelled["items"],
        json!([{ "course_id": rust, "price_krw": 0 }])
    );
    assert!(cancelled["cancelled_at"].is_string());
    assert_eq!(
        app.count("SELECT count(*) FROM enrollments WHERE revoked_at IS NOT NULL")
            .await,
        1
    );
    // The seat is free again, and the first buyer may buy again.
    let retry = app
        .post_order(
            "b2",
            &json!({ "user_id": second, "course_ids": [rust], "event_id": event }),
        )
        .await;
    assert_eq!(retry.status(), 201);
    let again = app
        .post_order("a2", &json!({ "user_id": first, "course_ids": [rust] }))
        .await;
    assert_eq!(again.status(), 201);

    // Cancelling again changes nothing.
    let twice = app
        .client
        .post(app.url(&format!("/v1/orders/{order_id}/cancel")))
        .send()
        .await
        .expect("answered");
    assert_eq!(twice.status(), 200);
    let twice: Value = twice.json().await.expect("json");
    assert_eq!(twice["cancelled_at"], cancelled["cancelled_at"]);
}

#[tokio::test]
async fn cancelling_a_missing_order_is_404() {
    let app = spawn_app().await;

    let response = app
        .client
        .post(app.url("/v1/orders/4242/cancel"))
        .send()
        .await
        .expect("answered");

    assert_error(response, 404, "not_found").await;
}

#[tokio::test]
async fn a_free_course_can_be_enrolled_in_directly_once() {
    let app = spawn_app().await;
    let user = app.create_user("free@example.com", Some("Acme")).await;
    let free = app.create_course("Hello, Rust", 0).await;

    let response = app
        .post_json(
            "/v1/enrollments",
            &json!({ "user_id": user, "course_id": free }),
        )
        .await;

    assert_eq!(response.status(), 201);
    assert!(response.headers().contains_key("x-commit-lsn"));
    let body: Value = response.json().await.expect("json");
    assert!(body["id"].as_i64().is_some());
    assert!(body["order_id"].as_i64().is_some());
    assert_eq!(body["user_id"], user);
    assert_eq!(body["course_id"], free);
    assert_eq!(body["company"], "Acme");

    let twice = app
        .post_json(
            "/v1/enrollments",
            &json!({ "user_id": user, "course_id": free }),
        )
        .await;
    assert_error(twice, 409, "already_enrolled").await;
}

#[tokio::test]
async fn a_paid_course_cannot_be_enrolled_in_directly() {
    let app = spawn_app().await;
    let user = app.create_user("paid@example.com", None).await;
    let paid = app.create_course("Rust from scratch", 10_000).await;
    let half_off = app.create_event(50, true, &[(paid, None)]).await;

    for event_id in [Value::Null, json!(half_off)] {
        let response = app
            .post_json(
                "/v1/enrollments",
                &json!({ "user_id": user, "course_id": paid, "event_id": event_id }),
            )
            .await;
        let body = assert_error(response, 422, "validation_failed").await;
        assert!(body["error"]["fields"]["course_id"].is_string(), "{body}");
    }
    assert_eq!(app.count("SELECT count(*) FROM orders").await, 0);
}

#[tokio::test]
async fn a_running_free_event_allows_direct_enrollment_while_seats_last() {
    let app = spawn_app().await;
    let first = app.create_user("first@example.com", None).await;
    let second = app.create_user("second@example.com", None).await;
    let paid = app.create_course("Rust from scratch", 10_000).await;
    let free_event = app.create_event(100, true, &[(paid, Some(1))]).await;

    let enrolled = app
        .post_json(
            "/v1/enrollments",
            &json!({ "user_id": first, "course_id": paid, "event_id": free_event }),
        )
        .await;
    assert_eq!(enrolled.status(), 201);
    let body: Value = enrolled.json().await.expect("json");
    assert_eq!(body["event_id"], free_event);

    let sold_out = app
        .post_json(
            "/v1/enrollments",
            &json!({ "user_id": second, "course_id": paid, "event_id": free_event }),
        )
        .await;
    assert_error(sold_out, 409, "sold_out").await;
}
