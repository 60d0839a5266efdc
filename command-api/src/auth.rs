//! The admin token that guards back-office writes on the command side
//! (command → projector → query): course and event changes.

use std::hint::black_box;

use axum::extract::FromRequestParts;
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;

use crate::error::ApiError;
use crate::routes::AppState;

/// Proof that the request may make back-office writes: it carried the
/// configured admin token, or none is configured (development mode).
pub(crate) struct Admin;

impl FromRequestParts<AppState> for Admin {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let Some(expected) = state.admin_token.as_deref() else {
            return Ok(Admin);
        };
        let presented = parts
            .headers
            .get(AUTHORIZATION)
            .and_then(|value| value.as_bytes().strip_prefix(b"Bearer "));
        match presented {
            Some(token) if constant_time_eq(token, expected.as_bytes()) => Ok(Admin),
            _ => Err(ApiError::Unauthorized),
        }
    }
}

/// Compares in time that depends on the lengths only, never on where the
/// first differing byte is, so the token cannot be guessed byte by byte.
fn constant_time_eq(left: &[u8], right: &[u8]) -> bool {
    if left.len() != right.len() {
        return false;
    }
    let difference = left
        .iter()
        .zip(right)
        .fold(0u8, |acc, (a, b)| acc | black_box(a ^ b));
    black_box(difference) == 0
}

#[cfg(test)]
mod tests {
    use super::constant_time_eq;

    #[test]
    fn tokens_match_only_when_every_byte_matches() {
        assert!(constant_time_eq(b"s3cret", b"s3cret"));
        assert!(!constant_time_eq(b"s3cret", b"s3creT"));
        assert!(!constant_time_eq(b"s3cret", b"s3cre"));
        assert!(!constant_time_eq(b"", b"x"));
    }
}
