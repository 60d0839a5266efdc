//! `GET /v1/orders/{id}`: an order as checkout wrote it.

use axum::{extract::State, response::Response};

use super::answer::{answer, missing};
use crate::{
    error::ApiError,
    freshness::{at_least, token},
    params::{PathId, QueryParams, ReadHeaders},
    served, AppState,
};

/// `GET /v1/orders/{id}`: the stored view is served as is.
#[utoipa::path(
    get,
    path = "/v1/orders/{id}",
    operation_id = "get_order",
    tag = "orders",
    params(
        ("id" = i64, Path, minimum = 1, description = "The order id, a positive integer"),
        super::reference::FreshnessQuery,
        super::reference::FreshnessHeaders,
        ("If-None-Match" = Option<String>, Header, description = "An `ETag` held: 304 while it is current")
    ),
    responses(
        (status = 200, description = "The order", body = super::reference::Order),
        super::reference::Unparseable,
        (status = 404, description = "No view for this order", body = super::reference::ErrorBody),
        super::reference::ViewUnavailable,
    )
)]
pub(super) async fn order(
    State(state): State<AppState>,
    PathId(id): PathId,
    params: QueryParams,
    ReadHeaders(headers): ReadHeaders,
) -> Result<Response, ApiError> {
    let min = token(&state, &headers, &params)?;
    let store = &state.store;
    let (projection, stored) = at_least(&state.store, min, |_| store.order(id)).await?;
    let Some(stored) = stored else {
        return Ok(missing(&projection, format!("order {id} has no view")));
    };
    // Stored as served, so a hash of the stored bytes tags the body exactly.
    let etag = served::etag(id, &stored);
    Ok(answer(&projection, &headers, etag, stored))
}
