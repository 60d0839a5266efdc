//! DDL on the published tables never makes the projector loop: a change the
//! views can follow is followed (a `TRUNCATE` by a rebuild, a table no view
//! reads by ignoring it), and one they cannot follow halts streaming with one
//! ERROR naming the table and column, `/ready` 503, `projector_halted` 1 and
//! the slot kept before the change, until the operator acts.

use std::{
    future::Future,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use e2e::{
    fleet::{wait_for_one_active, Instance},
    Stack,
};
use reqwest::StatusCode;
use serde_json::{json, Value as Json};
use views::Lsn;

/// A stack and its projector (logging at INFO, as JSON, into the test);
/// with two courses, three users and one order projected.
async fn streaming_stack() -> Result<(Stack, Instance, Vec<i64>, Vec<i64>)> {
    let stack = Stack::start().await?;
    let (courses, users) = stack.catalogue(2, 3).await?;
    let projector = stack.spawn_instance("ddl", &[])?;
    wait_for_one_active(&[&projector], Duration::from_secs(60)).await?;
    let order = stack
        .order(
            "first",
            &json!({"user_id": users[0], "course_ids": [courses[0]]}),
        )
        .await?;
    let page = stack
        .get_fresh(
            &format!("/v1/courses/{}", courses[0]),
            order.header("x-commit-lsn"),
        )
        .await?;
    assert_eq!(page.body["student_count"], 1, "{:?}", page.body);
    Ok((stack, projector, courses, users))
}

/// Polls `check` every 100 ms until it holds.
async fn until<F, Fut>(what: &str, timeout: Duration, mut check: F) -> Result<()>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<bool>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if check().await? {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("{what}: not within {timeout:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn metric(projector: &Instance, name: &str) -> Result<f64> {
    projector
        .metric(name)
        .await?
        .with_context(|| format!("{name} is not in /metrics"))
}

/// Runs `sql` (a migration and the first write in the new shape) as one
/// transaction; returns a position at or after its commit.
async fn migrate_and_write(stack: &Stack, sql: &str) -> Result<Lsn> {
    stack
        .pg
        .batch_execute(&format!("BEGIN; {sql}; COMMIT"))
        .await
        .with_context(|| format!("running {sql}"))?;
    Ok(stack.current_lsn().await?.parse()?)
}

/// The projector's log lines at `level` whose message contains `text`.
fn logged(projector: &Instance, level: &str, text: &str) -> Vec<Json> {
    projector
        .logged(text)
        .iter()
        .filter_map(|line| serde_json::from_str::<Json>(line).ok())
        .filter(|line| line["level"] == level)
        .collect()
}

/// `projector rebuild`, as an operator runs it.
async fn projector_rebuild(stack: &Stack) -> Result<()> {
    stack.projector_subcommand(&["rebuild"]).await.map(drop)
}

/// The projector halted on `table`.`column` after the transaction that
/// ended before `written`: one ERROR, `/ready` 503 saying why, the metric,
/// the slot short of the transaction, and no retries while it waits.
async fn assert_halted_once(
    stack: &Stack,
    projector: &Instance,
    table: &str,
    column: &str,
    written: Lsn,
) -> Result<()> {
    until("projector_halted 1", Duration::from_secs(30), || async {
        Ok(metric(projector, "projector_halted").await? == 1.0)
    })
    .await?;
    // Long enough for a retry loop to show (its first retry is 0.5 s away)
    // and for heartbeats (every second) to move a slot that was not kept.
    tokio::time::sleep(Duration::from_secs(3)).await;

    let (status, ready) = projector.ready().await?;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    let why = ready["error"]["message"].as_str().unwrap_or_default();
    assert!(
        why.contains("streaming halted") && why.contains(table) && why.contains(column),
        "{why}"
    );
    let health = stack
        .http
        .get(format!("http://{}/health", projector.addr))
        .send()
        .await?;
    assert_eq!(health.status(), StatusCode::OK);
    assert_eq!(metric(projector, "projector_halted").await?, 1.0);
    assert_eq!(metric(projector, "projector_failures_total").await?, 0.0);

    let errors = logged(projector, "ERROR", "");
    assert_eq!(errors.len(), 1, "one ERROR line: {errors:#?}");
    let error = &errors[0];
    assert_eq!(error["table"], table, "{error}");
    assert_eq!(error["column"], column, "{error}");
    let message = error["message"].as_str().unwrap_or_default();
    assert!(
        message.starts_with("streaming halted") && message.contains("projector rebuild"),
        "{message}"
    );

    let confirmed = stack.slot_confirmed().await?;
    assert!(
        confirmed < written,
        "the slot confirmed {confirmed}, past the halting transaction (committed before {written})"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_truncated_course_table_is_followed_by_a_rebuild_not_a_retry_loop() -> Result<()> {
    let (stack, projector, courses, users) = streaming_stack().await?;
    let generation = metric(&projector, "projector_generation").await?;
    let rebuilds = metric(&projector, "projector_rebuilds_total").await?;

    stack.pg.batch_execute("TRUNCATE courses CASCADE").await?;
    until("a new generation", Duration::from_secs(30), || async {
        Ok(
            metric(&projector, "projector_generation").await? != generation
                && projector.ready().await?.0 == StatusCode::OK,
        )
    })
    .await?;
    assert_eq!(
        metric(&projector, "projector_rebuilds_total").await?,
        rebuilds + 1.0
    );
    // The new generation has what the tables have: no course.
    let gone = stack.get(&format!("/v1/courses/{}", courses[0])).await?;
    assert_eq!(gone.status, StatusCode::NOT_FOUND, "{:?}", gone.body);

    // And streaming goes on from it.
    let course = stack
        .course("After the truncate", "<p>new</p>", 500)
        .await?;
    let order = stack
        .order(
            "after",
            &json!({"user_id": users[1], "course_ids": [course]}),
        )
        .await?;
    let page = stack
        .get_fresh(
            &format!("/v1/courses/{course}"),
            order.header("x-commit-lsn"),
        )
        .await?;
    assert_eq!(page.status, StatusCode::OK, "{:?}", page.body);
    assert_eq!(page.body["student_count"], 1);

    assert_eq!(metric(&projector, "projector_failures_total").await?, 0.0);
    assert_eq!(metric(&projector, "projector_halted").await?, 0.0);
    assert_eq!(logged(&projector, "ERROR", ""), Vec::<Json>::new());
    let said = logged(&projector, "WARN", "truncated");
    assert_eq!(said.len(), 1, "{said:#?}");
    let tables = said[0]["table"].as_str().unwrap_or_default();
    assert!(tables.contains("courses"), "{tables}");
    projector.kill().await?;
    stack.cleanup().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renamed_column_a_view_uses_halts_with_one_clear_error_and_keeps_the_slot() -> Result<()>
{
    let (stack, projector, courses, _) = streaming_stack().await?;
    let written = migrate_and_write(
        &stack,
        &format!(
            "ALTER TABLE courses RENAME COLUMN summary TO subtitle; \
             UPDATE courses SET title = 'Renamed' WHERE id = {}",
            courses[0]
        ),
    )
    .await?;
    assert_halted_once(&stack, &projector, "courses", "summary", written).await?;
    let page = stack.get(&format!("/v1/courses/{}", courses[0])).await?;
    assert_eq!(
        page.body["title"], "Course 0",
        "nothing of the new shape applied"
    );

    // The operator renames it back and asks for a rebuild: the views follow
    // the tables again, the change written meanwhile included.
    stack
        .pg
        .batch_execute("ALTER TABLE courses RENAME COLUMN subtitle TO summary")
        .await?;
    let generation = metric(&projector, "projector_generation").await?;
    projector_rebuild(&stack).await?;
    until(
        "ready after the rebuild",
        Duration::from_secs(30),
        || async {
            Ok(projector.ready().await?.0 == StatusCode::OK
                && metric(&projector, "projector_generation").await? != generation)
        },
    )
    .await?;
    assert_eq!(metric(&projector, "projector_halted").await?, 0.0);
    let page = stack.get(&format!("/v1/courses/{}", courses[0])).await?;
    assert_eq!(page.body["title"], "Renamed");
    assert_eq!(page.body["student_count"], 1);
    assert_eq!(logged(&projector, "ERROR", "").len(), 1);
    assert_eq!(metric(&projector, "projector_failures_total").await?, 0.0);
    projector.kill().await?;
    stack.cleanup().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_column_a_view_uses_halts_and_a_rebuild_waits_until_it_is_back() -> Result<()> {
    let (stack, projector, courses, _) = streaming_stack().await?;
    let written = migrate_and_write(
        &stack,
        "ALTER TABLE courses DROP COLUMN instructor; \
         INSERT INTO courses (title, summary, description_html, category, price_krw) \
         VALUES ('No instructor', 'none', '<p>x</p>', 'programming', 100)",
    )
    .await?;
    assert_halted_once(&stack, &projector, "courses", "instructor", written).await?;

    // A snapshot could not be built either: a rebuild asked for now is
    // refused with one line, and the slot stays.
    let generation = metric(&projector, "projector_generation").await?;
    projector_rebuild(&stack).await?;
    until(
        "the refused rebuild said so",
        Duration::from_secs(10),
        || async { Ok(!logged(&projector, "WARN", "a rebuild was requested").is_empty()) },
    )
    .await?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let refused = logged(&projector, "WARN", "a rebuild was requested");
    assert_eq!(refused.len(), 1, "{refused:#?}");
    assert_eq!(refused[0]["column"], "instructor");
    assert_eq!(
        metric(&projector, "projector_generation").await?,
        generation
    );
    assert_eq!(metric(&projector, "projector_halted").await?, 1.0);
    assert_eq!(metric(&projector, "projector_failures_total").await?, 0.0);
    assert_eq!(logged(&projector, "ERROR", "").len(), 1);
    assert!(stack.slot_confirmed().await? < written, "the slot is kept");
    // The views still serve what was there before.
    let page = stack.get(&format!("/v1/courses/{}", courses[0])).await?;
    assert_eq!(page.status, StatusCode::OK);
    assert_eq!(page.body["instructor"], "Kim");
    projector.kill().await?;
    stack.cleanup().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retyped_column_a_view_uses_halts_unless_its_type_reads_the_same() -> Result<()> {
    let (stack, projector, courses, _) = streaming_stack().await?;
    // Text to varchar reads the same: followed.
    let followed = migrate_and_write(
        &stack,
        &format!(
            "ALTER TABLE courses ALTER COLUMN title TYPE varchar(200); \
             UPDATE courses SET title = 'Still text' WHERE id = {}",
            courses[1]
        ),
    )
    .await?;
    let page = stack
        .get_fresh(
            &format!("/v1/courses/{}", courses[1]),
            &followed.to_string(),
        )
        .await?;
    assert_eq!(page.body["title"], "Still text", "{:?}", page.body);

    // A price with decimals does not read as the integer the views show.
    let written = migrate_and_write(
        &stack,
        &format!(
            "ALTER TABLE courses ALTER COLUMN price_krw TYPE numeric(12, 2); \
             UPDATE courses SET price_krw = 1500.50 WHERE id = {}",
            courses[0]
        ),
    )
    .await?;
    assert_halted_once(&stack, &projector, "courses", "price_krw", written).await?;
    let error = &logged(&projector, "ERROR", "")[0];
    let message = error["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("is now numeric")
            && message.contains("ALTER TABLE courses ALTER COLUMN price_krw TYPE bigint"),
        "{message}"
    );
    let page = stack.get(&format!("/v1/courses/{}", courses[0])).await?;
    assert_eq!(page.body["price_krw"], 1000);
    projector.kill().await?;
    stack.cleanup().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_table_in_the_publication_is_ignored_with_one_info_line() -> Result<()> {
    let (stack, projector, courses, _) = streaming_stack().await?;
    stack
        .pg
        .batch_execute(&format!(
            "ALTER PUBLICATION {} ADD TABLE users",
            stack.publication
        ))
        .await?;
    let mut last = String::new();
    for i in 0..3 {
        let user = stack
            .user(&format!("later{i}@example.com"), Some("Initech"))
            .await?;
        let order = stack
            .order(
                &format!("later{i}"),
                &json!({"user_id": user, "course_ids": [courses[1]]}),
            )
            .await?;
        last = order.header("x-commit-lsn").to_owned();
    }
    let page = stack
        .get_fresh(&format!("/v1/courses/{}", courses[1]), &last)
        .await?;
    assert_eq!(page.status, StatusCode::OK);
    assert_eq!(page.body["student_count"], 3);

    let said = logged(&projector, "INFO", "no view reads");
    assert_eq!(said.len(), 1, "{said:#?}");
    assert_eq!(said[0]["table"], "users");
    assert_eq!(logged(&projector, "ERROR", ""), Vec::<Json>::new());
    // The one warning at start: the fleet runs without an admin token.
    let warned: Vec<Json> = logged(&projector, "WARN", "")
        .into_iter()
        .filter(|l| {
            !l["message"]
                .as_str()
                .is_some_and(|m| m.starts_with("no ADMIN_TOKEN"))
        })
        .collect();
    assert_eq!(warned, Vec::<Json>::new());
    assert_eq!(metric(&projector, "projector_failures_total").await?, 0.0);
    assert_eq!(metric(&projector, "projector_halted").await?, 0.0);
    assert_eq!(projector.ready().await?.0, StatusCode::OK);
    projector.kill().await?;
    stack.cleanup().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_projected_table_taken_out_of_the_publication_while_streaming_halts_and_comes_back_with_a_rebuild(
) -> Result<()> {
    let (stack, projector, courses, users) = streaming_stack().await?;
    stack
        .pg
        .batch_execute(&format!(
            "ALTER PUBLICATION {} DROP TABLE enrollments",
            stack.publication
        ))
        .await?;
    // Its rows no longer stream: an order now would be missed by the views.
    let missed = stack
        .order(
            "while-unpublished",
            &json!({"user_id": users[1], "course_ids": [courses[1]]}),
        )
        .await?;
    let written: Lsn = missed.header("x-commit-lsn").parse()?;
    until("halted", Duration::from_secs(30), || async {
        Ok(metric(&projector, "projector_halted").await? == 1.0)
    })
    .await?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let errors = logged(&projector, "ERROR", "");
    assert_eq!(errors.len(), 1, "{errors:#?}");
    assert_eq!(errors[0]["table"], "enrollments");
    assert_eq!(projector.ready().await?.0, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(metric(&projector, "projector_failures_total").await?, 0.0);

    // Put back, the table is followed again through a rebuild, so the order
    // written while it was out is counted.
    stack
        .pg
        .batch_execute(&format!(
            "ALTER PUBLICATION {} ADD TABLE enrollments",
            stack.publication
        ))
        .await?;
    projector_rebuild(&stack).await?;
    until(
        "ready after the rebuild",
        Duration::from_secs(60),
        || async { Ok(projector.ready().await?.0 == StatusCode::OK) },
    )
    .await?;
    let page = stack
        .get_fresh(&format!("/v1/courses/{}", courses[1]), &written.to_string())
        .await?;
    assert_eq!(
        page.body["student_count"], 1,
        "the missed enrollment is counted"
    );
    assert_eq!(metric(&projector, "projector_halted").await?, 0.0);
    projector.kill().await?;
    stack.cleanup().await
}
