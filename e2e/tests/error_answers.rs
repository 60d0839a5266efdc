//! Every refusal is a SPEC answer: a JSON key given twice is a 400 on every
//! write route, error messages quote at most a short excerpt of what the
//! client sent, and a dependency that goes away is logged once, with its
//! address and the cause, and once more when it is back.

use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use e2e::programs::{free_port, Program};
use e2e::redis_server::RedisServer;
use e2e::{unique_name, Answer, Stack};
use reqwest::StatusCode;

/// Sends `body` as raw JSON text (a `json!` value cannot repeat a key).
async fn send_raw(
    stack: &Stack,
    method: reqwest::Method,
    path: &str,
    body: String,
) -> Result<Answer> {
    stack
        .send(
            stack
                .http
                .request(method, format!("{}{path}", stack.command))
                .header("Content-Type", "application/json")
                .header("Idempotency-Key", unique_name("key"))
                .body(body),
        )
        .await
}

async fn count(stack: &Stack, table: &str) -> Result<i64> {
    let row = stack
        .pg
        .query_one(&format!("SELECT count(*) FROM {table}"), &[])
        .await?;
    Ok(row.get(0))
}

#[tokio::test]
async fn a_json_key_given_twice_is_a_400_on_every_write_route_and_writes_nothing() -> Result<()> {
    let stack = Stack::start().await?;
    let user = stack
        .user(&format!("{}@example.com", unique_name("u")), None)
        .await?;
    let course = stack.course("Twice", "<p>once</p>", 10_000).await?;
    let (users, courses) = (
        count(&stack, "users").await?,
        count(&stack, "courses").await?,
    );

    let cases = [
        (
            reqwest::Method::POST,
            "/v1/users".to_owned(),
            r#"{"email":"a@example.com","name":"A","email":"b@example.com"}"#.to_owned(),
        ),
        (
            reqwest::Method::POST,
            "/v1/courses".to_owned(),
            r#"{"title":"T","summary":"S","description_html":"<p>d</p>","category":"programming",
                "instructor":"Kim","price_krw":1000,"price_krw":2000}"#
                .to_owned(),
        ),
        (
            reqwest::Method::PATCH,
            format!("/v1/courses/{course}"),
            r#"{"title":"One","title":"Two"}"#.to_owned(),
        ),
        (
            reqwest::Method::POST,
            "/v1/events".to_owned(),
            // Repeated one level down, in a course of the event.
            format!(
                r#"{{"name":"Sale","starts_at":"2030-01-01T00:00:00Z","ends_at":"2030-01-02T00:00:00Z",
                    "discount_percent":10,"courses":[{{"course_id":{course},"course_id":{course}}}]}}"#
            ),
        ),
        (
            reqwest::Method::POST,
            "/v1/orders".to_owned(),
            format!(r#"{{"user_id":{user},"course_ids":[{course}],"user_id":{user}}}"#),
        ),
        (
            reqwest::Method::POST,
            "/v1/enrollments".to_owned(),
            format!(r#"{{"user_id":{user},"course_id":{course},"course_id":{course}}}"#),
        ),
    ];
    for (method, path, body) in cases {
        let answer = send_raw(&stack, method.clone(), &path, body).await?;
        let answer = answer
            .ensure_status(StatusCode::BAD_REQUEST)
            .with_context(|| format!("{method} {path}"))?;
        ensure!(
            answer.body["error"]["code"] == "bad_request",
            "{method} {path}: {}",
            answer.body
        );
        let message = answer.body["error"]["message"].as_str().unwrap_or_default();
        ensure!(
            message.contains("appears twice"),
            "{method} {path}: {message}"
        );
    }

    // The same bodies without the repeat are accepted: the repeat alone was refused.
    stack
        .order(
            &unique_name("key"),
            &serde_json::json!({"user_id": user, "course_ids": [course]}),
        )
        .await?
        .ensure_status(StatusCode::CREATED)?;
    ensure!(
        count(&stack, "orders").await? == 1,
        "only the clean order is written"
    );
    ensure!(
        count(&stack, "users").await? == users,
        "no user was written"
    );
    ensure!(
        count(&stack, "courses").await? == courses,
        "no course was written"
    );
    ensure!(
        count(&stack, "sale_events").await? == 0,
        "no event was written"
    );
    ensure!(
        count(&stack, "idempotency_keys").await? == 1,
        "no key was claimed by a refusal"
    );
    let title: String = stack
        .pg
        .query_one("SELECT title FROM courses WHERE id = $1", &[&course])
        .await?
        .get(0);
    ensure!(title == "Twice", "the course was not patched: {title}");
    stack.cleanup().await
}

/// Longest error message either API may answer, in bytes (the bound is 320
/// characters; some are multi-byte).
const MESSAGE_BYTES: usize = 4 * 320;

fn ensure_short(answer: &Answer, what: &str) -> Result<()> {
    ensure!(
        answer.status.is_client_error(),
        "{what}: {} {}",
        answer.status,
        String::from_utf8_lossy(&answer.raw[..answer.raw.len().min(300)])
    );
    ensure!(
        answer.body["error"]["code"].is_string(),
        "{what}: not a SPEC error body"
    );
    ensure!(
        answer.raw.len() < MESSAGE_BYTES + 200,
        "{what}: a {} byte answer",
        answer.raw.len()
    );
    Ok(())
}

#[tokio::test]
async fn a_hundred_kilobyte_string_in_a_field_a_header_or_a_query_parameter_comes_back_as_a_short_excerpt(
) -> Result<()> {
    let stack = Stack::start().await?;
    let long = "x".repeat(100_000);

    // A string where a number belongs: serde quotes the value it met.
    let wrong_type = stack
        .order(
            &unique_name("key"),
            &serde_json::json!({"user_id": long, "course_ids": [1]}),
        )
        .await?;
    ensure_short(&wrong_type, "an order with a long string as user_id")?;
    let message = wrong_type.body["error"]["message"]
        .as_str()
        .unwrap_or_default();
    ensure!(
        message.contains(&"x".repeat(64)),
        "an excerpt is kept: {message}"
    );
    ensure!(
        !message.contains(&"x".repeat(65)),
        "only an excerpt: {message}"
    );

    // An unknown field named by a long name: serde quotes the name.
    let mut body = serde_json::Map::new();
    body.insert("email".into(), "a@example.com".into());
    body.insert("name".into(), "A".into());
    body.insert(long.clone(), 1.into());
    let unknown = stack
        .post("/v1/users", &serde_json::Value::Object(body))
        .await?;
    ensure_short(&unknown, "a user with a long unknown field")?;

    // A header the query API quotes back.
    let header = stack
        .send(
            stack
                .http
                .get(format!("{}/v1/courses/1", stack.query))
                .header("X-Min-Lsn", &long),
        )
        .await?;
    ensure_short(&header, "a long X-Min-Lsn")?;

    // Query parameters: a long id, and a long unknown sort order. The URI
    // stays under hyper's 64 KiB limit (over it hyper answers 414 itself).
    let param = "x".repeat(60_000);
    for path in [
        format!("/v1/courses?ids={param}"),
        format!("/v1/categories/programming/courses?sort={param}"),
        format!("/v1/categories/programming/courses?limit={param}"),
    ] {
        let answer = stack.get(&path).await?;
        ensure_short(&answer, &path[..path.len().min(48)])?;
    }
    stack.cleanup().await
}

/// Waits until `check` holds, for at most `within`.
async fn eventually(within: Duration, mut check: impl FnMut() -> Result<bool>) -> Result<bool> {
    let deadline = Instant::now() + within;
    loop {
        if check()? {
            return Ok(true);
        }
        if Instant::now() > deadline {
            return Ok(false);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Forwards every connection to `port` on 127.0.0.1 to `target`: the
/// database "comes back" at the address the API was given.
async fn forward(listener: tokio::net::TcpListener, target: u16) {
    while let Ok((mut inbound, _)) = listener.accept().await {
        tokio::spawn(async move {
            if let Ok(mut outbound) = tokio::net::TcpStream::connect(("127.0.0.1", target)).await {
                let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
            }
        });
    }
}

#[tokio::test]
async fn with_postgresql_unreachable_the_command_api_logs_one_line_naming_its_address_and_cause_and_one_when_it_is_back(
) -> Result<()> {
    // A real, migrated database, reached through a port nothing listens on yet.
    let stack = Stack::start().await?;
    let port = free_port()?;
    let real: url::Url = stack.database_url.parse()?;
    let mut through = real.clone();
    through
        .set_port(Some(port))
        .map_err(|()| anyhow::anyhow!("cannot set the port"))?;
    let api = Program::start(
        "command-api",
        "COMMAND_API_ADDR",
        &[
            ("DATABASE_URL", through.as_str()),
            ("COMMAND_API_DB_ACQUIRE_TIMEOUT", "300ms"),
            // Without one the start itself warns (development mode).
            ("ADMIN_TOKEN", "a-test-token"),
        ],
    )
    .await?;
    let http = reqwest::Client::new();
    let user = |n: usize| serde_json::json!({"email": format!("{}-{n}@example.com", unique_name("u")), "name": "A"});
    for n in 0..6 {
        let answer = http
            .post(format!("{}/v1/users", api.url))
            .json(&user(n))
            .send()
            .await?;
        ensure!(
            answer.status() == StatusCode::SERVICE_UNAVAILABLE,
            "{}",
            answer.status()
        );
        let ready = http.get(format!("{}/ready", api.url)).send().await?;
        ensure!(
            ready.status() == StatusCode::SERVICE_UNAVAILABLE,
            "{}",
            ready.status()
        );
    }
    let line = format!("connecting to PostgreSQL at 127.0.0.1:{port}: connection refused");
    let logged = eventually(Duration::from_secs(10), || {
        Ok(api.warnings()?.iter().any(|l| l.contains(&line)))
    })
    .await?;
    ensure!(logged, "no line {line:?} in:\n{}", api.log()?);
    // More failing requests, well after the first line: still nothing new.
    for n in 6..10 {
        http.post(format!("{}/v1/users", api.url))
            .json(&user(n))
            .send()
            .await?;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let warnings = api.warnings()?;
    ensure!(
        warnings.len() == 1,
        "one warning for the whole outage:\n{}",
        warnings.join("\n")
    );

    // The database is back at that address.
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
    let target = real.port().context("the test database url has a port")?;
    let forwarder = tokio::spawn(forward(listener, target));
    let back = format!("PostgreSQL at 127.0.0.1:{port} is reachable again");
    let came_back = eventually(Duration::from_secs(15), || {
        Ok(api.log()?.lines().any(|l| l.contains(&back)))
    })
    .await?;
    ensure!(came_back, "no line {back:?} in:\n{}", api.log()?);
    let created = http
        .post(format!("{}/v1/users", api.url))
        .json(&user(99))
        .send()
        .await?;
    ensure!(
        created.status() == StatusCode::CREATED,
        "{}",
        created.status()
    );
    let log = api.log()?;
    ensure!(
        log.matches(&back).count() == 1,
        "one line when it is back:\n{log}"
    );
    ensure!(api.warnings()?.len() == 1, "nothing more at WARN:\n{log}");
    forwarder.abort();
    drop(api);
    stack.cleanup().await
}

#[tokio::test]
async fn with_redis_stopped_and_started_the_query_api_logs_one_line_down_naming_its_address_and_one_back(
) -> Result<()> {
    let mut redis = RedisServer::start().await?;
    let prefix = unique_name("k");
    let api = Program::start(
        "query-api",
        "QUERY_API_ADDR",
        &[
            ("REDIS_URL", redis.url().as_str()),
            ("KEY_PREFIX", prefix.as_str()),
            // Pre-warming logs its own failures; this test reads Redis's.
            ("PREWARM_WINDOW", "0s"),
            ("ADMIN_TOKEN", "a-test-token"),
        ],
    )
    .await?;
    let http = reqwest::Client::new();
    ensure!(api.warnings()?.is_empty(), "a quiet start:\n{}", api.log()?);

    redis.kill()?;
    for _ in 0..10 {
        let answer = http.get(format!("{}/v1/courses/1", api.url)).send().await?;
        ensure!(
            answer.status() == StatusCode::SERVICE_UNAVAILABLE,
            "{}",
            answer.status()
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let down = format!("connecting to Redis at 127.0.0.1:{}:", redis.port());
    let warnings = api.warnings()?;
    ensure!(
        warnings.len() == 1 && warnings[0].contains(&down),
        "one warning naming {down:?}:\n{}",
        api.log()?
    );
    ensure!(
        !warnings[0].contains("Error {"),
        "words, not a Debug dump: {}",
        warnings[0]
    );

    redis.restart_empty().await?;
    let back = format!("Redis at 127.0.0.1:{} is reachable again", redis.port());
    let came_back = eventually(Duration::from_secs(15), || {
        Ok(api.log()?.lines().any(|l| l.contains(&back)))
    })
    .await?;
    ensure!(came_back, "no line {back:?} in:\n{}", api.log()?);
    for _ in 0..5 {
        http.get(format!("{}/v1/courses/1", api.url)).send().await?;
    }
    let log = api.log()?;
    ensure!(
        log.matches(&back).count() == 1,
        "one line when it is back:\n{log}"
    );
    ensure!(api.warnings()?.len() == 1, "nothing more at WARN:\n{log}");
    Ok(())
}
