//! The HTTP surface: every route, and the layers that give each request an
//! id, a span, a deadline and a place in the concurrency budget.

mod courses;
mod enrollments;
mod events;
mod health;
mod ops;
mod orders;
mod reference;
mod users;

use axum::body::Bytes;
use axum::error_handling::HandleErrorLayer;
use axum::extract::DefaultBodyLimit;
use axum::http::{HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{BoxError, Json, Router};
use serde::Serialize;
use service::{RequestLayer, Shedding};
use tower::limit::GlobalConcurrencyLimitLayer;
use tower::ServiceBuilder;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::request_id::MakeRequestUuid;
use tracing::Level;
use utoipa::OpenApi as _;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::body::BodyRead;
use crate::config::Config;
use crate::deadline::Deadline;
use crate::error::ApiError;
use crate::metrics::DB_POOL;
use crate::state::AppState;

/// Header carrying the read-your-writes token of a successful write.
pub(crate) const X_COMMIT_LSN: HeaderName = HeaderName::from_static("x-commit-lsn");

/// The whole application as one service. Fails only if the API reference
/// cannot be rendered.
pub(crate) fn router(mut state: AppState, config: &Config) -> Result<Router, serde_json::Error> {
    // Load shedding for the API routes: over the global budget a request is
    // refused at once (503) rather than queued until everything times out.
    // One semaphore for all routes, not one per route.
    let (counted, pool) = (state.metrics.clone(), state.pool.clone());
    let max_connections = state.max_connections;
    let shed = ServiceBuilder::new()
        // Counts every refusal, whichever layer or handler gave it. No
        // connection free in time from a pool that is not even full is
        // PostgreSQL away, not load: the watcher's outage line speaks for it.
        .map_response(move |response: Response| {
            let outage =
                Shedding::reason(&response) == Some(DB_POOL) && pool.size() < max_connections;
            if !outage {
                counted.shedding.observe(&response);
            }
            response
        })
        .layer(HandleErrorLayer::new(|err: BoxError| async move {
            overloaded(err)
        }))
        .load_shed()
        .layer(GlobalConcurrencyLimitLayer::new(config.admitted() as usize))
        // Not tower's timeout: a write caught committing at the deadline is
        // waited for (see `deadline`).
        .layer(axum::middleware::from_fn_with_state(
            Deadline {
                limit: config.request_timeout,
                grace: config.db_statement_timeout,
            },
            crate::deadline::enforce,
        ));

    let body_limit = usize::try_from(config.body_limit_bytes).unwrap_or(usize::MAX);

    // Each route is registered together with its annotation, so the API
    // reference lists exactly the routes served, with their methods.
    let (routes, document) = OpenApiRouter::with_openapi(reference::ApiDoc::openapi())
        .routes(routes!(users::create))
        .routes(routes!(courses::create))
        .routes(routes!(courses::update))
        .routes(routes!(events::create))
        .routes(routes!(orders::create))
        .routes(routes!(orders::cancel))
        .routes(routes!(enrollments::create))
        .route_layer(shed)
        // Probes and metrics stay outside the budget, so they answer under load.
        .routes(routes!(health::health))
        .routes(routes!(health::ready))
        .routes(routes!(health::metrics))
        .routes(routes!(ops::flags))
        .routes(routes!(reference::openapi))
        .split_for_parts();
    state.openapi = Bytes::from(document.to_json()?);
    let requests = state
        .metrics
        .count_requests(document.paths.paths.into_keys());

    // One stack applied once, outside every route and fallback, so panics,
    // shed load and unknown paths are counted too. Writes are few and each
    // worth a line, so every answer is logged; new ids stay UUIDs, as the
    // write side's clients expect.
    let stack = ServiceBuilder::new()
        .layer(
            RequestLayer::new(requests)
                .log_answers_at(Level::INFO)
                .ids(MakeRequestUuid),
        )
        .layer(CatchPanicLayer::custom(panicked))
        .layer(DefaultBodyLimit::max(body_limit))
        // The body is read here, outside the concurrency budget: a client
        // slow to send it holds no slot while it does.
        .layer(axum::middleware::from_fn_with_state(
            BodyRead {
                limit: config.body_limit_bytes,
                timeout: config.body_read_timeout,
            },
            crate::body::read_first,
        ))
        // Sees every answer of the routes: a database failure wakes the watcher.
        .layer(axum::middleware::from_fn_with_state(
            state.db.clone(),
            crate::db_watch::watch,
        ));
    Ok(routes
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(stack)
        .with_state(state))
}

/// A successful write: the status, `X-Commit-Lsn` when known, and the JSON body.
pub(crate) fn written<T: Serialize>(status: StatusCode, lsn: Option<String>, body: &T) -> Response {
    let mut response = (status, Json(body)).into_response();
    match lsn.and_then(|lsn| HeaderValue::from_str(&lsn).ok()) {
        Some(lsn) => {
            response.headers_mut().insert(X_COMMIT_LSN, lsn);
        }
        // The database went away right after the commit: have it checked.
        None => {
            response
                .extensions_mut()
                .insert(crate::db_watch::DatabaseTrouble);
        }
    }
    response
}

/// The 503 of a request the admission stack refused, marked for the
/// accounting (counted and logged in summary, not one line each).
fn overloaded(err: BoxError) -> Response {
    let Some(reason) = Shedding::reason_of(&err) else {
        return ApiError::Internal(format!("unhandled middleware error: {err}")).into_response();
    };
    let message = "the service is overloaded, retry shortly";
    Shedding::mark(ApiError::Unavailable(message).into_response(), reason)
}

async fn not_found() -> ApiError {
    ApiError::NotFound("no route matches this path".to_owned())
}

async fn method_not_allowed() -> ApiError {
    ApiError::MethodNotAllowed
}

fn panicked(_panic: Box<dyn std::any::Any + Send + 'static>) -> Response {
    ApiError::Internal("a request handler panicked".to_owned()).into_response()
}
