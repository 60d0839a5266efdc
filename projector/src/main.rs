//! `projector`: the daemon and its ops subcommands.

use clap::Parser;
use projector::{Cli, Command};

/// glibc's malloc spent a sixth of a backlog's drain consolidating its
/// heap as each flush's pipeline (thousands of commands) was freed.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Settings are parsed (and refused) before the runtime starts.
fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(run(cli))
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command.unwrap_or(Command::Run) {
        Command::Run => projector::run(cli.config, shutdown_signal()).await,
        Command::Status => {
            let status = projector::status(&cli.config).await?;
            println!("{}", serde_json::to_string_pretty(&status)?);
            Ok(())
        }
        Command::Rebuild => {
            projector::request_rebuild(&cli.config).await?;
            println!("rebuild requested: the running projector builds a fresh generation now (or at its next start)");
            Ok(())
        }
        Command::DropSlot => {
            if projector::drop_slot(&cli.config).await? {
                println!("dropped slot {}", cli.config.slot);
            } else {
                println!("no slot named {}", cli.config.slot);
            }
            Ok(())
        }
    }
}

/// Resolves on Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
    tracing::info!("shutdown requested");
}
