//! `POST /v1/courses` and `PATCH /v1/courses/{id}`.

use serde_json::{json, Value};

use crate::helpers::{assert_error, course_body, spawn_app, spawn_app_with};

#[tokio::test]
async fn creating_a_course_returns_201_with_every_field() {
    let app = spawn_app().await;
    let mut request = course_body("Rust from scratch", 55_000);
    // Tens of KB of HTML is normal.
    request["description_html"] = json!(format!("<p>{}</p>", "borrow checker ".repeat(4_000)));

    let response = app.post_json("/v1/courses", &request).await;

    assert_eq!(response.status(), 201);
    assert!(response.headers().contains_key("x-commit-lsn"));
    let body: Value = response.json().await.expect("json");
    assert!(body["id"].as_i64().is_some_and(|id| id > 0));
    for field in [
        "title",
        "summary",
        "description_html",
        "category",
        "instructor",
        "price_krw",
    ] {
        assert_eq!(body[field], request[field], "{field}");
    }
    assert!(body["created_at"].is_string());
    assert!(body["updated_at"].is_string());
}

#[tokio::test]
async fn a_course_with_an_empty_title_and_a_negative_price_is_422_naming_both() {
    let app = spawn_app().await;
    let mut request = course_body("", -1);
    request["category"] = json!("");

    let response = app.post_json("/v1/courses", &request).await;

    let body = assert_error(response, 422, "validation_failed").await;
    let fields = &body["error"]["fields"];
    assert!(fields["title"].is_string(), "{body}");
    assert!(fields["category"].is_string(), "{body}");
    assert!(fields["price_krw"].is_string(), "{body}");
    assert!(fields.get("instructor").is_none(), "{body}");
}

#[tokio::test]
async fn a_course_missing_a_field_is_400() {
    let app = spawn_app().await;

    let response = app
        .post_json("/v1/courses", &json!({ "title": "Only a title" }))
        .await;

    assert_error(response, 400, "bad_request").await;
}

#[tokio::test]
async fn patching_a_course_changes_only_the_given_fields() {
    let app = spawn_app().await;
    let id = app.create_course("Rust from scratch", 55_000).await;

    let response = app
        .patch_json(
            &format!("/v1/courses/{id}"),
            &json!({ "price_krw": 39_000, "title": "Rust, from scratch" }),
        )
        .await;

    assert_eq!(response.status(), 200);
    assert!(response.headers().contains_key("x-commit-lsn"));
    let body: Value = response.json().await.expect("json");
    assert_eq!(body["id"], id);
    assert_eq!(body["price_krw"], 39_000);
    assert_eq!(body["title"], "Rust, from scratch");
    assert_eq!(
        body["description_html"],
        course_body("", 0)["description_html"]
    );
    assert_eq!(body["instructor"], "Lee Ji-eun");
    assert_ne!(body["updated_at"], body["created_at"]);
}

#[tokio::test]
async fn an_empty_patch_returns_the_course_unchanged() {
    let app = spawn_app().await;
    let id = app.create_course("Rust from scratch", 55_000).await;

    let response = app
        .patch_json(&format!("/v1/courses/{id}"), &json!({}))
        .await;

    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.expect("json");
    assert_eq!(body["title"], "Rust from scratch");
    assert_eq!(body["updated_at"], body["created_at"]);
}

#[tokio::test]
async fn patching_a_missing_course_is_404() {
    let app = spawn_app().await;

    let response = app
        .patch_json("/v1/courses/424242", &json!({ "price_krw": 1 }))
        .await;

    assert_error(response, 404, "not_found").await;
}

#[tokio::test]
async fn patching_with_invalid_values_is_422() {
    let app = spawn_app().await;
    let id = app.create_course("Rust from scratch", 55_000).await;

    let response = app
        .patch_json(
            &format!("/v1/courses/{id}"),
            &json!({ "title": null, "price_krw": -5 }),
        )
        .await;

    let body = assert_error(response, 422, "validation_failed").await;
    assert!(body["error"]["fields"]["title"].is_string(), "{body}");
    assert!(body["error"]["fields"]["price_krw"].is_string(), "{body}");
}

#[tokio::test]
async fn back_office_writes_need_the_admin_token_when_one_is_configured() {
    let app =
        spawn_app_with(|config| config.admin = service::AdminToken::new(Some("s3cret"))).await;
    let request = course_body("Rust from scratch", 55_000);

    let without = app.post_json("/v1/courses", &request).await;
    assert_error(without, 401, "unauthorized").await;

    let wrong = app
        .client
        .post(app.url("/v1/courses"))
        .bearer_auth("s3creT")
        .json(&request)
        .send()
        .await
        .expect("answered");
    assert_error(wrong, 401, "unauthorized").await;

    let patch = app
        .client
        .patch(app.url("/v1/courses/1"))
        .json(&json!({}))
        .send()
        .await
        .expect("answered");
    assert_error(patch, 401, "unauthorized").await;

    let right = app
        .client
        .post(app.url("/v1/courses"))
        .bearer_auth("s3cret")
        .json(&request)
        .send()
        .await
        .expect("answered");
    assert_eq!(right.status(), 201);

    // Buyers' routes need no token.
    let user = app
        .post_json(
            "/v1/users",
            &json!({ "email": "a@example.com", "name": "A" }),
        )
        .await;
    assert_eq!(user.status(), 201);
}
