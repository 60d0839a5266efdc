//! The projector stopped gracefully, or SIGKILLed while orders stream in,
//! resumes without losing or double-counting anything.

use std::time::Duration;

use e2e::{
    exact::{assert_views_equal_tables, paced_writer},
    Stack,
};
use fred::interfaces::LuaInterface;

/// Orders for users `users` one after another (every third cancelled).
async fn orders(
    stack: &Stack,
    courses: &[i64],
    users: &[i64],
    tag: &'static str,
) -> anyhow::Result<()> {
    paced_writer(stack, courses, users, tag, Duration::ZERO).await??;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counts_stay_exact_across_a_graceful_stop_and_a_sigkill() -> anyhow::Result<()> {
    let mut stack = Stack::start().await?;
    let (courses, users) = stack.catalogue(4, 60).await?;

    // Batch 1 is in the snapshot of the initial build.
    orders(&stack, &courses, &users[0..10], "a").await?;
    stack.start_projector().await?;
    orders(&stack, &courses, &users[10..20], "b").await?;
    assert_views_equal_tables(&stack).await?;

    // Graceful stop; batch 3 is written while it is down.
    stack.stop_projector().await?;
    orders(&stack, &courses, &users[20..30], "c").await?;
    stack.start_projector().await?;
    assert_views_equal_tables(&stack).await?;

    // SIGKILL while orders stream in, several times.
    for round in 0..3 {
        let from = 30 + round * 10;
        let writer = paced_writer(
            &stack,
            &courses,
            &users[from..from + 10],
            "kill",
            Duration::from_millis(5),
        );
        tokio::time::sleep(Duration::from_millis(20 + 15 * round as u64)).await;
        stack.kill_projector().await?;
        writer.await??;
        stack.start_projector().await?;
        assert_views_equal_tables(&stack).await?;
    }
    stack.cleanup().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_projector_remembers_every_course_and_keeps_counting_exactly(
) -> anyhow::Result<()> {
    let mut stack = Stack::start().await?;
    let (courses, users) = stack.catalogue(4, 12).await?;
    stack.start_projector().await?;
    orders(&stack, &courses, &users[..6], "before").await?;
    stack.stop_projector().await?;

    // Started again, it loads what Redis holds of every course.
    stack.start_projector().await?;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let remembered = stack
            .projector_metric("projector_remembered_courses")
            .await?;
        if remembered == Some(courses.len() as f64) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the restarted projector remembers {remembered:?} courses, not {}",
            courses.len()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The next enrollments are applied from that memory, checked against
    // the stamps Redis holds, and the counts stay those of the tables.
    orders(&stack, &courses, &users[6..], "after").await?;
    assert_views_equal_tables(&stack).await?;
    let flushed = stack
        .projector_metric("projector_commit_to_applied_seconds_count")
        .await?;
    assert!(
        flushed.is_some_and(|n| n > 0.0),
        "flushes are timed: {flushed:?}"
    );
    stack.cleanup().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_that_lost_its_scripts_gets_them_back_and_counts_stay_exact() -> anyhow::Result<()>
{
    let mut stack = Stack::start().await?;
    let (courses, users) = stack.catalogue(4, 40).await?;
    stack.start_projector().await?;
    orders(&stack, &courses, &users[0..10], "a").await?;
    assert_views_equal_tables(&stack).await?;

    // As a Redis restarted from a snapshot would: the data is there, the
    // script cache is empty. (Global, so projectors of tests running beside
    // this one take the same path; that is the path under test.)
    stack.redis.script_flush(false).await?;
    orders(&stack, &courses, &users[10..40], "b").await?;
    assert_views_equal_tables(&stack).await?;
    stack.cleanup().await
}
