//! Starting the command API: bind first, then serve until told to stop, so
//! tests can run the real app on port 0.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::Router;
use service::Server;
use sqlx::postgres::PgConnectOptions;
use sqlx::{Connection, PgConnection, PgPool};

use crate::db_watch::DbWatch;

use crate::config::Config;
use crate::metrics::Metrics;
use crate::routes;
use crate::state::AppState;

/// The API, bound to its port and ready to serve.
pub struct Application {
    server: Server,
    router: Router,
    pool: PgPool,
    db: Arc<DbWatch>,
    key_ttl: Duration,
    sweep_interval: Duration,
    flags: service::Flags,
    sweeps_skipped: service::Counter,
}

impl Application {
    /// Builds the pool (it connects lazily) and binds the listener.
    pub async fn build(config: Config) -> anyhow::Result<Self> {
        let pool = crate::db::pool(&config).context("invalid database url")?;
        let options = config
            .database
            .url
            .parse::<PgConnectOptions>()
            .context("invalid database url")?;
        check_tls(&options).await?;
        let db = DbWatch::new(options);
        let server = Server::bind(config.addr)
            .await
            .with_context(|| format!("cannot listen on {}", config.addr))?
            .with_limits(config.connections.clone());
        let admin_token = config.admin.configured().map(Arc::from);
        if admin_token.is_none() {
            tracing::warn!("no admin token set: back-office writes are open (development mode)");
        }
        let metrics = Arc::new(Metrics::new());
        let flags = service::Flags::load(
            &config.flags,
            crate::switches::SPECS,
            Some(metrics.recorded()),
        );
        let sweeps_skipped = metrics.sweeps_skipped.clone();
        let state = AppState {
            pool: pool.clone(),
            db: db.clone(),
            admin_token,
            metrics,
            flags: flags.clone(),
            intake: Arc::new(crate::switches::Intake::new()),
            max_connections: config.db_pool_size,
            // Filled in by `routes::router`, from the routes it serves.
            openapi: Default::default(),
        };
        let router = routes::router(state, &config).context("cannot render the API reference")?;
        Ok(Application {
            server,
            router,
            pool,
            db,
            key_ttl: config.idempotency_key_ttl,
            sweep_interval: config.idempotency_sweep_interval,
            flags,
            sweeps_skipped,
        })
    }

    /// The port the listener is bound to (useful when the configuration said 0).
    pub fn port(&self) -> u16 {
        self.server.port()
    }

    /// Serves until `shutdown` completes, then lets in-flight requests finish
    /// and closes the pool.
    pub async fn run_until_stopped(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        let sweeper = tokio::spawn(crate::expiry::run(
            self.pool.clone(),
            self.key_ttl,
            self.sweep_interval,
            self.flags.clone(),
            self.sweeps_skipped.clone(),
        ));
        let watcher = tokio::spawn(self.db.clone().run());
        let flag_file = tokio::spawn(self.flags.clone().watch());
        let served = self
            .server
            .serve("command api", self.router, shutdown)
            .await;
        sweeper.abort();
        watcher.abort();
        flag_file.abort();
        self.pool.close().await;
        tracing::info!("command api stopped");
        served
    }
}

/// Stops the start when PostgreSQL answers but its certificate fails the
/// check `sslmode=verify-ca`/`verify-full` asks for (a wrong CA or host
/// name): a setting to fix, not an outage for the lazy pool to wait out.
async fn check_tls(options: &PgConnectOptions) -> anyhow::Result<()> {
    use sqlx::postgres::PgSslMode;
    if !matches!(
        options.get_ssl_mode(),
        PgSslMode::VerifyCa | PgSslMode::VerifyFull
    ) {
        return Ok(());
    }
    let attempt = tokio::time::timeout(Duration::from_secs(5), PgConnection::connect_with(options));
    let cause = match attempt.await {
        Ok(Ok(conn)) => {
            let _ = conn.close().await;
            return Ok(());
        }
        Ok(Err(sqlx::Error::Tls(cause))) => cause.to_string(),
        // The handshake's failure comes as an I/O error wrapping rustls's.
        Ok(Err(sqlx::Error::Io(io)))
            if io
                .get_ref()
                .is_some_and(|inner| inner.is::<rustls::Error>()) =>
        {
            io.get_ref().map(ToString::to_string).unwrap_or_default()
        }
        // Down or slow: the pool connects when it can, `/ready` says 503.
        _ => return Ok(()),
    };
    anyhow::bail!(
        "connecting to PostgreSQL at {}:{} over TLS: {cause}",
        options.get_host(),
        options.get_port()
    )
}

/// Applies the migrations embedded from `migrations/` to `database_url`.
pub async fn migrate(database_url: &str) -> anyhow::Result<()> {
    let mut conn = PgConnection::connect(database_url)
        .await
        .context("cannot connect to postgresql")?;
    sqlx::migrate!("../migrations")
        .run(&mut conn)
        .await
        .context("migration failed")?;
    conn.close().await.context("cannot close the connection")?;
    Ok(())
}
