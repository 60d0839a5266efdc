//! The projector against the decode ceiling: one backlog drained from two
//! slots made at the same point, by pg_recvlogical and by the projector.
//!
//! The backlog is written while neither consumer runs; each time counts from
//! the consumer's start to the last transaction applied (projector) or the
//! end position reached (pg_recvlogical).

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use sqlx::{Connection, PgConnection};
use tokio::process::Command;

use super::{process_cpu_s, redis_cpu_s, Ctx};
use crate::{
    stack::{self, free_addr, Program},
    tools,
};

/// What the two consumers took for the same stream.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Stream {
    /// Row changes in published tables (inserts of orders, items, enrollments).
    pub changes: u64,
    pub transactions: u64,
    pub wal_mb: f64,
    pub recvlogical_s: f64,
    pub recvlogical_changes_per_s: f64,
    pub projector_s: f64,
    pub projector_changes_per_s: f64,
    /// Seconds the projector's initial build of this database took.
    pub initial_build_s: f64,
    /// (seconds since the projector started, changes applied).
    pub projector_timeline: Vec<(f64, u64)>,
    /// CPU seconds (user and system) the drain took in each process that
    /// did its work: the projector, Redis, and the walsender that decoded
    /// the projector's slot. Absent where they could not be read.
    #[serde(default)]
    pub cpu: Option<DrainCpu>,
}

/// CPU seconds spent on the projector's drain, by process.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DrainCpu {
    pub projector_s: f64,
    pub redis_s: f64,
    pub walsender_s: Option<f64>,
}

impl DrainCpu {
    /// Microseconds of CPU per row change, by process and in all.
    pub fn per_change_us(&self, changes: u64) -> (f64, f64, Option<f64>, f64) {
        let per = |s: f64| s * 1e6 / changes.max(1) as f64;
        let total = self.projector_s + self.redis_s + self.walsender_s.unwrap_or(0.0);
        (
            per(self.projector_s),
            per(self.redis_s),
            self.walsender_s.map(per),
            per(total),
        )
    }
}

const PROCEDURE: &str = r#"
CREATE OR REPLACE PROCEDURE bench_stream_orders(n int, first_user bigint, courses bigint)
LANGUAGE plpgsql AS $$
DECLARE
    i int;
    k int;
    new_order bigint;
    user_company text;
BEGIN
    -- One checkout per transaction: an order of 1 to 3 courses, its items
    -- and its enrollments (1 + 2k row changes, 5 on average).
    FOR i IN 0 .. n - 1 LOOP
        k := 1 + (i % 3);
        SELECT company INTO user_company FROM users WHERE id = first_user + i;
        INSERT INTO orders (user_id, status, total_krw)
            VALUES (first_user + i, 'completed', 0) RETURNING id INTO new_order;
        INSERT INTO order_items (order_id, course_id, price_krw)
            SELECT new_order, 1 + ((i::bigint * 7919 + j * 4729) % courses), 0
              FROM generate_series(1, k) AS j;
        INSERT INTO enrollments (user_id, course_id, order_id, company)
            SELECT first_user + i, 1 + ((i::bigint * 7919 + j * 4729) % courses), new_order, user_company
              FROM generate_series(1, k) AS j;
        COMMIT;
    END LOOP;
END $$;
"#;

/// Runs the comparison in `database` (a copy of the catalogue, no orders yet).
pub async fn run(ctx: &Ctx, database: &str) -> Result<(Stream, Option<tools::Profile>)> {
    let env = &ctx.env;
    let url = env.database_url(database);
    let prefix = env.name("stream");
    let slot = env.name("stream_projector");
    let recv_slot = env.name("stream_recvlogical");
    // The copy carries the catalogue's migrated publication and grants.
    let publication = stack::PUBLICATION;
    let envs = |addr: std::net::SocketAddr| {
        vec![
            ("DATABASE_URL", stack::as_role(&url, stack::PROJECTOR_ROLE)),
            ("REDIS_URL", env.redis_url.clone()),
            ("KEY_PREFIX", prefix.clone()),
            ("PROJECTOR_ADDR", addr.to_string()),
            ("PROJECTOR_SLOT", slot.clone()),
            ("PROJECTOR_PUBLICATION", publication.to_owned()),
            ("PROJECTOR_HEARTBEAT_SECS", "1".to_owned()),
        ]
    };

    // The projector creates its slot and builds the catalogue.
    let addr = free_addr()?;
    let started = Instant::now();
    let mut projector =
        Program::workspace(env, "projector-stream", "projector", &envs(addr), addr)?;
    projector
        .wait_ok("/ready", Duration::from_secs(900))
        .await?;
    let initial_build_s = started.elapsed().as_secs_f64();
    projector.stop().await?;

    let mut conn = PgConnection::connect(&url).await?;
    sqlx::query("SELECT pg_create_logical_replication_slot($1, 'pgoutput')")
        .bind(&recv_slot)
        .execute(&mut conn)
        .await
        .context("creating the pg_recvlogical slot")?;
    sqlx::raw_sql(PROCEDURE).execute(&mut conn).await?;
    // Durability is not what is measured here; the WAL is the same.
    sqlx::raw_sql("SET synchronous_commit = off")
        .execute(&mut conn)
        .await?;
    let start_lsn: String = sqlx::query_scalar("SELECT pg_current_wal_insert_lsn()::text")
        .fetch_one(&mut conn)
        .await?;
    let orders = ctx.scale.stream_changes.div_ceil(5) as i64;
    tracing::info!(orders, "writing the backlog");
    write_backlog(&mut conn, orders, 1, ctx.scale.courses).await?;
    let (changes, transactions): (i64, i64) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM orders) + (SELECT count(*) FROM order_items) \
              + (SELECT count(*) FROM enrollments), (SELECT count(*) FROM orders)",
    )
    .fetch_one(&mut conn)
    .await?;
    let (end_lsn, wal_bytes): (String, f64) = sqlx::query_as(
        "SELECT pg_current_wal_insert_lsn()::text, \
                (pg_current_wal_insert_lsn() - $1::pg_lsn)::float8",
    )
    .bind(&start_lsn)
    .fetch_one(&mut conn)
    .await?;
    conn.close().await?;

    // The decode ceiling.
    tracing::info!("pg_recvlogical");
    let (host, port) = env.pg_host_port();
    let mut command = Command::new(tools::pg_tool("pg_recvlogical")?);
    command
        .args([
            "-h",
            &host,
            "-p",
            &port.to_string(),
            "-U",
            &env.pg_user(),
            "-d",
            database,
        ])
        .args([
            "--slot",
            &recv_slot,
            "--start",
            "--no-loop",
            "--endpos",
            &end_lsn,
        ])
        .args([
            "-o",
            "proto_version=1",
            "-o",
            &format!("publication_names={publication}"),
        ])
        .args(["-f", "/dev/null"]);
    let started = Instant::now();
    tools::output(command, Duration::from_secs(1800))
        .await
        .context("pg_recvlogical")?;
    let recvlogical_s = started.elapsed().as_secs_f64();

    // The projector, on the same backlog.
    tracing::info!("projector");
    let redis = env.redis().await?;
    let redis_before = redis_cpu_s(&redis).await;
    let addr = free_addr()?;
    let started = Instant::now();
    let projector = Program::workspace(env, "projector-stream", "projector", &envs(addr), addr)?;
    let mut walsender: Option<(u32, f64)> = None;
    let mut watch = PgConnection::connect(&url).await?;
    let mut timeline = Vec::new();
    let poll = if ctx.scale.stream_changes >= 100_000 {
        Duration::from_millis(250)
    } else {
        Duration::from_millis(10)
    };
    let deadline = started + Duration::from_secs(1800);
    let projector_s = loop {
        let metrics = crate::load::get(addr, "/metrics").await.ok();
        if let Some((200, body)) = metrics {
            let text = String::from_utf8_lossy(&body);
            let applied = metric(&text, "projector_transactions_applied_total");
            let changed = metric(&text, "projector_changes_applied_total");
            let t = started.elapsed().as_secs_f64();
            timeline.push((t, changed as u64));
            // The walsender serving the projector's slot, read while it runs.
            if let Some(pid) = slot_pid(&mut watch, &slot).await {
                if let Some(cpu) = process_cpu_s(pid) {
                    walsender = Some((pid, cpu));
                }
            }
            if applied >= transactions as f64 {
                break t;
            }
        }
        if Instant::now() > deadline {
            projector.stop().await?;
            anyhow::bail!("the projector did not apply the backlog within 30 minutes");
        }
        tokio::time::sleep(poll).await;
    };
    let projector_cpu = projector.pid().and_then(process_cpu_s);
    let redis_after = redis_cpu_s(&redis).await;
    projector.stop().await?;
    watch.close().await?;
    let cpu = match (projector_cpu, redis_before, redis_after) {
        (Some(projector_s), Some(before), Some(after)) => Some(DrainCpu {
            projector_s,
            redis_s: after - before,
            walsender_s: walsender.map(|(_, cpu)| cpu),
        }),
        _ => None,
    };

    // With profiling on: a second, smaller backlog drained under perf, so
    // the measured drain above ran unperturbed.
    let mut profile = None;
    if ctx.profile {
        let extra = (orders / 5).max(1_000);
        let mut conn = PgConnection::connect(&url).await?;
        sqlx::raw_sql("SET synchronous_commit = off")
            .execute(&mut conn)
            .await?;
        write_backlog(&mut conn, extra, 1 + orders, ctx.scale.courses).await?;
        conn.close().await?;
        let seconds = (projector_s / 5.0).clamp(3.0, 20.0) as u64;
        let addr = free_addr()?;
        let projector =
            Program::workspace(env, "projector-stream", "projector", &envs(addr), addr)?;
        let drained = async {
            let deadline = Instant::now() + Duration::from_secs(600);
            while Instant::now() < deadline {
                if let Ok((200, body)) = crate::load::get(addr, "/metrics").await {
                    if metric(
                        &String::from_utf8_lossy(&body),
                        "projector_transactions_applied_total",
                    ) >= extra as f64
                    {
                        break;
                    }
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Ok(())
        };
        let outcome = tools::profile_while(
            None,
            seconds,
            "whole machine, projector draining a backlog",
            &env.log_dir,
            drained,
        )
        .await;
        projector.stop().await?;
        profile = Some(outcome?.1);
    }
    let changes = changes as u64;
    Ok((
        Stream {
            changes,
            transactions: transactions as u64,
            wal_mb: wal_bytes / 1e6,
            recvlogical_s,
            recvlogical_changes_per_s: changes as f64 / recvlogical_s,
            projector_s,
            projector_changes_per_s: changes as f64 / projector_s,
            initial_build_s,
            projector_timeline: timeline,
            cpu,
        },
        profile,
    ))
}

/// The process id of the walsender serving `slot`, if it is active.
async fn slot_pid(conn: &mut PgConnection, slot: &str) -> Option<u32> {
    let pid: Option<i32> =
        sqlx::query_scalar("SELECT active_pid FROM pg_replication_slots WHERE slot_name = $1")
            .bind(slot)
            .fetch_optional(conn)
            .await
            .ok()
            .flatten();
    u32::try_from(pid?).ok()
}

/// Writes `orders` checkout transactions by users `first_user..`.
async fn write_backlog(
    conn: &mut PgConnection,
    orders: i64,
    first_user: i64,
    courses: i64,
) -> Result<()> {
    let chunk = 20_000;
    let mut done = 0;
    while done < orders {
        let n = chunk.min(orders - done);
        sqlx::query("CALL bench_stream_orders($1, $2, $3)")
            .bind(n as i32)
            .bind(first_user + done)
            .bind(courses)
            .execute(&mut *conn)
            .await
            .context("writing the backlog")?;
        done += n;
    }
    Ok(())
}

/// The value of an unlabelled metric in Prometheus text (0 when absent).
pub fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| {
            let (n, v) = l.split_once(' ')?;
            (n == name).then(|| v.trim().parse().ok()).flatten()
        })
        .unwrap_or(0.0)
}
