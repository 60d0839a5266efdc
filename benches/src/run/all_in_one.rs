//! The all-in-one scenario's set-up: the three programs as separate
//! processes on one copy of the seeded data and the all-in-one binary on
//! another, each with its own slot and key prefix.

use std::time::{Duration, Instant};

use anyhow::Result;

use crate::{
    scenarios::{
        all_in_one::{self, AllInOne, Deployment},
        freshness,
        rush::Pids,
        Ctx,
    },
    stack::{self, free_addr, Program},
};

/// Starts both deployments (one initial build after the other, so neither
/// build is slowed by the other), measures them and stops them.
pub(super) async fn measure(
    ctx: &Ctx,
    three_url: &str,
    one_url: &str,
    build_limit: Duration,
) -> Result<AllInOne> {
    let env = &ctx.env;
    let postmaster = stack::postmaster_pid(env).await;

    let prefix = env.name("aio_three");
    let building = Instant::now();
    let projector =
        super::start_projector(ctx, "projector-aio-three", three_url, &prefix, build_limit).await?;
    let three_build = building.elapsed().as_secs_f64();
    let addr = free_addr()?;
    let mut command = Program::workspace(
        env,
        "command-api-aio-three",
        "command-api",
        &super::command_env(ctx, three_url, addr),
        addr,
    )?;
    command.wait_ok("/ready", Duration::from_secs(60)).await?;
    let mut query = super::start_query_api(ctx, "query-api-aio-three", &prefix, "10m")?;
    query.wait_ok("/ready", Duration::from_secs(60)).await?;
    let three = Deployment {
        key: "three",
        label: "three processes".to_owned(),
        command: command.addr,
        query: query.addr,
        database_url: three_url.to_owned(),
        prefix,
        pids: Pids {
            query_api: query.pid(),
            command_api: command.pid(),
            projector: projector.pid(),
            all_in_one: None,
            postmaster,
        },
        initial_build_s: three_build,
    };

    // The same settings, set once for the three programs in one process.
    let prefix = env.name("aio_one");
    let (command_addr, query_addr, projector_addr) = (free_addr()?, free_addr()?, free_addr()?);
    let mut settings = super::command_env(ctx, one_url, command_addr);
    settings.extend(super::query_env(ctx, &prefix, query_addr, "10m"));
    settings.extend(
        super::projector_env(ctx, one_url, &prefix, projector_addr)
            .into_iter()
            .map(|(key, value)| match key {
                "DATABASE_URL" => ("PROJECTOR_DATABASE_URL", value),
                _ => (key, value),
            }),
    );
    let building = Instant::now();
    let mut aio = Program::workspace(env, "all-in-one", "all-in-one", &settings, projector_addr)?;
    aio.wait_ok("/ready", build_limit).await?;
    let one_build = building.elapsed().as_secs_f64();
    aio.wait_ok_at(command_addr, "/ready", Duration::from_secs(60))
        .await?;
    aio.wait_ok_at(query_addr, "/ready", Duration::from_secs(60))
        .await?;
    let one = Deployment {
        key: "one",
        label: "all-in-one".to_owned(),
        command: command_addr,
        query: query_addr,
        database_url: one_url.to_owned(),
        prefix,
        pids: Pids {
            query_api: None,
            command_api: None,
            projector: None,
            all_in_one: aio.pid(),
            postmaster,
        },
        initial_build_s: one_build,
    };

    // Both caught up with their builds before the first turn.
    let mut caught_up = Ok(());
    for d in [&three, &one] {
        if caught_up.is_ok() {
            caught_up = freshness::catch_up(ctx, &d.database_url, &d.prefix, build_limit).await;
        }
    }
    let outcome = match caught_up {
        Ok(()) => all_in_one::run(ctx, &[three, one]).await,
        Err(err) => Err(err),
    };
    aio.stop().await?;
    query.stop().await?;
    command.stop().await?;
    projector.stop().await?;
    outcome
}
