//! `projector`: the daemon and its ops subcommands.

use std::process::ExitCode;

use projector::{Cli, Command};

/// glibc's malloc spent a sixth of a backlog's drain consolidating its
/// heap as each flush's pipeline (thousands of commands) was freed.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Settings are parsed (and refused) before the runtime starts.
fn main() -> anyhow::Result<ExitCode> {
    service::tls::install_crypto_provider();
    let mut cli = Cli::parse_args();
    cli.log.init();
    cli.config.load_secrets()?;
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(run(cli))
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command.unwrap_or(Command::Run) {
        Command::Run => projector::run(cli.config, service::shutdown_signal()).await?,
        Command::Status => {
            let status = projector::status(&cli.config).await?;
            println!("{}", serde_json::to_string_pretty(&status)?);
        }
        Command::Rebuild => {
            projector::request_rebuild(&cli.config).await?;
            println!("rebuild requested: the active projector builds a fresh generation now (or the next one to start)");
        }
        Command::DropSlot => {
            if projector::drop_slot(&cli.config).await? {
                println!("dropped slot {}", cli.config.slot);
            } else {
                println!("no slot named {}", cli.config.slot);
            }
        }
        Command::Audit(args) => return Ok(audit(&cli, args).await),
    }
    Ok(ExitCode::SUCCESS)
}

/// `projector audit`: its report on standard output, its verdict in the
/// exit status (an audit that could not run is not a clean one).
async fn audit(cli: &Cli, args: projector::AuditArgs) -> ExitCode {
    let options = projector::AuditOptions {
        sample: args.sample,
        repair: args.repair,
    };
    match projector::audit(&cli.config, options).await {
        Ok(report) => {
            print!("{report}");
            ExitCode::from(report.exit_status())
        }
        Err(err) => {
            eprintln!("audit failed: {err:#}");
            ExitCode::from(projector::AUDIT_FAILED)
        }
    }
}
