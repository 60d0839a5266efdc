//! `GET /v1/courses/{id}` (a course page) and `GET /v1/courses?ids=` (cards
//! by id, in one round trip to Redis whatever their number).

use axum::{extract::State, http::HeaderMap, response::Response};
use serde::Serialize;
use serde_json::value::RawValue;

use super::{answer, json, missing, serve_card, wait_for_min_lsn, Stamp};
use crate::{
    error::ApiError,
    params::{parse_ids, PathId, QueryParams},
    AppState,
};

/// `GET /v1/courses/{id}`: the course detail, `sale` picked by the clock.
#[utoipa::path(
    get,
    path = "/v1/courses/{id}",
    operation_id = "get_course",
    tag = "courses",
    params(
        ("id" = i64, Path, description = "The course id, a positive integer"),
        super::reference::FreshnessQuery,
        super::reference::FreshnessHeaders,
        ("If-None-Match" = Option<String>, Header, description = "An `ETag` held: 304 while it is current")
    ),
    responses(
        (status = 200, description = "The course page; `sale` picked by the query API's clock", body = super::reference::CourseDetail, headers(
                ("X-Projection-Lsn" = String, description = "Every change up to this LSN was applied when the data was read"),
                ("X-View-Stale" = String, description = "`true` while a replacement view generation is being built"),
                ("ETag" = String, description = "Changes whenever the response body would"),
            )),
        (status = 304, description = "The `ETag` in `If-None-Match` is current"),
        (status = 400, description = "Unparseable path, query or header", body = super::reference::ErrorBody),
        (status = 404, description = "No view for this course", body = super::reference::ErrorBody),
        (status = 503, description = "`rebuilding` (no view generation is live), `not_yet_projected` (the projection did not reach `X-Min-Lsn` in time) or `unavailable`", body = super::reference::ErrorBody)
    )
)]
pub(super) async fn detail(
    State(state): State<AppState>,
    PathId(id): PathId,
    params: QueryParams,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let waited = wait_for_min_lsn(&state, &headers, params.min_lsn()?).await?;
    let (projection, stored) = state.store.course(id, !waited).await?;
    let Some(stored) = stored else {
        return Ok(missing(&projection, format!("course {id} has no view")));
    };
    let served = views::serve_course(&stored, chrono::Utc::now(), None)
        .map_err(|err| ApiError::corrupt("course view", err))?;
    let etag = format!("\"{}\"", Stamp::of(&served)?.tag());
    Ok(answer(&projection, &headers, Some(etag), served))
}

/// `{"courses":[card...],"missing":[id...]}`.
#[derive(Serialize, utoipa::ToSchema)]
struct Cards {
    /// In the order asked; a duplicated id appears as often as asked.
    #[schema(value_type = Vec<super::reference::CourseCard>)]
    courses: Vec<Box<RawValue>>,
    /// Ids without a card, in order of first appearance.
    missing: Vec<i64>,
}

/// `GET /v1/courses?ids=1,2,3`: the cards of 1 to 500 courses.
#[utoipa::path(
    get,
    path = "/v1/courses",
    operation_id = "get_cards",
    tag = "courses",
    params(
        ("ids" = String, Query, description = "1 to 500 comma-separated positive decimal ids, no spaces; duplicates allowed"),
        super::reference::FreshnessQuery,
        super::reference::FreshnessHeaders
    ),
    responses(
        (status = 200, description = "Cards in the order asked (duplicates repeated), and the ids without a card in order of first appearance", body = Cards, headers(
                ("X-Projection-Lsn" = String, description = "Every change up to this LSN was applied when the data was read"),
                ("X-View-Stale" = String, description = "`true` while a replacement view generation is being built"),
            )),
        (status = 400, description = "Unparseable path, query or header", body = super::reference::ErrorBody),
        (status = 422, description = "More than 500 ids, or none (`fields.ids`)", body = super::reference::ErrorBody),
        (status = 503, description = "`rebuilding` (no view generation is live), `not_yet_projected` (the projection did not reach `X-Min-Lsn` in time) or `unavailable`", body = super::reference::ErrorBody)
    )
)]
pub(super) async fn cards(
    State(state): State<AppState>,
    params: QueryParams,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let ids = parse_ids(&params)?;
    let waited = wait_for_min_lsn(&state, &headers, params.min_lsn()?).await?;
    let (projection, stored) = state.store.cards(&ids, !waited).await?;
    let now = chrono::Utc::now();
    let mut body = Cards {
        courses: Vec::with_capacity(ids.len()),
        missing: Vec::new(),
    };
    for (id, card) in ids.iter().zip(stored) {
        match card {
            Some(card) => body.courses.push(serve_card(&card, now, None)?),
            None if !body.missing.contains(id) => body.missing.push(*id),
            None => {}
        }
    }
    Ok(answer(&projection, &headers, None, json(&body)?))
}
