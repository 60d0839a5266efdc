//! `all-in-one`: the command API, the projector and the query API in one
//! process and one runtime, for a small team that runs one process per
//! machine. The crates stay separate libraries; this binary only starts
//! them side by side and stops them together.
//!
//! Settings: each program's own, from the environment as when it runs
//! alone, or as flags after a section marker (`--command-api`,
//! `--query-api`, `--projector`) that hands the following arguments to that
//! program's parser. The settings the programs share (`DATABASE_URL`,
//! `REDIS_URL`, `KEY_PREFIX`, `ADMIN_TOKEN`, the HTTP limits) are read once
//! from the environment and mean the same to each.

use std::{ffi::OsString, process::ExitCode};

use anyhow::Context;
use clap::{CommandFactory, FromArgMatches, Parser};
use tokio::{sync::watch, task::JoinSet};

/// Reads and projector flushes allocate from many threads; glibc's malloc
/// cost each program a tenth of its CPU there (see the programs' mains).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// What comes before the first section marker.
#[derive(Debug, Parser)]
#[command(
    name = "all-in-one",
    version,
    about = "The command API, the projector and the query API in one process, each on its own address with its own settings.",
    override_usage = "all-in-one [OPTIONS] [--command-api FLAGS...] [--query-api FLAGS...] [--projector FLAGS...]"
)]
struct Cli {
    /// PostgreSQL URL the projector connects with (its role needs REPLICATION), when it is not the command API's `DATABASE_URL`.
    #[arg(long, env = "PROJECTOR_DATABASE_URL", hide_env_values = true)]
    projector_database_url: Option<String>,

    /// File holding the projector's PostgreSQL URL, read once at start (a trailing newline is trimmed); instead of PROJECTOR_DATABASE_URL.
    #[arg(
        long,
        env = "PROJECTOR_DATABASE_URL_FILE",
        value_name = "FILE",
        conflicts_with = "projector_database_url"
    )]
    projector_database_url_file: Option<std::path::PathBuf>,

    #[command(flatten)]
    log: service::LogArgs,
}

/// The section markers, each with the program it hands its flags to.
const SECTIONS: [&str; 3] = ["--command-api", "--query-api", "--projector"];

/// The command API's settings, parsed as its own binary would.
#[derive(Debug, Parser)]
#[command(name = "command-api")]
struct CommandArgs {
    #[command(flatten)]
    config: command_api::Config,
}

/// The projector daemon's settings (its subcommands stay in its own binary).
#[derive(Debug, Parser)]
#[command(name = "projector")]
struct ProjectorArgs {
    #[command(flatten)]
    config: projector::Config,
}

/// Every program's settings, parsed before the runtime starts.
struct Settings {
    log: service::LogArgs,
    command: command_api::Config,
    query: query_api::Config,
    projector: projector::Config,
    /// `PROJECTOR_DATABASE_URL_FILE`, read after the other secrets.
    projector_database_file: Option<std::path::PathBuf>,
}

fn main() -> anyhow::Result<ExitCode> {
    service::tls::install_crypto_provider();
    let mut settings = match parse(std::env::args_os().collect()) {
        Ok(settings) => settings,
        Err(err) => err.exit(),
    };
    settings.log.init();
    settings.command.load_secrets()?;
    settings.query.load_secrets()?;
    settings.projector.load_secrets()?;
    if let Some(path) = &settings.projector_database_file {
        let url = service::read_secret_file("PROJECTOR_DATABASE_URL", path)?;
        settings.projector.database = service::Database::new(&url);
    }
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?
        .block_on(run(settings))
}

/// Splits the arguments at the section markers and parses each part with
/// its program's parser (`--help` shows them all).
fn parse(args: Vec<OsString>) -> Result<Settings, clap::Error> {
    let mut parts: [Vec<OsString>; 4] = Default::default();
    let mut section = 0;
    for (i, arg) in args.into_iter().enumerate() {
        match SECTIONS.iter().position(|s| arg == *s) {
            Some(at) if i > 0 => section = at + 1,
            _ => parts[section].push(arg),
        }
    }
    let [top, command, query, projector] = parts;
    let matches = top_command().try_get_matches_from(top)?;
    let cli = Cli::from_arg_matches(&matches)?;
    let named = |name: &str, rest: Vec<OsString>| std::iter::once(OsString::from(name)).chain(rest);
    let command = CommandArgs::try_parse_from(named("command-api", command))?.config;
    let query = query_api::Config::try_parse_from(named("query-api", query))?;
    let mut projector = ProjectorArgs::try_parse_from(named("projector", projector))?.config;
    if let Some(url) = cli.projector_database_url {
        // Instead of DATABASE_URL or DATABASE_URL_FILE.
        projector.database = service::Database::new(&url);
    }
    Ok(Settings {
        log: cli.log,
        command,
        query,
        projector,
        projector_database_file: cli.projector_database_url_file,
    })
}

/// The top-level parser, whose help ends with each program's settings.
fn top_command() -> clap::Command {
    let mut after = String::from(
        "Each program reads its settings from the environment as when it runs alone; flags after a section \
         marker go to that program. The settings the programs share (DATABASE_URL, REDIS_URL, KEY_PREFIX, \
         ADMIN_TOKEN, LOG_FORMAT, the HTTP limits) are read once and mean the same to each; the projector \
         uses DATABASE_URL too unless PROJECTOR_DATABASE_URL (or its _FILE twin) is set. SIGTERM or Ctrl-C stops all three \
         gracefully; if one of them fails, the others are stopped and the process exits non-zero.\n",
    );
    for (marker, mut program) in [
        ("--command-api", CommandArgs::command()),
        ("--query-api", query_api::Config::command()),
        ("--projector", ProjectorArgs::command()),
    ] {
        let help = program.render_help().to_string();
        // The program's own usage line names its binary: say how it is
        // reached here instead.
        let options = help
            .split_once("Options:")
            .map_or(help.as_str(), |(_, options)| options);
        after.push_str(&format!(
            "\n{marker} (the {} settings):{options}",
            &marker[2..]
        ));
    }
    Cli::command().after_long_help(after)
}

/// Starts the three programs on one runtime and stops them together.
async fn run(settings: Settings) -> anyhow::Result<ExitCode> {
    let (stop, stopping) = watch::channel(false);
    let stopped = move || {
        let mut stopping = stopping.clone();
        async move {
            let _ = stopping.wait_for(|stop| *stop).await;
        }
    };
    // The APIs bind before anything runs, so a taken address fails here.
    let command = command_api::Application::build(settings.command)
        .await
        .context("starting the command API")?;
    let query = query_api::Application::build(settings.query)
        .await
        .context("starting the query API")?;
    let mut programs = JoinSet::new();
    let until = stopped();
    programs.spawn(async move {
        let outcome = command.run_until_stopped(until).await;
        ("command-api", outcome.map_err(anyhow::Error::from))
    });
    let until = stopped();
    programs.spawn(async move {
        let outcome = query.run_until_stopped(until).await;
        ("query-api", outcome.map_err(anyhow::Error::from))
    });
    let until = stopped();
    let projector = settings.projector;
    programs.spawn(async move { ("projector", projector::run(projector, until).await) });
    tracing::info!("all-in-one: command API, query API and projector started");

    let signal = tokio::spawn(service::shutdown_signal());
    let mut failed = false;
    tokio::select! {
        _ = signal => tracing::info!("all-in-one: stopping the three programs"),
        Some(joined) = programs.join_next() => {
            failed = true;
            report(joined, *stop.borrow());
            tracing::error!("all-in-one: one program stopped on its own; stopping the others");
        }
    }
    let _ = stop.send(true);
    while let Some(joined) = programs.join_next().await {
        failed |= !report(joined, true);
    }
    Ok(if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

/// Logs how a program ended; whether it ended well (stopped when asked).
fn report(
    joined: Result<(&'static str, anyhow::Result<()>), tokio::task::JoinError>,
    asked: bool,
) -> bool {
    match joined {
        Ok((name, Ok(()))) if asked => {
            tracing::info!(program = name, "stopped");
            true
        }
        Ok((name, Ok(()))) => {
            tracing::error!(program = name, "stopped without being asked to");
            false
        }
        Ok((name, Err(err))) => {
            tracing::error!(program = name, error = format!("{err:#}"), "failed");
            false
        }
        Err(err) => {
            tracing::error!(error = %err, "a program's task panicked");
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Vec<OsString> {
        list.iter().map(OsString::from).collect()
    }

    #[test]
    fn flags_after_a_marker_go_to_that_program() {
        let settings = parse(args(&[
            "all-in-one",
            "--command-api",
            "--addr",
            "127.0.0.1:9001",
            "--query-api",
            "--addr",
            "127.0.0.1:9002",
            "--projector",
            "--addr",
            "127.0.0.1:9003",
            "--slot",
            "one_process",
        ]))
        .expect("parses");
        assert_eq!(settings.command.addr.port(), 9001);
        assert_eq!(settings.query.addr.port(), 9002);
        assert_eq!(settings.projector.addr.port(), 9003);
        assert_eq!(settings.projector.slot, "one_process");
    }

    #[test]
    fn a_flag_of_another_program_is_refused() {
        let err = parse(args(&["all-in-one", "--query-api", "--slot", "x"]))
            .err()
            .expect("refused");
        assert_eq!(err.kind(), clap::error::ErrorKind::UnknownArgument);
    }

    #[test]
    fn the_projector_can_connect_as_a_role_of_its_own() {
        let settings = parse(args(&[
            "all-in-one",
            "--projector-database-url",
            "postgres://projector@db/courses",
            "--command-api",
            "--database-url",
            "postgres://command@db/courses",
        ]))
        .expect("parses");
        assert_eq!(
            settings.command.database.url,
            "postgres://command@db/courses"
        );
        assert_eq!(
            settings.projector.database.url,
            "postgres://projector@db/courses"
        );
    }

    #[test]
    fn help_documents_every_programs_settings() {
        let help = top_command().render_long_help().to_string();
        for setting in [
            "COMMAND_API_ADDR",
            "QUERY_API_ADDR",
            "PROJECTOR_ADDR",
            "PROJECTOR_SLOT",
            "PREWARM_WINDOW",
        ] {
            assert!(help.contains(setting), "{setting} missing from --help");
        }
    }
}
