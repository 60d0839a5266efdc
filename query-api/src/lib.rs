//! The storefront's read API: serves the views the projector precomputed,
//! from Redis only (PostgreSQL is not even a dependency).

mod config;
mod error;
mod freshness;
mod gather;
mod headers;
mod metrics;
mod params;
mod prewarm;
mod routes;
mod served;
mod store;
mod switches;

use std::{future::Future, net::SocketAddr, sync::Arc};

use axum::{
    error_handling::HandleErrorLayer,
    response::{IntoResponse, Response},
    BoxError, Router,
};
use bytes::Bytes;
pub use config::Config;
use error::ApiError;
use service::{RequestLayer, Server, Shedding};
use tower::ServiceBuilder;
use views::Keys;

/// Shared by every handler; cloned several times per request (the
/// middleware, each extractor), so it is one reference count: every count
/// is shared by both cores under load, and each bump moves its cache line.
#[derive(Clone)]
pub(crate) struct AppState(Arc<Shared>);

/// What [`AppState`] holds.
pub(crate) struct Shared {
    pub store: Arc<store::Store>,
    pub config: Arc<Config>,
    pub metrics: Arc<metrics::Metrics>,
    /// Course pages last served from Redis, by the bytes they were made of.
    pub pages: served::Pages,
    /// The OpenAPI document, rendered once.
    pub openapi: Bytes,
    /// Ops flags, re-read from `FLAGS_FILE` in the background.
    pub flags: service::Flags,
}

impl std::ops::Deref for AppState {
    type Target = Shared;

    fn deref(&self) -> &Shared {
        &self.0
    }
}

/// A bound, not yet running, query API.
pub struct Application {
    server: Server,
    router: Router,
    warm: (Arc<prewarm::Prewarm>, std::time::Duration),
    flags: service::Flags,
}

impl Application {
    /// Connects to Redis (in the background) and binds the listen address.
    /// Over TLS, a Redis that answers with a certificate failing the check
    /// (a wrong CA or host name) stops it here.
    pub async fn build(config: Config) -> anyhow::Result<Self> {
        let (routes, document) = routes::router();
        let metrics = Arc::new(metrics::Metrics::new(routes::paths(&document)));
        let flags = service::Flags::load(&config.flags, switches::SPECS, Some(metrics.recorded()));
        if let Some(tls) = config.redis.url.tls_client() {
            service::tls::check_at_start(
                "Redis",
                &config.redis.url.nodes(),
                &tls,
                config
                    .redis_timeout()
                    .max(std::time::Duration::from_secs(5)),
            )
            .await?;
        }
        let store = store::Store::connect(
            &config.redis.url,
            Keys::new(config.redis.key_prefix.clone()),
            config.prewarm_window,
            config.redis_timeout(),
            config.view_schema_version,
            metrics.clone(),
        )
        .await?
        .with_flags(flags.clone());
        let warm = (store.warm().clone(), config.prewarm_refresh());
        let server = Server::bind(config.addr)
            .await?
            .with_limits(config.connections.clone());
        if config.admin.configured().is_none() {
            tracing::warn!("no ADMIN_TOKEN configured: /v1/ops routes are off (they answer 401)");
        }
        let state = AppState(Arc::new(Shared {
            store: Arc::new(store),
            config: Arc::new(config),
            metrics,
            pages: served::Pages::default(),
            openapi: Bytes::from(document.to_json()?),
            flags,
        }));
        Ok(Self {
            server,
            flags: state.flags.clone(),
            router: router(routes, state),
            warm,
        })
    }

    /// The bound port (useful with port 0).
    pub fn port(&self) -> u16 {
        self.server.port()
    }

    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.server.local_addr()
    }

    /// Serves until `shutdown` resolves, then finishes in-flight requests.
    pub async fn run_until_stopped(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        let (warm, every) = self.warm;
        let refresher = (!warm.is_off()).then(|| tokio::spawn(warm.run(every)));
        let flag_file = tokio::spawn(self.flags.watch());
        let served = self.server.serve("query api", self.router, shutdown).await;
        if let Some(refresher) = refresher {
            refresher.abort();
        }
        flag_file.abort();
        served
    }
}

fn router(routes: Router<AppState>, state: AppState) -> Router {
    // One stack applied once: each `Router::layer` call wraps every route in
    // a boxed service of its own, a clone and an allocation per request.
    let counted = state.metrics.clone();
    let stack = ServiceBuilder::new()
        .layer(RequestLayer::new(state.metrics.requests.clone()))
        // Marks the reads whose tokens were ignored, waits switched off.
        .layer(axum::middleware::from_fn_with_state(
            state.flags.clone(),
            switches::mark_ignored_tokens,
        ))
        // Counts every refusal (logged in summary, not one by one), and the
        // answers while views are rebuilt or stale.
        .map_response(move |response: Response| {
            counted.shedding.observe(&response);
            counted.observe_answer(&response);
            response
        })
        .layer(HandleErrorLayer::new(|err: BoxError| async move {
            let reason = Shedding::reason_of(&err).unwrap_or(Shedding::CONCURRENCY);
            Shedding::mark(ApiError::Unavailable.into_response(), reason)
        }))
        .load_shed()
        .layer(tower::limit::GlobalConcurrencyLimitLayer::new(
            state.config.concurrency_limit,
        ))
        .timeout(state.config.request_timeout());

    routes
        .fallback(|| async { ApiError::NotFound("no such route".into()) })
        .method_not_allowed_fallback(|| async { ApiError::MethodNotAllowed })
        .layer(stack)
        .with_state(state)
}
