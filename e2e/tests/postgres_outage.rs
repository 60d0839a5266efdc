//! Reads never touch PostgreSQL: with the database stopped, every read
//! endpoint still answers from Redis. Alone in its test binary, because it
//! stops the PostgreSQL every other test uses (cargo runs test binaries one
//! after another).

use std::{process::Command, time::Duration};

use e2e::Stack;
use reqwest::StatusCode;
use serde_json::json;

fn control(action: &str) -> anyhow::Result<bool> {
    // Exported by `deploy/local.sh test` only when the running PostgreSQL is
    // the project's own cluster, which a test may stop.
    let Ok(script) = std::env::var("TEST_PG_CONTROL") else {
        return Ok(false);
    };
    let status = Command::new("bash").arg(&script).arg(action).status()?;
    anyhow::ensure!(status.success(), "{script} {action} failed: {status}");
    Ok(true)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_postgresql_stopped_every_read_still_succeeds() -> anyhow::Result<()> {
    // A test that cannot stop PostgreSQL proves nothing: fail, don't pass.
    anyhow::ensure!(
        std::env::var("TEST_PG_CONTROL").is_ok(),
        "TEST_PG_CONTROL is unset: this test stops and starts the project's own \
         PostgreSQL; run it with `bash deploy/local.sh test`"
    );
    let mut stack = Stack::start().await?;
    let course = stack.course("Outage-proof", "<p>x</p>", 1000).await?;
    let user = stack.user("outage@example.com", Some("Acme")).await?;
    let order = stack
        .order("o1", &json!({"user_id": user, "course_ids": [course]}))
        .await?;
    let order_id = order.body["id"].as_i64().expect("order id");
    stack.start_projector().await?;
    stack
        .get_fresh(
            &format!("/v1/courses/{course}"),
            order.header("x-commit-lsn"),
        )
        .await?;

    assert!(control("pg-stop")?);
    let reads = [
        format!("/v1/courses/{course}"),
        format!("/v1/courses?ids={course}"),
        "/v1/categories/programming/courses".to_owned(),
        format!("/v1/users/{user}/courses"),
        format!("/v1/orders/{order_id}"),
    ];
    let mut outcome = Ok(());
    for path in &reads {
        let answer = stack.get(path).await;
        match answer {
            Ok(a) if a.status == StatusCode::OK => {}
            Ok(a) => {
                outcome = Err(anyhow::anyhow!(
                    "{path}: {} {}",
                    a.status,
                    String::from_utf8_lossy(&a.raw)
                ))
            }
            Err(err) => outcome = Err(err),
        }
    }
    let ready = stack.get("/ready").await.map(|a| a.status);
    // Start it again whatever happened, before judging.
    control("pg-start")?;
    outcome?;
    assert_eq!(
        ready?,
        StatusCode::OK,
        "the query API stays ready without PostgreSQL"
    );

    // The write side and the projector recover by themselves.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let after = loop {
        if let Ok(id) = stack.course("After", "<p>y</p>", 0).await {
            break id;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the command API did not recover"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let again = stack
        .order("o2", &json!({"user_id": user, "course_ids": [after]}))
        .await?;
    assert_eq!(again.status, StatusCode::CREATED);
    let library = stack
        .get_fresh(
            &format!("/v1/users/{user}/courses"),
            again.header("x-commit-lsn"),
        )
        .await?;
    assert_eq!(library.status, StatusCode::OK);
    assert_eq!(library.body["total"], 2);
    stack.cleanup().await
}
