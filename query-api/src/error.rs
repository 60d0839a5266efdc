//! The query API's error type: every variant maps to a SPEC status and code,
//! with the JSON body `{"error": {"code", "message", "fields"?}}`.

use std::collections::BTreeMap;

use axum::{
    http::{header, HeaderValue, StatusCode},
    response::{IntoResponse, Response},
    Json,
};

use crate::{
    headers::X_PROJECTION_LSN, metrics::RebuildingAnswer, served::Corrupt, store::StoreError,
};

/// What went wrong with a read.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// 400: unparseable path, query or header.
    #[error("{0}")]
    BadRequest(String),
    /// 422: the parameters parse but their values are out of range; the
    /// problem of each field by name.
    #[error("the request's values are not valid")]
    Validation(BTreeMap<&'static str, String>),
    /// 401: a guarded route without the right admin token (or none configured).
    #[error("this route needs the admin token (Authorization: Bearer <token>)")]
    Unauthorized,
    /// 404: no view for this id, or no such route.
    #[error("{0}")]
    NotFound(String),
    /// 405: wrong method on a known route.
    #[error("method not allowed on this route")]
    MethodNotAllowed,
    /// 503: the projection has not reached the asked LSN in time; it had
    /// reached this one (sent as `X-Projection-Lsn`, so the caller sees how
    /// far behind it is).
    #[error("the projection has not reached the requested LSN yet")]
    NotYetProjected(views::Lsn),
    /// 503: no view generation is live yet.
    #[error("views are being built; try again shortly")]
    Rebuilding,
    /// 503: Redis is unreachable, or the service sheds load.
    #[error("the service is temporarily unavailable")]
    Unavailable,
    /// 503: ops switched this feature off; names the flag.
    #[error("this feature is switched off by ops (flag `{0}`), retry later")]
    FeatureDisabled(&'static str),
}

/// The one place a read's failure becomes an answer; the store has logged
/// Redis errors and corrupt values where it met them.
impl From<StoreError> for ApiError {
    fn from(err: StoreError) -> Self {
        match err {
            StoreError::Unavailable | StoreError::Corrupt(_) => ApiError::Unavailable,
            StoreError::Rebuilding => ApiError::Rebuilding,
            StoreError::NotYetProjected(lsn) => ApiError::NotYetProjected(lsn),
        }
    }
}

impl From<Corrupt> for ApiError {
    fn from(err: Corrupt) -> Self {
        StoreError::from(err).into()
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code) = match &self {
            ApiError::BadRequest(_) => (StatusCode::BAD_REQUEST, "bad_request"),
            ApiError::Validation(_) => (StatusCode::UNPROCESSABLE_ENTITY, "validation_failed"),
            ApiError::Unauthorized => (StatusCode::UNAUTHORIZED, "unauthorized"),
            ApiError::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            ApiError::MethodNotAllowed => (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed"),
            ApiError::NotYetProjected(_) => (StatusCode::SERVICE_UNAVAILABLE, "not_yet_projected"),
            ApiError::Rebuilding => (StatusCode::SERVICE_UNAVAILABLE, "rebuilding"),
            ApiError::Unavailable => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
            ApiError::FeatureDisabled(_) => (StatusCode::SERVICE_UNAVAILABLE, "feature_disabled"),
        };
        let mut error =
            serde_json::json!({"code": code, "message": service::bounded(&self.to_string())});
        if let ApiError::Validation(fields) = &self {
            error["fields"] = serde_json::json!(fields);
        }
        let mut response = (status, Json(serde_json::json!({ "error": error }))).into_response();
        if status == StatusCode::SERVICE_UNAVAILABLE {
            // A pulled switch stays pulled a while: no point retrying each second.
            let after = match &self {
                ApiError::FeatureDisabled(_) => "5",
                _ => "1",
            };
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static(after));
        }
        if matches!(self, ApiError::Rebuilding) {
            response.extensions_mut().insert(RebuildingAnswer);
        }
        if let ApiError::NotYetProjected(lsn) = &self {
            if let Ok(lsn) = HeaderValue::try_from(lsn.to_string()) {
                response.headers_mut().insert(X_PROJECTION_LSN, lsn);
            }
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answered(err: StoreError) -> (StatusCode, Option<HeaderValue>) {
        let response = ApiError::from(err).into_response();
        let lsn = response.headers().get(X_PROJECTION_LSN).cloned();
        (response.status(), lsn)
    }

    #[test]
    fn every_store_error_is_a_503_and_only_a_late_projection_says_its_lsn() {
        let lsn: views::Lsn = "0/16B3748".parse().expect("an lsn");
        let corrupt = Corrupt::new("course card", "test");
        for err in [
            StoreError::Unavailable,
            StoreError::Rebuilding,
            corrupt.into(),
        ] {
            assert_eq!(
                answered(err),
                (StatusCode::SERVICE_UNAVAILABLE, None),
                "{err}"
            );
        }
        assert_eq!(
            answered(StoreError::NotYetProjected(lsn)),
            (
                StatusCode::SERVICE_UNAVAILABLE,
                Some(HeaderValue::from_static("0/16B3748"))
            )
        );
        assert!(matches!(
            ApiError::from(StoreError::Rebuilding),
            ApiError::Rebuilding
        ));
        assert!(matches!(ApiError::from(corrupt), ApiError::Unavailable));
    }
}
