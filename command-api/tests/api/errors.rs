//! Tests of the command side (command → projector → query): every refusal is
//! the SPEC's JSON error, whatever layer produced it.

use serde_json::json;

use crate::helpers::{assert_error, course_body, spawn_app};

#[tokio::test]
async fn a_body_that_is_not_json_is_400_bad_request() {
    let app = spawn_app().await;

    let response = app
        .client
        .post(app.url("/v1/users"))
        .header("content-type", "application/json")
        .body("{\"email\": ")
        .send()
        .await
        .expect("answered");

    assert_error(response, 400, "bad_request").await;
}

#[tokio::test]
async fn a_body_with_wrong_types_is_400_bad_request() {
    let app = spawn_app().await;

    let response = app
        .post_json("/v1/users", &json!({ "email": 42, "name": ["A"] }))
        .await;

    assert_error(response, 400, "bad_request").await;
}

#[tokio::test]
async fn an_order_body_with_wrong_types_is_400_bad_request() {
    let app = spawn_app().await;

    let response = app
        .post_order("k", &json!({ "user_id": "one", "course_ids": [1] }))
        .await;

    assert_error(response, 400, "bad_request").await;
}

#[tokio::test]
async fn a_body_with_the_wrong_content_type_is_415() {
    let app = spawn_app().await;

    let response = app
        .client
        .post(app.url("/v1/users"))
        .header("content-type", "text/plain")
        .body(r#"{"email":"a@example.com","name":"A"}"#)
        .send()
        .await
        .expect("answered");

    assert_error(response, 415, "unsupported_media_type").await;
}

#[tokio::test]
async fn a_body_over_256_kib_is_413() {
    let app = spawn_app().await;
    let mut request = course_body("Huge", 1);
    request["description_html"] = json!("x".repeat(256 * 1024 + 1));

    let response = app.post_json("/v1/courses", &request).await;

    assert_error(response, 413, "payload_too_large").await;
}

#[tokio::test]
async fn an_unknown_route_is_404_json() {
    let app = spawn_app().await;

    let response = app
        .client
        .get(app.url("/v1/nothing/here"))
        .send()
        .await
        .expect("answered");

    assert_error(response, 404, "not_found").await;
}

#[tokio::test]
async fn a_wrong_method_is_405_json() {
    let app = spawn_app().await;

    let on_collection = app
        .client
        .get(app.url("/v1/orders"))
        .send()
        .await
        .expect("answered");
    assert_error(on_collection, 405, "method_not_allowed").await;

    let on_item = app
        .client
        .delete(app.url("/v1/courses/1"))
        .send()
        .await
        .expect("answered");
    assert_error(on_item, 405, "method_not_allowed").await;
}

#[tokio::test]
async fn a_non_numeric_or_non_positive_path_id_is_400() {
    let app = spawn_app().await;

    for id in ["abc", "0", "-3", "99999999999999999999"] {
        let response = app
            .patch_json(&format!("/v1/courses/{id}"), &json!({ "price_krw": 1 }))
            .await;
        assert_error(response, 400, "bad_request").await;
    }
}

#[tokio::test]
async fn every_response_carries_a_request_id() {
    let app = spawn_app().await;

    let generated = app
        .client
        .get(app.url("/health"))
        .send()
        .await
        .expect("answered");
    let id = generated
        .headers()
        .get("x-request-id")
        .and_then(|value| value.to_str().ok())
        .expect("a generated id");
    assert!(uuid::Uuid::parse_str(id).is_ok(), "{id}");

    let echoed = app
        .client
        .get(app.url("/no/such/route"))
        .header("x-request-id", "checkout-1234")
        .send()
        .await
        .expect("answered");
    assert_eq!(
        echoed.headers().get("x-request-id").map(|v| v.as_bytes()),
        Some(&b"checkout-1234"[..])
    );
}
