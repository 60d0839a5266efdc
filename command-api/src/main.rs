//! The `command-api` binary: parses the settings, then serves (the default)
//! or applies migrations.

use anyhow::Context;
use clap::{Parser, Subcommand};
use command_api::{Application, Config};

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
    /// PostgreSQL connection URL of the write model.
    #[arg(
        long,
        env = "DATABASE_URL",
        default_value = "postgres://postgres@127.0.0.1:55432/courses"
    )]
    database_url: String,
}

fn main() -> anyhow::Result<()> {
    service::tls::install_crypto_provider();
    // Invalid settings fail here, before the runtime starts.
    let cli = Cli::parse();
    cli.log.init();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async {
        match cli.command {
            Some(Command::Migrate(args)) => {
                command_api::migrate(&args.database_url).await?;
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
