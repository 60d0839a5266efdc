//! The projector's hard cases: the snapshot handoff under concurrent writes,
//! SIGKILL at random moments with cancels in the stream, schema changes,
//! idle databases, a huge transaction, lost Redis data, a clean SIGTERM.

use std::time::{Duration, Instant};

use e2e::{
    exact::{assert_orders_equal_tables, assert_views_equal_tables, writers},
    Stack,
};
use reqwest::StatusCode;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_initial_build_under_concurrent_orders_loses_and_doubles_nothing() -> anyhow::Result<()>
{
    let mut stack = Stack::start().await?;
    let (courses, users) = stack.catalogue(6, 160).await?;
    let tasks = writers(&stack, &courses, &users, 8, "handoff");
    // The slot and its snapshot are taken while eight writers commit.
    tokio::time::sleep(Duration::from_millis(150)).await;
    stack.start_projector().await?;
    for t in tasks {
        t.await??;
    }
    assert_views_equal_tables(&stack).await?;
    stack.cleanup().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn twenty_sigkills_while_orders_and_cancels_stream_in_leave_every_view_exact(
) -> anyhow::Result<()> {
    let mut stack = Stack::start().await?;
    let (courses, users) = stack.catalogue(5, 240).await?;
    stack.start_projector().await?;
    let tasks = writers(&stack, &courses, &users, 4, "kill");
    let mut seed = 0x9E37_79B9_7F4A_7C15u64;
    for _ in 0..20 {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        // Kill at a random moment: after the restart, while it catches up,
        // or mid-flush.
        tokio::time::sleep(Duration::from_millis(seed % 120)).await;
        stack.kill_projector().await?;
        stack.spawn_projector()?;
    }
    for t in tasks {
        t.await??;
    }
    stack.wait_projector_ready(Duration::from_secs(60)).await?;
    assert_views_equal_tables(&stack).await?;
    // Every order converges too (status, total, items), and the libraries
    // of the latest buyers.
    assert_orders_equal_tables(&stack, 10).await?;
    stack.cleanup().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_added_column_mid_stream_does_not_break_the_stream() -> anyhow::Result<()> {
    let mut stack = Stack::start().await?;
    let (courses, users) = stack.catalogue(2, 6).await?;
    stack.start_projector().await?;
    stack
        .order(
            "before",
            &json!({"user_id": users[0], "course_ids": [courses[0]]}),
        )
        .await?;
    stack
        .pg
        .batch_execute(
            "ALTER TABLE courses ADD COLUMN level text NOT NULL DEFAULT 'beginner'; \
             ALTER TABLE enrollments ADD COLUMN source text",
        )
        .await?;
    let a = stack
        .order(
            "after",
            &json!({"user_id": users[1], "course_ids": [courses[0], courses[1]]}),
        )
        .await?;
    assert_eq!(a.status, StatusCode::CREATED);
    let page = stack
        .get_fresh(
            &format!("/v1/courses/{}", courses[0]),
            a.header("x-commit-lsn"),
        )
        .await?;
    assert_eq!(page.status, StatusCode::OK);
    assert_eq!(page.body["student_count"], 2);
    stack.cleanup().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_slot_advances_while_our_tables_are_idle_and_another_database_writes(
) -> anyhow::Result<()> {
    let mut stack = Stack::start().await?;
    stack.start_projector().await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = stack.slot_confirmed().await?;
    // Write elsewhere: WAL moves, nothing of ours changes.
    let (other, conn) =
        tokio_postgres::connect(&e2e::admin_database_url(), tokio_postgres::NoTls).await?;
    tokio::spawn(conn);
    let table = e2e::unique_name("idle");
    other
        .batch_execute(&format!(
            "CREATE TABLE {table} (x int); INSERT INTO {table} SELECT generate_series(1, 1000)"
        ))
        .await?;
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut after = before;
    while Instant::now() < deadline && after <= before {
        tokio::time::sleep(Duration::from_millis(200)).await;
        after = stack.slot_confirmed().await?;
    }
    other.batch_execute(&format!("DROP TABLE {table}")).await?;
    assert!(after > before, "confirmed_flush_lsn stayed at {before}");
    stack.cleanup().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_transaction_of_200000_enrollments_is_applied_with_bounded_memory() -> anyhow::Result<()>
{
    let mut stack = Stack::start().await?;
    stack.start_projector().await?;
    let pid = stack.projector_pid().expect("projector runs");
    stack
        .pg
        .batch_execute(
            "INSERT INTO users (email, name, company) \
               SELECT 'bulk' || i || '@example.com', 'Bulk', CASE WHEN i % 5 = 0 THEN 'Co' || (i % 50) END \
               FROM generate_series(1, 2000) i; \
             INSERT INTO courses (title, summary, description_html, category, instructor, price_krw) \
               SELECT 'Bulk ' || i, 's', '<p>d</p>', 'bulk', 'Lee', 0 FROM generate_series(1, 100) i; \
             INSERT INTO enrollments (user_id, course_id, company) \
               SELECT u.id, c.id, u.company FROM users u CROSS JOIN courses c",
        )
        .await?;
    let total: i64 = stack
        .pg
        .query_one("SELECT count(*) FROM enrollments", &[])
        .await?
        .get(0);
    assert_eq!(total, 200_000);
    let lsn = stack.current_lsn().await?;
    let first: i64 = stack
        .pg
        .query_one("SELECT min(id) FROM courses", &[])
        .await?
        .get(0);
    let deadline = Instant::now() + Duration::from_secs(300);
    let page = loop {
        let page = stack
            .get_fresh(&format!("/v1/courses/{first}"), &lsn)
            .await?;
        if page.status == StatusCode::OK || Instant::now() > deadline {
            break page;
        }
    };
    assert_eq!(
        page.status,
        StatusCode::OK,
        "{}",
        String::from_utf8_lossy(&page.raw)
    );
    assert_eq!(page.body["student_count"], 2000);
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let peak_kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0);
    println!(
        "projector peak RSS while applying 200,000 enrollments in one transaction: {} MiB",
        peak_kb / 1024
    );
    assert!(peak_kb > 0 && peak_kb < 512 * 1024, "peak RSS {peak_kb} kB");
    stack.cleanup().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_redis_loses_the_views_reads_say_rebuilding_until_a_new_generation_is_live(
) -> anyhow::Result<()> {
    let mut stack = Stack::start().await?;
    let (courses, users) = stack.catalogue(1, 3).await?;
    let order = stack
        .order(
            "k1",
            &json!({"user_id": users[0], "course_ids": [courses[0]]}),
        )
        .await?;
    stack.start_projector().await?;
    let path = format!("/v1/courses/{}", courses[0]);
    assert_eq!(
        stack
            .get_fresh(&path, order.header("x-commit-lsn"))
            .await?
            .status,
        StatusCode::OK
    );

    // While it runs: noticed within seconds and rebuilt; meanwhile every
    // answer is 503 rebuilding or the right page, never a 404 or a wrong count.
    stack.lose_redis_data().await?;
    let deadline = Instant::now() + Duration::from_secs(30);
    let back = loop {
        let a = stack.get(&path).await?;
        if a.status == StatusCode::OK {
            break a;
        }
        assert_eq!(
            a.status,
            StatusCode::SERVICE_UNAVAILABLE,
            "{}",
            String::from_utf8_lossy(&a.raw)
        );
        assert_eq!(
            a.body["error"]["code"], "rebuilding",
            "never wrong data meanwhile"
        );
        assert!(Instant::now() < deadline, "not rebuilt within 30 s");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(back.body["student_count"], 1);
    let metrics = stack.projector_get("/metrics").await?;
    let rebuilds = String::from_utf8_lossy(&metrics.raw)
        .lines()
        .find_map(|l| l.strip_prefix("projector_rebuilds_total "))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .unwrap_or(0.0);
    assert!(
        rebuilds >= 2.0,
        "the initial build and the rebuild: {rebuilds}"
    );

    // With no projector to rebuild, readers say so until one starts.
    stack.stop_projector().await?;
    stack.lose_redis_data().await?;
    let lost = stack.get(&path).await?;
    assert_eq!(lost.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(lost.body["error"]["code"], "rebuilding");
    assert!(!lost.header("retry-after").is_empty());
    stack.start_projector().await?;
    let back = stack.get(&path).await?;
    assert_eq!(back.status, StatusCode::OK);
    assert_eq!(back.body["student_count"], 1);
    // And it keeps streaming into the new generation.
    let again = stack
        .order(
            "k2",
            &json!({"user_id": users[1], "course_ids": [courses[0]]}),
        )
        .await?;
    let page = stack.get_fresh(&path, again.header("x-commit-lsn")).await?;
    assert_eq!(page.body["student_count"], 2);
    stack.cleanup().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_flushes_and_confirms_before_exiting() -> anyhow::Result<()> {
    let mut stack = Stack::start().await?;
    let (courses, users) = stack.catalogue(1, 5).await?;
    stack.start_projector().await?;
    let mut last = String::new();
    for (i, user) in users.iter().enumerate() {
        let a = stack
            .order(
                &format!("t{i}"),
                &json!({"user_id": user, "course_ids": [courses[0]]}),
            )
            .await?;
        last = a.header("x-commit-lsn").to_owned();
    }
    stack
        .get_fresh(&format!("/v1/courses/{}", courses[0]), &last)
        .await?;
    // The ops surface: metrics of the SPEC, a request id, JSON errors.
    let metrics = stack.projector_get("/metrics").await?;
    assert!(!metrics.header("x-request-id").is_empty());
    let text = String::from_utf8_lossy(&metrics.raw);
    for name in [
        "projector_applied_lsn",
        "projector_lag_bytes",
        "projector_retained_wal_bytes",
        "projector_transactions_applied_total",
        "projector_changes_applied_total",
        "projector_redis_flush_seconds_total",
        "projector_seconds_since_last_transaction",
    ] {
        assert!(
            text.lines().any(|l| l.starts_with(name)),
            "{name} missing from /metrics"
        );
    }
    // The metric follows the watermark a moment after readers see it.
    let token = last.parse::<views::Lsn>()?.0;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let applied = stack
            .projector_metric("projector_applied_lsn")
            .await?
            .unwrap_or(0.0);
        if applied as u64 >= token {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "applied LSN {applied} stayed behind the last read token {last}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let unknown = stack.projector_get("/nope").await?;
    assert_eq!(unknown.status, StatusCode::NOT_FOUND);
    assert_eq!(unknown.body["error"]["code"], "not_found");
    stack.stop_projector().await?;
    let confirmed = stack.slot_confirmed().await?;
    let commit: views::Lsn = last.parse()?;
    // The token may lie past the commit record; the confirmation covers the
    // commit itself, so allow the difference of a commit record.
    assert!(
        confirmed.0 + 4096 >= commit.0,
        "confirmed {confirmed} far behind {commit}"
    );
    stack.cleanup().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_requested_rebuild_switches_generations_while_reads_keep_succeeding() -> anyhow::Result<()>
{
    let mut stack = Stack::start().await?;
    let (courses, users) = stack.catalogue(2, 4).await?;
    for (i, user) in users.iter().enumerate() {
        stack
            .order(
                &format!("r{i}"),
                &json!({"user_id": user, "course_ids": [courses[0]]}),
            )
            .await?;
    }
    stack.start_projector().await?;
    let path = format!("/v1/courses/{}", courses[0]);
    let lsn = stack.current_lsn().await?;
    assert_eq!(stack.get_fresh(&path, &lsn).await?.body["student_count"], 4);
    let keys = views::Keys::new(stack.prefix.clone());
    let marker = |raw: Option<String>| -> u64 {
        raw.and_then(|r| serde_json::from_str::<views::GenerationMarker>(&r).ok())
            .map(|m| m.generation)
            .unwrap_or(0)
    };
    use fred::interfaces::KeysInterface;
    let before = marker(stack.redis.get(keys.generation_marker()).await?);

    let status = tokio::process::Command::new(e2e::projector_binary()?)
        .arg("rebuild")
        .env("REDIS_URL", &stack.redis_url)
        .env("KEY_PREFIX", &stack.prefix)
        .status()
        .await?;
    assert!(status.success());

    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let read = stack.get(&path).await?;
        assert_eq!(
            read.status,
            StatusCode::OK,
            "reads keep succeeding during a rebuild"
        );
        assert_eq!(read.body["student_count"], 4);
        let now = marker(stack.redis.get(keys.generation_marker()).await?);
        if now != before {
            break;
        }
        assert!(Instant::now() < deadline, "no new generation within 30 s");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stack.wait_projector_ready(Duration::from_secs(30)).await?;
    let more = stack
        .order(
            "r-after",
            &json!({"user_id": users[0], "course_ids": [courses[1]]}),
        )
        .await?;
    let page = stack
        .get_fresh(
            &format!("/v1/courses/{}", courses[1]),
            more.header("x-commit-lsn"),
        )
        .await?;
    assert_eq!(page.body["student_count"], 1);
    // A requested rebuild is no failure: it started at once, without the
    // retry backoff that failures wait through.
    assert_eq!(
        stack.projector_metric("projector_failures_total").await?,
        Some(0.0)
    );
    // Builds: the first one and the requested one.
    assert_eq!(
        stack.projector_metric("projector_rebuilds_total").await?,
        Some(2.0)
    );
    stack.cleanup().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rebuild_request_outlives_a_projector_killed_while_carrying_it_out() -> anyhow::Result<()>
{
    use fred::interfaces::KeysInterface;
    let mut stack = Stack::start().await?;
    let (courses, users) = stack.catalogue(20, 6).await?;
    for (i, user) in users.iter().enumerate() {
        stack
            .order(
                &format!("k{i}"),
                &json!({"user_id": user, "course_ids": [courses[i % courses.len()]]}),
            )
            .await?;
    }
    stack.start_projector().await?;
    let keys = views::Keys::new(stack.prefix.clone());
    let marker = |raw: Option<String>| {
        raw.and_then(|r| serde_json::from_str::<views::GenerationMarker>(&r).ok())
    };
    let before = marker(stack.redis.get(keys.generation_marker()).await?)
        .map(|m| m.generation)
        .unwrap_or(0);

    // Killed once the build is under way: the request was observed, the
    // new generation is not live yet.
    stack
        .redis
        .set::<(), _, _>(
            keys.rebuild_request(),
            "asked by the test",
            None,
            None,
            false,
        )
        .await?;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let now = marker(stack.redis.get(keys.generation_marker()).await?);
        if now.as_ref().and_then(|m| m.building).is_some() {
            break;
        }
        assert!(
            now.map(|m| m.generation) == Some(before),
            "the rebuild finished before the test could kill it"
        );
        assert!(
            Instant::now() < deadline,
            "the rebuild did not start within 30 s"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    stack.kill_projector().await?;
    let pending: Option<String> = stack.redis.get(keys.rebuild_request()).await?;
    assert_eq!(
        pending.as_deref(),
        Some("asked by the test"),
        "a request stays until its rebuild is live"
    );

    // The next start owes the rebuild: a new generation, the request gone.
    stack.start_projector().await?;
    let after = marker(stack.redis.get(keys.generation_marker()).await?)
        .map(|m| m.generation)
        .unwrap_or(0);
    assert!(
        after > before,
        "a new generation replaced {before}: {after}"
    );
    let pending: Option<String> = stack.redis.get(keys.rebuild_request()).await?;
    assert_eq!(
        pending, None,
        "the rebuild that went live cleared its request"
    );
    let more = stack
        .order(
            "k-after",
            &json!({"user_id": users[0], "course_ids": [courses[1]]}),
        )
        .await?;
    stack
        .get_fresh(
            &format!("/v1/courses/{}", courses[1]),
            more.header("x-commit-lsn"),
        )
        .await?;
    assert_views_equal_tables(&stack).await?;
    stack.cleanup().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_course_changed_behind_the_projectors_back_is_read_back_not_overwritten(
) -> anyhow::Result<()> {
    use fred::prelude::*;
    let mut stack = Stack::start().await?;
    let (courses, users) = stack.catalogue(1, 3).await?;
    let course = courses[0];
    stack.start_projector().await?;
    let first = stack
        .order("k0", &json!({"user_id": users[0], "course_ids": [course]}))
        .await?;
    let page = stack
        .get_fresh(
            &format!("/v1/courses/{course}"),
            first.header("x-commit-lsn"),
        )
        .await?;
    assert_eq!(page.body["student_count"], 1);

    // Another writer moves the course's aggregate: the projector's memory of
    // it (at the last stamp it applied) is now out of date.
    let keys = views::Keys::new(stack.prefix.clone());
    let marker: Option<String> = stack.redis.get(keys.generation_marker()).await?;
    let marker: views::GenerationMarker = serde_json::from_str(&marker.expect("live"))?;
    let agg = keys.course_agg(marker.generation, course);
    stack
        .redis
        .hset::<(), _, _>(
            &agg,
            [
                (views::aggregate::STUDENTS, "100"),
                (views::aggregate::STAMP, "0"),
            ],
        )
        .await?;

    // The next enrollment finds Redis elsewhere than remembered, so it is
    // applied to what Redis holds: 100 + 1, not the remembered 1 + 1.
    let second = stack
        .order("k1", &json!({"user_id": users[1], "course_ids": [course]}))
        .await?;
    let page = stack
        .get_fresh(
            &format!("/v1/courses/{course}"),
            second.header("x-commit-lsn"),
        )
        .await?;
    assert_eq!(page.body["student_count"], 101);
    // The popular ranking was first written from the remembered count (in
    // the apply step) and then from what Redis holds, in the same flush.
    let category = page.body["category"].as_str().expect("a category");
    let popular = keys.category_popular(marker.generation, category);
    let member = views::ranking_member(course);
    let score: Option<f64> = stack.redis.zscore(&popular, &member).await?;
    assert_eq!(score, Some(-101.0), "popular ranking follows Redis's count");

    // And from there on it is known again.
    let third = stack
        .order("k2", &json!({"user_id": users[2], "course_ids": [course]}))
        .await?;
    let page = stack
        .get_fresh(
            &format!("/v1/courses/{course}"),
            third.header("x-commit-lsn"),
        )
        .await?;
    assert_eq!(page.body["student_count"], 102);
    let score: Option<f64> = stack.redis.zscore(&popular, &member).await?;
    assert_eq!(score, Some(-102.0));
    stack.cleanup().await
}
