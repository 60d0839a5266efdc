//! How the command API says no: one error type whose response is the SPEC's
//! status, code and JSON body.

use std::collections::BTreeMap;

use axum::extract::rejection::{BytesRejection, JsonRejection, PathRejection};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;
use utoipa::{IntoResponses, ToSchema};

use crate::db_watch::DatabaseTrouble;

/// Problems with individual fields of a request, by field name.
#[derive(Debug, Default, Serialize, ToSchema)]
#[schema(value_type = BTreeMap<String, String>)]
pub(crate) struct FieldErrors(BTreeMap<&'static str, String>);

impl FieldErrors {
    /// Records a problem with `field`; the first problem found for a field wins.
    pub(crate) fn add(&mut self, field: &'static str, problem: impl Into<String>) {
        self.0
            .entry(field)
            .or_insert_with(|| service::bounded(&problem.into()));
    }

    /// `Ok(())` when no problem was recorded, else a 422.
    pub(crate) fn into_result(self) -> Result<(), ApiError> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(ApiError::Validation(self))
        }
    }

    /// Whether no problem was recorded.
    pub(crate) fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Moves the problem recorded under `from` to `to`, for a route whose
    /// field has another name than the one the shared check used.
    pub(crate) fn rename(mut self, from: &'static str, to: &'static str) -> Self {
        if let Some(problem) = self.0.remove(from) {
            self.0.insert(to, problem);
        }
        self
    }

    /// Records a problem if `value` holds a NUL character, which a
    /// PostgreSQL `text` column cannot store: refused here as a 422 rather
    /// than by the database as an error.
    pub(crate) fn storable(&mut self, field: &'static str, value: &str) {
        if value.contains('\0') {
            self.add(field, "must not contain the NUL character");
        }
    }

    /// A 422 naming a single field.
    pub(crate) fn single(field: &'static str, problem: impl Into<String>) -> ApiError {
        let mut errors = FieldErrors::default();
        errors.add(field, problem);
        ApiError::Validation(errors)
    }
}

/// Everything a command handler can answer instead of success.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ApiError {
    /// 400 `bad_request`: the body is not JSON or does not match the schema; a bad path or header.
    #[error("{0}")]
    BadRequest(String),
    /// 401 `unauthorized`: a guarded route without the right admin token.
    #[error("this route needs the admin token as `Authorization: Bearer <token>`")]
    Unauthorized,
    /// 404 `not_found`: the id in the path does not exist, or no such route.
    #[error("{0}")]
    NotFound(String),
    /// 405 `method_not_allowed`: a known route with the wrong method.
    #[error("this route does not accept that method")]
    MethodNotAllowed,
    /// 409 `email_taken`: another user has this email (compared case-insensitively).
    #[error("a user with this email already exists")]
    EmailTaken,
    /// 409 `already_enrolled`: the user is actively enrolled in one of the courses.
    #[error("the user is already enrolled in {}", describe_courses(.0))]
    AlreadyEnrolled(Vec<i64>),
    /// 409 `sold_out`: no seat left in the sale event for one of the courses.
    #[error("no seat is left in the sale event for {}", describe_courses(.0))]
    SoldOut(Vec<i64>),
    /// 409 `idempotency_key_reused`: the key was used by this user for a different request.
    #[error("this idempotency key was already used with a different request")]
    IdempotencyKeyReused,
    /// 413 `payload_too_large`: the body is over the configured limit.
    #[error("the request body is larger than the limit")]
    PayloadTooLarge,
    /// 415 `unsupported_media_type`: a body that is not `application/json`.
    #[error("the request body must be JSON with `Content-Type: application/json`")]
    UnsupportedMediaType,
    /// 422 `validation_failed`: types are right but values are not.
    #[error("some fields are invalid")]
    Validation(FieldErrors),
    /// 428 `idempotency_key_required`: `POST /v1/orders` without `Idempotency-Key`.
    #[error("this request needs an `Idempotency-Key` header")]
    IdempotencyKeyRequired,
    /// 503 `unavailable`: overloaded, timed out, or the database is out of reach.
    #[error("{0}")]
    Unavailable(&'static str),
    /// 503 `feature_disabled`: ops switched this feature off; names the flag.
    #[error("this feature is switched off by ops (flag `{0}`), retry later")]
    FeatureDisabled(&'static str),
    /// A database error nobody expected: 503 when it is transient, else 500. Logged, never shown.
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    /// 500 `internal`: a bug on our side. Logged, never shown.
    #[error("{0}")]
    Internal(String),
}

fn describe_courses(ids: &[i64]) -> String {
    if ids.is_empty() {
        return "one of the courses".to_owned();
    }
    format!("course(s) {}", join_ids(ids))
}

/// `3, 7`: ids as a message lists them.
pub(crate) fn join_ids(ids: &[i64]) -> String {
    ids.iter()
        .map(i64::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

/// The body of every 4xx and 5xx answer.
#[derive(Serialize, ToSchema)]
pub(crate) struct ErrorBody {
    error: ErrorDetail,
}

#[derive(Serialize, ToSchema)]
struct ErrorDetail {
    code: ErrorCode,
    /// A sentence for people; never database text.
    message: String,
    /// Only for `validation_failed`: what is wrong with each field.
    #[serde(skip_serializing_if = "Option::is_none")]
    fields: Option<FieldErrors>,
}

/// What went wrong, for programs: one code per status of the contract.
#[derive(Clone, Copy, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
enum ErrorCode {
    BadRequest,
    Unauthorized,
    NotFound,
    MethodNotAllowed,
    EmailTaken,
    AlreadyEnrolled,
    SoldOut,
    IdempotencyKeyReused,
    PayloadTooLarge,
    UnsupportedMediaType,
    ValidationFailed,
    IdempotencyKeyRequired,
    Unavailable,
    FeatureDisabled,
    Internal,
}

/// The refusals every route with a JSON body can answer, as the API
/// reference lists them (the values are built by [`ApiError`]).
#[derive(IntoResponses)]
#[expect(dead_code, reason = "only described in the API reference")]
pub(crate) enum BodyRefused {
    /// `bad_request`: the body is not JSON, or does not match the schema's types.
    #[response(status = 400)]
    BadRequest(ErrorBody),
    /// `payload_too_large`: the body is over the limit (256 KiB by default).
    #[response(status = 413)]
    PayloadTooLarge(ErrorBody),
    /// `unsupported_media_type`: the body is not `application/json`.
    #[response(status = 415)]
    UnsupportedMediaType(ErrorBody),
}

/// `unauthorized`: an admin token is configured and was not sent.
#[derive(IntoResponses)]
#[response(status = 401)]
#[expect(dead_code, reason = "only described in the API reference")]
pub(crate) struct Unauthorized(ErrorBody);

/// `unavailable`: the database is out of reach, a statement or the request
/// timed out, or the service sheds load; `feature_disabled`: an ops switch
/// turned this feature off (the message names the flag). Retry after
/// `Retry-After` seconds.
#[derive(IntoResponses)]
#[response(
    status = 503,
    headers(("Retry-After" = u32, description = "Seconds to wait before retrying."))
)]
#[expect(dead_code, reason = "only described in the API reference")]
pub(crate) struct Unavailable(ErrorBody);

/// Seconds a client should wait before retrying a 503.
const RETRY_AFTER_SECONDS: HeaderValue = HeaderValue::from_static("1");
/// Seconds before retrying a feature an ops switch turned off.
const SWITCHED_OFF_RETRY_AFTER_SECONDS: HeaderValue = HeaderValue::from_static("5");

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let shed = matches!(&self, ApiError::Database(sqlx::Error::PoolTimedOut));
        let (status, code) = match &self {
            ApiError::BadRequest(_) => (StatusCode::BAD_REQUEST, ErrorCode::BadRequest),
            ApiError::Unauthorized => (StatusCode::UNAUTHORIZED, ErrorCode::Unauthorized),
            ApiError::NotFound(_) => (StatusCode::NOT_FOUND, ErrorCode::NotFound),
            ApiError::MethodNotAllowed => {
                (StatusCode::METHOD_NOT_ALLOWED, ErrorCode::MethodNotAllowed)
            }
            ApiError::EmailTaken => (StatusCode::CONFLICT, ErrorCode::EmailTaken),
            ApiError::AlreadyEnrolled(_) => (StatusCode::CONFLICT, ErrorCode::AlreadyEnrolled),
            ApiError::SoldOut(_) => (StatusCode::CONFLICT, ErrorCode::SoldOut),
            ApiError::IdempotencyKeyReused => {
                (StatusCode::CONFLICT, ErrorCode::IdempotencyKeyReused)
            }
            ApiError::PayloadTooLarge => {
                (StatusCode::PAYLOAD_TOO_LARGE, ErrorCode::PayloadTooLarge)
            }
            ApiError::UnsupportedMediaType => (
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                ErrorCode::UnsupportedMediaType,
            ),
            ApiError::Validation(_) => (
                StatusCode::UNPROCESSABLE_ENTITY,
                ErrorCode::ValidationFailed,
            ),
            ApiError::IdempotencyKeyRequired => (
                StatusCode::PRECONDITION_REQUIRED,
                ErrorCode::IdempotencyKeyRequired,
            ),
            ApiError::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, ErrorCode::Unavailable),
            ApiError::FeatureDisabled(_) => {
                (StatusCode::SERVICE_UNAVAILABLE, ErrorCode::FeatureDisabled)
            }
            ApiError::Database(err) if is_outage(err) => {
                // Per request at debug only: the watcher woken by the
                // response's mark logs the outage once, with its cause.
                tracing::debug!(error = %err, "database unavailable");
                (StatusCode::SERVICE_UNAVAILABLE, ErrorCode::Unavailable)
            }
            ApiError::Database(err) if is_transient(err) => {
                // A timeout or conflict of this request alone, not an outage.
                tracing::warn!(error = %err, "database unavailable");
                (StatusCode::SERVICE_UNAVAILABLE, ErrorCode::Unavailable)
            }
            ApiError::Database(err) => {
                tracing::error!(error = %err, "database error");
                (StatusCode::INTERNAL_SERVER_ERROR, ErrorCode::Internal)
            }
            ApiError::Internal(err) => {
                tracing::error!(error = %err, "internal error");
                (StatusCode::INTERNAL_SERVER_ERROR, ErrorCode::Internal)
            }
        };
        // Database and internal details stay in the log; the client gets a sentence.
        let message = match &self {
            ApiError::Database(_) | ApiError::Internal(_)
                if status == StatusCode::INTERNAL_SERVER_ERROR =>
            {
                "something went wrong on our side".to_owned()
            }
            ApiError::Database(_) => "the database is unavailable, retry shortly".to_owned(),
            // Messages may quote client input: only a short excerpt of it.
            other => service::bounded(&other.to_string()),
        };
        let trouble = matches!(&self, ApiError::Database(err) if is_outage(err));
        let fields = match self {
            ApiError::Validation(fields) => Some(fields),
            _ => None,
        };
        let body = ErrorBody {
            error: ErrorDetail {
                code,
                message,
                fields,
            },
        };
        let mut response = (status, Json(body)).into_response();
        if trouble {
            response.extensions_mut().insert(DatabaseTrouble);
        }
        if status == StatusCode::SERVICE_UNAVAILABLE {
            // A pulled switch stays pulled a while: no point retrying each second.
            let after = match code {
                ErrorCode::FeatureDisabled => SWITCHED_OFF_RETRY_AFTER_SECONDS,
                _ => RETRY_AFTER_SECONDS,
            };
            response.headers_mut().insert(header::RETRY_AFTER, after);
        }
        if status == StatusCode::UNAUTHORIZED {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        if shed {
            response = service::Shedding::mark(response, crate::metrics::DB_POOL);
        }
        response
    }
}

/// Errors that go away by themselves (pool exhausted, server unreachable or
/// shutting down, statement timeout, serialization conflict): 503, so clients
/// retry; nothing a client sends causes them.
fn is_transient(err: &sqlx::Error) -> bool {
    is_outage(err)
        || matches!(err, sqlx::Error::Database(db) if db.code().is_some_and(|code| {
            // 53: insufficient resources; 57: operator intervention (statement
            // timeout, shutdown); 40001/40P01: serialization failure and
            // deadlock; 55P03: lock not available.
            code.starts_with("53")
                || code.starts_with("57")
                || code == "40001"
                || code == "40P01"
                || code == "55P03"
        }))
}

/// Transient errors that say the database is out of reach (rather than
/// busy): no connection, refused logins, a server shutting down. What the
/// watcher checks and logs once; the others are one request's own.
fn is_outage(err: &sqlx::Error) -> bool {
    match err {
        sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        // Bytes that are not the protocol: a connection cut mid-message
        // (seen as "unexpected response from SSLRequest" when it drops
        // while a new connection asks for TLS), not a request's fault.
        | sqlx::Error::Protocol(_)
        | sqlx::Error::WorkerCrashed => true,
        sqlx::Error::Database(db) => db.code().is_some_and(|code| {
            // 08: connection exception; 28 and 3D000: no login or no such
            // database; 57P01 to 57P03: the server is shutting down or starting.
            code.starts_with("08")
                || code.starts_with("28")
                || code == "3D000"
                || code.starts_with("57P0")
        }),
        _ => false,
    }
}

/// Whether `err` is a violation of the constraint or unique index `name`.
pub(crate) fn violates(err: &sqlx::Error, name: &str) -> bool {
    match err {
        sqlx::Error::Database(db) => db.constraint() == Some(name),
        _ => false,
    }
}

impl From<JsonRejection> for ApiError {
    fn from(rejection: JsonRejection) -> Self {
        match rejection.status() {
            StatusCode::PAYLOAD_TOO_LARGE => ApiError::PayloadTooLarge,
            StatusCode::UNSUPPORTED_MEDIA_TYPE => ApiError::UnsupportedMediaType,
            // axum answers type mismatches with 422; the SPEC keeps 422 for
            // values and calls a schema mismatch a 400.
            _ => ApiError::BadRequest(rejection.body_text()),
        }
    }
}

impl From<BytesRejection> for ApiError {
    fn from(rejection: BytesRejection) -> Self {
        match rejection.status() {
            StatusCode::PAYLOAD_TOO_LARGE => ApiError::PayloadTooLarge,
            _ => ApiError::BadRequest(rejection.body_text()),
        }
    }
}

impl From<PathRejection> for ApiError {
    fn from(rejection: PathRejection) -> Self {
        match rejection {
            PathRejection::FailedToDeserializePathParams(err) => {
                ApiError::BadRequest(format!("invalid path: {}", err.body_text()))
            }
            other => ApiError::Internal(other.body_text()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conflicts_name_the_courses_in_their_message() {
        assert_eq!(
            ApiError::AlreadyEnrolled(vec![3, 7]).to_string(),
            "the user is already enrolled in course(s) 3, 7"
        );
        assert_eq!(
            ApiError::SoldOut(Vec::new()).to_string(),
            "no seat is left in the sale event for one of the courses"
        );
    }

    #[test]
    fn pool_timeouts_are_unavailable_not_internal() {
        let response = ApiError::Database(sqlx::Error::PoolTimedOut).into_response();
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(
            response.headers().get(header::RETRY_AFTER),
            Some(&RETRY_AFTER_SECONDS)
        );
        let response = ApiError::Database(sqlx::Error::RowNotFound).into_response();
        assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
        assert!(response.extensions().get::<DatabaseTrouble>().is_none());
    }

    #[test]
    fn only_an_unreachable_database_wakes_the_watcher() {
        let marked = |err: sqlx::Error| {
            ApiError::Database(err)
                .into_response()
                .extensions()
                .get::<DatabaseTrouble>()
                .is_some()
        };
        assert!(marked(sqlx::Error::PoolTimedOut));
        assert!(marked(sqlx::Error::Io(
            std::io::ErrorKind::ConnectionRefused.into()
        )));
        assert!(marked(sqlx::Error::Protocol(
            "unexpected response from SSLRequest: 0x00".into()
        )));
        assert!(!marked(sqlx::Error::RowNotFound));
    }

    #[test]
    fn messages_quote_only_an_excerpt_of_what_the_client_sent() {
        let long = "x".repeat(100_000);
        let response =
            ApiError::BadRequest(format!("invalid type: string \"{long}\"")).into_response();
        let mut fields = FieldErrors::default();
        fields.add("email", format!("`{long}` is not an email"));
        let problem = fields.0.get("email").cloned().unwrap_or_default();
        assert!(problem.chars().count() < 100, "{problem}");
        assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    }
}
