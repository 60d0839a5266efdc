//! Tests of the command side's (command → projector → query) probes, metrics
//! and load shedding: `/health`, `/ready`, `/metrics`, request deadlines.

use serde_json::json;

use crate::helpers::{assert_error, spawn_app, spawn_app_with};

#[tokio::test]
async fn health_and_ready_are_200_with_a_reachable_database() {
    let app = spawn_app().await;

    for path in ["/health", "/ready"] {
        let response = app
            .client
            .get(app.url(path))
            .send()
            .await
            .expect("answered");
        assert_eq!(response.status(), 200, "{path}");
    }
}

#[tokio::test]
async fn ready_is_503_with_retry_after_when_postgresql_is_unreachable() {
    // Port 1 on loopback refuses connections; the pool connects lazily.
    let app = spawn_app_with(|config| {
        config.database_url = "postgres://postgres@127.0.0.1:1/none".to_owned();
    })
    .await;

    let health = app
        .client
        .get(app.url("/health"))
        .send()
        .await
        .expect("answered");
    assert_eq!(health.status(), 200);

    let ready = app
        .client
        .get(app.url("/ready"))
        .send()
        .await
        .expect("answered");
    assert!(ready.headers().contains_key("retry-after"));
    assert_error(ready, 503, "unavailable").await;

    // A write without a database is 503 too, never 500.
    let write = app
        .post_json(
            "/v1/users",
            &json!({ "email": "a@example.com", "name": "A" }),
        )
        .await;
    assert!(write.headers().contains_key("retry-after"));
    assert_error(write, 503, "unavailable").await;
}

#[tokio::test]
async fn metrics_count_requests_by_route_and_status() {
    let app = spawn_app().await;
    app.create_user("a@example.com", None).await;
    let _ = app
        .client
        .get(app.url("/nowhere"))
        .send()
        .await
        .expect("answered");
    let _ = app
        .client
        .get(app.url("/v1/orders"))
        .send()
        .await
        .expect("answered");

    let response = app
        .client
        .get(app.url("/metrics"))
        .send()
        .await
        .expect("answered");

    assert_eq!(response.status(), 200);
    let text = response.text().await.expect("text");
    assert!(
        text.contains(r#"command_api_requests_total{route="/v1/users",status="201"} 1"#),
        "{text}"
    );
    assert!(
        text.contains(r#"command_api_requests_total{route="unmatched",status="404"} 1"#),
        "{text}"
    );
    assert!(
        text.contains(r#"command_api_requests_total{route="/v1/orders",status="405"} 1"#),
        "{text}"
    );
    assert!(text.contains("command_api_db_pool_connections "), "{text}");
    assert!(
        text.contains("command_api_db_pool_idle_connections "),
        "{text}"
    );
}

#[tokio::test]
async fn a_request_past_its_deadline_is_503_unavailable() {
    let app = spawn_app_with(|config| {
        config.request_timeout = std::time::Duration::from_millis(1);
    })
    .await;

    // The first request must open a connection, which takes longer than 1ms.
    let response = app
        .post_json(
            "/v1/users",
            &json!({ "email": "a@example.com", "name": "A" }),
        )
        .await;

    assert!(response.headers().contains_key("retry-after"));
    assert_error(response, 503, "unavailable").await;
}

#[tokio::test]
async fn the_api_reference_documents_every_route() {
    let app = spawn_app().await;

    let response = app
        .client
        .get(app.url("/openapi.json"))
        .send()
        .await
        .expect("answered");

    assert_eq!(response.status(), 200);
    let document: serde_json::Value = response.json().await.expect("the reference is JSON");
    assert_eq!(document["openapi"], "3.1.0");
    let routes = [
        ("/v1/users", "post"),
        ("/v1/courses", "post"),
        ("/v1/courses/{id}", "patch"),
        ("/v1/events", "post"),
        ("/v1/orders", "post"),
        ("/v1/orders/{id}/cancel", "post"),
        ("/v1/enrollments", "post"),
        ("/health", "get"),
        ("/ready", "get"),
        ("/metrics", "get"),
        ("/openapi.json", "get"),
    ];
    for (path, method) in routes {
        assert!(
            document["paths"][path][method].is_object(),
            "{method} {path} is documented"
        );
    }
    // Nothing documented that the router does not serve.
    assert_eq!(
        document["paths"].as_object().map(|paths| paths.len()),
        Some(routes.len())
    );
}
