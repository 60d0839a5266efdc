//! `bench`: runs every scenario against the local stack and writes the
//! report; `serve-bare` and `serve-monolith` are the baselines' servers.

use std::{net::SocketAddr, path::PathBuf, process::ExitCode};

use clap::{Parser, Subcommand};

/// The benchmark harness: every figure next to its baseline, in one run.
#[derive(Debug, Parser)]
#[command(name = "bench", about)]
struct Cli {
    /// A seconds-long run of every scenario on tiny data (CI): proves the
    /// harness works, says nothing about speed.
    #[arg(long)]
    smoke: bool,

    /// A scaled-down full run (a few minutes): the full run's shapes on less
    /// data with shorter phases.
    #[arg(long, conflicts_with = "smoke")]
    quick: bool,

    /// Write the Markdown and the plots again from a JSON summary of an
    /// earlier run (into the JSON's directory), without running anything.
    #[arg(long, value_name = "JSON")]
    render: Option<PathBuf>,

    /// Skip the perf profiles of the full run.
    #[arg(long)]
    no_profile: bool,

    /// Run only these scenarios (repeatable or comma-separated, e.g.
    /// `--only reads,storage`); every scenario when absent.
    #[arg(long, value_enum, value_delimiter = ',', value_name = "SCENARIO")]
    only: Vec<benches::run::Scenario>,

    /// Directory the report (Markdown, JSON, PNG) is written to.
    #[arg(long, env = "BENCH_OUT", default_value = "benches/results")]
    out: PathBuf,

    /// Any database of the PostgreSQL server; the run creates its own databases beside it.
    #[arg(
        long,
        env = "BENCH_DATABASE_URL",
        default_value = "postgres://postgres@127.0.0.1:55432/postgres"
    )]
    database_url: String,

    /// Redis; the run writes only under its own key prefixes.
    #[arg(
        long,
        env = "BENCH_REDIS_URL",
        default_value = "redis://127.0.0.1:56379"
    )]
    redis_url: String,

    /// Directory of command-api, query-api, projector and all-in-one (default: beside this binary).
    #[arg(long, env = "BENCH_BIN_DIR")]
    bin_dir: Option<PathBuf>,

    /// HTML books to cut course descriptions from (default: the Rust toolchain's).
    #[arg(long, env = "BENCH_CORPUS_DIR")]
    corpus_dir: Option<PathBuf>,

    #[command(subcommand)]
    serve: Option<Serve>,
}

/// The baselines' servers (started by the run, not by hand).
#[derive(Debug, Subcommand)]
enum Serve {
    /// The HTTP ceiling: `GET /page` answers the bytes of a file; with a
    /// Redis and a key, `GET /stored` answers one `GET` of that key.
    #[command(hide = true)]
    ServeBare {
        #[arg(long)]
        addr: SocketAddr,
        #[arg(long)]
        body: PathBuf,
        #[arg(long, requires = "redis_key")]
        redis_url: Option<String>,
        #[arg(long, requires = "redis_url")]
        redis_key: Option<String>,
    },
    /// The monolith's read and write paths on PostgreSQL.
    #[command(hide = true)]
    ServeMonolith {
        #[arg(long)]
        addr: SocketAddr,
        #[arg(long)]
        database_url: String,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,sqlx::query=error")),
        )
        .with_writer(std::io::stderr)
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(err) => {
            eprintln!("error: cannot start the runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.serve {
        Some(Serve::ServeBare {
            addr,
            body,
            redis_url,
            redis_key,
        }) => {
            let stored = match redis_url.zip(redis_key) {
                Some((url, key)) => Some(benches::baseline::StoredView {
                    redis_url: url.parse()?,
                    key,
                }),
                None => None,
            };
            benches::baseline::serve_bare(addr, &body, stored).await?;
            return Ok(ExitCode::SUCCESS);
        }
        Some(Serve::ServeMonolith { addr, database_url }) => {
            benches::baseline::serve_monolith(addr, &database_url).await?;
            return Ok(ExitCode::SUCCESS);
        }
        None => {}
    }
    if let Some(json) = cli.render {
        let mut results: benches::results::Results =
            serde_json::from_slice(&std::fs::read(&json)?)?;
        results.ratios = benches::goals::ratios(&results);
        let dir = json.parent().map(PathBuf::from).unwrap_or_default();
        benches::report::write(&results, &dir)?;
        println!(
            "report: {}",
            dir.join(format!("{}.md", results.meta.name)).display()
        );
        return Ok(ExitCode::SUCCESS);
    }
    let bench_exe = std::env::current_exe()?;
    let bin_dir = match cli.bin_dir {
        Some(dir) => dir,
        None => benches::run::sibling_dir()?,
    };
    let mut command = if cli.smoke {
        "bash deploy/local.sh bench --smoke"
    } else if cli.quick {
        "bash deploy/local.sh bench --quick"
    } else {
        "bash deploy/local.sh bench"
    }
    .to_owned();
    if !cli.only.is_empty() {
        let names: Vec<&str> = cli.only.iter().map(|s| s.name()).collect();
        command.push_str(&format!(" --only {}", names.join(",")));
    }
    let results = benches::run(benches::Options {
        smoke: cli.smoke,
        quick: cli.quick,
        profile: !cli.no_profile,
        out_dir: cli.out.clone(),
        database_url: cli.database_url,
        redis_url: cli.redis_url,
        bin_dir,
        bench_exe,
        corpus_dir: cli.corpus_dir,
        command,
        only: cli.only,
    })
    .await?;
    let report = cli.out.join(format!("{}.md", results.meta.name));
    for ratio in &results.ratios {
        let value = ratio
            .value
            .map(|v| format!("{v:.2}"))
            .unwrap_or_else(|| "–".to_owned());
        let met = match ratio.met {
            Some(true) => "met",
            Some(false) => "MISSED",
            None => "",
        };
        println!("{:<80} {:>8} {:<9} {}", ratio.name, value, ratio.goal, met);
    }
    println!("report: {}", report.display());
    if results.errors.is_empty() {
        Ok(ExitCode::SUCCESS)
    } else {
        for err in &results.errors {
            eprintln!("failed: {err}");
        }
        Ok(ExitCode::FAILURE)
    }
}
