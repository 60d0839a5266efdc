//! The `command-api` binary: parses the settings, then serves (the default)
//! or applies migrations.

use anyhow::Context;
use clap::{Parser, Subcommand};
use command_api::{Application, Config};

/// glibc's malloc took about 4% of the process under the sale rush (each
/// request's headers, JSON and rows); the other programs, and the
/// all-in-one process that runs this API, use mimalloc too.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(name = "command-api", version, args_conflicts_with_subcommands = true)]
/// The write side of the course store: validates commands and writes them to PostgreSQL.
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    serve: Config,
    #[command(flatten)]
    log: service::LogArgs,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the HTTP API (what runs when no subcommand is given).
    Serve(Box<Config>),
    /// Apply the database migrations, then exit.
    Migrate(MigrateArgs),
}

#[derive(clap::Args)]
struct MigrateArgs {
    /// The write model's PostgreSQL.
    #[command(flatten)]
    database: service::Database,
}

fn main() -> anyhow::Result<()> {
    service::tls::install_crypto_provider();
    // Invalid settings fail here, before the runtime starts.
    let mut cli = Cli::parse();
    cli.log.init();
    match &mut cli.command {
        Some(Command::Migrate(args)) => args.database.load()?,
        Some(Command::Serve(config)) => config.load_secrets()?,
        None => cli.serve.load_secrets()?,
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async {
        match cli.command {
            Some(Command::Migrate(args)) => {
                command_api::migrate(&args.database.url).await?;
                tracing::info!("migrations applied");
                Ok(())
            }
            Some(Command::Serve(config)) => serve(*config).await,
            None => serve(cli.serve).await,
        }
    })
}

async fn serve(config: Config) -> anyhow::Result<()> {
    let app = Application::build(config).await?;
    app.run_until_stopped(service::shutdown_signal())
        .await
        .context("server failed")
}
