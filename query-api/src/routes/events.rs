//! `GET /v1/events/{id}`: a sale event and the cards of its courses, each
//! priced by this event while it runs.

use axum::{extract::State, response::Response};

use super::answer::{answer, missing};
use crate::{
    error::ApiError,
    freshness::{at_least, token},
    params::{PathId, QueryParams, ReadHeaders},
    served::{self, Event},
    AppState,
};

/// `GET /v1/events/{id}`.
#[utoipa::path(
    get,
    path = "/v1/events/{id}",
    operation_id = "get_event",
    tag = "events",
    params(
        ("id" = i64, Path, minimum = 1, description = "The event id, a positive integer"),
        super::reference::FreshnessQuery,
        super::reference::FreshnessHeaders,
        ("If-None-Match" = Option<String>, Header, description = "An `ETag` held: 304 while it is current")
    ),
    responses(
        (status = 200, description = "The event and its courses' cards; `sale` is this event's while it runs", body = super::reference::EventPage),
        super::reference::Unparseable,
        (status = 404, description = "No view for this event", body = super::reference::ErrorBody),
        super::reference::ViewUnavailable,
    )
)]
pub(super) async fn event(
    State(state): State<AppState>,
    PathId(id): PathId,
    params: QueryParams,
    ReadHeaders(headers): ReadHeaders,
) -> Result<Response, ApiError> {
    let min = token(&state, &headers, &params)?;
    let now = chrono::Utc::now();
    let store = &state.store;
    let (projection, page) =
        at_least(&state.store, min, |cached| store.event(id, cached, now)).await?;
    let served = match page {
        None => return Ok(missing(&projection, format!("event {id} has no view"))),
        Some(Event::Served(served)) => served,
        Some(Event::Stored(page)) => served::event_page(&page, now)?,
    };
    Ok(answer(&projection, &headers, served.etag, served.body))
}
