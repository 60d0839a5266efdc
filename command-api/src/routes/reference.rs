//! The command side's API reference (command → projector → query): the
//! OpenAPI document, kept beside the code and served as is.

use axum::http::header::CONTENT_TYPE;
use axum::http::HeaderValue;
use axum::response::{IntoResponse, Response};

/// Hand-written, so it says what the SPEC promises rather than what a
/// generator can infer; a test checks it lists every route.
const OPENAPI: &str = include_str!("../../api/openapi.json");

/// `GET /openapi.json`.
pub(super) async fn openapi() -> Response {
    let mut response = OPENAPI.into_response();
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}
