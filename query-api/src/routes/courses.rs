//! `GET /v1/courses/{id}` (a course page) and `GET /v1/courses?ids=` (cards
//! by id, in one round trip to Redis whatever their number).

use std::io::Write;

use axum::{extract::State, response::Response};

use super::answer::{answer, missing};
use crate::{
    error::ApiError,
    freshness::{at_least, token},
    params::{parse_ids, PathId, QueryParams, ReadHeaders},
    served::{CardList, Course},
    AppState,
};

/// `GET /v1/courses/{id}`: the course detail, `sale` picked by the clock.
#[utoipa::path(
    get,
    path = "/v1/courses/{id}",
    operation_id = "get_course",
    tag = "courses",
    params(
        ("id" = i64, Path, minimum = 1, description = "The course id, a positive integer"),
        super::reference::FreshnessQuery,
        super::reference::FreshnessHeaders,
        ("If-None-Match" = Option<String>, Header, description = "An `ETag` held: 304 while it is current")
    ),
    responses(
        (status = 200, description = "The course page; `sale` picked by the query API's clock", body = super::reference::CourseDetail),
        super::reference::Unparseable,
        (status = 404, description = "No view for this course", body = super::reference::ErrorBody),
        super::reference::ViewUnavailable,
    )
)]
pub(super) async fn detail(
    State(state): State<AppState>,
    PathId(id): PathId,
    params: QueryParams,
    ReadHeaders(headers): ReadHeaders,
) -> Result<Response, ApiError> {
    let min = token(&state, &headers, &params)?;
    let now = chrono::Utc::now();
    let store = &state.store;
    let (projection, course) =
        at_least(&state.store, min, |cached| store.course(id, cached, now)).await?;
    let served = match course {
        None => return Ok(missing(&projection, format!("course {id} has no view"))),
        Some(Course::Served(served)) => served,
        Some(Course::Stored { page, stats }) => state.pages.serve(id, &page, &stats, now)?,
    };
    Ok(answer(&projection, &headers, served.etag, served.body))
}

/// `GET /v1/courses?ids=1,2,3`: the cards of 1 to 500 courses.
#[utoipa::path(
    get,
    path = "/v1/courses",
    operation_id = "get_cards",
    tag = "courses",
    params(
        super::reference::CardIds,
        super::reference::FreshnessQuery,
        super::reference::FreshnessHeaders
    ),
    responses(
        (status = 200, description = "Cards in the order asked (duplicates repeated), and the ids without a card in order of first appearance", body = super::reference::Cards),
        super::reference::Unparseable,
        (status = 422, description = "More than 500 ids, or none (`fields.ids`)", body = super::reference::ErrorBody),
        super::reference::ViewUnavailable,
    )
)]
pub(super) async fn cards(
    State(state): State<AppState>,
    params: QueryParams,
    ReadHeaders(headers): ReadHeaders,
) -> Result<Response, ApiError> {
    let ids = parse_ids(&params)?;
    let min = token(&state, &headers, &params)?;
    let now = chrono::Utc::now();
    let (store, ids) = (&state.store, ids.as_slice());
    let (projection, (list, absent)) = at_least(&state.store, min, |cached| async move {
        let mut list = CardList::new(b"{\"courses\":", ids.len());
        let (projection, absent) = store.cards(ids, cached, now, &mut list).await?;
        Ok((projection, (list, absent)))
    })
    .await?;
    let mut tail = Vec::with_capacity(16 + absent.len() * 8);
    tail.extend_from_slice(b",\"missing\":[");
    for (i, id) in absent.iter().enumerate() {
        let comma = if i == 0 { "" } else { "," };
        let _ = write!(tail, "{comma}{id}");
    }
    tail.extend_from_slice(b"]}");
    Ok(answer(&projection, &headers, None, list.finish(&tail)))
}
