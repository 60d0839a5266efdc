//! The admin token that guards back-office writes: course and event changes.

use axum::extract::FromRequestParts;
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use axum::http::HeaderValue;
use subtle::ConstantTimeEq;

use crate::error::ApiError;
use crate::state::AppState;

/// Proof that the request may make back-office writes: it carried the
/// configured admin token, or none is configured (development mode).
pub(crate) struct Admin;

impl FromRequestParts<AppState> for Admin {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let Some(expected) = state.admin_token.as_deref() else {
            return Ok(Admin);
        };
        if bearer_matches(parts.headers.get(AUTHORIZATION), expected) {
            Ok(Admin)
        } else {
            Err(ApiError::Unauthorized)
        }
    }
}

/// Proof that the request may use the `/v1/ops/*` routes: it carried the
/// configured admin token. Without a configured token those routes are off.
pub(crate) struct Ops;

impl FromRequestParts<AppState> for Ops {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        match state.admin_token.as_deref() {
            Some(expected) if bearer_matches(parts.headers.get(AUTHORIZATION), expected) => Ok(Ops),
            _ => Err(ApiError::Unauthorized),
        }
    }
}

/// Whether an `Authorization` value is `Bearer <expected>`. The token is
/// compared in time that depends on the lengths only (the same `subtle`
/// compare as the query API's ops routes), so it cannot be guessed byte by byte.
fn bearer_matches(authorization: Option<&HeaderValue>, expected: &str) -> bool {
    authorization
        .and_then(|value| value.as_bytes().strip_prefix(b"Bearer "))
        .is_some_and(|token| token.ct_eq(expected.as_bytes()).into())
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;

    use super::bearer_matches;

    fn matches(authorization: &'static str, expected: &str) -> bool {
        bearer_matches(Some(&HeaderValue::from_static(authorization)), expected)
    }

    #[test]
    fn tokens_match_only_when_every_byte_matches() {
        assert!(matches("Bearer s3cret", "s3cret"));
        assert!(!matches("Bearer s3creT", "s3cret"));
        assert!(!matches("Bearer s3cre", "s3cret"));
        assert!(!matches("Bearer s3crets", "s3cret"));
        assert!(!matches("Bearer ", "x"));
    }

    #[test]
    fn a_missing_header_or_another_scheme_never_matches() {
        assert!(!bearer_matches(None, "s3cret"));
        assert!(!matches("s3cret", "s3cret"));
        assert!(!matches("Basic s3cret", "s3cret"));
    }
}
