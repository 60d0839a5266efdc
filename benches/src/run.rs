//! One run, start to end: seed, start the programs and baselines, measure
//! every scenario, clean up, and write the report.
//!
//! A scenario that fails is recorded in the report and the run goes on.

use std::{
    net::SocketAddr,
    path::PathBuf,
    sync::{atomic::AtomicI64, Arc},
    time::{Duration, Instant},
};

use anyhow::{Context, Result};

mod all_in_one;
mod reads;

use crate::{
    corpus::Corpus,
    goals, report,
    results::{Meta, Results, Timings},
    scale::Scale,
    scenarios::{self, freshness, orders, overload, rush, storage, stream, takeover, Ctx},
    seed,
    stack::{self, free_addr, Env, Program},
    tools::{self, Machine},
};

/// A scenario a run can be limited to (`bench --only`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Scenario {
    /// Reads: the hot, random and cart reads against bare axum and the monolith.
    Reads,
    /// Orders through the command API against the monolith and pgbench.
    Orders,
    /// Commit to visible, through the whole pipeline.
    Freshness,
    /// The projector against pg_recvlogical on one change stream.
    Stream,
    /// Bytes per view, and redis-benchmark on the stored values.
    Storage,
    /// A standby projector taking over from a SIGKILLed active one.
    Takeover,
    /// Orders at three times the capacity, admission as shipped against the old one.
    Overload,
    /// A sale's reads at saturation with orders on its seat-limited courses,
    /// against each alone.
    Rush,
    /// The all-in-one process against the three processes: reads, orders
    /// and freshness, side by side.
    AllInOne,
}

impl Scenario {
    /// The name `--only` takes.
    pub fn name(self) -> &'static str {
        match self {
            Scenario::Reads => "reads",
            Scenario::Orders => "orders",
            Scenario::Freshness => "freshness",
            Scenario::Stream => "stream",
            Scenario::Storage => "storage",
            Scenario::Takeover => "takeover",
            Scenario::Overload => "overload",
            Scenario::Rush => "rush",
            Scenario::AllInOne => "all-in-one",
        }
    }
}

/// What to run and where.
#[derive(Debug, Clone)]
pub struct Options {
    pub smoke: bool,
    /// A scaled-down full run (ignored with `smoke`).
    pub quick: bool,
    /// Profile the paths behind the ratios with perf (never in smoke runs).
    pub profile: bool,
    /// Where the report goes.
    pub out_dir: PathBuf,
    /// Any database of the PostgreSQL server (`.../postgres`).
    pub database_url: String,
    pub redis_url: String,
    /// Directory of the workspace's program binaries.
    pub bin_dir: PathBuf,
    /// The `bench` binary (it serves the baselines).
    pub bench_exe: PathBuf,
    /// The HTML books to cut descriptions from (default: the toolchain's).
    pub corpus_dir: Option<PathBuf>,
    /// The command line printed as the way to reproduce the run.
    pub command: String,
    /// Run only these scenarios (empty: all of them).
    pub only: Vec<Scenario>,
}

impl Options {
    /// `scenario` is part of this run.
    fn wants(&self, scenario: Scenario) -> bool {
        self.only.is_empty() || self.only.contains(&scenario)
    }
}

/// Runs everything and writes the report; the results say what failed.
pub async fn run(options: Options) -> Result<Results> {
    let scale = if options.smoke {
        Scale::smoke()
    } else if options.quick {
        Scale::quick()
    } else {
        Scale::full()
    };
    let pid = std::process::id();
    let env = Env {
        admin_url: options.database_url.clone(),
        redis_url: options.redis_url.clone(),
        bin_dir: options.bin_dir.clone(),
        bench_exe: options.bench_exe.clone(),
        log_dir: std::env::temp_dir().join(format!("benches-{pid}")),
        run: format!("bench_{pid}"),
    };
    for dead in stack::dead_runs(&env).await? {
        tracing::info!(prefix = %dead, "dropping what an earlier run left behind");
        stack::drop_everything(&env, &dead).await?;
    }
    stack::ensure_roles(&env).await?;
    let started = Instant::now();
    let now = chrono::Local::now();
    let mut machine = Machine::read();
    (machine.postgres, machine.postgres_storage) = postgres_facts(&env).await.unwrap_or_default();
    machine.redis = redis_version(&env).await.unwrap_or_default();
    let mut name = match scale.name.as_str() {
        "full" => now.format("%Y-%m-%d").to_string(),
        other => format!("{}-{other}", now.format("%Y-%m-%d")),
    };
    // A partial run must not overwrite the report of a whole one.
    for scenario in &options.only {
        name.push('-');
        name.push_str(scenario.name());
    }
    let mut results = Results {
        meta: Meta {
            name,
            started_at: now.to_rfc3339(),
            duration_s: 0.0,
            command: options.command.clone(),
            machine,
            scale: scale.clone(),
            corpus: String::new(),
            load_before: load_average(),
            load_after: String::new(),
        },
        seeded: None,
        timings: Timings::default(),
        storage: None,
        redis_benchmark: Vec::new(),
        hot_page_bytes: 0,
        hot_stored_bytes: 0,
        reads: Vec::new(),
        cart: None,
        read_cpu: Vec::new(),
        orders: Vec::new(),
        pgbench: None,
        freshness: Vec::new(),
        stream: None,
        takeover: None,
        overload: None,
        rush: None,
        all_in_one: None,
        profiles: Vec::new(),
        ratios: Vec::new(),
        notes: Vec::new(),
        errors: Vec::new(),
    };
    let ctx = Ctx {
        next_user: Arc::new(AtomicI64::new(scale.enrolled_pool() + 1)),
        profile: options.profile && !options.smoke && tools::perf_works().await,
        env,
        scale,
    };
    tracing::info!(logs = %ctx.env.log_dir.display(), scale = ctx.scale.name, "benchmark run starting");
    if !options.only.is_empty() {
        let names: Vec<&str> = options.only.iter().map(|s| s.name()).collect();
        results.notes.push(format!(
            "Only these scenarios ran (`--only {}`); the other figures are absent.",
            names.join(",")
        ));
    }
    if let Err(err) = scenarios(&ctx, &options, &mut results).await {
        results.errors.push(format!("{err:#}"));
    }
    if let Err(err) = stack::drop_everything(&ctx.env, &format!("{}_", ctx.env.run)).await {
        results.errors.push(format!("cleaning up: {err:#}"));
    }
    let used = ctx.next_user.load(std::sync::atomic::Ordering::Relaxed) - 1;
    if used > ctx.scale.users {
        results.notes.push(format!(
            "orders ran out of fresh users ({used} needed, {} seeded): later orders failed",
            ctx.scale.users
        ));
    }
    results.meta.duration_s = started.elapsed().as_secs_f64();
    results.meta.load_after = load_average();
    results.ratios = goals::ratios(&results);
    report::write(&results, &options.out_dir)?;
    Ok(results)
}

/// The first three fields of `/proc/loadavg`.
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(", ")
}

/// The server's version, and the file system of its data directory (the
/// server runs on this machine: the stack is local), on one connection.
async fn postgres_facts(env: &Env) -> Result<(String, String)> {
    let mut admin = env.admin().await?;
    let version: String = sqlx::query_scalar("SHOW server_version")
        .fetch_one(&mut admin)
        .await?;
    let data: String = sqlx::query_scalar("SHOW data_directory")
        .fetch_one(&mut admin)
        .await?;
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    let storage = tools::file_system_of(&mounts, &data).unwrap_or_default();
    Ok((version, storage))
}

async fn redis_version(env: &Env) -> Result<String> {
    let redis = env.redis().await?;
    let info: String = {
        use fred::prelude::*;
        redis.info(Some(fred::types::InfoKind::Server)).await?
    };
    Ok(info
        .lines()
        .find_map(|l| l.strip_prefix("redis_version:"))
        .unwrap_or("")
        .trim()
        .to_owned())
}

/// Starts a projector named `name` (its log file's name) on `url` under
/// `prefix` and waits until its views are built (`/ready`).
async fn start_projector(
    ctx: &Ctx,
    name: &str,
    url: &str,
    prefix: &str,
    limit: Duration,
) -> Result<Program> {
    let addr = free_addr()?;
    let mut projector = Program::workspace(
        &ctx.env,
        name,
        "projector",
        &projector_env(ctx, url, prefix, addr),
        addr,
    )?;
    projector.wait_ok("/ready", limit).await?;
    Ok(projector)
}

/// Starts a query API on the views under `prefix`, pre-warming the events
/// that start within `prewarm_window` (`0`: none).
fn start_query_api(ctx: &Ctx, name: &str, prefix: &str, prewarm_window: &str) -> Result<Program> {
    let addr = free_addr()?;
    let settings = query_env(ctx, prefix, addr, prewarm_window);
    Program::workspace(&ctx.env, name, "query-api", &settings, addr)
}

/// The query API's settings on the views under `prefix`, serving `addr`.
fn query_env(
    ctx: &Ctx,
    prefix: &str,
    addr: SocketAddr,
    prewarm_window: &str,
) -> Vec<(&'static str, String)> {
    vec![
        ("REDIS_URL", ctx.env.redis_url.clone()),
        ("KEY_PREFIX", prefix.to_owned()),
        ("QUERY_API_ADDR", addr.to_string()),
        ("PREWARM_WINDOW", prewarm_window.to_owned()),
    ]
}

/// The command API's settings on the write model at `url`, serving `addr`.
fn command_env(ctx: &Ctx, url: &str, addr: SocketAddr) -> Vec<(&'static str, String)> {
    vec![
        ("DATABASE_URL", stack::as_role(url, stack::COMMAND_ROLE)),
        ("COMMAND_API_ADDR", addr.to_string()),
        // The scenarios measure what the write path carries, not its
        // admission (the overload scenario does): every connection of the
        // load generator is admitted.
        (
            "COMMAND_API_CONCURRENCY_LIMIT",
            ctx.scale.order_connections.max(1).to_string(),
        ),
    ]
}

fn projector_env(
    ctx: &Ctx,
    url: &str,
    prefix: &str,
    addr: SocketAddr,
) -> Vec<(&'static str, String)> {
    vec![
        ("DATABASE_URL", stack::as_role(url, stack::PROJECTOR_ROLE)),
        ("REDIS_URL", ctx.env.redis_url.clone()),
        ("KEY_PREFIX", prefix.to_owned()),
        ("PROJECTOR_ADDR", addr.to_string()),
        // One slot per set of views: the slot is named after their prefix.
        ("PROJECTOR_SLOT", prefix.to_owned()),
        ("PROJECTOR_PUBLICATION", stack::PUBLICATION.to_owned()),
        ("PROJECTOR_HEARTBEAT_SECS", "1".to_owned()),
    ]
}

async fn scenarios(ctx: &Ctx, options: &Options, results: &mut Results) -> Result<()> {
    let env = &ctx.env;
    let build_limit = Duration::from_secs(1800);
    let wants = |s| options.wants(s);
    // What the chosen scenarios need running.
    let views_needed = wants(Scenario::Reads)
        || wants(Scenario::Storage)
        || wants(Scenario::Freshness)
        || wants(Scenario::Takeover)
        || wants(Scenario::Rush);
    let monolith_needed = wants(Scenario::Reads) || wants(Scenario::Orders);
    let command_needed = wants(Scenario::Orders)
        || wants(Scenario::Freshness)
        || wants(Scenario::Takeover)
        || wants(Scenario::Rush);

    // Data: the write model, a copy of its catalogue for the stream
    // scenario (taken before any enrollment), and the monolith's copy.
    let seeding = Instant::now();
    let corpus = Corpus::load(options.corpus_dir.as_deref());
    results.meta.corpus = corpus.source.clone();
    let (cqrs, stream_db, mono) = (env.name("cqrs"), env.name("stream"), env.name("mono"));
    let cqrs_url = stack::create_database(env, &cqrs).await?;
    seed::migrate(&cqrs_url, &env.bin_dir).await?;
    tracing::info!("seeding users and courses");
    seed::users_and_courses(&cqrs_url, &ctx.scale, &corpus).await?;
    drop(corpus);
    if wants(Scenario::Stream) {
        stack::copy_database(env, &cqrs, &stream_db).await?;
    }
    tracing::info!("seeding enrollments");
    seed::enrollments(&cqrs_url, &ctx.scale).await?;
    // The all-in-one and the three processes: a copy of the same data each,
    // taken before any order, so neither's orders land in the other's slot.
    let mut aio_urls = None;
    if wants(Scenario::AllInOne) {
        aio_urls = Some((
            stack::copy_database(env, &cqrs, &env.name("aio_three")).await?,
            stack::copy_database(env, &cqrs, &env.name("aio_one")).await?,
        ));
    }
    let mono_url = if monolith_needed {
        let url = stack::copy_database(env, &cqrs, &mono).await?;
        seed::monolith(&url).await?;
        Some(url)
    } else {
        None
    };
    results.timings.seed_s = seeding.elapsed().as_secs_f64();
    results.seeded = Some(seed::describe(&cqrs_url).await?);

    // The read side: the projector builds the views, the query API serves
    // them; the monolith serves its copy.
    let prefix = env.name("cqrs");
    let mut projector = None;
    if views_needed {
        tracing::info!("initial build");
        let building = Instant::now();
        projector = Some(start_projector(ctx, "projector", &cqrs_url, &prefix, build_limit).await?);
        results.timings.initial_build_s = building.elapsed().as_secs_f64();
    }
    let mut monolith = None;
    if let Some(mono_url) = &mono_url {
        let mono_addr = free_addr()?;
        let mut started = Program::spawn(
            env,
            "monolith",
            &env.bench_exe,
            &[
                "serve-monolith",
                "--addr",
                &mono_addr.to_string(),
                "--database-url",
                mono_url,
            ],
            &[],
            mono_addr,
        )?;
        started.wait_ok("/health", Duration::from_secs(60)).await?;
        monolith = Some(started);
    }

    // Bytes per view, and Redis's own ceiling for GETs of those values.
    if wants(Scenario::Storage) {
        tracing::info!("bytes per view");
        if let Some((storage, hot_view, hot_card)) =
            results.record("bytes per view", storage::run(ctx, &prefix).await)
        {
            results.storage = Some(storage);
            for (what, value) in [
                ("course view (LZ4)", hot_view),
                ("course card (JSON)", hot_card),
            ] {
                let outcome = storage::redis_benchmark(ctx, what, &value).await;
                if let Some(b) = results.record("redis-benchmark", outcome) {
                    results.redis_benchmark.push(b);
                }
            }
        }
    }

    if let (true, Some(monolith)) = (wants(Scenario::Reads), &monolith) {
        let outcome = reads::measure(ctx, results, &prefix, monolith.addr).await;
        results.record("reads", outcome);
    }

    // Orders: the write path alone (the projector catches up afterwards).
    if let Some(projector) = projector.take() {
        projector.stop().await?;
    }
    let mut command = None;
    if command_needed {
        let addr = free_addr()?;
        let mut started = Program::workspace(
            env,
            "command-api",
            "command-api",
            &command_env(ctx, &cqrs_url, addr),
            addr,
        )?;
        started.wait_ok("/ready", Duration::from_secs(60)).await?;
        command = Some(started);
    }
    if let (true, Some(command), Some(monolith)) = (wants(Scenario::Orders), &command, &monolith) {
        tracing::info!("orders");
        if let Some((subjects, pgbench)) = results.record(
            "orders",
            orders::run(ctx, command.addr, monolith.addr, &cqrs).await,
        ) {
            results.orders = subjects;
            results.pgbench = pgbench;
        }
    }
    if let Some(monolith) = monolith {
        monolith.stop().await?;
    }
    if let (true, true, Some(command)) = (ctx.profile, wants(Scenario::Orders), &command) {
        let outcome = scenarios::profile_load(
            ctx,
            None,
            "whole machine, orders spread through the command API at saturation",
            command.addr,
            orders::order_requests(ctx.next_user.clone(), orders::spread_courses(&ctx.scale)),
            ctx.scale.order_connections,
        )
        .await;
        if let Some(p) = results.record("profile (orders)", outcome) {
            results.profiles.push(p);
        }
    }

    // Freshness: the whole pipeline, once the projector has caught up.
    if let (true, Some(command)) = (wants(Scenario::Freshness), &command) {
        let projector = start_projector(ctx, "projector", &cqrs_url, &prefix, build_limit).await?;
        let caught_up = freshness::catch_up(ctx, &cqrs_url, &prefix, build_limit).await;
        if results
            .record("freshness (catching up)", caught_up)
            .is_some()
        {
            tracing::info!("freshness");
            if let Some(f) = results.record(
                "freshness",
                freshness::run(ctx, command.addr, &prefix).await,
            ) {
                results.freshness = f;
            }
        }
        projector.stop().await?;
    }

    // The rush: a sale's reads and its orders together, with a query API
    // pre-warming the rush's event, against each alone.
    if let (true, Some(command)) = (wants(Scenario::Rush), &command) {
        let projector = start_projector(ctx, "projector", &cqrs_url, &prefix, build_limit).await?;
        let caught_up = freshness::catch_up(ctx, &cqrs_url, &prefix, build_limit).await;
        if results.record("rush (catching up)", caught_up).is_some() {
            tracing::info!("rush");
            let mut query = start_query_api(ctx, "query-api-rush", &prefix, "10m")?;
            query.wait_ok("/ready", Duration::from_secs(60)).await?;
            let targets = rush::Targets {
                query: query.addr,
                command: command.addr,
                prefix: prefix.clone(),
                pids: rush::Pids {
                    query_api: query.pid(),
                    command_api: command.pid(),
                    projector: projector.pid(),
                    all_in_one: None,
                    postmaster: stack::postmaster_pid(env).await,
                },
            };
            if let Some((measured, profile)) =
                results.record("rush", rush::run(ctx, &targets).await)
            {
                results.rush = Some(measured);
                if let Some(p) = profile.and_then(|p| results.record("profile (rush)", p)) {
                    results.profiles.push(p);
                }
            }
            query.stop().await?;
        }
        projector.stop().await?;
    }

    // Takeover: an active and a standby projector on the slot, the active
    // one SIGKILLed again and again while orders stream in.
    if let (true, Some(command)) = (wants(Scenario::Takeover), &command) {
        tracing::info!("takeover");
        let outcome = takeover::run(ctx, command.addr, &prefix, |addr| {
            projector_env(ctx, &cqrs_url, &prefix, addr)
        })
        .await;
        results.takeover = results.record("takeover", outcome);
    }
    if let Some(command) = command {
        command.stop().await?;
    }

    // Overload: two command APIs of its own, one with the admission as
    // shipped and one with the old, under the same loads.
    if wants(Scenario::Overload) {
        tracing::info!("overload");
        let outcome = overload::run(ctx, &cqrs_url).await;
        results.overload = results.record("overload", outcome);
    }

    // The all-in-one against the three processes, each on its own copy.
    if let Some((three_url, one_url)) = &aio_urls {
        tracing::info!("all-in-one against three processes");
        let outcome = all_in_one::measure(ctx, three_url, one_url, build_limit).await;
        results.all_in_one = results.record("all-in-one", outcome);
    }

    // The projector against the decode ceiling, in a database of its own.
    if wants(Scenario::Stream) {
        tracing::info!("projector against pg_recvlogical");
        if let Some((stream, profile)) = results.record(
            "projector against pg_recvlogical",
            stream::run(ctx, &stream_db).await,
        ) {
            results.stream = Some(stream);
            results.profiles.extend(profile);
        }
    }
    Ok(())
}

/// The directory of the running executable's sibling binaries.
pub fn sibling_dir() -> Result<PathBuf> {
    let exe = std::env::current_exe().context("locating the bench binary")?;
    Ok(exe
        .parent()
        .context("the bench binary has no directory")?
        .to_path_buf())
}
