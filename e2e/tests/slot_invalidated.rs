//! WAL safety: when the slot's WAL was removed (`max_slot_wal_keep_size`),
//! the projector makes a new slot and rebuilds, with a clear log line, and
//! never loops on the dead slot. Alone in its test binary because it lowers
//! a server-wide setting for a moment (cargo runs test binaries one after
//! another), and only against the project's own cluster.

use std::time::{Duration, Instant};

use e2e::Stack;
use reqwest::StatusCode;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalidated_slot_leads_to_a_new_slot_and_a_rebuild() -> anyhow::Result<()> {
    // A test that cannot stop PostgreSQL proves nothing: fail, don't pass.
    anyhow::ensure!(
        std::env::var("TEST_PG_CONTROL").is_ok(),
        "TEST_PG_CONTROL is unset: this test stops and starts the project's own \
         PostgreSQL; run it with `bash deploy/local.sh test`"
    );
    let mut stack = Stack::start().await?;
    let (courses, users) = stack.catalogue(1, 3).await?;
    let first = stack
        .order(
            "a",
            &json!({"user_id": users[0], "course_ids": [courses[0]]}),
        )
        .await?;
    stack.start_projector().await?;
    stack
        .get_fresh(
            &format!("/v1/courses/{}", courses[0]),
            first.header("x-commit-lsn"),
        )
        .await?;
    stack.stop_projector().await?;
    let second = stack
        .order(
            "b",
            &json!({"user_id": users[1], "course_ids": [courses[0]]}),
        )
        .await?;

    // Let the server drop the WAL the stopped slot still needs.
    let result = async {
        stack
            .pg
            .batch_execute("ALTER SYSTEM SET max_slot_wal_keep_size = '1MB'")
            .await?;
        stack.pg.batch_execute("SELECT pg_reload_conf()").await?;
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            for statement in [
                "CREATE TEMP TABLE IF NOT EXISTS filler (x text)",
                "INSERT INTO filler SELECT repeat('x', 1000) FROM generate_series(1, 2000)",
                "SELECT pg_switch_wal()",
                "CHECKPOINT",
            ] {
                stack.pg.batch_execute(statement).await?;
            }
            let status: Option<String> = stack
                .pg
                .query_one(
                    "SELECT wal_status FROM pg_replication_slots WHERE slot_name = $1",
                    &[&stack.slot],
                )
                .await?
                .get(0);
            if status.as_deref() == Some("lost") {
                return anyhow::Ok(());
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "slot not invalidated: {status:?}"
            );
        }
    }
    .await;
    // Multi-statement strings run as one transaction, which ALTER SYSTEM refuses.
    stack
        .pg
        .batch_execute("ALTER SYSTEM RESET max_slot_wal_keep_size")
        .await?;
    stack.pg.batch_execute("SELECT pg_reload_conf()").await?;
    result?;

    // The old generation keeps serving (stale) while the new one is built;
    // then everything, including the order written meanwhile, is there.
    stack.start_projector().await?;
    let page = stack
        .get_fresh(
            &format!("/v1/courses/{}", courses[0]),
            second.header("x-commit-lsn"),
        )
        .await?;
    assert_eq!(
        page.status,
        StatusCode::OK,
        "{}",
        String::from_utf8_lossy(&page.raw)
    );
    assert_eq!(page.body["student_count"], 2);
    let status: String = stack
        .pg
        .query_one(
            "SELECT wal_status FROM pg_replication_slots WHERE slot_name = $1",
            &[&stack.slot],
        )
        .await?
        .get(0);
    assert_ne!(status, "lost", "a fresh slot replaced the invalidated one");
    let third = stack
        .order(
            "c",
            &json!({"user_id": users[2], "course_ids": [courses[0]]}),
        )
        .await?;
    let page = stack
        .get_fresh(
            &format!("/v1/courses/{}", courses[0]),
            third.header("x-commit-lsn"),
        )
        .await?;
    assert_eq!(page.body["student_count"], 3);
    stack.cleanup().await
}
