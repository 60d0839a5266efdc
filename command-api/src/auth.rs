//! The admin token that guards back-office writes: course and event changes.

use axum::extract::FromRequestParts;
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;

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
        if service::bearer_matches(parts.headers.get(AUTHORIZATION), expected) {
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
            Some(expected)
                if service::bearer_matches(parts.headers.get(AUTHORIZATION), expected) =>
            {
                Ok(Ops)
            }
            _ => Err(ApiError::Unauthorized),
        }
    }
}
