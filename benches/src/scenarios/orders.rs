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
    steady::{self, Activity},
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
/// side, each round from a settled database. Returns the subjects and
/// pgbench's median round.
pub async fn run(
    ctx: &Ctx,
    command: SocketAddr,
    monolith: SocketAddr,
    database: &str,
) -> Result<(Vec<Subject>, Option<Pgbench>)> {
    let courses = ctx.scale.courses;
    let spread = spread_courses(&ctx.scale);
    let hot: Arc<dyn Fn(u64) -> i64 + Send + Sync> = Arc::new(|_| 1);
    let cqrs_url = ctx.env.database_url(database);
    let mono_url = ctx.env.database_url(&ctx.env.name("mono"));
    // Both databases are settled before every round: either one's
    // autovacuum or dirty pages would land in the other's rounds.
    let urls = [cqrs_url.clone(), mono_url.clone()];
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
    let mut activity: Vec<Vec<Activity>> = vec![Vec::new(); targets.len()];
    let mut pgbench_rounds = Vec::new();
    let mut pgbench_error = None;
    // An unmeasured round first: in the runs that had none, the first round
    // was the slowest (cold caches, the first autovacuum of the new tables).
    for target in &targets {
        steady::settle(&urls).await?;
        saturate(ctx, target, 0).await?;
    }
    // Within a round, the subjects of each goal's ratio run back to back:
    // hot beside spread, spread beside pgbench (`None`: pgbench's turn).
    let turns = [Some(1), Some(0), None, Some(2), Some(3)];
    for round in 0..ctx.scale.rounds.max(1) {
        for turn in turns {
            let Some(i) = turn else {
                tracing::info!(round, "pgbench");
                match steady_round(&urls, pgbench(ctx, database)).await {
                    Ok((mut p, did)) => {
                        p.activity = vec![did];
                        pgbench_rounds.push(p);
                    }
                    Err(err) => pgbench_error = Some(err),
                }
                continue;
            };
            let (phase, did) = steady_round(&urls, saturate(ctx, &targets[i], round)).await?;
            rounds[i].push(phase);
            activity[i].push(did);
        }
    }
    let mut subjects = Vec::new();
    for ((target, rounds), activity) in targets.iter().zip(rounds).zip(activity) {
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
            activity,
            at_50,
            at_90,
        });
    }
    if let Some(err) = pgbench_error {
        if pgbench_rounds.is_empty() {
            return Err(err.context("pgbench"));
        }
    }
    // Every round's figure and activity, in the order run, go with the median round.
    let rounds: Vec<f64> = pgbench_rounds.iter().map(|p| p.tps).collect();
    let pgbench_activity: Vec<Activity> = pgbench_rounds
        .iter_mut()
        .flat_map(|p| std::mem::take(&mut p.activity))
        .collect();
    pgbench_rounds.sort_by(|a, b| a.tps.total_cmp(&b.tps));
    let mid = pgbench_rounds.len() / 2;
    let pgbench = pgbench_rounds.into_iter().nth(mid).map(|mut p| {
        p.rounds = rounds;
        p.activity = pgbench_activity;
        p
    });
    Ok((subjects, pgbench))
}

/// One round of writes in a steady state: the databases of `urls` are
/// settled first, and what the server did during the round comes back with
/// the round's outcome.
async fn steady_round<T>(
    urls: &[String],
    round: impl std::future::Future<Output = Result<T>>,
) -> Result<(T, Activity)> {
    let settled = steady::settle(urls).await?;
    tracing::debug!(seconds = settled, "settled");
    let watch = steady::Watch::start(&urls[0]).await?;
    let outcome = round.await;
    let did = watch.finish().await?;
    Ok((outcome?, did))
}

/// The command API's order transaction as a pgbench script: the very
/// statements the checkout sends (taken from the command API), with the
/// values it binds written as pgbench expressions (the company is read
/// again in a sub-select where the API binds the value it read), prepared,
/// one fresh user per transaction from a sequence.
fn pgbench_script() -> String {
    let facts = bind(
        command_api::statements::CHECKOUT_FACTS,
        &[
            ":uid::bigint",
            "'pgbench-' || :uid::text",
            "jsonb_build_object('user_id', :uid::bigint, 'course_ids', jsonb_build_array(:cid::bigint))",
            "ARRAY[:cid::bigint]",
            "NULL::bigint",
        ],
    );
    let write = bind(
        command_api::statements::CHECKOUT_WRITE,
        &[
            ":uid::bigint",
            "NULL::bigint",
            "(:prices::bigint[])[1]",
            "'{}'::bigint[]",
            "ARRAY[:cid::bigint]",
            ":prices::bigint[]",
            "(SELECT company FROM users WHERE id = :uid::bigint)",
            "ARRAY[NULL::bigint]",
            "jsonb_build_object('id', 0, 'user_id', :uid::bigint, 'event_id', NULL, 'status', 'completed', \
             'total_krw', (:prices::bigint[])[1], 'items', jsonb_build_array(jsonb_build_object('course_id', \
             :cid::bigint, 'price_krw', (:prices::bigint[])[1])), 'created_at', :now::text)",
            "'pgbench-' || :uid::text",
        ],
    );
    format!(
        "\\set cid random(1, :courses)\n\
         SELECT nextval('bench_pgbench_user') AS uid \\gset\n\
         BEGIN;\n\
         {facts} \\gset\n\
         {write};\n\
         COMMIT;\n\
         SELECT pg_current_wal_insert_lsn()::text;\n"
    )
}

/// `statement` with each `$n` replaced by the n-th of `values` (a pgbench
/// script holds one line per statement).
fn bind(statement: &str, values: &[&str]) -> String {
    let mut out = statement.replace('\n', " ");
    // The highest first, so `$1` does not match the start of `$10`.
    for (i, value) in values.iter().enumerate().rev() {
        out = out.replace(&format!("${}", i + 1), &format!("({value})"));
    }
    out
}

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
    std::fs::write(&script, pgbench_script())?;
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
    // The API's sessions plan each statement once; so do pgbench's.
    command.env(
        "PGOPTIONS",
        format!(
            "-c plan_cache_mode={}",
            command_api::statements::PLAN_CACHE_MODE
        ),
    );
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pgbench_script_binds_every_parameter_one_statement_a_line() {
        let script = pgbench_script();
        assert!(!script.contains('$'), "{script}");
        let lines: Vec<&str> = script.lines().collect();
        assert_eq!(lines.len(), 7, "{script}");
        assert!(lines[3].starts_with("WITH claimed AS"), "{}", lines[3]);
        assert!(lines[3].ends_with("\\gset"), "{}", lines[3]);
        assert!(lines[4].starts_with("WITH placed AS"), "{}", lines[4]);
    }
}
