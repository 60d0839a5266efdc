//! `query-api`: serves the storefront's reads from Redis.

use clap::Parser;
use query_api::{Application, Config};

/// Reads allocate and free a few buffers each from several threads; glibc's
/// malloc spent a tenth of a read's CPU on that under load.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Settings are parsed (and refused) before the runtime starts.
fn main() -> anyhow::Result<()> {
    service::tls::install_crypto_provider();
    let mut config = Config::parse();
    config.log.init();
    config.load_secrets()?;
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(serve(config))
}

async fn serve(config: Config) -> anyhow::Result<()> {
    let app = Application::build(config).await?;
    app.run_until_stopped(service::shutdown_signal()).await?;
    tracing::info!("query api stopped");
    Ok(())
}
