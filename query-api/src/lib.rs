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
mod request_id;
mod routes;
mod served;
mod store;

use std::{future::Future, net::SocketAddr, sync::Arc, time::Instant};

use axum::{
    error_handling::HandleErrorLayer,
    extract::{MatchedPath, Request, State},
    middleware::{self, Next},
    response::Response,
    BoxError, Router,
};
use bytes::Bytes;
pub use config::Config;
use error::ApiError;
use tower::ServiceBuilder;
use tower_http::request_id::{PropagateRequestIdLayer, RequestId, SetRequestIdLayer};
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
}

impl std::ops::Deref for AppState {
    type Target = Shared;

    fn deref(&self) -> &Shared {
        &self.0
    }
}

/// A bound, not yet running, query API.
pub struct Application {
    listener: tokio::net::TcpListener,
    router: Router,
    warm: (Arc<prewarm::Prewarm>, std::time::Duration),
}

impl Application {
    /// Connects to Redis (in the background) and binds the listen address.
    pub async fn build(config: Config) -> anyhow::Result<Self> {
        let (routes, document) = routes::router();
        let metrics = Arc::new(metrics::Metrics::new(&routes::paths(&document)));
        let store = store::Store::connect(
            &config.redis_url,
            Keys::new(config.key_prefix.clone()),
            config.prewarm_window,
            config.redis_timeout(),
            metrics.clone(),
        )
        .await?;
        let warm = (store.warm().clone(), config.prewarm_refresh());
        let listener = tokio::net::TcpListener::bind(config.addr).await?;
        if config.admin_token.is_none() {
            tracing::warn!("no ADMIN_TOKEN configured: /v1/ops routes are off (they answer 401)");
        }
        let state = AppState(Arc::new(Shared {
            store: Arc::new(store),
            config: Arc::new(config),
            metrics,
            pages: served::Pages::default(),
            openapi: Bytes::from(document.to_json()?),
        }));
        Ok(Self {
            listener,
            router: router(routes, state),
            warm,
        })
    }

    /// The bound port (useful with port 0).
    pub fn port(&self) -> u16 {
        self.local_addr().port()
    }

    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .unwrap_or_else(|_| SocketAddr::from(([127, 0, 0, 1], 0)))
    }

    /// Serves until `shutdown` resolves, then finishes in-flight requests.
    pub async fn run_until_stopped(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        tracing::info!(addr = %self.local_addr(), "query api listening");
        let (warm, every) = self.warm;
        let refresher = (!warm.is_off()).then(|| tokio::spawn(warm.run(every)));
        let served = axum::serve(self.listener, self.router)
            .with_graceful_shutdown(shutdown)
            .await;
        if let Some(refresher) = refresher {
            refresher.abort();
        }
        served
    }
}

fn router(routes: Router<AppState>, state: AppState) -> Router {
    // One stack applied once: each `Router::layer` call wraps every route in
    // a boxed service of its own, a clone and an allocation per request.
    let stack = ServiceBuilder::new()
        .layer(SetRequestIdLayer::x_request_id(request_id::Counter::new()))
        .layer(PropagateRequestIdLayer::x_request_id())
        .layer(middleware::from_fn_with_state(state.clone(), observe))
        .layer(HandleErrorLayer::new(|err: BoxError| async move {
            if err.is::<tower::timeout::error::Elapsed>() {
                tracing::warn!("request timed out");
            } else {
                tracing::warn!(error = %err, "request shed: over the concurrency limit");
            }
            ApiError::Unavailable
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

/// One span per request carrying its request id; counts and times it.
async fn observe(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let started = Instant::now();
    // Borrowed, not copied: the route's name comes from the metrics' table.
    let route = state.metrics.route(
        request
            .extensions()
            .get::<MatchedPath>()
            .map(|p| p.as_str()),
    );
    // Borrowed for the span; `PropagateRequestIdLayer` puts the id on the
    // response.
    let request_id = request.extensions().get::<RequestId>();
    // The method is in the "request served" line, not the span: a span's
    // fields are formatted when it is made, on every request.
    let span = tracing::info_span!(
        "request",
        request_id = request_id
            .and_then(|id| id.header_value().to_str().ok())
            .unwrap_or("-"),
        route = state.metrics.name(&route),
    );
    let method = request.method().clone();
    // Served and logged inside the span, which is entered only while polled.
    let served = async {
        let response = next.run(request).await;
        let status = response.status().as_u16();
        let took = started.elapsed();
        state.metrics.record(&route, status, took);
        tracing::debug!(%method, status, elapsed_us = took.as_micros() as u64, "request served");
        response
    };
    tracing::Instrument::instrument(served, span).await
}
