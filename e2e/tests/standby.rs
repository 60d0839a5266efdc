//! Several projector processes against one slot: one is active, the others
//! wait as standbys and take over when it dies or freezes; a deposed instance
//! that wakes up never takes a view back in time.

use std::{
    collections::HashMap,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::Duration,
};

use e2e::{
    exact::{self, assert_views_and_orders_equal_tables},
    fleet::{kill_all, wait_for_one_active, Instance},
    Stack,
};
use reqwest::StatusCode;
use views::Lsn;

/// Generous: the machine running the tests may be busy.
const TAKEOVER: Duration = Duration::from_secs(60);

/// Orders for `users` one after another (every third cancelled), a few
/// milliseconds apart; returns how many were written.
fn order_stream(
    stack: &Stack,
    courses: &[i64],
    users: &[i64],
    tag: &'static str,
) -> tokio::task::JoinHandle<anyhow::Result<usize>> {
    let count = users.len();
    let writer = exact::paced_writer(stack, courses, users, tag, Duration::from_millis(5));
    tokio::spawn(async move {
        writer.await??;
        anyhow::Ok(count)
    })
}

/// The live generation, as the marker in Redis says.
async fn generation(stack: &Stack) -> anyhow::Result<u64> {
    let keys = views::Keys::new(stack.prefix.clone());
    let marker: Option<String> =
        fred::interfaces::KeysInterface::get(&stack.redis, keys.generation_marker()).await?;
    let marker: views::GenerationMarker = serde_json::from_str(&marker.unwrap_or_default())?;
    Ok(marker.generation)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_second_projector_waits_as_standby_and_takes_over_when_the_active_one_is_killed(
) -> anyhow::Result<()> {
    let stack = Stack::start().await?;
    let (courses, users) = stack.catalogue(4, 150).await?;
    let (mut fleet, active) = stack
        .start_fleet(&["alpha", "beta", "gamma"], &[], TAKEOVER)
        .await?;

    let writer = order_stream(&stack, &courses, &users, "takeover");
    tokio::time::sleep(Duration::from_millis(400)).await;
    let killed = fleet.remove(active);
    let killed_name = killed.name.clone();
    killed.kill().await?;

    let survivors: Vec<&Instance> = fleet.iter().collect();
    let next = wait_for_one_active(&survivors, TAKEOVER).await?;
    assert_ne!(survivors[next].name, killed_name);
    let written = writer.await??;
    assert_eq!(written, users.len());
    // Orders written after the kill reach the views through the new active one.
    assert_views_and_orders_equal_tables(&stack).await?;
    assert!(
        survivors[next].is_active().await,
        "the new active instance stays active"
    );
    kill_all(fleet).await?;
    stack.cleanup().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_paused_active_projector_that_wakes_after_a_takeover_never_regresses_a_view(
) -> anyhow::Result<()> {
    let stack = Stack::start().await?;
    let (courses, users) = stack.catalogue(4, 120).await?;
    // A long linger: when it freezes, the active instance holds a batch it
    // has not written, and writes it first thing when it wakes.
    let quick = [
        ("PROJECTOR_TAKEOVER_TIMEOUT_SECS", "2"),
        ("PROJECTOR_FLUSH_LINGER_MS", "1000"),
    ];
    let (fleet, first) = stack
        .start_fleet(&["alpha", "beta"], &quick, TAKEOVER)
        .await?;
    let all: Vec<&Instance> = fleet.iter().collect();
    let (paused, other) = (all[first], all[1 - first]);

    // Watch every course page and the watermark from now on: nothing may
    // go back, whoever writes.
    let watching = Arc::new(AtomicBool::new(true));
    let watcher = {
        let (query, http, courses) = (stack.query.clone(), stack.http.clone(), courses.clone());
        let watching = watching.clone();
        tokio::spawn(async move {
            let mut seen: HashMap<i64, Lsn> = HashMap::new();
            let mut watermark = Lsn::default();
            let mut reads = 0u64;
            while watching.load(Ordering::Relaxed) {
                for id in &courses {
                    let r = http.get(format!("{query}/v1/courses/{id}")).send().await?;
                    if r.status() != StatusCode::OK {
                        continue;
                    }
                    let header: Lsn = r.headers()["x-projection-lsn"].to_str()?.parse()?;
                    anyhow::ensure!(
                        header >= watermark,
                        "the watermark went back from {watermark} to {header}"
                    );
                    watermark = header;
                    let body: serde_json::Value = r.json().await?;
                    let lsn: Lsn = body["lsn"].as_str().unwrap_or("0/0").parse()?;
                    let before = seen.entry(*id).or_default();
                    anyhow::ensure!(
                        lsn >= *before,
                        "course {id}'s view went back from {before} to {lsn}"
                    );
                    *before = lsn;
                    reads += 1;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            anyhow::Ok(reads)
        })
    };

    // Frozen mid-stream: the server drops its session after the takeover
    // timeout, and the standby takes the slot.
    let writer = order_stream(&stack, &courses, &users[..60], "before");
    tokio::time::sleep(Duration::from_millis(300)).await;
    paused.signal("STOP")?;
    let generation_before = generation(&stack).await?;
    wait_for_one_active(&[other], TAKEOVER).await?;
    writer.await??;
    // The new active one has applied everything since, so whatever the
    // frozen one still holds is older than what Redis has.
    assert_views_and_orders_equal_tables(&stack).await?;

    // It wakes up with whatever it held, finds its session gone, and waits
    // as a standby; more orders meanwhile.
    paused.signal("CONT")?;
    let writer = order_stream(&stack, &courses, &users[60..], "after");
    let which = wait_for_one_active(&[paused, other], TAKEOVER).await?;
    assert_eq!(which, 1, "the instance that took over stays active");
    writer.await??;
    assert_views_and_orders_equal_tables(&stack).await?;

    watching.store(false, Ordering::Relaxed);
    let reads = watcher.await??;
    assert!(reads > 0, "the watcher read no course page");
    assert_eq!(
        generation(&stack).await?,
        generation_before,
        "the takeover resumed the live generation, no rebuild"
    );
    assert_eq!(other.metric("projector_rebuilds_total").await?, Some(0.0));
    assert!(
        paused.is_standby().await,
        "the woken instance is a standby:\n{}",
        paused.tail(20)
    );
    kill_all(fleet).await?;
    stack.cleanup().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standby_logs_that_it_waits_once() -> anyhow::Result<()> {
    let stack = Stack::start().await?;
    let (fleet, first) = stack.start_fleet(&["alpha", "beta"], &[], TAKEOVER).await?;
    let all: Vec<&Instance> = fleet.iter().collect();
    let (active, standby) = (all[first], all[1 - first]);
    // A dozen tries for the lock at least.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let waiting = standby.logged("is held by");
    assert_eq!(waiting.len(), 1, "{waiting:#?}");
    assert!(
        waiting[0].contains(&format!("held by {}", active.name)),
        "{}",
        waiting[0]
    );
    assert!(
        active.logged("is held by").is_empty(),
        "the active one never waited"
    );
    assert!(standby.is_standby().await);
    kill_all(fleet).await?;
    stack.cleanup().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn projector_status_names_the_active_instance() -> anyhow::Result<()> {
    let stack = Stack::start().await?;
    let (mut fleet, first) = stack.start_fleet(&["alpha", "beta"], &[], TAKEOVER).await?;

    let status: serde_json::Value =
        serde_json::from_str(&stack.projector_subcommand(&["status"]).await?)?;
    let named = &status["active_instance"];
    assert_eq!(named["name"], fleet[first].name.as_str(), "{status:#}");
    // The pid is the server's: the active instance's replication session.
    let pid = named["pid"].as_i64().unwrap_or_default() as i32;
    let session: String = stack
        .pg
        .query_one(
            "SELECT application_name FROM pg_stat_activity WHERE pid = $1",
            &[&pid],
        )
        .await?
        .get(0);
    assert_eq!(session, fleet[first].name);

    fleet.remove(first).kill().await?;
    wait_for_one_active(&[&fleet[0]], TAKEOVER).await?;
    let status: serde_json::Value =
        serde_json::from_str(&stack.projector_subcommand(&["status"]).await?)?;
    assert_eq!(
        status["active_instance"]["name"],
        fleet[0].name.as_str(),
        "{status:#}"
    );
    kill_all(fleet).await?;
    stack.cleanup().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rebuild_request_is_carried_out_by_the_active_instance() -> anyhow::Result<()> {
    let stack = Stack::start().await?;
    let (courses, users) = stack.catalogue(3, 30).await?;
    let (fleet, first) = stack.start_fleet(&["alpha", "beta"], &[], TAKEOVER).await?;
    let all: Vec<&Instance> = fleet.iter().collect();
    let (active, standby) = (all[first], all[1 - first]);
    order_stream(&stack, &courses, &users[..15], "a").await??;
    let before = generation(&stack).await?;
    let built = active.metric("projector_rebuilds_total").await?;

    stack.projector_subcommand(&["rebuild"]).await?;
    let writer = order_stream(&stack, &courses, &users[15..], "b");
    let deadline = std::time::Instant::now() + TAKEOVER;
    while generation(&stack).await? == before {
        assert!(
            std::time::Instant::now() < deadline,
            "no new generation:\n{}",
            active.tail(20)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    writer.await??;
    assert_eq!(wait_for_one_active(&all, TAKEOVER).await?, first);
    assert_eq!(
        active.metric("projector_rebuilds_total").await?,
        built.map(|n| n + 1.0),
        "the active instance built the new generation"
    );
    assert_eq!(standby.metric("projector_rebuilds_total").await?, Some(0.0));
    assert!(standby.is_standby().await, "the standby still waits");
    assert_eq!(active.logged("a rebuild was requested").len(), 1);
    assert!(
        active.logged("is held by").is_empty(),
        "restarting its stream, the active instance never called itself a standby"
    );
    assert!(standby.logged("a rebuild was requested").is_empty());
    assert_views_and_orders_equal_tables(&stack).await?;
    kill_all(fleet).await?;
    stack.cleanup().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_older_release_in_front_of_newer_views_says_so_once_and_leaves_the_slot_to_a_newer_one(
) -> anyhow::Result<()> {
    let stack = Stack::start().await?;
    let (courses, users) = stack.catalogue(2, 4).await?;
    let newer = (views::VIEW_SCHEMA_VERSION + 1).to_string();
    let new_release = [("PROJECTOR_VIEW_SCHEMA_VERSION", newer.as_str())];
    let first = stack.spawn_instance("new-1", &new_release)?;
    wait_for_one_active(&[&first], TAKEOVER).await?;
    let built = generation(&stack).await?;
    first.kill().await?;

    // The current release finds views of a newer schema: it leaves them.
    let old = stack.spawn_instance("old", &[])?;
    let deadline = tokio::time::Instant::now() + TAKEOVER;
    while old.logged("newer than this release").is_empty() {
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "no line about the newer views: {}",
            old.tail(20)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Several looks later: still one line, no failure counted, not ready,
    // and the newer views untouched.
    tokio::time::sleep(Duration::from_secs(12)).await;
    assert_eq!(
        old.logged("newer than this release").len(),
        1,
        "{}",
        old.tail(20)
    );
    assert_eq!(old.metric("projector_failures_total").await?, Some(0.0));
    assert_eq!(old.ready().await?.0, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(generation(&stack).await?, built);

    // A newer projector started beside it gets the slot and streams.
    let second = stack.spawn_instance("new-2", &new_release)?;
    wait_for_one_active(&[&second], TAKEOVER).await?;
    order_stream(&stack, &courses, &users, "newer").await??;
    assert_eq!(generation(&stack).await?, built, "resumed, not rebuilt");
    assert!(!old.is_active().await);
    old.kill().await?;
    second.kill().await?;
    stack.cleanup().await
}
