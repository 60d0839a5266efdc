//! A rolling upgrade to a release with a new view schema, new projector
//! first: it builds its generation beside the old one, the old query API
//! keeps serving the old generation (stale) and never the new one, the new
//! query API serves only the new one, and once the grace is over the old
//! one answers `rebuilding`. Two releases are the same binaries with the
//! hidden view schema setting apart.

use std::time::{Duration, Instant};

use anyhow::Context;
use e2e::Stack;
use fred::interfaces::{ClientLike, KeysInterface};
use reqwest::StatusCode;
use serde_json::{json, Value as Json};
use tokio::{sync::watch, task::JoinHandle};
use views::{GenerationMarker, Keys, VIEW_SCHEMA_VERSION};

const OLD: u32 = VIEW_SCHEMA_VERSION;
const NEW: u32 = VIEW_SCHEMA_VERSION + 1;

/// A query API of one release on the stack's keys, stopped on drop.
struct QueryApi {
    url: String,
    _stop: tokio::sync::oneshot::Sender<()>,
}

async fn query_api(stack: &Stack, schema: u32) -> anyhow::Result<QueryApi> {
    let mut config = query_api::Config::for_tests(stack.redis_url.parse()?, &stack.prefix);
    config.view_schema_version = schema;
    let app = query_api::Application::build(config).await?;
    let url = format!("http://127.0.0.1:{}", app.port());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(app.run_until_stopped(async move {
        let _ = stopped.await;
    }));
    Ok(QueryApi { url, _stop: stop })
}

/// One answer a background reader got.
#[derive(Debug)]
struct Seen {
    sent: Instant,
    path: String,
    status: StatusCode,
    generation: Option<u64>,
    stale: bool,
    /// The hot course's student count in the body, if it has one of the
    /// expected shape.
    students: Option<i64>,
    code: Option<String>,
}

/// Reads the hot course's page and card from `url` until `stop`, keeping
/// every answer.
fn read_continuously(
    http: reqwest::Client,
    url: String,
    hot: i64,
    mut stop: watch::Receiver<bool>,
) -> JoinHandle<anyhow::Result<Vec<Seen>>> {
    tokio::spawn(async move {
        let paths = [
            format!("/v1/courses/{hot}"),
            format!("/v1/courses?ids={hot}"),
        ];
        let mut seen = Vec::new();
        while !*stop.borrow() {
            for path in &paths {
                let sent = Instant::now();
                let response = http.get(format!("{url}{path}")).send().await?;
                let status = response.status();
                let header = |name: &str| {
                    response
                        .headers()
                        .get(name)
                        .and_then(|v| v.to_str().ok())
                        .map(str::to_owned)
                };
                let generation = header("x-view-generation").and_then(|g| g.parse().ok());
                let stale = header("x-view-stale").as_deref() == Some("true");
                let body: Json = response.json().await.unwrap_or(Json::Null);
                let students = if path.contains("?ids=") {
                    let card = &body["courses"][0];
                    (card["id"] == hot && card.get("description_html").is_none())
                        .then(|| card["student_count"].as_i64())
                        .flatten()
                } else {
                    (body["id"] == hot && body["description_html"].is_string())
                        .then(|| body["student_count"].as_i64())
                        .flatten()
                };
                seen.push(Seen {
                    sent,
                    path: path.clone(),
                    status,
                    generation,
                    stale,
                    students,
                    code: body["error"]["code"].as_str().map(str::to_owned),
                });
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(10)) => {}
                _ = stop.changed() => {}
            }
        }
        Ok(seen)
    })
}

/// Each of `users` enrolls in `course`; returns the last commit LSN.
async fn enroll(stack: &Stack, course: i64, users: &[i64]) -> anyhow::Result<String> {
    let mut last = String::new();
    for user in users {
        let answer = stack
            .order(
                &format!("upgrade-{user}"),
                &json!({"user_id": user, "course_ids": [course]}),
            )
            .await?;
        anyhow::ensure!(
            answer.status == StatusCode::CREATED,
            "order: {} {:?}",
            answer.status,
            answer.body
        );
        last = answer.header("x-commit-lsn").to_owned();
    }
    Ok(last)
}

/// The hot course's student count read from `url` once fresh up to `lsn`.
async fn fresh_students(stack: &Stack, url: &str, hot: i64, lsn: &str) -> anyhow::Result<Json> {
    let answer = stack
        .send(
            stack
                .http
                .get(format!("{url}/v1/courses/{hot}"))
                .header("X-Min-Lsn", lsn)
                .header("X-Max-Wait-Ms", "5000"),
        )
        .await?;
    anyhow::ensure!(
        answer.status == StatusCode::OK,
        "{} {:?}",
        answer.status,
        answer.body
    );
    Ok(answer.body["student_count"].clone())
}

async fn marker(stack: &Stack) -> anyhow::Result<GenerationMarker> {
    let keys = Keys::new(stack.prefix.clone());
    let raw: Option<String> = stack.redis.get(keys.generation_marker()).await?;
    Ok(serde_json::from_str(&raw.context("no generation marker")?)?)
}

/// Keys of generation `generation` still in Redis (up to a few).
async fn keys_of(stack: &Stack, generation: u64) -> anyhow::Result<usize> {
    let pattern = format!("{}:g{generation}:*", stack.prefix);
    let found: Vec<String> = stack
        .redis
        .custom(
            fred::types::CustomCommand::new_static(
                "KEYS",
                fred::types::ClusterHash::FirstKey,
                false,
            ),
            vec![pattern],
        )
        .await?;
    Ok(found.len())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_upgrade_to_a_new_view_schema_never_serves_a_generation_of_the_wrong_schema(
) -> anyhow::Result<()> {
    let mut stack = Stack::start().await?;
    let (courses, users) = stack.catalogue(2, 50).await?;
    let hot = courses[0];

    // The old release: its projector and query API, live and serving.
    enroll(&stack, hot, &users[0..10]).await?;
    stack.start_projector().await?;
    let old_api = query_api(&stack, OLD).await?;
    let lsn = enroll(&stack, hot, &users[10..20]).await?;
    assert_eq!(fresh_students(&stack, &old_api.url, hot, &lsn).await?, 20);
    let before = marker(&stack).await?;
    assert_eq!(before.schema, OLD);
    let old_generation = before.generation;

    let (stop_readers, readers_stop) = watch::channel(false);
    let old_reads = read_continuously(
        stack.http.clone(),
        old_api.url.clone(),
        hot,
        readers_stop.clone(),
    );
    tokio::time::sleep(Duration::from_millis(300)).await;

    // The new projector in place of the old one, orders streaming on: it
    // builds its schema's generation beside the old one.
    stack.stop_projector().await?;
    enroll(&stack, hot, &users[20..30]).await?;
    let new_schema = NEW.to_string();
    stack.spawn_projector_with(&[("PROJECTOR_VIEW_SCHEMA_VERSION", &new_schema)])?;
    enroll(&stack, hot, &users[30..35]).await?;
    stack.wait_projector_ready(Duration::from_secs(60)).await?;
    let switched = Instant::now();
    let after = marker(&stack).await?;
    let new_generation = after.generation;
    assert_eq!(after.schema, NEW);
    assert_ne!(new_generation, old_generation);
    assert_eq!(
        after.readable(OLD).map(|r| (r.generation, r.stale)),
        Some((old_generation, true)),
        "the old generation stays readable for the old release: {after:?}"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        keys_of(&stack, old_generation).await? > 0,
        "the old generation is kept"
    );

    // The new query API: the new generation, current.
    let new_api = query_api(&stack, NEW).await?;
    let new_reads = read_continuously(
        stack.http.clone(),
        new_api.url.clone(),
        hot,
        readers_stop.clone(),
    );
    let lsn = enroll(&stack, hot, &users[35..45]).await?;
    assert_eq!(fresh_students(&stack, &new_api.url, hot, &lsn).await?, 45);
    tokio::time::sleep(Duration::from_millis(500)).await;

    // The grace over (a restart with none left): the old generation goes,
    // the old query API answers rebuilding; the new projector resumes.
    stack.stop_projector().await?;
    let retiring = Instant::now();
    stack.spawn_projector_with(&[
        ("PROJECTOR_VIEW_SCHEMA_VERSION", &new_schema),
        ("PROJECTOR_PREVIOUS_SCHEMA_GRACE_SECS", "0"),
    ])?;
    stack.wait_projector_ready(Duration::from_secs(60)).await?;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let ready = stack
            .send(stack.http.get(format!("{}/ready", old_api.url)))
            .await?;
        if ready.status == StatusCode::SERVICE_UNAVAILABLE
            && keys_of(&stack, old_generation).await? == 0
        {
            assert_eq!(ready.body["error"]["code"], "rebuilding");
            break;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "the old generation was not retired: {:?}",
            marker(&stack).await?
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let retired = marker(&stack).await?;
    assert_eq!(retired.generation, new_generation, "resumed, not rebuilt");
    assert_eq!(retired.readable(OLD), None);
    let lsn = enroll(&stack, hot, &users[45..50]).await?;
    assert_eq!(fresh_students(&stack, &new_api.url, hot, &lsn).await?, 50);
    tokio::time::sleep(Duration::from_millis(300)).await;

    let _ = stop_readers.send(true);
    let old_reads = old_reads.await??;
    let new_reads = new_reads.await??;
    drop(old_api);

    // The old query API: only the old generation, with what it held when the
    // old projector stopped, stale once the new schema's went live; then
    // rebuilding.
    let mut phases = [0usize; 3];
    for seen in &old_reads {
        if seen.status == StatusCode::OK {
            assert_eq!(seen.generation, Some(old_generation), "{seen:?}");
            assert_eq!(
                seen.students,
                Some(20),
                "the old generation's body: {seen:?}"
            );
            if seen.sent >= switched {
                assert!(seen.stale, "stale once the new schema is live: {seen:?}");
                phases[1] += 1;
            } else {
                phases[0] += 1;
            }
        } else {
            assert_eq!(seen.status, StatusCode::SERVICE_UNAVAILABLE, "{seen:?}");
            assert_eq!(seen.code.as_deref(), Some("rebuilding"), "{seen:?}");
            assert!(
                seen.sent >= retiring,
                "rebuilding only once retired: {seen:?}"
            );
            phases[2] += 1;
        }
    }
    assert!(
        phases.iter().all(|n| *n > 0),
        "the old query API was read before the switch, after it, and once retired: {phases:?}"
    );

    // The new query API: only the new generation, current, never going back.
    let mut last = 0;
    for seen in &new_reads {
        assert_eq!(seen.status, StatusCode::OK, "{seen:?}");
        assert_eq!(seen.generation, Some(new_generation), "{seen:?}");
        assert!(!seen.stale, "{seen:?}");
        let students = seen.students.context("a body of the expected shape")?;
        assert!(
            (30..=50).contains(&students),
            "the new generation's body: {seen:?}"
        );
        if seen.path.contains("?ids=") {
            assert!(students >= last, "{seen:?} after {last}");
            last = students;
        }
    }
    assert_eq!(last, 50, "the new query API saw the last orders");
    assert!(new_reads.len() > 10, "{}", new_reads.len());
    stack.cleanup().await
}
