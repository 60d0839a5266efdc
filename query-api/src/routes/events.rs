//! `GET /v1/events/{id}`: a sale event and the cards of its courses, each
//! priced by this event while it runs.

use std::fmt::Write;

use axum::{extract::State, http::HeaderMap, response::Response};
use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::value::RawValue;

use super::{answer, json, missing, serve_card, wait_for_min_lsn, Stamp};
use crate::{
    error::ApiError,
    params::{PathId, QueryParams},
    AppState,
};

/// `{"id","name","starts_at","ends_at","discount_percent","courses":[card...]}`.
#[derive(Serialize, utoipa::ToSchema)]
struct EventPage<'a> {
    id: i64,
    name: &'a str,
    starts_at: DateTime<Utc>,
    ends_at: DateTime<Utc>,
    discount_percent: i32,
    /// In the event's order; `sale` is this event's while it runs, else null.
    #[schema(value_type = Vec<super::reference::CourseCard>)]
    courses: Vec<Box<RawValue>>,
}

/// `GET /v1/events/{id}`.
#[utoipa::path(
    get,
    path = "/v1/events/{id}",
    operation_id = "get_event",
    tag = "events",
    params(
        ("id" = i64, Path, description = "The event id, a positive integer"),
        super::reference::FreshnessQuery,
        super::reference::FreshnessHeaders,
        ("If-None-Match" = Option<String>, Header, description = "An `ETag` held: 304 while it is current")
    ),
    responses(
        (status = 200, description = "The event and its courses' cards; `sale` is this event's while it runs", body = EventPage, headers(
                ("X-Projection-Lsn" = String, description = "Every change up to this LSN was applied when the data was read"),
                ("X-View-Stale" = String, description = "`true` while a replacement view generation is being built"),
                ("ETag" = String, description = "Changes whenever the response body would"),
            )),
        (status = 304, description = "The `ETag` in `If-None-Match` is current"),
        (status = 400, description = "Unparseable path, query or header", body = super::reference::ErrorBody),
        (status = 404, description = "No view for this event", body = super::reference::ErrorBody),
        (status = 503, description = "`rebuilding` (no view generation is live), `not_yet_projected` (the projection did not reach `X-Min-Lsn` in time) or `unavailable`", body = super::reference::ErrorBody)
    )
)]
pub(super) async fn event(
    State(state): State<AppState>,
    PathId(id): PathId,
    params: QueryParams,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let waited = wait_for_min_lsn(&state, &headers, params.min_lsn()?).await?;
    let (projection, page) = state.store.event(id, !waited).await?;
    let Some(page) = page else {
        return Ok(missing(&projection, format!("event {id} has no view")));
    };
    let now = Utc::now();
    let event = &page.event;
    // The page is a function of the event view and, per card, its stored
    // view and whether this event's sale is on it now: their stamps make
    // the ETag.
    let mut stamps = event.lsn.clone();
    let mut courses = Vec::with_capacity(page.cards.len());
    for card in &page.cards {
        let served = serve_card(card, now, Some(id))?;
        let _ = write!(stamps, "|{}", Stamp::of(served.get().as_bytes())?.tag());
        courses.push(served);
    }
    let etag = format!("\"e{id}-{:016x}\"", fnv1a(stamps.as_bytes()));
    let body = EventPage {
        id: event.id,
        name: &event.name,
        starts_at: event.starts_at,
        ends_at: event.ends_at,
        discount_percent: event.discount_percent,
        courses,
    };
    Ok(answer(&projection, &headers, Some(etag), json(&body)?))
}

/// 64-bit FNV-1a: stable across builds and processes, so every instance
/// behind a cache hands out the same tag for the same page.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, b| {
        (hash ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv1a_matches_its_published_test_vectors() {
        assert_eq!(fnv1a(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a(b"foobar"), 0x8594_4171_f739_67e8);
    }
}
