//! Request extractors of the command side (command → projector → query): they
//! turn bodies, paths and headers into values or into the SPEC's errors, never
//! into axum's plain-text rejections.

use axum::extract::{FromRequest, FromRequestParts, Path, Request};
use axum::http::request::Parts;
use axum::Json;
use serde::de::DeserializeOwned;

use crate::error::ApiError;

/// A JSON body whose rejections answer in the SPEC's error format.
pub(crate) struct AppJson<T>(pub(crate) T);

impl<S, T> FromRequest<S> for AppJson<T>
where
    S: Send + Sync,
    T: DeserializeOwned,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let Json(value) = Json::<T>::from_request(req, state).await?;
        Ok(AppJson(value))
    }
}

/// The one id in a path such as `/v1/courses/{id}`: a positive 64-bit integer.
pub(crate) struct PathId(pub(crate) i64);

impl<S> FromRequestParts<S> for PathId
where
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let Path(id) = Path::<i64>::from_request_parts(parts, state).await?;
        if id <= 0 {
            return Err(ApiError::BadRequest(
                "ids in the path are positive integers".to_owned(),
            ));
        }
        Ok(PathId(id))
    }
}

/// Longest accepted `Idempotency-Key`, in characters.
const IDEMPOTENCY_KEY_MAX_LEN: usize = 128;

/// The `Idempotency-Key` header: 1 to 128 visible ASCII characters.
pub(crate) struct IdempotencyKey(pub(crate) String);

impl<S> FromRequestParts<S> for IdempotencyKey
where
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        let value = parts
            .headers
            .get("idempotency-key")
            .ok_or(ApiError::IdempotencyKeyRequired)?;
        let bytes = value.as_bytes();
        let visible = bytes.iter().all(|byte| (0x21..=0x7e).contains(byte));
        if bytes.is_empty() || bytes.len() > IDEMPOTENCY_KEY_MAX_LEN || !visible {
            return Err(ApiError::BadRequest(format!(
                "`Idempotency-Key` must be 1 to {IDEMPOTENCY_KEY_MAX_LEN} visible ASCII characters"
            )));
        }
        // Visible ASCII is valid UTF-8, so this conversion loses nothing.
        Ok(IdempotencyKey(String::from_utf8_lossy(bytes).into_owned()))
    }
}
