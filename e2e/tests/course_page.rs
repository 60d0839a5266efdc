//! A committed order becomes a changed course page: command API → PostgreSQL
//! → logical replication → projector → Redis → query API.

use e2e::{realistic_html, Stack};
use reqwest::StatusCode;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_course_page_shows_its_large_description_and_the_exact_student_count(
) -> anyhow::Result<()> {
    let mut stack = Stack::start().await?;

    // Arrange: a course with 10 KB of HTML, bought by six users, four of whom
    // name a company; before the projector ever ran.
    let html = realistic_html(10 * 1024, 7);
    let course = stack.course("Rust in production", &html, 50_000).await?;
    let other = stack.course("Tiny course", "<p>short</p>", 0).await?;

    // No generation is live yet: reads are 503 rebuilding, never a 404.
    let early = stack.get(&format!("/v1/courses/{course}")).await?;
    assert_eq!(early.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(early.body["error"]["code"], "rebuilding");
    assert!(!early.header("retry-after").is_empty());

    let companies = [
        Some("Acme"),
        Some("Acme"),
        Some("Globex"),
        None,
        Some("Initech"),
        None,
    ];
    let mut last_lsn = String::new();
    for (i, company) in companies.iter().enumerate() {
        let user = stack
            .user(&format!("buyer{i}@example.com"), *company)
            .await?;
        let courses = if i % 2 == 0 {
            json!([course, other])
        } else {
            json!([course])
        };
        let order = stack
            .order(
                &format!("k-{i}"),
                &json!({"user_id": user, "course_ids": courses}),
            )
            .await?;
        assert_eq!(
            order.status,
            StatusCode::CREATED,
            "{}",
            String::from_utf8_lossy(&order.raw)
        );
        last_lsn = order.header("x-commit-lsn").to_owned();
        assert!(last_lsn.contains('/'), "X-Commit-Lsn {last_lsn:?}");
        if i == 2 {
            // Half the orders are in the snapshot, half arrive by streaming.
            stack.start_projector().await?;
        }
    }

    // Act: read what the storefront reads, fresh up to the last order.
    let page = stack
        .get_fresh(&format!("/v1/courses/{course}"), &last_lsn)
        .await?;

    // Assert
    assert_eq!(
        page.status,
        StatusCode::OK,
        "{}",
        String::from_utf8_lossy(&page.raw)
    );
    assert_eq!(page.body["description_html"].as_str(), Some(html.as_str()));
    assert_eq!(page.body["student_count"], 6);
    assert_eq!(page.body["title"], "Rust in production");
    assert_eq!(page.body["price_krw"], 50_000);
    assert_eq!(
        page.body["top_companies"],
        json!([{"company": "Acme", "students": 2}, {"company": "Globex", "students": 1}, {"company": "Initech", "students": 1}])
    );
    let projection: views::Lsn = page.header("x-projection-lsn").parse()?;
    assert!(
        projection >= last_lsn.parse()?,
        "projection {projection} behind the token {last_lsn}"
    );
    assert!(!page.header("etag").is_empty());
    assert!(!page.header("x-request-id").is_empty());

    let small = stack
        .get_fresh(&format!("/v1/courses/{other}"), &last_lsn)
        .await?;
    assert_eq!(small.body["student_count"], 3);

    // The stored page is LZ4 (format byte 0x01), its stats raw JSON (0x00),
    // and the two served together are the response; a small page is raw.
    let raw = stack
        .raw_view(|k, g| k.course_view(g, course))
        .await?
        .expect("course view in redis");
    assert_eq!(raw[0], views::FORMAT_LZ4);
    assert!(
        raw.len() < page.raw.len(),
        "compressed {} vs json {}",
        raw.len(),
        page.raw.len()
    );
    let stats = stack
        .raw_view(|k, g| k.course_stats(g, course))
        .await?
        .expect("course stats in redis");
    assert_eq!(stats[0], views::FORMAT_JSON);
    let served = views::serve_course_page(
        &views::decode(&raw)?,
        &views::decode(&stats)?,
        chrono::Utc::now(),
    )?;
    assert!(
        served == page.raw,
        "the stored view, served, differs from the response"
    );
    let raw_small = stack
        .raw_view(|k, g| k.course_view(g, other))
        .await?
        .expect("small view in redis");
    assert_eq!(raw_small[0], views::FORMAT_JSON);

    // ETag revalidation answers 304.
    let revalidated = stack
        .send(
            stack
                .http
                .get(format!("{}/v1/courses/{course}", stack.query))
                .header("If-None-Match", page.header("etag")),
        )
        .await?;
    assert_eq!(revalidated.status, StatusCode::NOT_MODIFIED);

    // Another enrollment changes the stats, never the stored page (its
    // 10 KB are not rewritten for a count).
    let late = stack.user("late@example.com", Some("Globex")).await?;
    let order = stack
        .order("k-late", &json!({"user_id": late, "course_ids": [course]}))
        .await?;
    assert_eq!(order.status, StatusCode::CREATED);
    let counted = stack
        .get_fresh(
            &format!("/v1/courses/{course}"),
            order.header("x-commit-lsn"),
        )
        .await?;
    assert_eq!(counted.body["student_count"], 7);
    assert_eq!(counted.body["top_companies"][1]["students"], 2);
    assert_ne!(counted.body["lsn"], page.body["lsn"]);
    assert_ne!(counted.header("etag"), page.header("etag"));
    let raw_after = stack
        .raw_view(|k, g| k.course_view(g, course))
        .await?
        .expect("course view in redis");
    assert!(raw_after == raw, "an enrollment rewrote the stored page");

    // An update that leaves the large column alone keeps it (unchanged TOAST).
    let patch = stack
        .send(
            stack
                .http
                .patch(format!("{}/v1/courses/{course}", stack.command))
                .json(&json!({"title": "Rust in production, 2nd ed."})),
        )
        .await?
        .ensure_status(StatusCode::OK)?;
    let renamed = stack
        .get_fresh(
            &format!("/v1/courses/{course}"),
            patch.header("x-commit-lsn"),
        )
        .await?;
    assert_eq!(renamed.body["title"], "Rust in production, 2nd ed.");
    assert_eq!(
        renamed.body["description_html"].as_str(),
        Some(html.as_str())
    );
    assert_eq!(renamed.body["student_count"], 7);

    stack.cleanup().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retrying_an_order_with_the_same_key_counts_the_student_once() -> anyhow::Result<()> {
    let mut stack = Stack::start().await?;
    stack.start_projector().await?;
    let course = stack
        .course("Idempotent checkout", "<p>x</p>", 1000)
        .await?;
    let user = stack.user("retry@example.com", Some("Acme")).await?;
    let body = json!({"user_id": user, "course_ids": [course]});

    let first = stack.order("same-key", &body).await?;
    let retry = stack.order("same-key", &body).await?;

    assert_eq!(first.status, StatusCode::CREATED);
    assert_eq!(retry.status, StatusCode::OK);
    assert_eq!(retry.header("idempotent-replayed"), "true");
    assert_eq!(retry.body["id"], first.body["id"]);
    let page = stack
        .get_fresh(
            &format!("/v1/courses/{course}"),
            retry.header("x-commit-lsn"),
        )
        .await?;
    assert_eq!(page.body["student_count"], 1);
    let orders: i64 = stack
        .pg
        .query_one("SELECT count(*) FROM orders", &[])
        .await?
        .get(0);
    assert_eq!(orders, 1);
    stack.cleanup().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_reads_get_the_spec_status_and_a_json_error_body() -> anyhow::Result<()> {
    let mut stack = Stack::start().await?;
    stack.start_projector().await?;

    let cases = [
        ("/v1/courses/abc", StatusCode::BAD_REQUEST, "bad_request"),
        ("/v1/courses/0", StatusCode::BAD_REQUEST, "bad_request"),
        ("/v1/courses/-3", StatusCode::BAD_REQUEST, "bad_request"),
        (
            "/v1/courses/99999999999999999999",
            StatusCode::BAD_REQUEST,
            "bad_request",
        ),
        ("/v1/courses/424242", StatusCode::NOT_FOUND, "not_found"),
        ("/v1/nothing-here", StatusCode::NOT_FOUND, "not_found"),
        (
            "/v1/courses/1?min_lsn=garbage",
            StatusCode::BAD_REQUEST,
            "bad_request",
        ),
    ];
    for (path, status, code) in cases {
        let a = stack.get(path).await?;
        assert_eq!(
            a.status,
            status,
            "{path}: {}",
            String::from_utf8_lossy(&a.raw)
        );
        assert_eq!(a.body["error"]["code"], code, "{path}");
        assert!(a.body["error"]["message"].is_string(), "{path}");
        // A view looked for and not found says at which LSN it was not;
        // a request refused before any read (400, unknown route) has none.
        assert_eq!(
            !a.header("x-projection-lsn").is_empty(),
            path == "/v1/courses/424242",
            "{path}"
        );
        assert!(!a.header("x-request-id").is_empty(), "{path}");
    }

    let wrong_method = stack
        .send(stack.http.delete(format!("{}/v1/courses/1", stack.query)))
        .await?;
    assert_eq!(wrong_method.status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(wrong_method.body["error"]["code"], "method_not_allowed");
    assert!(!wrong_method.header("x-request-id").is_empty());

    let at_least = |token: &'static str, wait_ms: &'static str| {
        stack.send(
            stack
                .http
                .get(format!("{}/v1/courses/1", stack.query))
                .header("X-Min-Lsn", token)
                .header("X-Max-Wait-Ms", wait_ms),
        )
    };
    // A token from the future is not reached in time: 503 not_yet_projected.
    let future = at_least("FFFF/0", "50").await?;
    assert_eq!(future.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(future.body["error"]["code"], "not_yet_projected");
    assert_eq!(future.header("retry-after"), "1");
    // It says how far the projection had come: short of the token.
    let projected: views::Lsn = future.header("x-projection-lsn").parse()?;
    assert!(projected > views::Lsn(0) && projected < "FFFF/0".parse()?);

    // A wait too long for any integer is the longest wait, not an error:
    // a token already reached answers at once.
    let reached = at_least("0/1", "99999999999999999999").await?;
    assert!(
        [StatusCode::OK, StatusCode::NOT_FOUND].contains(&reached.status),
        "{}: {}",
        reached.status,
        reached.body
    );
    assert!(!reached.header("x-projection-lsn").is_empty());

    // The caller's request id comes back.
    let traced = stack
        .send(
            stack
                .http
                .get(format!("{}/v1/courses/424242", stack.query))
                .header("X-Request-Id", "trace-me-42"),
        )
        .await?;
    assert_eq!(traced.header("x-request-id"), "trace-me-42");
    stack.cleanup().await
}
