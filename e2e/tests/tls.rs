//! TLS to the dependencies, with a CA and certificates the test makes: a
//! PostgreSQL of the test's own with `ssl=on` reached with
//! `sslmode=verify-full` by the command API's pool and the projector's
//! ordinary and replication connections, a Redis that speaks TLS only reached
//! with `rediss://` by the projector and the query API; and a wrong CA or
//! host name stopping each program at start with one clear line.

use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use e2e::{
    programs::{run_to_exit, Program},
    redis_server::{RedisCluster, RedisServer},
    tls::{Ca, TlsPostgres},
    unique_name, Stack,
};
use serde_json::{json, Value as Json};

/// Longest a program may take to give up on a certificate that fails the check.
const FAIL_FAST: Duration = Duration::from_secs(20);

/// Runs `name` (`args`, `env`) expecting it to stop on its own, non-zero,
/// within [`FAIL_FAST`], having printed `connecting to <dependency> at
/// <address> over TLS` and `cause`.
async fn stops_at_start(
    name: &'static str,
    args: &[&str],
    env: &[(&str, &str)],
    dependency_at: &str,
    cause: &[&str],
) -> Result<()> {
    let started = Instant::now();
    let (status, printed) = run_to_exit(name, args, env, FAIL_FAST).await?;
    let Some(status) = status else {
        bail!("{name} still ran after {FAIL_FAST:?}:\n{printed}");
    };
    assert!(!status.success(), "{name} exited {status}:\n{printed}");
    let said = format!("connecting to {dependency_at} over TLS");
    assert!(
        printed.contains(&said),
        "{name} did not say {said:?}:\n{printed}"
    );
    assert!(
        cause.iter().any(|c| printed.contains(c)),
        "{name} named none of {cause:?}:\n{printed}"
    );
    assert!(
        started.elapsed() < FAIL_FAST,
        "{name} took {:?}",
        started.elapsed()
    );
    Ok(())
}

/// What rustls says of a certificate signed by a CA it was not given.
const UNKNOWN_ISSUER: &[&str] = &["UnknownIssuer"];
/// What rustls says of a certificate for another name.
const WRONG_NAME: &[&str] = &["NotValidForName", "not valid for name"];

/// Polls `url` until it answers 200 with a body `done` accepts.
async fn wait_for_json(url: &str, done: impl Fn(&Json) -> bool) -> Result<Json> {
    let http = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut last = String::new();
    loop {
        if let Ok(answer) = http.get(url).send().await {
            let status = answer.status();
            let body: Json = answer.json().await.unwrap_or(Json::Null);
            if status.is_success() && done(&body) {
                return Ok(body);
            }
            last = format!("{status} {body}");
        }
        if Instant::now() > deadline {
            bail!("{url}: not there within 60 s; last answer: {last}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// POSTs `body` to the command API at `base`; returns the created id.
async fn create(base: &str, path: &str, body: Json, key: Option<&str>) -> Result<i64> {
    let mut request = reqwest::Client::new()
        .post(format!("{base}{path}"))
        .json(&body);
    if let Some(key) = key {
        request = request.header("Idempotency-Key", key);
    }
    let answer = request.send().await?;
    let status = answer.status();
    let body: Json = answer.json().await.unwrap_or(Json::Null);
    if status != reqwest::StatusCode::CREATED {
        bail!("POST {path}: {status} {body}");
    }
    body["id"].as_i64().context("no id in the created resource")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_over_verify_full_carries_writes_and_the_stream_and_a_wrong_ca_or_host_name_stops_each_program(
) -> Result<()> {
    let ca = Ca::new("postgres")?;
    let other = Ca::new("other")?;
    // The certificate names `localhost` only: reaching the server as
    // 127.0.0.1 is reaching it by a name the certificate does not carry.
    let server = ca.issue("server", &["localhost"])?;
    let pg = TlsPostgres::start(&server).await?;
    let db = unique_name("tls");
    pg.admin("postgres")
        .await?
        .batch_execute(&format!("CREATE DATABASE {db}"))
        .await?;
    let ca_file = ca.cert().display().to_string();
    let other_file = other.cert().display().to_string();
    let verified = pg.url(
        "localhost",
        &db,
        &format!("sslmode=verify-full&sslrootcert={ca_file}"),
    );

    let (status, printed) = run_to_exit(
        "command-api",
        &["migrate"],
        &[("DATABASE_URL", &verified)],
        Duration::from_secs(60),
    )
    .await?;
    assert!(status.is_some_and(|s| s.success()), "migrate: {printed}");

    let command = Program::start(
        "command-api",
        "COMMAND_API_ADDR",
        &[("DATABASE_URL", &verified)],
    )
    .await?;
    let redis = e2e::redis_url();
    let prefix = unique_name("k");
    let slot = unique_name("slot");
    let projector = Program::start(
        "projector",
        "PROJECTOR_ADDR",
        &[
            ("DATABASE_URL", &verified),
            ("REDIS_URL", &redis),
            ("KEY_PREFIX", &prefix),
            ("PROJECTOR_SLOT", &slot),
        ],
    )
    .await?;
    let query = Program::start(
        "query-api",
        "QUERY_API_ADDR",
        &[("REDIS_URL", &redis), ("KEY_PREFIX", &prefix)],
    )
    .await?;

    let user = create(
        &command.url,
        "/v1/users",
        json!({"email": "tls@example.com", "name": "Tls User", "company": null}),
        None,
    )
    .await?;
    let course = create(
        &command.url,
        "/v1/courses",
        json!({"title": "Over TLS", "summary": "s", "description_html": "<p>x</p>",
               "category": "programming", "instructor": "Kim", "price_krw": 1000}),
        None,
    )
    .await?;
    create(
        &command.url,
        "/v1/orders",
        json!({"user_id": user, "course_ids": [course]}),
        Some("tls-order"),
    )
    .await?;
    // The card too: the course and the order may land in one flush, whose
    // library entry goes out a step before the new course's card.
    let library = wait_for_json(&format!("{}/v1/users/{user}/courses", query.url), |b| {
        b["total"] == 1 && b["courses"][0]["id"] == course
    })
    .await?;
    assert_eq!(library["courses"][0]["id"], course);

    // Every TCP connection to the database is TLS: the command API's pool,
    // the projector's ordinary connections and its walsender.
    let admin = pg.admin(&db).await?;
    let rows = admin
        .query(
            "SELECT a.backend_type, coalesce(a.application_name, ''), s.ssl \
               FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid) \
              WHERE a.client_addr IS NOT NULL AND a.datname = $1",
            &[&db],
        )
        .await?;
    let seen: Vec<(String, String, bool)> = rows
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    assert!(seen.iter().all(|(_, _, ssl)| *ssl), "{seen:?}");
    assert!(
        seen.iter().any(|(kind, _, _)| kind == "walsender"),
        "no replication connection: {seen:?}"
    );
    assert!(
        seen.iter()
            .any(|(kind, app, _)| kind == "client backend" && app == "command-api"),
        "no command-api connection: {seen:?}"
    );
    drop(projector);
    drop(query);
    drop(command);

    let wrong_ca = pg.url(
        "localhost",
        &db,
        &format!("sslmode=verify-full&sslrootcert={other_file}"),
    );
    let wrong_host = pg.url(
        "127.0.0.1",
        &db,
        &format!("sslmode=verify-full&sslrootcert={ca_file}"),
    );
    let port = pg.port();
    for (url, host, cause) in [
        (&wrong_ca, "localhost", UNKNOWN_ISSUER),
        (&wrong_host, "127.0.0.1", WRONG_NAME),
    ] {
        let at = format!("PostgreSQL at {host}:{port}");
        let addr = format!("127.0.0.1:{}", e2e::programs::free_port()?);
        stops_at_start(
            "command-api",
            &[],
            &[("DATABASE_URL", url), ("COMMAND_API_ADDR", &addr)],
            &at,
            cause,
        )
        .await?;
        stops_at_start(
            "projector",
            &[],
            &[
                ("DATABASE_URL", url),
                ("REDIS_URL", &redis),
                ("KEY_PREFIX", &prefix),
                ("PROJECTOR_SLOT", &slot),
                ("PROJECTOR_ADDR", &addr),
            ],
            &at,
            cause,
        )
        .await?;
        stops_at_start(
            "projector",
            &["status"],
            &[
                ("DATABASE_URL", url),
                ("REDIS_URL", &redis),
                ("KEY_PREFIX", &prefix),
                ("PROJECTOR_SLOT", &slot),
            ],
            &at,
            cause,
        )
        .await?;
    }
    Ok(())
}

/// The stack's projector and a query API, both on the Redis at `url`
/// checked against `ca_file`; once the projector is ready.
async fn projector_and_query_api_over(
    stack: &mut Stack,
    url: &str,
    ca_file: &str,
) -> Result<Program> {
    stack.spawn_projector_with(&[("REDIS_URL", url), ("REDIS_CA_FILE", ca_file)])?;
    stack.wait_projector_ready(Duration::from_secs(60)).await?;
    Program::start(
        "query-api",
        "QUERY_API_ADDR",
        &[
            ("REDIS_URL", url),
            ("REDIS_CA_FILE", ca_file),
            ("KEY_PREFIX", &stack.prefix),
        ],
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_over_tls_carries_the_views_from_projector_to_query_api_and_a_wrong_ca_stops_both(
) -> Result<()> {
    let ca = Ca::new("redis")?;
    let other = Ca::new("other")?;
    let cert = ca.issue("redis", &["localhost", "127.0.0.1"])?;
    let server = RedisServer::start_tls(&cert, &ca.cert()).await?;
    let tls_url = server.tls_url();
    let ca_file = ca.cert().display().to_string();
    let other_file = other.cert().display().to_string();

    let mut stack = Stack::start().await?;
    let query = projector_and_query_api_over(&mut stack, &tls_url, &ca_file).await?;
    let course = stack.course("Sealed", "<p>over TLS</p>", 1000).await?;
    let page = wait_for_json(&format!("{}/v1/courses/{course}", query.url), |b| {
        b["id"] == course
    })
    .await?;
    assert_eq!(page["title"], "Sealed");
    // The views are in the TLS Redis, not the shared one.
    let keys = server.cli(&["--scan", "--pattern", &format!("{}*", stack.prefix)])?;
    assert!(!keys.trim().is_empty(), "no keys in the TLS Redis");
    drop(query);

    let at = format!("Redis at 127.0.0.1:{}", server.port());
    let addr = format!("127.0.0.1:{}", e2e::programs::free_port()?);
    stops_at_start(
        "query-api",
        &[],
        &[
            ("REDIS_URL", &tls_url),
            ("REDIS_CA_FILE", &other_file),
            ("KEY_PREFIX", &stack.prefix),
            ("QUERY_API_ADDR", &addr),
        ],
        &at,
        UNKNOWN_ISSUER,
    )
    .await?;
    stops_at_start(
        "projector",
        &[],
        &[
            ("DATABASE_URL", &stack.projector_database_url),
            ("REDIS_URL", &tls_url),
            ("REDIS_CA_FILE", &other_file),
            ("KEY_PREFIX", &stack.prefix),
            ("PROJECTOR_SLOT", &unique_name("slot")),
            ("PROJECTOR_ADDR", &addr),
        ],
        &at,
        UNKNOWN_ISSUER,
    )
    .await?;
    stops_at_start(
        "projector",
        &["status"],
        &[
            ("DATABASE_URL", &stack.projector_database_url),
            ("REDIS_URL", &tls_url),
            ("REDIS_CA_FILE", &other_file),
            ("KEY_PREFIX", &stack.prefix),
        ],
        &at,
        UNKNOWN_ISSUER,
    )
    .await?;
    stack.cleanup().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_cluster_over_tls_carries_the_views_from_projector_to_query_api() -> Result<()> {
    let ca = Ca::new("cluster")?;
    // Nodes are reached at the address the cluster announces: 127.0.0.1.
    let cert = ca.issue("node", &["localhost", "127.0.0.1"])?;
    let cluster = RedisCluster::start_tls(&cert, &ca.cert()).await?;
    let tls_url = cluster.tls_url();
    let ca_file = ca.cert().display().to_string();

    let mut stack = Stack::start().await?;
    let query = projector_and_query_api_over(&mut stack, &tls_url, &ca_file).await?;
    let mut courses = Vec::new();
    for i in 0..6 {
        courses.push(
            stack
                .course(&format!("Sealed {i}"), "<p>x</p>", 1000)
                .await?,
        );
    }
    for course in &courses {
        let page = wait_for_json(&format!("{}/v1/courses/{course}", query.url), |b| {
            b["id"] == *course
        })
        .await?;
        assert_eq!(page["price_krw"], 1000);
    }
    // The views are spread over the cluster's nodes.
    let by_node = cluster.keys_by_node(&format!("{}*", stack.prefix))?;
    let holding = by_node.values().filter(|keys| !keys.is_empty()).count();
    assert!(holding >= 2, "keys on {holding} node(s): {by_node:?}");
    drop(query);
    stack.cleanup().await
}
