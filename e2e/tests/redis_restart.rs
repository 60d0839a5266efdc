//! Redis going back in time under a streaming projector, with real
//! `redis-server` processes of the tests' own: restarted without persistence,
//! restored from an older dump, and (in a cluster) a node other than the
//! watermark's restored from an older dump. Each time the projector notices
//! and rebuilds, and every view ends equal to the tables; a restart that
//! lost nothing resumes instead. Also the watermark's compare-and-set itself.

use std::{
    sync::atomic::{AtomicBool, Ordering::Relaxed},
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use e2e::{
    exact::{assert_views_and_orders_equal_tables, paced_writers, writers},
    redis_server::{RedisCluster, RedisServer},
    Stack,
};
use fred::prelude::*;
use reqwest::StatusCode;
use serde_json::json;
use tokio::task::JoinHandle;
use views::{
    watermark::{advance_args, Advanced, ADVANCE},
    GenerationMarker, Keys, Lsn,
};

/// The live generation marker.
async fn marker(stack: &Stack) -> Result<Option<GenerationMarker>> {
    let raw: Option<String> = stack
        .redis
        .get(Keys::new(stack.prefix.clone()).generation_marker())
        .await?;
    Ok(raw.and_then(|r| serde_json::from_str(&r).ok()))
}

/// The live generation.
async fn live_generation(stack: &Stack) -> Result<u64> {
    Ok(marker(stack)
        .await?
        .context("a live generation")?
        .generation)
}

/// Waits until a generation other than `old` is live, built to the end, and
/// the projector is ready again; returns it.
async fn rebuilt_from(stack: &Stack, old: u64) -> Result<u64> {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        if let Ok(Some(m)) = marker(stack).await {
            let ready = stack
                .projector_get("/ready")
                .await
                .is_ok_and(|a| a.status == StatusCode::OK);
            if m.generation != old && m.building.is_none() && ready {
                return Ok(m.generation);
            }
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "no generation replaced {old} within 90 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Orders one course for `user` and waits until the views show it; returns
/// the order's commit token.
async fn order_seen(stack: &Stack, key: &str, user: i64, course: i64) -> Result<Lsn> {
    let order = stack
        .order(key, &json!({"user_id": user, "course_ids": [course]}))
        .await?;
    anyhow::ensure!(
        order.status == StatusCode::CREATED,
        "order: {}",
        order.status
    );
    let token = order.header("x-commit-lsn").to_owned();
    let page = stack
        .get_fresh(&format!("/v1/courses/{course}"), &token)
        .await?;
    anyhow::ensure!(
        page.status == StatusCode::OK,
        "not projected: {}",
        page.status
    );
    Ok(token.parse()?)
}

/// Waits until the slot has confirmed `lsn`: PostgreSQL will not send what
/// is before it again.
async fn confirmed_past(stack: &Stack, lsn: Lsn) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    while stack.slot_confirmed().await? < lsn {
        anyhow::ensure!(
            Instant::now() < deadline,
            "the slot did not confirm {lsn} within 60 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}

/// What a dump is taken after: orders by `users` (four writers at once),
/// then one by `last`, seen in the views. Returns the live generation.
async fn orders_before_dump(
    stack: &Stack,
    courses: &[i64],
    users: &[i64],
    last: i64,
) -> Result<u64> {
    for t in writers(stack, courses, users, 4, "before") {
        t.await??;
    }
    order_seen(stack, "dumped", last, courses[0]).await?;
    live_generation(stack).await
}

/// Orders a dump taken just before does not hold: a stream by `users`, and
/// one by `confirmed` that the slot has confirmed, so PostgreSQL will not
/// send it again and only a rebuild can bring it back. Returns the stream.
async fn orders_after_dump(
    stack: &Stack,
    courses: &[i64],
    confirmed: i64,
    users: &[i64],
) -> Result<Vec<JoinHandle<Result<String>>>> {
    let tasks = paced_writers(stack, courses, users, 4, "after", Duration::from_millis(20));
    let after = order_seen(stack, "after-dump", confirmed, courses[1]).await?;
    confirmed_past(stack, after).await?;
    Ok(tasks)
}

/// A new generation replaced `first`, and the projector counted why: Redis
/// diverged from what the stream wrote.
async fn assert_rebuilt_after_a_divergence(stack: &Stack, first: u64, now: u64) -> Result<()> {
    assert!(now > first, "generation {now} after {first}");
    assert!(
        stack
            .projector_metric("projector_divergences_total")
            .await?
            .is_some_and(|n| n >= 1.0),
        "the lost writes were detected as a divergence, not hidden"
    );
    Ok(())
}

/// Waits for the writers `tasks`; then every view and order equals the
/// tables.
async fn assert_exact_once_written(
    stack: &Stack,
    tasks: Vec<JoinHandle<Result<String>>>,
) -> Result<()> {
    for t in tasks {
        t.await??;
    }
    assert_views_and_orders_equal_tables(stack).await
}

/// Reads a course page until `done`, checking every answer is a page (fresh
/// or marked stale) or a momentary `unavailable` while Redis restarts: never
/// a 404 and never `rebuilding`, since an older generation stays live.
/// Returns how many answers were marked stale.
async fn read_while(stack: &Stack, course: i64, done: impl Fn() -> bool) -> Result<usize> {
    let mut stale = 0;
    while !done() {
        let page = stack.get(&format!("/v1/courses/{course}")).await?;
        match page.status {
            StatusCode::OK => {
                if page.header("x-view-stale") == "true" {
                    stale += 1;
                }
            }
            StatusCode::SERVICE_UNAVAILABLE => assert_eq!(
                page.body["error"]["code"],
                "unavailable",
                "an older generation is live: {}",
                String::from_utf8_lossy(&page.raw)
            ),
            other => panic!(
                "course {course} answered {other}: {}",
                String::from_utf8_lossy(&page.raw)
            ),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(stale)
}

/// Sends `signal` (`STOP`, `CONT`) to process `pid`.
fn signal(pid: u32, signal: &str) -> Result<()> {
    let status = std::process::Command::new("kill")
        .args([&format!("-{signal}"), &pid.to_string()])
        .status()?;
    anyhow::ensure!(status.success(), "kill -{signal} {pid}: {status}");
    Ok(())
}

#[tokio::test]
async fn the_watermark_moves_only_from_what_was_written_last_on_the_server_the_writer_started_with(
) -> Result<()> {
    let mut redis = RedisServer::start().await?;
    let url: views::RedisUrl = redis.url().parse()?;
    let client = Builder::from_config(url.config())
        .set_policy(ReconnectPolicy::new_constant(100, 100))
        .build()?;
    client.init().await?;
    let key = Keys::new("cas").watermark(1);
    let advance = |from: u64, to: u64, run_id: String| {
        let (client, key) = (client.clone(), key.clone());
        async move {
            let reply: Vec<Value> = client
                .eval(
                    ADVANCE,
                    vec![key],
                    advance_args(Lsn(from), Lsn(to), &run_id),
                )
                .await?;
            anyhow::Ok(Advanced::from_reply(reply))
        }
    };
    let stored = || async {
        let raw: Option<String> = client.get(&key).await?;
        anyhow::Ok(raw)
    };
    let first = redis.run_id()?;
    client
        .set::<(), _, _>(&key, Lsn(0x10).to_string(), None, None, false)
        .await?;

    // From what was written last, on the same server: moved; and a retried
    // call that had already written is no refusal.
    assert_eq!(advance(0x10, 0x20, first.clone()).await?, Advanced::Moved);
    assert_eq!(advance(0x10, 0x20, first.clone()).await?, Advanced::Moved);
    assert_eq!(stored().await?.as_deref(), Some("0/20"));

    // From another value (Redis lost a write, or another writer moved it):
    // refused, nothing written.
    let refused = advance(0x18, 0x30, first.clone()).await?;
    assert_eq!(
        refused,
        Advanced::Refused {
            run_id: first.clone(),
            stored: Some(Lsn(0x20))
        }
    );
    assert_eq!(stored().await?.as_deref(), Some("0/20"));

    // Restarted from a dump holding that very watermark: another server, so
    // refused all the same (views written after the watermark may be gone).
    let dump = redis.save()?;
    redis.restart_from(&dump).await?;
    let second = redis.run_id()?;
    assert_ne!(second, first);
    assert_eq!(
        advance(0x20, 0x30, first.clone()).await?,
        Advanced::Refused {
            run_id: second.clone(),
            stored: Some(Lsn(0x20))
        }
    );
    assert_eq!(stored().await?.as_deref(), Some("0/20"));

    // Restarted without persistence: no watermark at all.
    redis.restart_empty().await?;
    let third = redis.run_id()?;
    assert_eq!(
        advance(0x20, 0x30, second).await?,
        Advanced::Refused {
            run_id: third,
            stored: None
        }
    );
    assert_eq!(stored().await?, None);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_redis_restarted_without_persistence_under_a_running_projector_is_rebuilt_exactly(
) -> Result<()> {
    let mut redis = RedisServer::start().await?;
    let mut stack = Stack::start_with_redis(&redis.url()).await?;
    let (courses, users) = stack.catalogue(5, 240).await?;
    stack.start_projector().await?;
    let first = live_generation(&stack).await?;
    let run_id = redis.run_id()?;

    // Mid-stream, Redis dies and comes back with nothing.
    let tasks = paced_writers(
        &stack,
        &courses,
        &users,
        4,
        "restart",
        Duration::from_millis(25),
    );
    tokio::time::sleep(Duration::from_millis(700)).await;
    redis.restart_empty().await?;
    assert_ne!(redis.run_id()?, run_id, "a new server process");
    assert!(
        tasks.iter().any(|t| !t.is_finished()),
        "orders still stream in after the restart"
    );
    for t in tasks {
        t.await??;
    }

    let now = rebuilt_from(&stack, first).await?;
    assert!(now > first, "generation {now} after {first}");
    assert!(
        stack
            .projector_metric("projector_rebuilds_total")
            .await?
            .is_some_and(|n| n >= 2.0),
        "the first build and the one after the restart"
    );
    assert_views_and_orders_equal_tables(&stack).await?;
    stack.cleanup().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_redis_restored_from_an_older_dump_while_streaming_is_rebuilt_exactly() -> Result<()> {
    let mut redis = RedisServer::start().await?;
    let mut stack = Stack::start_with_redis(&redis.url()).await?;
    let (courses, users) = stack.catalogue(5, 240).await?;
    stack.start_projector().await?;
    let first = orders_before_dump(&stack, &courses, &users[..80], users[80]).await?;

    // The dump, then orders it does not hold, confirmed to PostgreSQL: only
    // a rebuild can bring them back once Redis is restored from it.
    let dump = redis.save()?;
    let tasks = orders_after_dump(&stack, &courses, users[81], &users[82..]).await?;
    assert_eq!(
        marker(&stack).await?.map(|m| m.generation),
        Some(first),
        "no rebuild before the restore"
    );

    redis.restart_from(&dump).await?;
    let switched = AtomicBool::new(false);
    let (stale, now) = tokio::join!(
        read_while(&stack, courses[0], || switched.load(Relaxed)),
        async {
            let now = rebuilt_from(&stack, first).await;
            switched.store(true, Relaxed);
            now
        }
    );
    let now = now?;
    println!(
        "answers marked stale while the generation was rebuilt: {}",
        stale?
    );
    assert_rebuilt_after_a_divergence(&stack, first, now).await?;
    assert_exact_once_written(&stack, tasks).await?;
    stack.cleanup().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_cluster_node_other_than_the_watermarks_restored_from_an_older_dump_is_rebuilt_exactly(
) -> Result<()> {
    let mut cluster = RedisCluster::start().await?;
    let mut stack = Stack::start_with_redis(&cluster.url()).await?;
    let (courses, users) = stack.catalogue(9, 200).await?;
    stack.start_projector().await?;
    let first = orders_before_dump(&stack, &courses, &users[..60], users[60]).await?;

    // The node to restore: not the one holding the watermark, but one
    // holding views of this generation.
    let keys = Keys::new(stack.prefix.clone());
    let watermark_node = cluster
        .keys_by_node(&keys.watermark(first))?
        .into_iter()
        .find(|(_, keys)| !keys.is_empty())
        .map(|(port, _)| port)
        .context("no node holds the watermark")?;
    let victim = cluster
        .keys_by_node(&format!("{}:g{first}:*", stack.prefix))?
        .into_iter()
        .filter(|(port, _)| *port != watermark_node)
        .max_by_key(|(_, keys)| keys.len())
        .map(|(port, _)| port)
        .context("no other node")?;

    let dump = cluster.node(victim)?.save()?;
    let tasks = orders_after_dump(&stack, &courses, users[61], &users[62..]).await?;
    cluster.node(victim)?.restart_from(&dump).await?;
    cluster.wait_ok().await?;

    let now = rebuilt_from(&stack, first).await?;
    assert_rebuilt_after_a_divergence(&stack, first, now).await?;
    assert_exact_once_written(&stack, tasks).await?;
    stack.cleanup().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_redis_restarted_from_a_dump_that_lost_nothing_resumes_without_a_rebuild() -> Result<()> {
    let mut redis = RedisServer::start().await?;
    let mut stack = Stack::start_with_redis(&redis.url()).await?;
    let (courses, users) = stack.catalogue(4, 160).await?;
    stack.start_projector().await?;
    let first = live_generation(&stack).await?;
    let tasks = paced_writers(
        &stack,
        &courses,
        &users[..150],
        4,
        "paused",
        Duration::from_millis(20),
    );
    tokio::time::sleep(Duration::from_millis(300)).await;

    // The projector frozen, Redis saves everything it was sent, dies and
    // comes back from that dump: a new server that lost nothing.
    let pid = stack.projector_pid().context("the projector runs")?;
    signal(pid, "STOP")?;
    let restarted = async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let dump = redis.save()?;
        redis.restart_from(&dump).await
    }
    .await;
    signal(pid, "CONT")?;
    restarted?;
    for t in tasks {
        t.await??;
    }

    // Checked against the slot and resumed: the same generation, streaming.
    order_seen(&stack, "resumed", users[150], courses[0]).await?;
    assert_eq!(
        marker(&stack).await?.map(|m| m.generation),
        Some(first),
        "resumed, not rebuilt"
    );
    assert_eq!(
        stack.projector_metric("projector_rebuilds_total").await?,
        Some(1.0),
        "only the first build"
    );
    assert_eq!(
        stack
            .projector_metric("projector_divergences_total")
            .await?,
        Some(0.0)
    );
    assert_views_and_orders_equal_tables(&stack).await?;
    stack.cleanup().await
}
