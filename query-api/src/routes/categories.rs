//! `GET /v1/categories/{category}/courses`: a category's cards, most popular
//! or newest first, a page at a time.

use axum::{extract::State, response::Response};

use super::answer::{answer, list_page};
use crate::{
    error::ApiError,
    freshness::{at_least, token},
    params::{parse_sorted_page, PathText, QueryParams, ReadHeaders},
    store::List,
    switches, AppState,
};

/// Cards per page unless `limit` says otherwise.
const DEFAULT_LIMIT: i64 = 20;

/// `GET /v1/categories/{category}/courses?sort=popular|newest&limit=&offset=`.
/// An unknown category is an empty list, not a 404.
#[utoipa::path(
    get,
    path = "/v1/categories/{category}/courses",
    operation_id = "list_category_courses",
    tag = "categories",
    params(
        ("category" = String, Path, description = "The category name, percent-encoded"),
        ("sort" = Option<super::reference::SortOrder>, Query, description = "`popular` (students descending, then id ascending; the default) or `newest` (created_at descending, then id descending)"),
        ("limit" = Option<i64>, Query, minimum = 1, maximum = 100, description = "Cards per page (default 20)"),
        ("offset" = Option<i64>, Query, minimum = 0, description = "Cards to skip (default 0)"),
        super::reference::FreshnessQuery,
        super::reference::FreshnessHeaders
    ),
    responses(
        (status = 200, description = "A page of the category's cards and the category's size; an unknown category is empty", body = super::reference::CategoryPage),
        super::reference::Unparseable,
        (status = 422, description = "`limit` outside 1..=100, negative `offset` or unknown `sort` (in `fields`)", body = super::reference::ErrorBody),
        (status = 503, description = "`rebuilding` (no view generation is live), `not_yet_projected` (the projection did not reach `X-Min-Lsn` in time), `unavailable`, or `feature_disabled` (ops switched category rankings off: flag `category-rankings`)", body = super::reference::ErrorBody)
    )
)]
pub(super) async fn courses(
    State(state): State<AppState>,
    PathText(category): PathText,
    params: QueryParams,
    ReadHeaders(headers): ReadHeaders,
) -> Result<Response, ApiError> {
    if !switches::on(&state.flags, switches::CATEGORY_RANKINGS) {
        return Err(ApiError::FeatureDisabled(switches::CATEGORY_RANKINGS));
    }
    let (sort, page) = parse_sorted_page(&params, DEFAULT_LIMIT)?;
    let min = token(&state, &headers, &params)?;
    let (store, category) = (&state.store, category.as_str());
    let (projection, list) = at_least(&state.store, min, |_| {
        store.list(List::Category(category, sort), page)
    })
    .await?;
    let body = list_page(b"{\"courses\":", &list)?;
    Ok(answer(&projection, &headers, None, body))
}
