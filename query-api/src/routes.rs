//! The read endpoints (SPEC "Query API") and the ops endpoints.

use std::time::Duration;

use axum::{
    extract::{Path, Query, State},
    http::{header, HeaderMap, HeaderValue, StatusCode},
    response::{IntoResponse, Response},
    Json,
};
use bytes::Bytes;
use serde::Deserialize;
use views::Lsn;

use crate::{error::ApiError, store::Read, AppState};

/// `?min_lsn=`, the query twin of `X-Min-Lsn`.
#[derive(Debug, Deserialize)]
pub struct Freshness {
    min_lsn: Option<String>,
}

/// `GET /v1/courses/{id}`: the course detail view.
pub async fn course(
    State(state): State<AppState>,
    Path(id): Path<String>,
    Query(freshness): Query<Freshness>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let id = parse_id(&id)?;
    wait_for_min_lsn(&state, &headers, freshness.min_lsn.as_deref()).await?;
    let read = state.store.course(id).await?;
    view_response(read, &headers, || format!("course {id} has no view"))
}

/// `GET /health`: the process runs.
pub async fn health() -> Json<serde_json::Value> {
    Json(serde_json::json!({"status": "ok"}))
}

/// `GET /ready`: Redis answers and a view generation is live.
pub async fn ready(State(state): State<AppState>) -> Result<Json<serde_json::Value>, ApiError> {
    if !state.store.ping().await {
        return Err(ApiError::Unavailable);
    }
    let marker = state.store.marker().await?.ok_or(ApiError::Rebuilding)?;
    Ok(Json(
        serde_json::json!({"status": "ready", "generation": marker.generation}),
    ))
}

/// `GET /metrics`: Prometheus text.
pub async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.metrics.render(),
    )
}

/// Ids are positive decimal 64-bit integers.
fn parse_id(raw: &str) -> Result<i64, ApiError> {
    match raw.parse::<i64>() {
        Ok(id) if id > 0 && raw.bytes().all(|b| b.is_ascii_digit()) => Ok(id),
        _ => Err(ApiError::BadRequest(format!(
            "{raw:?} is not a positive integer id"
        ))),
    }
}

/// Read-your-writes: waits until the projection has reached the caller's
/// token (`X-Min-Lsn` or `?min_lsn=`), at most `X-Max-Wait-Ms` (clamped to 5 s).
async fn wait_for_min_lsn(
    state: &AppState,
    headers: &HeaderMap,
    query: Option<&str>,
) -> Result<(), ApiError> {
    let header = headers
        .get("x-min-lsn")
        .map(|v| {
            v.to_str()
                .map_err(|_| ApiError::BadRequest("X-Min-Lsn is not text".into()))
        })
        .transpose()?;
    let Some(raw) = header.or(query) else {
        return Ok(());
    };
    let min: Lsn = raw
        .trim()
        .parse()
        .map_err(|_| ApiError::BadRequest(format!("{raw:?} is not an LSN like 0/16B3748")))?;
    let wait_ms = match headers.get("x-max-wait-ms") {
        None => state.config.default_max_wait_ms,
        Some(v) => v
            .to_str()
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok())
            .ok_or_else(|| ApiError::BadRequest("X-Max-Wait-Ms is not a whole number".into()))?,
    }
    .min(5_000);
    let deadline = tokio::time::Instant::now() + Duration::from_millis(wait_ms);
    loop {
        if state.store.projection_lsn().await? >= min {
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(ApiError::NotYetProjected);
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Builds the response of a view read: headers for freshness, staleness and
/// caching (`ETag` from the view's `lsn`, `304` on `If-None-Match`).
fn view_response(
    read: Read,
    headers: &HeaderMap,
    missing: impl FnOnce() -> String,
) -> Result<Response, ApiError> {
    let Read {
        json,
        projection_lsn,
        stale,
    } = read;
    let json: Bytes = json.ok_or_else(|| ApiError::NotFound(missing()))?;

    #[derive(Deserialize)]
    struct Stamp {
        #[serde(default)]
        id: Option<i64>,
        #[serde(default)]
        lsn: Option<String>,
    }
    let etag = serde_json::from_slice::<Stamp>(&json)
        .ok()
        .and_then(|s| Some(format!("\"{}-{}\"", s.id.unwrap_or(0), s.lsn?)));

    let not_modified = match (&etag, headers.get(header::IF_NONE_MATCH)) {
        (Some(tag), Some(inm)) => inm
            .to_str()
            .map(|v| v.split(',').any(|t| t.trim() == tag || t.trim() == "*"))
            .unwrap_or(false),
        _ => false,
    };
    let mut response = if not_modified {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        ([(header::CONTENT_TYPE, "application/json")], json).into_response()
    };
    let h = response.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&projection_lsn.to_string()) {
        h.insert("x-projection-lsn", v);
    }
    if let Some(tag) = etag.and_then(|t| HeaderValue::from_str(&t).ok()) {
        h.insert(header::ETAG, tag);
    }
    if stale {
        h.insert("x-view-stale", HeaderValue::from_static("true"));
    }
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_must_be_positive_plain_decimals() {
        assert_eq!(parse_id("42").ok(), Some(42));
        for bad in [
            "0",
            "-1",
            "+1",
            "abc",
            "1.0",
            "99999999999999999999",
            "",
            " 1",
        ] {
            assert!(parse_id(bad).is_err(), "{bad:?}");
        }
    }
}
