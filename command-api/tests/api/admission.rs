//! Admission follows the pool: with every connection busy, a burst of
//! orders is answered at once, 201 or 503 with `Retry-After`, every 201 in
//! the database and nothing written for a 503, each shed counted and the
//! log given a summary instead of a line per refusal.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::task::JoinSet;

use crate::helpers::{spawn_app_with, CapturedLogs};

const BURST: usize = 100;
const POOL: u32 = 2;

/// One answer of the burst.
struct Answer {
    status: u16,
    retry_after: bool,
    code: Option<String>,
    took: Duration,
}

/// The value of the series `series` (name and labels) in a metrics text.
fn sample(text: &str, series: &str) -> u64 {
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.trim().parse::<f64>().ok())
        .map_or(0, |value| value as u64)
}

// Current-thread: this thread's captured lines are every line the app logs.
#[tokio::test(flavor = "current_thread")]
async fn with_a_pool_of_two_a_burst_of_100_orders_is_201_or_an_immediate_503_and_a_503_writes_nothing(
) {
    let logs = CapturedLogs::start();
    let app = Arc::new(
        spawn_app_with(|config| {
            config.db_pool_size = POOL;
            // The orders held below wait on a lock; no deadline may end them.
            config.db_statement_timeout = Duration::from_secs(60);
            config.request_timeout = Duration::from_secs(60);
        })
        .await,
    );
    let course = app.create_course("Rust from scratch", 10_000).await;
    let users: Vec<i64> = sqlx::query_scalar(
        "INSERT INTO users (email, name) \
         SELECT 'buyer' || n || '@example.com', 'Buyer' FROM generate_series(1, $1) AS n \
         RETURNING id",
    )
    .bind(i32::try_from(BURST).expect("small"))
    .fetch_all(&app.db)
    .await
    .expect("users");
    // Orders that get a connection wait on this lock, holding it: the pool
    // stays full for the whole burst, so every other order must be refused.
    let mut holder = app.db.begin().await.expect("begin");
    sqlx::query("LOCK TABLE orders IN SHARE MODE")
        .execute(&mut *holder)
        .await
        .expect("orders locked");
    logs.clear();

    let mut burst = JoinSet::new();
    for (n, user) in users.iter().copied().enumerate() {
        let app = app.clone();
        burst.spawn(async move {
            let started = Instant::now();
            let response = app
                .post_order(
                    &format!("burst-{n}"),
                    &json!({ "user_id": user, "course_ids": [course] }),
                )
                .await;
            let status = response.status().as_u16();
            let retry_after = response.headers().contains_key("retry-after");
            let body: Value = response.json().await.unwrap_or(Value::Null);
            Answer {
                status,
                retry_after,
                code: body["error"]["code"].as_str().map(str::to_owned),
                took: started.elapsed(),
            }
        });
    }
    // At most the pool's connections can be held; everything else must be
    // answered while they still are, or the refusals would be a queue.
    let mut answers = Vec::new();
    let mut held = Some(holder);
    let mut answered_while_held = 0;
    loop {
        match tokio::time::timeout(Duration::from_secs(30), burst.join_next()).await {
            Ok(Some(answer)) => answers.push(answer.expect("the order task finishes")),
            Ok(None) => break,
            Err(_) => {
                // Nothing more comes while the lock is held: let go.
                if let Some(holder) = held.take() {
                    answered_while_held = answers.len();
                    holder.rollback().await.expect("rollback");
                    continue;
                }
                panic!("the burst is not answered after the lock is released");
            }
        }
        if held.is_some() && answers.len() + POOL as usize >= BURST {
            answered_while_held = answers.len();
            if let Some(holder) = held.take() {
                holder.rollback().await.expect("rollback");
            }
        }
    }
    if let Some(holder) = held.take() {
        holder.rollback().await.expect("rollback");
    }

    assert_eq!(answers.len(), BURST);
    let created = answers.iter().filter(|a| a.status == 201).count();
    let refused: Vec<&Answer> = answers.iter().filter(|a| a.status == 503).collect();
    assert_eq!(created + refused.len(), BURST, "every answer is 201 or 503");
    assert!(
        (1..=POOL as usize).contains(&created),
        "only orders holding one of the {POOL} connections complete: {created}"
    );
    assert!(
        answered_while_held >= BURST - POOL as usize,
        "the refusals came while the pool was full, not after: {answered_while_held}"
    );
    for answer in &refused {
        assert!(answer.retry_after, "a 503 carries Retry-After");
        assert_eq!(answer.code.as_deref(), Some("unavailable"));
        // Generous: the point is that no 503 waited for a connection to free.
        assert!(answer.took < Duration::from_secs(10), "{:?}", answer.took);
    }
    let count = |sql: &'static str| app.count(sql);
    let created = i64::try_from(created).expect("small");
    assert_eq!(count("SELECT count(*) FROM orders").await, created);
    assert_eq!(count("SELECT count(*) FROM order_items").await, created);
    assert_eq!(count("SELECT count(*) FROM enrollments").await, created);
    assert_eq!(
        count("SELECT count(*) FROM idempotency_keys").await,
        created
    );

    let text = app.metrics().await;
    let concurrency = sample(
        &text,
        r#"command_api_requests_shed_total{reason="concurrency"}"#,
    );
    let db_pool = sample(
        &text,
        r#"command_api_requests_shed_total{reason="db_pool"}"#,
    );
    assert_eq!(
        concurrency + db_pool,
        refused.len() as u64,
        "every 503 is counted as shed: {text}"
    );
    assert!(concurrency > 0, "the concurrency limit shed: {text}");

    let lines = logs.lines();
    let shed_lines = lines
        .iter()
        .filter(|l| l.contains("for want of capacity"))
        .count();
    assert!(shed_lines <= 2, "a summary, not a line per 503: {lines:#?}");
    assert!(shed_lines >= 1, "shedding is reported: {lines:#?}");
    let refusal_lines = lines.iter().filter(|l| l.contains("status=503")).count();
    assert_eq!(
        refusal_lines, 0,
        "no access line per shed answer: {lines:#?}"
    );
}
