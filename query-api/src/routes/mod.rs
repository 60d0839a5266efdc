//! The read endpoints (SPEC "Query API") and the ops endpoints: the end of
//! command → projector → query, where precomputed views become responses.
//!
//! Course views and cards are stored with every candidate sale and served by
//! this process's clock (`crate::served`), so a page is right the moment a
//! sale starts or ends without any re-projection.

mod categories;
mod courses;
mod events;
mod ops;
mod orders;
mod reference;
mod users;

use std::time::Duration;

use axum::{
    extract::FromRequestParts,
    http::{header, request::Parts, HeaderMap, HeaderName, HeaderValue, StatusCode},
    response::{IntoResponse, Response},
    routing::get,
    Router,
};
use views::Lsn;

use crate::{error::ApiError, store::Projection, AppState};

/// Every route's path, the busiest first: the metrics' table of routes.
pub(crate) const PATHS: [&str; 11] = [
    "/v1/courses/{id}",
    "/v1/courses",
    "/v1/events/{id}",
    "/v1/categories/{category}/courses",
    "/v1/users/{id}/courses",
    "/v1/orders/{id}",
    "/v1/ops/prewarm",
    "/health",
    "/ready",
    "/metrics",
    "/openapi.json",
];

/// Every route of the query API.
pub(crate) fn router() -> Router<AppState> {
    let [course, cards, event, category, library, order, prewarm, health, ready, metrics, openapi] =
        PATHS;
    Router::new()
        .route(course, get(courses::detail))
        .route(cards, get(courses::cards))
        .route(event, get(events::event))
        .route(category, get(categories::courses))
        .route(library, get(users::library))
        .route(order, get(orders::order))
        .route(prewarm, get(ops::prewarm))
        .route(health, get(ops::health))
        .route(ready, get(ops::ready))
        .route(metrics, get(ops::metrics))
        .route(openapi, get(reference::openapi))
}

// Header names made at compile time: a name given as a string is parsed and
// checked on every use, a measurable cost per read.
const X_MIN_LSN: HeaderName = HeaderName::from_static("x-min-lsn");
const X_MAX_WAIT_MS: HeaderName = HeaderName::from_static("x-max-wait-ms");
pub(crate) const X_PROJECTION_LSN: HeaderName = HeaderName::from_static("x-projection-lsn");
const X_VIEW_STALE: HeaderName = HeaderName::from_static("x-view-stale");

/// The request headers a read looks at (`X-Min-Lsn`, `X-Max-Wait-Ms`,
/// `If-None-Match`), taken alone: copying the whole map, as the `HeaderMap`
/// extractor does, was a cost of every read.
pub(crate) struct ReadHeaders(pub HeaderMap);

impl<S: Send + Sync> FromRequestParts<S> for ReadHeaders {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        // An empty map does not allocate; most reads send none of these.
        let mut taken = HeaderMap::new();
        for name in [X_MIN_LSN, X_MAX_WAIT_MS, header::IF_NONE_MATCH] {
            for value in parts.headers.get_all(&name) {
                taken.append(name.clone(), value.clone());
            }
        }
        Ok(ReadHeaders(taken))
    }
}

/// A caller's read-your-writes token (`X-Min-Lsn` or `?min_lsn=`) and how
/// long it may wait for it (`X-Max-Wait-Ms`, clamped to 5 s).
#[derive(Debug, Clone, Copy)]
struct MinLsn {
    lsn: Lsn,
    deadline: tokio::time::Instant,
}

/// The caller's token, if it sent one.
fn min_lsn(
    state: &AppState,
    headers: &HeaderMap,
    query: Option<&str>,
) -> Result<Option<MinLsn>, ApiError> {
    let header = headers
        .get(X_MIN_LSN)
        .map(|v| {
            v.to_str()
                .map_err(|_| ApiError::BadRequest("X-Min-Lsn is not text".into()))
        })
        .transpose()?;
    let Some(raw) = header.or(query) else {
        return Ok(None);
    };
    let lsn: Lsn = raw
        .trim()
        .parse()
        .map_err(|_| ApiError::BadRequest(format!("{raw:?} is not an LSN like 0/16B3748")))?;
    let wait_ms =
        match headers.get(X_MAX_WAIT_MS) {
            None => state.config.default_max_wait_ms,
            Some(v) => v.to_str().ok().and_then(max_wait_ms).ok_or_else(|| {
                ApiError::BadRequest("X-Max-Wait-Ms is not a whole number".into())
            })?,
        }
        .min(5_000);
    Ok(Some(MinLsn {
        lsn,
        deadline: tokio::time::Instant::now() + Duration::from_millis(wait_ms),
    }))
}

/// `X-Max-Wait-Ms` as milliseconds: a whole number, however many digits
/// (it is clamped to 5 s after, so one past `u64` is as good as 5 s).
fn max_wait_ms(raw: &str) -> Option<u64> {
    let digits = raw.trim();
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some(digits.parse().unwrap_or(u64::MAX))
}

/// Read-your-writes: `read(cached)` answers at once without a token; with
/// one, it reads Redis itself (`cached` false: no in-process copy, which
/// may lag its invalidations) and its answer is taken once the watermark
/// it read with the views is at or past the token. A token already reached
/// (the common case) costs that one round trip. A token past the last
/// watermark this process saw (a write just made) is waited for by polling
/// the watermark alone, then read; 503 `not_yet_projected` when the wait
/// is over.
async fn at_least<T, F, Fut>(
    state: &AppState,
    min: Option<MinLsn>,
    mut read: F,
) -> Result<(Projection, T), ApiError>
where
    F: FnMut(bool) -> Fut,
    Fut: std::future::Future<Output = Result<(Projection, T), ApiError>>,
{
    let Some(min) = min else {
        return read(true).await;
    };
    let mut poll = state
        .store
        .last_seen_lsn()
        .is_some_and(|seen| seen < min.lsn);
    loop {
        while poll {
            // Boxed: a rare wait, kept out of every read's future.
            let projected = Box::pin(state.store.projection_lsn()).await?;
            if projected >= min.lsn {
                poll = false;
            } else if tokio::time::Instant::now() >= min.deadline {
                return Err(ApiError::NotYetProjected(projected));
            } else {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
        let (projection, value) = read(false).await?;
        if projection.lsn >= min.lsn {
            return Ok((projection, value));
        }
        if tokio::time::Instant::now() >= min.deadline {
            return Err(ApiError::NotYetProjected(projection.lsn));
        }
        poll = true;
    }
}

/// The answer to a read: `body` as JSON, or 304 when the caller already
/// holds `etag`; with the headers saying how fresh it is.
fn answer(
    projection: &Projection,
    request: &HeaderMap,
    etag: Option<HeaderValue>,
    body: impl Into<axum::body::Body>,
) -> Response {
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
    let lsn = match &projection.lsn_header {
        Some(lsn) => Some(lsn.clone()),
        None => HeaderValue::try_from(projection.lsn.to_string()).ok(),
    };
    if let Some(lsn) = lsn {
        headers.insert(X_PROJECTION_LSN, lsn);
    }
    if projection.stale {
        headers.insert(X_VIEW_STALE, HeaderValue::from_static("true"));
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

/// A page of a list as served: `head`, the cards served by the clock now,
/// then `,"total":N}`.
fn list_page(head: &[u8], list: &crate::store::ListPage) -> Result<Vec<u8>, ApiError> {
    let now = chrono::Utc::now();
    let mut body = crate::served::CardList::new(head, list.cards.len());
    for card in &list.cards {
        body.push(&crate::served::card(card, now, None)?);
    }
    let tail = format!(",\"total\":{}}}", list.total);
    Ok(body.finish(tail.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn max_wait_is_any_whole_number_and_nothing_else() {
        assert_eq!(max_wait_ms("250"), Some(250));
        assert_eq!(max_wait_ms(" 0 "), Some(0));
        assert_eq!(max_wait_ms("99999999999999999999"), Some(u64::MAX));
        for bad in ["", " ", "-1", "+5", "1.5", "1e3", "abc", "5 0"] {
            assert_eq!(max_wait_ms(bad), None, "{bad:?}");
        }
    }

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
}
