//! `GET /v1/users/{id}/courses`: a user's library, newest enrollment first.

use axum::{extract::State, response::Response};

use super::answer::{answer, list_page};
use crate::{
    error::ApiError,
    freshness::{at_least, token},
    params::{parse_page, PathId, QueryParams, ReadHeaders},
    store::List,
    AppState,
};

/// Cards per page unless `limit` says otherwise.
const DEFAULT_LIMIT: i64 = 50;

/// `GET /v1/users/{id}/courses?limit=&offset=`. A user with no enrollment
/// (or no such user: the read side cannot tell) gets an empty list.
#[utoipa::path(
    get,
    path = "/v1/users/{id}/courses",
    operation_id = "list_user_courses",
    tag = "users",
    params(
        ("id" = i64, Path, minimum = 1, description = "The user id, a positive integer"),
        ("limit" = Option<i64>, Query, minimum = 1, maximum = 100, description = "Cards per page (default 50)"),
        ("offset" = Option<i64>, Query, minimum = 0, description = "Cards to skip (default 0)"),
        super::reference::FreshnessQuery,
        super::reference::FreshnessHeaders
    ),
    responses(
        (status = 200, description = "A page of the user's active courses, newest enrollment first, and their number; empty for a user with none", body = super::reference::Library),
        super::reference::Unparseable,
        (status = 422, description = "`limit` outside 1..=100 or negative `offset` (in `fields`)", body = super::reference::ErrorBody),
        super::reference::ViewUnavailable,
    )
)]
pub(super) async fn library(
    State(state): State<AppState>,
    PathId(user_id): PathId,
    params: QueryParams,
    ReadHeaders(headers): ReadHeaders,
) -> Result<Response, ApiError> {
    let page = parse_page(&params, DEFAULT_LIMIT)?;
    let min = token(&state, &headers, &params)?;
    let store = &state.store;
    let (projection, list) = at_least(&state.store, min, |_| {
        store.list(List::Library(user_id), page)
    })
    .await?;
    let head = format!("{{\"user_id\":{user_id},\"courses\":");
    let body = list_page(head.as_bytes(), &list)?;
    Ok(answer(&projection, &headers, None, body))
}
