//! Orders through the command API, spread and all on the hot course; the
//! monolith's write path the same two ways; pgbench running the order SQL.

use std::{
    net::SocketAddr,
    sync::{
        atomic::{AtomicI64, Ordering},
        Arc,
    },
    time::Duration,
};

use anyhow::{Context, Result};
use sqlx::{Connection, PgConnection};
use tokio::process::Command;

use super::{at_rate, median, mix, saturate, Ctx, Subject, Target};
use crate::{
    load::{post_json, MakeRequest, Phase},
    scale::Scale,
    stack::Env,
    tools::{self, Pgbench},
};

/// `POST /v1/orders` of one course by a fresh user each time.
pub fn order_requests(
    next_user: Arc<AtomicI64>,
    course: Arc<dyn Fn(u64) -> i64 + Send + Sync>,
) -> MakeRequest {
    orders_of(next_user, None, course)
}

/// A course of the whole catalogue for request `n`, spread evenly.
pub fn spread_courses(scale: &Scale) -> Arc<dyn Fn(u64) -> i64 + Send + Sync> {
    let courses = scale.courses as u64;
    Arc::new(move |n| 1 + (mix(n) % courses) as i64)
}

/// The same through sale event `event`, which prices the course and, if it
/// limits its seats, sells one of them.
pub fn event_order_requests(
    next_user: Arc<AtomicI64>,
    event: i64,
    course: Arc<dyn Fn(u64) -> i64 + Send + Sync>,
) -> MakeRequest {
    orders_of(next_user, Some(event), course)
}

fn orders_of(
    next_user: Arc<AtomicI64>,
    event: Option<i64>,
    course: Arc<dyn Fn(u64) -> i64 + Send + Sync>,
) -> MakeRequest {
    let event = event
        .map(|id| format!(r#","event_id":{id}"#))
        .unwrap_or_default();
    Arc::new(move |n| {
        let user = next_user.fetch_add(1, Ordering::Relaxed);
        let body = format!(
            r#"{{"user_id":{user},"course_ids":[{}]{event}}}"#,
            course(n)
        );
        post_json(
            "/v1/orders",
            body.into_bytes(),
            &[("idempotency-key", format!("bench-order-{user}"))],
        )
    })
}

/// Orders through the command API and through the monolith, spread and
/// hot, with pgbench taking its turn in every round: all measured side by
/// side. Returns the subjects and pgbench's median round.
pub async fn run(
    ctx: &Ctx,
    command: SocketAddr,
    monolith: SocketAddr,
    database: &str,
) -> Result<(Vec<Subject>, Option<Pgbench>)> {
    let courses = ctx.scale.courses;
    let spread = spread_courses(&ctx.scale);
    let hot: Arc<dyn Fn(u64) -> i64 + Send + Sync> = Arc::new(|_| 1);
    let mut targets = Vec::new();
    for (prefix, what, addr) in [
        ("cqrs", "command API", command),
        ("monolith", "monolith", monolith),
    ] {
        for (kind, course, rates) in [
            ("spread", spread.clone(), true),
            ("hot", hot.clone(), false),
        ] {
            let label = match kind {
                "spread" => format!("{what}, orders spread over {courses} courses"),
                _ => format!("{what}, every order on the hot course"),
            };
            targets.push(Target {
                key: format!("{prefix}_{kind}"),
                label,
                addr,
                make: order_requests(ctx.next_user.clone(), course),
                connections: ctx.scale.order_connections,
                rates,
            });
        }
    }
    let mut rounds: Vec<Vec<Phase>> = vec![Vec::new(); targets.len()];
    let mut pgbench_rounds = Vec::new();
    let mut pgbench_error = None;
    for round in 0..ctx.scale.rounds.max(1) {
        for (i, target) in targets.iter().enumerate() {
            rounds[i].push(saturate(ctx, target, round).await?);
        }
        tracing::info!(round, "pgbench");
        match pgbench(ctx, database).await {
            Ok(p) => pgbench_rounds.push(p),
            Err(err) => pgbench_error = Some(err),
        }
    }
    let mut subjects = Vec::new();
    for (target, rounds) in targets.iter().zip(rounds) {
        let (saturation, all) = median(rounds)?;
        let (at_50, at_90) = if target.rates {
            (
                Some(at_rate(ctx, target, saturation.achieved_rps * 0.5, "50% of max").await?),
                Some(at_rate(ctx, target, saturation.achieved_rps * 0.9, "90% of max").await?),
            )
        } else {
            (None, None)
        };
        subjects.push(Subject {
            key: target.key.clone(),
            label: target.label.clone(),
            saturation,
            rounds: all,
            at_50,
            at_90,
        });
    }
    if let Some(err) = pgbench_error {
        if pgbench_rounds.is_empty() {
            return Err(err.context("pgbench"));
        }
    }
    pgbench_rounds.sort_by(|a, b| a.tps.total_cmp(&b.tps));
    let rounds: Vec<f64> = pgbench_rounds.iter().map(|p| p.tps).collect();
    let mid = pgbench_rounds.len() / 2;
    let pgbench = pgbench_rounds.into_iter().nth(mid).map(|mut p| {
        p.rounds = rounds;
        p
    });
    Ok((subjects, pgbench))
}

/// The command API's order transaction as a pgbench script: the same
/// statements in the same order (the company is read again in a sub-select
/// where the API binds the value it read), prepared, one fresh user per
/// transaction from a sequence.
const PGBENCH_SCRIPT: &str = r#"\set cid random(1, :courses)
SELECT nextval('bench_pgbench_user') AS uid \gset
BEGIN;
INSERT INTO idempotency_keys (user_id, key, request) VALUES (:uid, 'pgbench-' || :uid::text, jsonb_build_object('user_id', :uid::bigint, 'course_ids', jsonb_build_array(:cid::bigint))) ON CONFLICT DO NOTHING RETURNING 1;
SELECT company FROM users WHERE id = :uid;
SELECT id, price_krw AS price FROM courses WHERE id = ANY(ARRAY[:cid::bigint]) \gset
SELECT course_id FROM enrollments WHERE user_id = :uid AND course_id = ANY(ARRAY[:cid::bigint]) AND revoked_at IS NULL;
INSERT INTO orders (user_id, event_id, status, total_krw) VALUES (:uid, NULL, 'completed', :price) RETURNING id AS oid \gset
INSERT INTO order_items (order_id, course_id, price_krw) SELECT :oid, item.course_id, item.price_krw FROM UNNEST(ARRAY[:cid::bigint], ARRAY[:price::bigint]) AS item(course_id, price_krw);
INSERT INTO enrollments (user_id, course_id, order_id, event_id, company) SELECT :uid, e.course_id, :oid, e.event_id, (SELECT company FROM users WHERE id = :uid) FROM UNNEST(ARRAY[:cid::bigint], ARRAY[NULL::bigint]) AS e(course_id, event_id);
UPDATE idempotency_keys SET response = jsonb_build_object('id', :oid::bigint, 'user_id', :uid::bigint, 'event_id', NULL, 'status', 'completed', 'total_krw', :price::bigint, 'items', jsonb_build_array(jsonb_build_object('course_id', :cid::bigint, 'price_krw', :price::bigint)), 'created_at', now()), status_code = 201 WHERE user_id = :uid AND key = 'pgbench-' || :uid::text;
COMMIT;
SELECT pg_current_wal_insert_lsn()::text;
"#;

/// pgbench with the order SQL against `database`, spread over every course.
pub async fn pgbench(ctx: &Ctx, database: &str) -> Result<Pgbench> {
    let url = ctx.env.database_url(database);
    let first_user = ctx.next_user.load(Ordering::Relaxed);
    let mut conn = PgConnection::connect(&url).await?;
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "DROP SEQUENCE IF EXISTS bench_pgbench_user; CREATE SEQUENCE bench_pgbench_user START WITH {first_user}"
    )))
    .execute(&mut conn)
    .await?;
    let script = ctx.env.log_dir.join("orders.pgbench.sql");
    std::fs::create_dir_all(&ctx.env.log_dir)?;
    std::fs::write(&script, PGBENCH_SCRIPT)?;
    let result = run_pgbench(&ctx.env, ctx, database, &script).await;
    // Later orders start after the users pgbench took.
    let last: i64 = sqlx::query_scalar("SELECT last_value FROM bench_pgbench_user")
        .fetch_one(&mut conn)
        .await?;
    ctx.next_user.fetch_max(last + 1, Ordering::Relaxed);
    sqlx::raw_sql("DROP SEQUENCE bench_pgbench_user")
        .execute(&mut conn)
        .await?;
    conn.close().await?;
    result
}

async fn run_pgbench(
    env: &Env,
    ctx: &Ctx,
    database: &str,
    script: &std::path::Path,
) -> Result<Pgbench> {
    let (host, port) = env.pg_host_port();
    let mut command = Command::new(tools::pg_tool("pgbench")?);
    command
        .args([
            "-n",
            "-M",
            "prepared",
            "-h",
            &host,
            "-p",
            &port.to_string(),
            "-U",
            &env.pg_user(),
        ])
        .args(["-c", &ctx.scale.pgbench_clients.to_string(), "-j", "2"])
        .args(["-D", &format!("courses={}", ctx.scale.courses)])
        .arg("-f")
        .arg(script);
    let limit = match ctx.scale.pgbench_transactions {
        Some(t) => {
            command.args(["-t", &t.to_string()]);
            Duration::from_secs(60)
        }
        None => {
            let seconds = ctx.scale.round.as_secs().max(1);
            command.args(["-T", &seconds.to_string()]);
            Duration::from_secs(seconds + 60)
        }
    };
    command.arg(database);
    let out = tools::output(command, limit).await.context("pgbench")?;
    tools::parse_pgbench(&out)
}
