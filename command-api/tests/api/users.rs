//! `POST /v1/users`.

use serde_json::{json, Value};

use crate::helpers::{assert_error, spawn_app};

#[tokio::test]
async fn creating_a_user_returns_201_with_the_user_and_a_commit_lsn() {
    let app = spawn_app().await;

    let response = app
        .post_json(
            "/v1/users",
            &json!({ "email": "minjun@example.com", "name": "Kim Min-jun", "company": "Acme" }),
        )
        .await;

    assert_eq!(response.status(), 201);
    assert!(response.headers().contains_key("x-commit-lsn"));
    let body: Value = response.json().await.expect("json");
    assert!(body["id"].as_i64().is_some_and(|id| id > 0));
    assert_eq!(body["email"], "minjun@example.com");
    assert_eq!(body["name"], "Kim Min-jun");
    assert_eq!(body["company"], "Acme");
    assert!(body["created_at"]
        .as_str()
        .is_some_and(|t| t.ends_with('Z')));
}

#[tokio::test]
async fn a_user_without_company_has_a_null_company() {
    let app = spawn_app().await;

    let response = app
        .post_json(
            "/v1/users",
            &json!({ "email": "a@example.com", "name": "A" }),
        )
        .await;

    assert_eq!(response.status(), 201);
    let body: Value = response.json().await.expect("json");
    assert_eq!(body["company"], Value::Null);
}

#[tokio::test]
async fn an_email_taken_in_another_case_is_409_email_taken() {
    let app = spawn_app().await;
    app.create_user("Minjun@Example.com", None).await;

    let response = app
        .post_json(
            "/v1/users",
            &json!({ "email": "minjun@EXAMPLE.COM", "name": "Someone Else" }),
        )
        .await;

    assert_error(response, 409, "email_taken").await;
    assert_eq!(app.count("SELECT count(*) FROM users").await, 1);
}

#[tokio::test]
async fn an_email_taken_in_another_case_of_a_non_ascii_letter_is_409_email_taken() {
    let app = spawn_app().await;
    app.create_user("Élodie.Ærø@Exämple.com", None).await;

    let response = app
        .post_json(
            "/v1/users",
            &json!({ "email": "élodie.ærø@EXÄMPLE.com", "name": "Someone Else" }),
        )
        .await;

    assert_error(response, 409, "email_taken").await;
    assert_eq!(app.count("SELECT count(*) FROM users").await, 1);
}

#[tokio::test]
async fn a_user_with_a_bad_email_and_an_empty_name_is_422_naming_both_fields() {
    let app = spawn_app().await;

    let response = app
        .post_json(
            "/v1/users",
            &json!({ "email": "not-an-email", "name": "   " }),
        )
        .await;

    let body = assert_error(response, 422, "validation_failed").await;
    assert!(body["error"]["fields"]["email"].is_string(), "{body}");
    assert!(body["error"]["fields"]["name"].is_string(), "{body}");
}

#[tokio::test]
async fn an_over_long_name_is_422() {
    let app = spawn_app().await;

    let response = app
        .post_json(
            "/v1/users",
            &json!({ "email": "a@example.com", "name": "x".repeat(201) }),
        )
        .await;

    let body = assert_error(response, 422, "validation_failed").await;
    assert!(body["error"]["fields"]["name"].is_string(), "{body}");
}
