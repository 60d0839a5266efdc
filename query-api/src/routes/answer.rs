//! What a read answers: its body as JSON (or 304 for a current `ETag`),
//! with the headers saying how fresh it is.

use axum::{
    http::{header, HeaderMap, HeaderValue, StatusCode},
    response::{IntoResponse, Response},
};

use crate::{
    error::ApiError,
    headers::{X_PROJECTION_LSN, X_VIEW_GENERATION, X_VIEW_STALE},
    served::{self, CardList, Corrupt},
    store::{ListPage, Projection},
};

/// `body` as JSON, or 304 when the caller already holds `etag`.
pub(super) fn answer(
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
pub(super) fn missing(projection: &Projection, message: String) -> Response {
    freshness(projection, ApiError::NotFound(message).into_response())
}

/// `X-Projection-Lsn`, `X-View-Generation` and, while the generation read
/// is not kept current, `X-View-Stale`.
fn freshness(projection: &Projection, mut response: Response) -> Response {
    let headers = response.headers_mut();
    if let Some(lsn) = projection.watermark.header() {
        headers.insert(X_PROJECTION_LSN, lsn);
    }
    headers.insert(X_VIEW_GENERATION, HeaderValue::from(projection.generation));
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
pub(super) fn list_page(head: &[u8], list: &ListPage) -> Result<Vec<u8>, Corrupt> {
    let now = chrono::Utc::now();
    let mut body = CardList::new(head, list.cards.len());
    for card in &list.cards {
        body.push(&served::card(card, now, None)?);
    }
    let tail = format!(",\"total\":{}}}", list.total);
    Ok(body.finish(tail.as_bytes()))
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
}
