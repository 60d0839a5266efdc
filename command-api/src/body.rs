//! Reading a request's body before the request is admitted: a client that
//! trickles its bytes waits under a short timeout of its own and never holds
//! a concurrency slot, and a `Content-Length` over the limit is refused
//! before one byte of the body is read.

use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{FromRequest, Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::error::ApiError;

/// How much body a request may carry and how long it may take to arrive.
#[derive(Clone, Copy, Debug)]
pub(crate) struct BodyRead {
    pub(crate) limit: u64,
    pub(crate) timeout: Duration,
}

/// Middleware: checks `Content-Length`, then reads the whole body under
/// the body-read timeout and hands the request on with the bytes in memory.
pub(crate) async fn read_first(
    State(read): State<BodyRead>,
    request: Request,
    next: Next,
) -> Response {
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.trim().parse::<u64>().ok());
    if declared.is_some_and(|length| length > read.limit) {
        return ApiError::PayloadTooLarge.into_response();
    }
    let (parts, body) = request.into_parts();
    // `Bytes` honours the `DefaultBodyLimit` set outside, so a chunked body
    // over the limit is refused as it arrives.
    let reading = Bytes::from_request(Request::from_parts(parts.clone(), body), &());
    let bytes = match tokio::time::timeout(read.timeout, reading).await {
        Ok(Ok(bytes)) => bytes,
        Ok(Err(rejection)) => return ApiError::from(rejection).into_response(),
        Err(_) => {
            tracing::info!(
                timeout_ms = u64::try_from(read.timeout.as_millis()).unwrap_or(u64::MAX),
                "request body not received in time"
            );
            return ApiError::BadRequest("the request body did not arrive in time".to_owned())
                .into_response();
        }
    };
    next.run(Request::from_parts(parts, Body::from(bytes)))
        .await
}
