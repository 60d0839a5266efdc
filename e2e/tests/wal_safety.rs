//! WAL safety: the projector reports how much WAL the server may keep for
//! its slot and the slot's `wal_status`, in `/metrics` and `projector status`.

use std::time::{Duration, Instant};

use e2e::Stack;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_wal_limit_and_the_slots_wal_status_show_in_metrics_and_status() -> anyhow::Result<()> {
    let mut stack = Stack::start().await?;
    stack.start_projector().await?;
    // The server's own figure: pg_settings gives max_slot_wal_keep_size in MB.
    let expected: i64 = stack
        .pg
        .query_one(
            "SELECT CASE WHEN setting::bigint < 0 THEN -1 ELSE setting::bigint * 1024 * 1024 END \
               FROM pg_settings WHERE name = 'max_slot_wal_keep_size'",
            &[],
        )
        .await?
        .get(0);
    assert_eq!(
        stack
            .projector_metric("projector_max_slot_wal_keep_size_bytes")
            .await?,
        Some(expected as f64)
    );

    // A fresh slot's WAL is reserved; the monitor reports it within seconds.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let reserved = stack
            .projector_metric(r#"projector_slot_wal_status{status="reserved"}"#)
            .await?;
        if reserved == Some(1.0) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "wal_status reserved is {reserved:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for other in ["extended", "unreserved", "lost"] {
        let series = format!(r#"projector_slot_wal_status{{status="{other}"}}"#);
        assert_eq!(stack.projector_metric(&series).await?, Some(0.0), "{other}");
    }

    let status: serde_json::Value =
        serde_json::from_str(&stack.projector_subcommand(&["status"]).await?)?;
    assert_eq!(
        status["max_slot_wal_keep_size_bytes"], expected,
        "{status:#}"
    );
    assert_eq!(status["wal_status"], "reserved", "{status:#}");
    assert!(status["max_slot_wal_keep_size"].is_string(), "{status:#}");
    stack.cleanup().await
}
