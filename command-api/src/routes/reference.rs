//! The API reference: an OpenAPI document generated from the handlers'
//! annotations and types, so it cannot drift from the code.

use axum::extract::State;
use axum::http::header::CONTENT_TYPE;
use axum::http::HeaderValue;
use axum::response::{IntoResponse, Response};
use utoipa::openapi::schema::{
    ArrayBuilder, KnownFormat, Object, ObjectBuilder, SchemaFormat, SchemaType, Type,
};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{Array, OpenApi as Document};
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

/// The characters `str::trim` removes (Unicode `White_Space`), as the body
/// of a regular-expression class: what "blank" means in the patterns below.
const WHITESPACE: &str = r"\t-\r \x85\xA0\u1680\u2000-\u200A\u2028\u2029\u202F\u205F\u3000";

/// A string of at most `max_chars` characters as sent, with no NUL (which
/// PostgreSQL `text` cannot store).
pub(super) fn text(max_chars: Option<usize>, description: &str) -> ObjectBuilder {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .max_length(max_chars)
        .pattern(Some(r"^[^\x00]*$"))
        .description(Some(description))
}

/// A string stored trimmed that must not be blank: 1 to `max_chars`
/// characters as sent, one of them not whitespace, no NUL.
pub(super) fn required_text(max_chars: usize, description: &str) -> Object {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .min_length(Some(1))
        .max_length(Some(max_chars))
        .pattern(Some(format!(r"^[^\x00]*[^\x00{WHITESPACE}][^\x00]*$")))
        .description(Some(description))
        .build()
}

/// An email address as the users route checks it: a local part and a
/// domain around one `@`, neither with whitespace or control characters,
/// whitespace around it allowed (it is trimmed), at most `max_chars` in all.
pub(super) fn email(max_chars: usize, description: &str) -> Object {
    let part = format!(r"[^@{WHITESPACE}\x00-\x1F\x7F-\x9F]+");
    ObjectBuilder::new()
        .schema_type(Type::String)
        .max_length(Some(max_chars))
        .pattern(Some(format!(
            "^[{WHITESPACE}]*{part}@{part}[{WHITESPACE}]*$"
        )))
        .description(Some(description))
        .build()
}

/// A row id: a positive 64-bit integer; `nullable` for an optional one.
pub(super) fn id(nullable: bool, description: &str) -> Object {
    let kind: SchemaType = if nullable {
        [Type::Integer, Type::Null].into_iter().collect()
    } else {
        Type::Integer.into()
    };
    ObjectBuilder::new()
        .schema_type(kind)
        .format(Some(SchemaFormat::KnownFormat(KnownFormat::Int64)))
        .minimum(Some(1))
        .description(Some(description))
        .build()
}

/// 1 to `max_items` distinct ids.
pub(super) fn distinct_ids(max_items: usize, description: &str) -> Array {
    ArrayBuilder::new()
        .items(id(false, "A positive 64-bit id."))
        .min_items(Some(1))
        .max_items(Some(max_items))
        .unique_items(true)
        .description(Some(description))
        .build()
}
