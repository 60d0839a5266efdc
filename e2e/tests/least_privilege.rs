//! Least privilege (DESIGN.md, Write model), end to end: the command API runs
//! as a role that may write rows but never replicate, the projector as one
//! that may replicate and read the published tables but never write, and the
//! system still builds, streams and serves its views.

use std::{collections::BTreeSet, process::Stdio, time::Duration};

use anyhow::{Context, Result};
use e2e::{
    admin_database_url, unique_name, with_user, PgRoles, Stack, COMMAND_ROLE, MIGRATED_PUBLICATION,
    PROJECTOR_ROLE,
};
use pgwire_replication::{ReplicationClient, ReplicationConfig, TlsConfig};
use reqwest::StatusCode;
use serde_json::json;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio_postgres::{error::SqlState, Client, NoTls};

async fn connect(url: &str) -> Result<Client> {
    let (client, conn) = tokio_postgres::connect(url, NoTls)
        .await
        .with_context(|| format!("connecting to {url}"))?;
    tokio::spawn(conn);
    Ok(client)
}

/// The SQLSTATE a statement fails with, or `None` when it succeeds.
async fn sqlstate(pg: &Client, sql: &str) -> Result<Option<SqlState>> {
    match pg.batch_execute(sql).await {
        Ok(()) => Ok(None),
        Err(err) => err
            .code()
            .cloned()
            .map(Some)
            .with_context(|| format!("not an error of the server: {err}")),
    }
}

/// Opens a `replication=database` session on the test database as `role`
/// and asks the walsender to identify the system.
async fn replication_session(db: &str, role: &str) -> Result<(), String> {
    let config = ReplicationConfig::new(
        "127.0.0.1".to_owned(),
        role.to_owned(),
        String::new(),
        db.to_owned(),
        unique_name("unused_slot"),
        MIGRATED_PUBLICATION.to_owned(),
    )
    .with_port(test_server_port())
    .with_tls(TlsConfig::disabled());
    let mut session = ReplicationClient::connect_gated(config)
        .await
        .map_err(|e| e.to_string())?;
    session
        .simple_query("IDENTIFY_SYSTEM")
        .await
        .map(|_| ())
        .map_err(|e| e.to_string())
}

fn test_server_port() -> u16 {
    let url = admin_database_url();
    url.rsplit_once('@')
        .map_or(url.as_str(), |(_, host)| host)
        .split('/')
        .next()
        .and_then(|host| host.rsplit_once(':'))
        .and_then(|(_, port)| port.parse().ok())
        .unwrap_or(5432)
}

/// The tables of schema `public` that `role` holds `privilege` (any of a
/// list) on, or all of them when `role` is `None`; sqlx's bookkeeping is
/// left out (checked apart).
async fn tables_with(pg: &Client, role: Option<&str>, privilege: &str) -> Result<BTreeSet<String>> {
    Ok(pg
        .query(
            "SELECT c.relname::text FROM pg_class c \
               JOIN pg_namespace n ON n.oid = c.relnamespace \
              WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p') \
                AND c.relname <> '_sqlx_migrations' \
                AND ($1::name IS NULL OR has_table_privilege($1::name, c.oid, $2::text))",
            &[&role, &privilege],
        )
        .await?
        .iter()
        .map(|row| row.get(0))
        .collect())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_projector_serves_views_with_replication_and_select_only_and_the_command_api_writes_without_replication(
) -> Result<()> {
    // Arrange: the roles, by deploy/roles.sql itself, run four times at once
    // (parallel test processes race like this), before the database is
    // migrated, since the migrations grant only to roles that exist.
    let runs: Vec<_> = (0..4).map(|_| tokio::spawn(e2e::ensure_roles())).collect();
    for run in runs {
        run.await??;
    }
    let mut stack = Stack::start_as(&PgRoles {
        command: Some(COMMAND_ROLE.to_owned()),
        projector: Some(PROJECTOR_ROLE.to_owned()),
    })
    .await?;
    let admin = &connect(&stack.database_url).await?;

    // The roles' attributes: only the projector may replicate; neither is a
    // superuser nor owns a table.
    for (role, replication) in [(COMMAND_ROLE, false), (PROJECTOR_ROLE, true)] {
        let row = admin
            .query_one(
                "SELECT rolreplication, rolsuper, rolbypassrls, rolcreaterole, rolcreatedb \
                   FROM pg_roles WHERE rolname = $1",
                &[&role],
            )
            .await?;
        assert_eq!(row.get::<_, bool>(0), replication, "{role}: REPLICATION");
        for (i, what) in [
            (1, "SUPERUSER"),
            (2, "BYPASSRLS"),
            (3, "CREATEROLE"),
            (4, "CREATEDB"),
        ] {
            assert!(!row.get::<_, bool>(i), "{role} has {what}");
        }
        let owned: i64 = admin
            .query_one(
                "SELECT count(*) FROM pg_class \
                  WHERE relowner = (SELECT oid FROM pg_roles WHERE rolname = $1)",
                &[&role],
            )
            .await?
            .get(0);
        assert_eq!(owned, 0, "{role} owns relations");
    }

    // The grants the migration made: the projector reads exactly the
    // published tables and writes none; the command API reads and writes
    // every table but may not truncate; neither touches sqlx's bookkeeping.
    let published: BTreeSet<String> = admin
        .query(
            "SELECT tablename::text FROM pg_publication_tables WHERE pubname = $1",
            &[&MIGRATED_PUBLICATION],
        )
        .await?
        .iter()
        .map(|row| row.get(0))
        .collect();
    assert!(published.contains("courses") && published.contains("enrollments"));
    assert!(!published.contains("users"), "users are never published");
    assert_eq!(
        tables_with(admin, Some(PROJECTOR_ROLE), "SELECT").await?,
        published
    );
    assert!(tables_with(
        admin,
        Some(PROJECTOR_ROLE),
        "INSERT, UPDATE, DELETE, TRUNCATE"
    )
    .await?
    .is_empty());
    let all = tables_with(admin, None, "").await?;
    for privilege in ["SELECT", "INSERT", "UPDATE", "DELETE"] {
        assert_eq!(
            tables_with(admin, Some(COMMAND_ROLE), privilege).await?,
            all,
            "{COMMAND_ROLE}: {privilege}"
        );
    }
    assert!(tables_with(admin, Some(COMMAND_ROLE), "TRUNCATE")
        .await?
        .is_empty());
    for role in [COMMAND_ROLE, PROJECTOR_ROLE] {
        let bookkeeping: bool = admin
            .query_one(
                "SELECT has_table_privilege($1::name, '_sqlx_migrations', 'SELECT, INSERT, UPDATE, DELETE')",
                &[&role],
            )
            .await?
            .get(0);
        assert!(!bookkeeping, "{role} may touch _sqlx_migrations");
    }

    // The projector's role cannot write, read what is not published, or
    // make a publication of its own.
    let as_projector = connect(&stack.projector_database_url).await?;
    let denied = Some(SqlState::INSUFFICIENT_PRIVILEGE);
    assert_eq!(
        sqlstate(
            &as_projector,
            "INSERT INTO courses (title, summary, description_html, category, instructor, price_krw) \
             VALUES ('t', 's', '<p>d</p>', 'c', 'i', 0)"
        )
        .await?,
        denied
    );
    assert_eq!(
        sqlstate(&as_projector, "UPDATE orders SET status = 'cancelled'").await?,
        denied
    );
    assert_eq!(
        sqlstate(&as_projector, "SELECT email FROM users").await?,
        denied
    );
    assert_eq!(
        sqlstate(&as_projector, "CREATE PUBLICATION mine FOR TABLE courses").await?,
        denied
    );

    // The command API's role cannot replicate: the walsender refuses its
    // session, and slots are refused to it in SQL too. The projector's role,
    // on the same database, is let in.
    let refused = replication_session(&stack.db_name, COMMAND_ROLE)
        .await
        .expect_err("a replication session as the command role");
    assert!(
        refused.contains("replication role"),
        "unexpected refusal: {refused}"
    );
    replication_session(&stack.db_name, PROJECTOR_ROLE)
        .await
        .map_err(anyhow::Error::msg)
        .context("a replication session as the projector role")?;
    let as_command = connect(&with_user(&stack.database_url, COMMAND_ROLE)).await?;
    assert_eq!(
        sqlstate(
            &as_command,
            &format!(
                "SELECT pg_create_logical_replication_slot('{}', 'pgoutput')",
                unique_name("slot")
            )
        )
        .await?,
        denied
    );

    // A custom publication needs an owner: the projector's role says so
    // plainly instead of failing obscurely.
    let message = projector_error_with_publication(&stack, "e2e_not_migrated").await?;
    assert!(
        message.contains(
            "publication e2e_not_migrated does not exist: apply the migrations (they create cqrs_projector), or run with a role that owns the tables"
        ),
        "{message}"
    );

    // Act: a catalogue written (as the command role) before the projector
    // starts, so its initial build reads the snapshot as its own role; then
    // an event, an order through it and a cancelled order, streamed.
    let course = stack
        .course("Least privilege", "<p>roles</p>", 40_000)
        .await?;
    let other = stack.course("Other", "<p>other</p>", 10_000).await?;
    let user = stack.user("lp@example.com", Some("Acme")).await?;
    stack.start_projector().await?;
    let walsender_role: String = admin
        .query_one(
            "SELECT a.usename::text FROM pg_replication_slots s \
               JOIN pg_stat_activity a ON a.pid = s.active_pid WHERE s.slot_name = $1",
            &[&stack.slot],
        )
        .await?
        .get(0);
    assert_eq!(walsender_role, PROJECTOR_ROLE);

    let event = stack
        .post(
            "/v1/events",
            &json!({
                "name": "Roles sale",
                "starts_at": (chrono::Utc::now() - chrono::Duration::minutes(1)).to_rfc3339(),
                "ends_at": (chrono::Utc::now() + chrono::Duration::hours(1)).to_rfc3339(),
                "discount_percent": 50,
                "courses": [{"course_id": course, "seat_limit": 3}],
            }),
        )
        .await?;
    assert_eq!(event.status, StatusCode::CREATED, "{:?}", event.body);
    let event_id = event.body["id"].as_i64().context("event id")?;
    let order = stack
        .order(
            &unique_name("key"),
            &json!({"user_id": user, "course_ids": [course], "event_id": event_id}),
        )
        .await?;
    assert_eq!(order.status, StatusCode::CREATED, "{:?}", order.body);
    let order_id = order.body["id"].as_i64().context("order id")?;
    let cancelled = stack
        .order(
            &unique_name("key"),
            &json!({"user_id": user, "course_ids": [other]}),
        )
        .await?;
    assert_eq!(
        cancelled.status,
        StatusCode::CREATED,
        "{:?}",
        cancelled.body
    );
    let cancelled_id = cancelled.body["id"].as_i64().context("order id")?;
    let cancel = stack
        .post(&format!("/v1/orders/{cancelled_id}/cancel"), &json!({}))
        .await?;
    assert_eq!(cancel.status, StatusCode::OK, "{:?}", cancel.body);
    let lsn = cancel.header("x-commit-lsn").to_owned();

    // Assert: the query API serves every write, read-your-writes.
    let read = stack
        .get_fresh(&format!("/v1/orders/{order_id}"), &lsn)
        .await?;
    assert_eq!(read.status, StatusCode::OK, "{:?}", read.body);
    assert_eq!(read.body["status"], "completed");
    assert_eq!(read.body["total_krw"], 20_000);
    let read = stack
        .get_fresh(&format!("/v1/orders/{cancelled_id}"), &lsn)
        .await?;
    assert_eq!(read.body["status"], "cancelled");
    let page = stack
        .get_fresh(&format!("/v1/courses/{course}"), &lsn)
        .await?;
    assert_eq!(page.status, StatusCode::OK, "{:?}", page.body);
    assert_eq!(page.body["student_count"], 1);
    assert_eq!(
        page.body["top_companies"],
        json!([{"company": "Acme", "students": 1}])
    );
    assert_eq!(page.body["sale"]["seats_left"], 2);
    let other_page = stack
        .get_fresh(&format!("/v1/courses/{other}"), &lsn)
        .await?;
    assert_eq!(other_page.body["student_count"], 0);

    // And the command API really ran as its role.
    let command_sessions: i64 = admin
        .query_one(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = $1 AND usename = $2",
            &[&stack.db_name, &COMMAND_ROLE],
        )
        .await?
        .get(0);
    assert!(command_sessions > 0, "no session of {COMMAND_ROLE}");

    stack.cleanup().await
}

/// Runs the projector as the stack's projector role with `publication`,
/// which does not exist, and returns the first error it logs.
async fn projector_error_with_publication(stack: &Stack, publication: &str) -> Result<String> {
    let mut child = tokio::process::Command::new(e2e::projector_binary()?)
        .env("DATABASE_URL", &stack.projector_database_url)
        .env("REDIS_URL", &stack.redis_url)
        .env("KEY_PREFIX", unique_name("k"))
        .env("PROJECTOR_ADDR", "127.0.0.1:0")
        .env("PROJECTOR_SLOT", unique_name("slot"))
        .env("PROJECTOR_PUBLICATION", publication)
        .env("RUST_LOG", "error")
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .context("starting the projector binary")?;
    let stdout = child.stdout.take().context("the projector's stdout")?;
    let mut lines = BufReader::new(stdout).lines();
    let line = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
        .await
        .context("the projector logged no error within 30 s")??
        .context("the projector exited without an error")?;
    child.kill().await?;
    Ok(line)
}
