//! The projector's ops endpoints: `/health`, `/ready`, `/metrics`, and
//! `/v1/ops/*` (admin token) for what the ops subcommands tell.

use std::{sync::atomic::Ordering::Relaxed, sync::Arc};

use axum::{
    extract::State,
    http::{header, HeaderMap, StatusCode},
    response::{IntoResponse, Response},
    routing::get,
    Json, Router,
};
use service::RequestLayer;

use crate::{config::Config, metrics::Metrics, standby::Role};

/// What the endpoints read: the daemon's gauges and its settings.
#[derive(Clone)]
pub struct Ops {
    pub metrics: Arc<Metrics>,
    pub config: Arc<Config>,
}

pub fn router(ops: Ops) -> Router {
    if ops.config.admin.configured().is_none() {
        tracing::warn!("no ADMIN_TOKEN configured: /v1/ops routes are off (they answer 401)");
    }
    Router::new()
        .route("/health", get(service::health))
        .route("/ready", get(ready))
        .route(
            "/metrics",
            get(|State(ops): State<Ops>| async move { ops.metrics.exposition() }),
        )
        .route("/v1/ops/status", get(status))
        .fallback(|| async { error(StatusCode::NOT_FOUND, "not_found", "no such route") })
        .method_not_allowed_fallback(|| async {
            error(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "method not allowed on this route",
            )
        })
        .layer(RequestLayer::without_metrics())
        .with_state(ops)
}

/// 200 only on the active instance once it streams.
async fn ready(State(ops): State<Ops>) -> Response {
    let m = &ops.metrics;
    let role = m.role.get();
    if role == Role::Active
        && m.ready.load(Relaxed)
        && m.redis_up.load(Relaxed)
        && m.postgres_up.load(Relaxed)
    {
        Json(serde_json::json!({"status": "ready", "generation": m.generation.load(Relaxed)}))
            .into_response()
    } else {
        let halted = m.halted().map(|why| format!("streaming halted: {why}"));
        let message = if role == Role::Standby {
            "standby: another projector instance holds the slot; this one takes over when it stops"
        } else {
            halted.as_deref().unwrap_or(
                "the projector has not finished its initial build or lost PostgreSQL or Redis",
            )
        };
        let mut r = error(StatusCode::SERVICE_UNAVAILABLE, "unavailable", message);
        r.headers_mut()
            .insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
        r
    }
}

/// How long `GET /v1/ops/status` waits for PostgreSQL and Redis.
const STATUS_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// `GET /v1/ops/status` (admin token): what `projector status` prints, as
/// JSON. 401 without the token, or when none is configured (the route is off).
async fn status(State(ops): State<Ops>, headers: HeaderMap) -> Response {
    if !ops.config.admin.admits(headers.get(header::AUTHORIZATION)) {
        return error(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "this route needs the admin token (Authorization: Bearer <token>)",
        );
    }
    // Bounded: a server that does not answer is an outage, not a hung request.
    let status = tokio::time::timeout(STATUS_TIMEOUT, crate::ops::status(&ops.config))
        .await
        .unwrap_or_else(|_| Err(anyhow::anyhow!("no answer within {STATUS_TIMEOUT:?}")));
    match status {
        Ok(status) => Json(status).into_response(),
        Err(err) => {
            // Logged once here, with the request's id; never shown.
            tracing::warn!(
                error = format!("{err:#}"),
                "cannot read the projector's status"
            );
            let mut r = error(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "PostgreSQL or Redis cannot be reached to read the status",
            );
            r.headers_mut()
                .insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
            r
        }
    }
}

fn error(status: StatusCode, code: &str, message: &str) -> Response {
    (
        status,
        Json(serde_json::json!({"error": {"code": code, "message": message}})),
    )
        .into_response()
}
