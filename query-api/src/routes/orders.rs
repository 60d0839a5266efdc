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
        (status = 200, description = "The order", body = super::reference::Order, headers(
                ("X-Projection-Lsn" = String, description = "Every change up to this LSN was applied when the data was read"),
                ("X-View-Stale" = String, description = "`true` while a replacement view generation is being built, or while a newer view schema's generation is live (a rolling upgrade): the generation read is no longer kept current; also a pre-warmed copy served while Redis is unreachable (flag `stale-views-on-redis-outage`)"),
                ("X-Min-Lsn-Ignored" = String, description = "`true` when ops switched read-your-writes waits off (flag `read-your-writes-wait`): the token was ignored and the answer is what was there"),
                ("X-View-Generation" = String, description = "The view generation read: always one of the view schema this query API serves"),
                ("ETag" = String, description = "Changes whenever the response body would"),
            )),
        (status = 304, description = "The `ETag` in `If-None-Match` is current"),
        (status = 400, description = "Unparseable path, query or header", body = super::reference::ErrorBody),
        (status = 404, description = "No view for this order", body = super::reference::ErrorBody),
        (status = 503, description = "`rebuilding` (no view generation is live), `not_yet_projected` (the projection did not reach `X-Min-Lsn` in time) or `unavailable`", body = super::reference::ErrorBody, headers(
                ("Retry-After" = u32, description = "Seconds to wait before retrying"),
            ))
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
