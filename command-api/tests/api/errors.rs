//! Every refusal is the SPEC's JSON error, whatever layer produced it.

use serde_json::{json, Value};

use crate::helpers::{assert_error, course_body, spawn_app, spawn_app_with};

#[tokio::test]
async fn a_body_that_is_not_json_is_400_bad_request() {
    let app = spawn_app().await;

    let response = app
        .post_raw("/v1/users", "application/json", "{\"email\": ")
        .await;

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
        .post_raw(
            "/v1/users",
            "text/plain",
            r#"{"email":"a@example.com","name":"A"}"#,
        )
        .await;

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
async fn json_with_parameters_after_a_space_is_still_json() {
    let app = spawn_app().await;

    let response = app
        .post_raw(
            "/v1/users",
            "application/json ; charset=UTF-8",
            r#"{"email":"spaced@example.com","name":"Spaced"}"#,
        )
        .await;

    assert_eq!(response.status(), 201);
}

#[tokio::test]
async fn an_order_with_two_idempotency_keys_is_400_and_writes_nothing() {
    let app = spawn_app().await;
    let user = app.create_user("two-keys@example.com", None).await;
    let course = app.create_course("Rust from scratch", 10_000).await;

    let response = app
        .client
        .post(app.url("/v1/orders"))
        .header("content-type", "application/json")
        .header("Idempotency-Key", "k1")
        .header("Idempotency-Key", "k2")
        .body(json!({ "user_id": user, "course_ids": [course] }).to_string())
        .send()
        .await
        .expect("answered");

    assert_error(response, 400, "bad_request").await;
    assert_eq!(app.count("SELECT count(*) FROM orders").await, 0);
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

/// One request of the bad-input table.
struct Case {
    method: &'static str,
    path: String,
    /// `None`: no `Idempotency-Key` header.
    key: Option<&'static str>,
    content_type: Option<&'static str>,
    body: String,
    status: u16,
    code: &'static str,
    /// For 422: a field that must be named.
    field: Option<&'static str>,
}

fn case(method: &'static str, path: impl Into<String>, body: impl Into<String>) -> Case {
    Case {
        method,
        path: path.into(),
        key: None,
        content_type: Some("application/json"),
        body: body.into(),
        status: 0,
        code: "",
        field: None,
    }
}

impl Case {
    fn is(mut self, status: u16, code: &'static str) -> Case {
        self.status = status;
        self.code = code;
        self
    }

    fn naming(mut self, field: &'static str) -> Case {
        self.status = 422;
        self.code = "validation_failed";
        self.field = Some(field);
        self
    }

    fn key(mut self, key: &'static str) -> Case {
        self.key = Some(key);
        self
    }

    fn content_type(mut self, content_type: Option<&'static str>) -> Case {
        self.content_type = content_type;
        self
    }
}

#[tokio::test]
async fn every_bad_input_gets_its_spec_status_code_and_json_body_and_none_a_500() {
    let app = spawn_app().await;
    let user = app.create_user("taken@example.com", None).await;
    let course = app.create_course("Rust from scratch", 10_000).await;
    let later = app.create_event(50, false, &[(course, None)]).await;
    let user_body = |name: &str| json!({ "email": "new@example.com", "name": name }).to_string();
    let event_body = |name: &str, starts_at: &str, ends_at: &str| {
        json!({
            "name": name, "starts_at": starts_at, "ends_at": ends_at,
            "discount_percent": 10, "courses": [{ "course_id": course }],
        })
        .to_string()
    };
    let order_body =
        |course_ids: Value| json!({ "user_id": user, "course_ids": course_ids }).to_string();
    let mut deep = String::new();
    for _ in 0..200 {
        deep.push('[');
    }
    let mut course_with_html = course_body("Ok", 1);
    course_with_html["description_html"] = json!("<p>\u{0}</p>");
    let too_many: Vec<i64> = (1..=501).collect();

    let cases = [
        // 400: not JSON, or not the schema's types.
        case("POST", "/v1/users", "").is(400, "bad_request"),
        case("POST", "/v1/users", "[]").is(400, "bad_request"),
        case("POST", "/v1/users", "null").is(400, "bad_request"),
        // An array is not the schema's object, even when its items line up
        // with the fields (serde would read them by position).
        case("POST", "/v1/users", r#" ["arr@example.com", "Arr", null]"#).is(400, "bad_request"),
        case("POST", "/v1/orders", format!("[{user},[{course}]]")).key("k").is(400, "bad_request"),
        case("PATCH", format!("/v1/courses/{course}"), r#"["New title"]"#).is(400, "bad_request"),
        case("POST", "/v1/users", deep.clone()).is(400, "bad_request"),
        case("POST", "/v1/users", r#"{"email":"a@example.com","name":"A","role":"admin"}"#)
            .is(400, "bad_request"),
        case("POST", "/v1/courses", r#"{"title":"T"}"#).is(400, "bad_request"),
        case("POST", "/v1/courses", {
            let mut body = course_body("Big", 1);
            body["price_krw"] = json!(1e30);
            body.to_string()
        })
        .is(400, "bad_request"),
        case("POST", "/v1/courses", course_body("Big", 1).to_string().replace(
            "\"price_krw\":1",
            "\"price_krw\":9223372036854775808",
        ))
        .is(400, "bad_request"),
        case("PATCH", format!("/v1/courses/{course}"), r#"{"title":5}"#).is(400, "bad_request"),
        case("PATCH", "/v1/courses/abc", "{}").is(400, "bad_request"),
        case("PATCH", "/v1/courses/0", "{}").is(400, "bad_request"),
        case("PATCH", format!("/v1/courses/+{course}"), "{}").is(400, "bad_request"),
        case("POST", "/v1/orders/+1/cancel", "").is(400, "bad_request"),
        case("POST", "/v1/events", event_body("Sale", "tomorrow", "2030-01-02T00:00:00Z"))
            .is(400, "bad_request"),
        case("POST", "/v1/orders", order_body(json!("1,2"))).key("k").is(400, "bad_request"),
        case("POST", "/v1/orders", order_body(json!([1.5]))).key("k").is(400, "bad_request"),
        case("POST", "/v1/orders", r#"{"user_id":9223372036854775808,"course_ids":[1]}"#)
            .key("k")
            .is(400, "bad_request"),
        case("POST", "/v1/orders", r#"{"\u0000":1}"#).key("k").is(400, "bad_request"),
        case("POST", "/v1/orders", order_body(json!([course]))).key("has space").is(400, "bad_request"),
        case("POST", "/v1/orders/abc/cancel", "").is(400, "bad_request"),
        case("POST", "/v1/orders/-1/cancel", "").is(400, "bad_request"),
        // 404, 405: unknown things.
        case("POST", "/v1/orders/4242/cancel", "").is(404, "not_found"),
        case("PATCH", "/v1/courses/4242", "{}").is(404, "not_found"),
        case("GET", "/v1/users/1", "").is(404, "not_found"),
        case("GET", "/v1/users", "").is(405, "method_not_allowed"),
        case("PUT", format!("/v1/courses/{course}"), "{}").is(405, "method_not_allowed"),
        case("DELETE", "/v1/orders", "").is(405, "method_not_allowed"),
        // 409: conflicts.
        case("POST", "/v1/users", r#"{"email":"TAKEN@example.com","name":"B"}"#)
            .is(409, "email_taken"),
        // 415: not JSON.
        case("POST", "/v1/users", user_body("A"))
            .content_type(None)
            .is(415, "unsupported_media_type"),
        case("POST", "/v1/users", user_body("A"))
            .content_type(Some("text/plain"))
            .is(415, "unsupported_media_type"),
        // 422: the types are right, the values are not; text PostgreSQL
        // cannot store is one of them.
        case("POST", "/v1/users", user_body("A\u{0}B")).naming("name"),
        case(
            "POST",
            "/v1/users",
            json!({ "email": "c@example.com", "name": "C", "company": "\u{0}" }).to_string(),
        )
        .naming("company"),
        case("POST", "/v1/users", json!({ "email": "a\u{0}@example.com", "name": "A" }).to_string())
            .naming("email"),
        case("POST", "/v1/courses", course_body("T\u{0}", 1).to_string()).naming("title"),
        case("POST", "/v1/courses", course_with_html.to_string()).naming("description_html"),
        case("POST", "/v1/courses", course_body("T", -1).to_string()).naming("price_krw"),
        case("POST", "/v1/courses", course_body("T", 1_000_000_000_001).to_string())
            .naming("price_krw"),
        case("PATCH", format!("/v1/courses/{course}"), r#"{"price_krw":null}"#)
            .naming("price_krw"),
        case("PATCH", format!("/v1/courses/{course}"), r#"{"summary":"\u0000"}"#)
            .naming("summary"),
        case("POST", "/v1/events", event_body("Sale\u{0}", "2030-01-01T00:00:00Z", "2030-01-02T00:00:00Z"))
            .naming("name"),
        case("POST", "/v1/events", event_body("Sale", "-5000-01-01T00:00:00Z", "2030-01-02T00:00:00Z"))
            .naming("starts_at"),
        case("POST", "/v1/events", event_body("Sale", "2030-01-01T00:00:00Z", "+10000-01-01T00:00:00Z"))
            .naming("ends_at"),
        // One tenth of a microsecond apart: the same instant once stored.
        case(
            "POST",
            "/v1/events",
            event_body("Sale", "2030-01-01T00:00:00.0000001Z", "2030-01-01T00:00:00.0000009Z"),
        )
        .naming("ends_at"),
        case(
            "POST",
            "/v1/events",
            json!({
                "name": "Sale", "starts_at": "2030-01-01T00:00:00Z", "ends_at": "2030-01-02T00:00:00Z",
                "discount_percent": 10, "courses": [{ "course_id": course, "seat_limit": 1_i64 << 40 }],
            })
            .to_string(),
        )
        .naming("courses"),
        case("POST", "/v1/orders", order_body(json!([]))).key("k").naming("course_ids"),
        case("POST", "/v1/orders", order_body(json!(too_many))).key("k").naming("course_ids"),
        case("POST", "/v1/orders", order_body(json!([course, course]))).key("k").naming("course_ids"),
        case("POST", "/v1/orders", order_body(json!([0]))).key("k").naming("course_ids"),
        case("POST", "/v1/orders", order_body(json!([i64::MAX]))).key("k").naming("course_ids"),
        case(
            "POST",
            "/v1/orders",
            json!({ "user_id": user, "course_ids": [course], "event_id": later }).to_string(),
        )
        .key("k")
        .naming("event_id"),
        case("POST", "/v1/orders", json!({ "user_id": -1, "course_ids": [course] }).to_string())
            .key("k")
            .naming("user_id"),
        case("POST", "/v1/enrollments", json!({ "user_id": user, "course_id": course }).to_string())
            .naming("course_id"),
        case("POST", "/v1/enrollments", json!({ "user_id": user, "course_id": -1 }).to_string())
            .naming("course_id"),
        // 428: an order without its key.
        case("POST", "/v1/orders", order_body(json!([course]))).is(428, "idempotency_key_required"),
    ];

    for case in cases {
        let method = reqwest::Method::from_bytes(case.method.as_bytes()).expect("method");
        let mut request = app.client.request(method, app.url(&case.path));
        if let Some(content_type) = case.content_type {
            request = request.header("content-type", content_type);
        }
        if let Some(key) = case.key {
            request = request.header("Idempotency-Key", key);
        }
        let response = request
            .body(case.body.clone())
            .send()
            .await
            .expect("answered");
        let what = format!("{} {} {:.80}", case.method, case.path, case.body);
        assert!(
            response.status().as_u16() < 500,
            "{what}: {}",
            response.status()
        );
        assert_eq!(response.status().as_u16(), case.status, "{what}");
        let body: Value = response.json().await.expect("a JSON error body");
        assert_eq!(body["error"]["code"], case.code, "{what}: {body}");
        assert!(body["error"]["message"].is_string(), "{what}: {body}");
        if let Some(field) = case.field {
            assert!(
                body["error"]["fields"][field].is_string(),
                "{what}: names {field} in {body}"
            );
        }
    }
    // Nothing bad was written.
    assert_eq!(app.count("SELECT count(*) FROM users").await, 1);
    assert_eq!(app.count("SELECT count(*) FROM courses").await, 1);
    assert_eq!(app.count("SELECT count(*) FROM sale_events").await, 1);
    assert_eq!(app.count("SELECT count(*) FROM orders").await, 0);
}

#[tokio::test]
async fn database_error_text_never_reaches_the_client() {
    let app = spawn_app_with(|config| {
        config.db_statement_timeout = std::time::Duration::from_millis(300);
    })
    .await;
    let user = app.create_user("a@example.com", None).await;
    let course = app.create_course("Rust from scratch", 10_000).await;
    // A fault on our side, worded like a database detail.
    sqlx::raw_sql(
        "CREATE FUNCTION fail_loudly() RETURNS trigger LANGUAGE plpgsql AS $$ \
         BEGIN RAISE EXCEPTION 'relation secret_table violates secret_constraint'; END $$; \
         CREATE TRIGGER fail_loudly BEFORE INSERT ON users \
         FOR EACH ROW EXECUTE FUNCTION fail_loudly();",
    )
    .execute(&app.db)
    .await
    .expect("trigger installed");

    let failed = app
        .post_json(
            "/v1/users",
            &json!({ "email": "b@example.com", "name": "B" }),
        )
        .await;
    let holder = app.hold_key(user, "held").await;
    let timed_out = app
        .post_order("held", &json!({ "user_id": user, "course_ids": [course] }))
        .await;
    holder.rollback().await.expect("rollback");

    let failed_text = failed.text().await.expect("text");
    assert!(!failed_text.contains("secret"), "{failed_text}");
    let failed: Value = serde_json::from_str(&failed_text).expect("JSON");
    assert_eq!(failed["error"]["code"], "internal");
    assert_eq!(timed_out.status(), 503);
    let timed_out_text = timed_out.text().await.expect("text");
    for detail in ["statement", "timeout", "canceling", "sqlx", "database:"] {
        assert!(!timed_out_text.contains(detail), "{timed_out_text}");
    }
    let timed_out: Value = serde_json::from_str(&timed_out_text).expect("JSON");
    assert_eq!(timed_out["error"]["code"], "unavailable");
}
