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
    cli.log.init();
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(run(cli))
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command.unwrap_or(Command::Run) {
        Command::Run => projector::run(cli.config, service::shutdown_signal()).await,
        Command::Status => {
            let status = projector::status(&cli.config).await?;
            println!("{}", serde_json::to_string_pretty(&status)?);
            Ok(())
        }
        Command::Rebuild => {
            projector::request_rebuild(&cli.config).await?;
            println!("rebuild requested: the active projector builds a fresh generation now (or the next one to start)");
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
