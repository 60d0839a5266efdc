//! The read endpoints (SPEC "Query API") and the ops endpoints: the end of
//! command → projector → query, where precomputed views become responses.
//!
//! Course views and cards are stored with every candidate sale and served by
//! this process's clock (`views::serve_course`), so a page is right the
//! moment a sale starts or ends without any re-projection.

mod categories;
mod courses;
mod events;
mod ops;
mod orders;
mod reference;
mod users;

use std::time::Duration;

use axum::{
    http::{header, HeaderMap, HeaderValue, StatusCode},
    response::{IntoResponse, Response},
    routing::get,
    Router,
};
use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::value::RawValue;
use views::Lsn;

use crate::{error::ApiError, store::Projection, AppState};

/// Every route of the query API.
pub(crate) fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/courses", get(courses::cards))
        .route("/v1/courses/{id}", get(courses::detail))
        .route(
            "/v1/categories/{category}/courses",
            get(categories::courses),
        )
        .route("/v1/events/{id}", get(events::event))
        .route("/v1/users/{id}/courses", get(users::library))
        .route("/v1/orders/{id}", get(orders::order))
        .route("/v1/ops/prewarm", get(ops::prewarm))
        .route("/health", get(ops::health))
        .route("/ready", get(ops::ready))
        .route("/metrics", get(ops::metrics))
        .route("/openapi.json", get(reference::openapi))
}

/// Read-your-writes: waits until the projection has reached the caller's
/// token (`X-Min-Lsn` or `?min_lsn=`), at most `X-Max-Wait-Ms` (clamped to 5 s).
/// The read that follows goes to Redis, so it sees at least that LSN.
async fn wait_for_min_lsn(
    state: &AppState,
    headers: &HeaderMap,
    query: Option<&str>,
) -> Result<bool, ApiError> {
    let header = headers
        .get("x-min-lsn")
        .map(|v| {
            v.to_str()
                .map_err(|_| ApiError::BadRequest("X-Min-Lsn is not text".into()))
        })
        .transpose()?;
    let Some(raw) = header.or(query) else {
        return Ok(false);
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
            return Ok(true);
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(ApiError::NotYetProjected);
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// The answer to a read: `body` as JSON, or 304 when the caller already
/// holds `etag`; with the headers saying how fresh it is.
fn answer(
    projection: &Projection,
    request: &HeaderMap,
    etag: Option<String>,
    body: impl Into<axum::body::Body>,
) -> Response {
    let etag = etag.and_then(|tag| HeaderValue::from_str(&tag).ok());
    let not_modified = etag
        .as_ref()
        .is_some_and(|tag| if_none_match(request, tag.as_bytes()));
    let mut response = if not_modified {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        (
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            )],
            body.into(),
        )
            .into_response()
    };
    if let Some(tag) = etag {
        response.headers_mut().insert(header::ETAG, tag);
    }
    freshness(projection, response)
}

/// A 404 for a view that is not there, saying at which LSN it was not.
fn missing(projection: &Projection, message: String) -> Response {
    freshness(projection, ApiError::NotFound(message).into_response())
}

/// `X-Projection-Lsn` and, while a replacement generation is built,
/// `X-View-Stale`.
fn freshness(projection: &Projection, mut response: Response) -> Response {
    let headers = response.headers_mut();
    if let Ok(lsn) = HeaderValue::from_str(&projection.lsn.to_string()) {
        headers.insert("x-projection-lsn", lsn);
    }
    if projection.stale {
        headers.insert("x-view-stale", HeaderValue::from_static("true"));
    }
    response
}

/// `If-None-Match` lists `etag` (weak comparison, as RFC 9110 asks) or `*`.
fn if_none_match(request: &HeaderMap, etag: &[u8]) -> bool {
    request
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|t| t.trim())
        .any(|t| t == "*" || t.strip_prefix("W/").unwrap_or(t).as_bytes() == etag)
}

/// What identifies a served course or card: its id, the LSN of the stored
/// view, and the sale picked by the clock. The same three always serve the
/// same bytes, so they make an exact `ETag` (the view's LSN alone would not:
/// a sale starting changes the page without changing the view).
#[derive(Deserialize)]
struct Stamp {
    id: i64,
    lsn: String,
    sale: Option<SaleStamp>,
}

#[derive(Deserialize)]
struct SaleStamp {
    event_id: i64,
}

impl Stamp {
    fn of(served: &[u8]) -> Result<Self, ApiError> {
        serde_json::from_slice(served).map_err(|err| ApiError::corrupt("served course", err))
    }

    /// `id-lsn`, then `-s<event>` while a sale is picked.
    fn tag(&self) -> String {
        match &self.sale {
            Some(sale) => format!("{}-{}-s{}", self.id, self.lsn, sale.event_id),
            None => format!("{}-{}", self.id, self.lsn),
        }
    }
}

/// A stored card served by the clock `now`: `sale` is the pick among its
/// candidates (with `only_event`, that event's sale while it runs).
fn serve_card(
    stored: &[u8],
    now: DateTime<Utc>,
    only_event: Option<i64>,
) -> Result<Box<RawValue>, ApiError> {
    let served = views::serve_course(stored, now, only_event)
        .map_err(|err| ApiError::corrupt("course card", err))?;
    let text = String::from_utf8(served).map_err(|err| ApiError::corrupt("course card", err))?;
    RawValue::from_string(text).map_err(|err| ApiError::corrupt("course card", err))
}

/// Serializes a response body built from served cards.
fn json(body: &impl serde::Serialize) -> Result<Vec<u8>, ApiError> {
    serde_json::to_vec(body).map_err(|err| {
        tracing::error!(error = %err, "could not serialize a response");
        ApiError::Unavailable
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn if_none_match_compares_weakly_and_accepts_a_list_or_a_star() {
        let tag = br#""7-0/16B3748""#;
        let headers = |value: &'static str| {
            let mut h = HeaderMap::new();
            h.insert(header::IF_NONE_MATCH, HeaderValue::from_static(value));
            h
        };
        assert!(if_none_match(&headers(r#""7-0/16B3748""#), tag));
        assert!(if_none_match(&headers(r#""x", W/"7-0/16B3748""#), tag));
        assert!(if_none_match(&headers("*"), tag));
        assert!(!if_none_match(&headers(r#""7-0/16B3749""#), tag));
        assert!(!if_none_match(&HeaderMap::new(), tag));
    }

    #[test]
    fn a_course_tag_changes_with_the_sale_the_clock_picks() {
        let plain = Stamp::of(br#"{"id":7,"title":"t","lsn":"0/1A","sale":null}"#).expect("stamp");
        let on_sale = Stamp::of(
            br#"{"id":7,"description_html":"<p>long</p>","lsn":"0/1A","sale":{"event_id":3,"price_krw":0}}"#,
        )
        .expect("stamp");
        assert_eq!(plain.tag(), "7-0/1A");
        assert_eq!(on_sale.tag(), "7-0/1A-s3");
    }
}
