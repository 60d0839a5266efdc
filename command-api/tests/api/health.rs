//! The ops surface: `/health`, `/ready`, `/metrics`, load shedding, request
//! deadlines, the request id in every log line, and the API reference.

use std::sync::Arc;

use serde_json::{json, Value};

use crate::helpers::{assert_error, spawn_app, spawn_app_with, CapturedLogs};

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
        config.database.url = "postgres://postgres@127.0.0.1:1/none".to_owned();
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
async fn metrics_count_requests_by_route_and_status_with_latency_and_pool_usage() {
    let app = spawn_app().await;
    app.create_user("a@example.com", None).await;
    let _ = app.get("/nowhere").await;
    let _ = app.get("/v1/orders").await;

    let text = app.metrics().await;

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
    // The latency histogram: cumulative buckets ending in +Inf, sum and count.
    assert!(
        text.contains("# TYPE command_api_request_duration_seconds histogram"),
        "{text}"
    );
    assert!(
        text.contains(
            r#"command_api_request_duration_seconds_bucket{route="/v1/users",le="+Inf"} 1"#
        ),
        "{text}"
    );
    assert!(
        text.contains(r#"command_api_request_duration_seconds_count{route="/v1/users"} 1"#),
        "{text}"
    );
    assert!(
        text.contains(r#"command_api_request_duration_seconds_sum{route="/v1/users"} "#),
        "{text}"
    );
    for reason in ["concurrency", "db_pool"] {
        let series = format!(r#"command_api_requests_shed_total{{reason="{reason}"}} 0"#);
        assert!(text.contains(&series), "{series} in {text}");
    }
    assert!(
        text.contains("command_api_request_timeouts_total 0"),
        "{text}"
    );
    for gauge in [
        "command_api_db_pool_connections ",
        "command_api_db_pool_idle_connections ",
        "command_api_db_pool_in_use_connections ",
        "command_api_db_pool_max_connections 16",
    ] {
        assert!(text.contains(gauge), "{gauge} in {text}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_the_concurrency_limit_requests_are_shed_with_503_and_counted() {
    let app = Arc::new(spawn_app_with(|config| config.concurrency_limit = Some(1)).await);
    let user = app.create_user("a@example.com", None).await;
    let course = app.create_course("Rust from scratch", 10_000).await;
    let holder = app.hold_key(user, "held").await;
    // This order holds the whole budget while it waits on the held key.
    let waiting = app.order_waiting_on_held_key(user, course).await;

    let shed = app
        .post_json(
            "/v1/users",
            &json!({ "email": "b@example.com", "name": "B" }),
        )
        .await;

    assert!(shed.headers().contains_key("retry-after"));
    assert_error(shed, 503, "unavailable").await;
    // Probes and metrics are outside the budget.
    assert_eq!(app.get("/ready").await.status(), 200);
    let text = app.metrics().await;
    assert!(
        text.contains(r#"command_api_requests_shed_total{reason="concurrency"} 1"#),
        "{text}"
    );
    assert!(
        text.contains(r#"command_api_requests_total{route="/v1/users",status="503"} 1"#),
        "{text}"
    );
    let in_use: u32 = text
        .lines()
        .find_map(|line| line.strip_prefix("command_api_db_pool_in_use_connections "))
        .and_then(|value| value.parse().ok())
        .expect("the in-use gauge");
    assert!(in_use >= 1, "the waiting order holds a connection: {text}");
    holder.rollback().await.expect("rollback");
    assert_eq!(waiting.await.expect("task"), 201);
    assert_eq!(app.count("SELECT count(*) FROM users").await, 1);
}

#[tokio::test]
async fn a_request_past_its_deadline_is_503_unavailable_and_counted() {
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
    let text = app.metrics().await;
    assert!(
        text.contains("command_api_request_timeouts_total 1"),
        "{text}"
    );
}

#[tokio::test]
async fn a_write_still_committing_at_its_deadline_is_answered_as_written() {
    let app = spawn_app_with(|config| {
        config.request_timeout = std::time::Duration::from_millis(400);
    })
    .await;
    // The pool's first connection, opened before the commits turn slow.
    let course = app.create_course("Deadline", 1_000).await;
    // From now on every commit of a new user or event sleeps past the deadline:
    // a deferred constraint trigger runs at COMMIT.
    sqlx::raw_sql(
        "CREATE FUNCTION slow_commit() RETURNS trigger LANGUAGE plpgsql AS \
             $$ BEGIN PERFORM pg_sleep(1); RETURN NULL; END $$; \
         CREATE CONSTRAINT TRIGGER slow_commit AFTER INSERT ON users \
             DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION slow_commit(); \
         CREATE CONSTRAINT TRIGGER slow_commit AFTER INSERT ON sale_events \
             DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION slow_commit();",
    )
    .execute(&app.db)
    .await
    .expect("slow commits");

    // A single statement, committed as it returns.
    let user = app
        .post_json(
            "/v1/users",
            &json!({ "email": "late@example.com", "name": "Late" }),
        )
        .await;
    // A transaction, committed by its COMMIT.
    let event = app
        .post_json(
            "/v1/events",
            &json!({
                "name": "late sale",
                "starts_at": "2030-01-01T00:00:00Z",
                "ends_at": "2030-01-02T00:00:00Z",
                "discount_percent": 10,
                "courses": [{ "course_id": course }]
            }),
        )
        .await;

    // Each is answered as written (a 503 would invite a retry that writes
    // again), with its read-your-writes token.
    assert_eq!(user.status(), 201);
    assert!(user.headers().contains_key("x-commit-lsn"));
    assert_eq!(event.status(), 201);
    assert!(event.headers().contains_key("x-commit-lsn"));
    assert_eq!(app.count("SELECT count(*) FROM users").await, 1);
    assert_eq!(app.count("SELECT count(*) FROM sale_events").await, 1);
}

#[tokio::test]
async fn the_api_reference_is_generated_and_lists_exactly_the_served_routes() {
    let app = spawn_app().await;

    let response = app.get("/openapi.json").await;

    assert_eq!(response.status(), 200);
    let document: Value = response.json().await.expect("the reference is JSON");
    assert!(
        document["openapi"]
            .as_str()
            .is_some_and(|v| v.starts_with("3.")),
        "{}",
        document["openapi"]
    );
    let served = [
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
        ("/v1/ops/flags", "get"),
    ];
    let mut documented: Vec<(String, String)> = Vec::new();
    let paths = document["paths"].as_object().expect("paths");
    for (path, item) in paths {
        for method in item.as_object().expect("a path item").keys() {
            documented.push((path.clone(), method.clone()));
        }
    }
    documented.sort();
    let mut expected: Vec<(String, String)> = served
        .iter()
        .map(|(path, method)| (path.to_string(), method.to_string()))
        .collect();
    expected.sort();
    assert_eq!(documented, expected);

    // Every documented operation is served, and nothing else on its path.
    for (path, method) in &documented {
        let url = app.url(&path.replace("{id}", "1"));
        let method = reqwest::Method::from_bytes(method.to_uppercase().as_bytes()).expect("method");
        let answer = app
            .client
            .request(method.clone(), &url)
            .json(&json!({}))
            .send()
            .await
            .expect("answered");
        assert_ne!(answer.status(), 405, "{method} {path} is served");
        let body: Value = answer.json().await.unwrap_or_default();
        assert_ne!(
            body["error"]["message"], "no route matches this path",
            "{method} {path} is served"
        );
        let other = app.client.delete(&url).send().await.expect("answered");
        assert_eq!(other.status(), 405, "only the documented method on {path}");
    }

    // Operations are named uniquely, and every schema they use is defined.
    let mut operation_ids: Vec<&str> = paths
        .values()
        .flat_map(|item| item.as_object().into_iter().flat_map(|ops| ops.values()))
        .map(|operation| operation["operationId"].as_str().expect("an operationId"))
        .collect();
    operation_ids.sort_unstable();
    let count = operation_ids.len();
    operation_ids.dedup();
    assert_eq!(operation_ids.len(), count, "{operation_ids:?}");
    let schemas = &document["components"]["schemas"];
    let text = document.to_string();
    for reference in text.split("\"#/components/schemas/").skip(1) {
        let name = reference.split('"').next().unwrap_or_default();
        assert!(schemas[name].is_object(), "schema {name} is defined");
    }
    // The error codes of the contract, as an enum of the error schema.
    let codes = schemas["ErrorCode"]["enum"]
        .as_array()
        .expect("error codes");
    for code in [
        "bad_request",
        "unauthorized",
        "not_found",
        "method_not_allowed",
        "email_taken",
        "already_enrolled",
        "sold_out",
        "idempotency_key_reused",
        "payload_too_large",
        "unsupported_media_type",
        "validation_failed",
        "idempotency_key_required",
        "unavailable",
    ] {
        assert!(codes.contains(&json!(code)), "{code} in {codes:?}");
    }
    // The order route documents its header and its answers.
    let place_order = &document["paths"]["/v1/orders"]["post"];
    assert_eq!(place_order["parameters"][0]["name"], "Idempotency-Key");
    for status in [
        "200", "201", "400", "409", "413", "415", "422", "428", "503",
    ] {
        assert!(
            place_order["responses"][status].is_object(),
            "{status} of POST /v1/orders"
        );
    }
}

// A current-thread runtime: the server and the test run on this thread, so
// this thread's captured lines are every line the server logs.
#[tokio::test(flavor = "current_thread")]
async fn every_log_line_of_a_request_carries_its_request_id() {
    let logs = CapturedLogs::start();
    let app = spawn_app_with(|config| {
        config.db_statement_timeout = std::time::Duration::from_millis(300);
    })
    .await;
    for _ in 0..500 {
        if logs
            .lines()
            .iter()
            .any(|line| line.contains("command api listening"))
        {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    let course = app.create_course("Rust from scratch", 10_000).await;
    logs.clear();
    let send = |request: reqwest::RequestBuilder, id: &str| {
        request.header("x-request-id", format!("log-{id}")).send()
    };
    let user = json!({ "email": "a@example.com", "name": "A" });

    // Successes, refusals, a replay, a cancel, and a database failure.
    let created = send(app.client.post(app.url("/v1/users")).json(&user), "user")
        .await
        .expect("answered");
    let user_id = created.json::<Value>().await.expect("json")["id"].clone();
    let order = json!({ "user_id": user_id, "course_ids": [course] });
    let orders = app.url("/v1/orders");
    let key = |request: reqwest::RequestBuilder, key: &str| request.header("Idempotency-Key", key);
    let placed = send(key(app.client.post(&orders), "k1").json(&order), "order")
        .await
        .expect("answered");
    let order_id = placed.json::<Value>().await.expect("json")["id"].clone();
    send(key(app.client.post(&orders), "k1").json(&order), "replay")
        .await
        .expect("answered");
    send(app.client.post(app.url("/v1/users")).json(&user), "taken")
        .await
        .expect("answered");
    send(app.client.get(app.url("/nowhere")), "unknown")
        .await
        .expect("answered");
    send(
        app.client
            .post(app.url(&format!("/v1/orders/{order_id}/cancel"))),
        "cancel",
    )
    .await
    .expect("answered");
    let holder = app
        .hold_key(user_id.as_i64().expect("user id"), "held")
        .await;
    let timed_out = send(key(app.client.post(&orders), "held").json(&order), "held")
        .await
        .expect("answered");
    assert_eq!(timed_out.status(), 503);
    holder.rollback().await.expect("rollback");

    let lines = logs.lines();
    assert!(!lines.is_empty());
    for line in &lines {
        assert!(
            line.contains("request{request_id=log-"),
            "without a request id: {line}"
        );
    }
    let line_of = |id: &str, needle: &str| {
        lines
            .iter()
            .any(|line| line.contains(&format!("request_id=log-{id} ")) && line.contains(needle))
    };
    for id in [
        "user", "order", "replay", "taken", "unknown", "cancel", "held",
    ] {
        assert!(
            line_of(id, "finished processing request"),
            "{id}: {lines:#?}"
        );
    }
    assert!(line_of("order", "order placed"), "{lines:#?}");
    assert!(line_of("replay", "order replayed"), "{lines:#?}");
    assert!(line_of("cancel", "order cancelled"), "{lines:#?}");
    assert!(line_of("held", "database unavailable"), "{lines:#?}");
}

#[tokio::test]
async fn the_api_reference_states_the_rules_the_routes_check() {
    let app = spawn_app().await;

    let document: Value = app
        .get("/openapi.json")
        .await
        .json()
        .await
        .expect("the reference is JSON");

    let schemas = &document["components"]["schemas"];
    let order = &schemas["CreateOrder"]["properties"];
    assert_eq!(order["user_id"]["minimum"], 1, "{order}");
    let course_ids = &order["course_ids"];
    assert_eq!(course_ids["minItems"], 1, "{course_ids}");
    assert_eq!(course_ids["maxItems"], 500, "{course_ids}");
    assert_eq!(course_ids["uniqueItems"], true, "{course_ids}");
    assert_eq!(course_ids["items"]["minimum"], 1, "{course_ids}");
    let course = &schemas["CreateCourse"]["properties"];
    assert_eq!(course["price_krw"]["minimum"], 0, "{course}");
    assert_eq!(course["title"]["minLength"], 1, "{course}");
    assert_eq!(course["title"]["maxLength"], 200, "{course}");
    assert!(course["title"]["pattern"].is_string(), "{course}");
    let event = &schemas["CreateEvent"]["properties"];
    assert_eq!(event["discount_percent"]["maximum"], 100, "{event}");

    let place = &document["paths"]["/v1/orders"]["post"];
    let key = place["parameters"]
        .as_array()
        .and_then(|ps| ps.iter().find(|p| p["name"] == "Idempotency-Key"))
        .expect("Idempotency-Key is declared");
    assert_eq!(key["in"], "header");
    assert_eq!(key["required"], true);
    assert_eq!(key["schema"]["pattern"], "^[!-~]+$");
    assert_eq!(key["schema"]["maxLength"], 128);
    assert!(place["responses"]["428"].is_object(), "{place}");

    // Every route with a body names the body refusals, and every 503 its Retry-After.
    for (path, item) in document["paths"].as_object().expect("paths") {
        for (method, operation) in item.as_object().expect("a path item") {
            let responses = &operation["responses"];
            if operation["requestBody"].is_object() {
                for status in ["400", "413", "415", "503"] {
                    assert!(responses[status].is_object(), "{method} {path}: {status}");
                }
            }
            if responses["503"].is_object() {
                assert!(
                    responses["503"]["headers"]["Retry-After"].is_object(),
                    "{method} {path}"
                );
            }
        }
    }
    let guarded = &document["paths"]["/v1/courses"]["post"];
    assert!(guarded["responses"]["401"].is_object(), "{guarded}");
}
