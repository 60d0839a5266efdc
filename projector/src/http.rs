//! The projector's ops endpoints: `/health`, `/ready`, `/metrics`.

use std::{sync::atomic::Ordering::Relaxed, sync::Arc};

use axum::{
    extract::State,
    http::{header, StatusCode},
    response::{IntoResponse, Response},
    routing::get,
    Json, Router,
};
use service::RequestLayer;

use crate::{metrics::Metrics, standby::Role};

pub fn router(metrics: Arc<Metrics>) -> Router {
    Router::new()
        .route("/health", get(service::health))
        .route("/ready", get(ready))
        .route(
            "/metrics",
            get(|State(m): State<Arc<Metrics>>| async move { m.exposition() }),
        )
        .fallback(|| async { error(StatusCode::NOT_FOUND, "not_found", "no such route") })
        .method_not_allowed_fallback(|| async {
            error(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "method not allowed on this route",
            )
        })
        .layer(RequestLayer::without_metrics())
        .with_state(metrics)
}

/// 200 only on the active instance once it streams.
async fn ready(State(m): State<Arc<Metrics>>) -> Response {
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

fn error(status: StatusCode, code: &str, message: &str) -> Response {
    (
        status,
        Json(serde_json::json!({"error": {"code": code, "message": message}})),
    )
        .into_response()
}
