//! The API reference: an OpenAPI document generated from the handlers'
//! annotations and types, so it cannot drift from the code.

use axum::extract::State;
use axum::http::header::CONTENT_TYPE;
use axum::http::HeaderValue;
use axum::response::{IntoResponse, Response};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::OpenApi as Document;
use utoipa::{Modify, OpenApi};

use crate::error::ErrorBody;
use crate::state::AppState;

/// What the document says about the whole API; the paths are added by the
/// router as it registers each route.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "command-api",
        description = "The write side of the course store. Every write commits to PostgreSQL \
            in one transaction; the projector turns the commits into the views the query API \
            serves. Every successful write answers `X-Commit-Lsn`, the read-your-writes token \
            for the query API's `X-Min-Lsn`. Every response carries `X-Request-Id` (the \
            caller's, or a new one). Every 4xx and 5xx has the body \
            `{\"error\": {\"code\", \"message\", \"fields\"?}}`, unknown routes (404 \
            `not_found`) and wrong methods (405 `method_not_allowed`) included; a 503 always \
            has `Retry-After`."
    ),
    components(schemas(ErrorBody)),
    modifiers(&AdminToken),
    tags(
        (name = "users", description = "Buyers."),
        (name = "courses", description = "The catalogue (back office)."),
        (name = "events", description = "Sale events and their seats (back office)."),
        (name = "orders", description = "Checkout and cancellation."),
        (name = "enrollments", description = "Enrolling without checkout where the price is 0."),
        (name = "ops", description = "Probes, metrics and this document."),
    )
)]
pub(super) struct ApiDoc;

/// Declares the admin bearer token that guards back-office writes.
struct AdminToken;

impl Modify for AdminToken {
    fn modify(&self, openapi: &mut Document) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "admin_token",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some("`ADMIN_TOKEN`; required only when one is configured."))
                    .build(),
            ),
        );
    }
}

/// The API reference: this document.
#[utoipa::path(
    get,
    path = "/openapi.json",
    tag = "ops",
    responses(
        (status = 200, description = "The OpenAPI document of this API.", body = serde_json::Value)
    )
)]
pub(super) async fn openapi(State(state): State<AppState>) -> Response {
    let mut response = state.openapi.into_response();
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}
