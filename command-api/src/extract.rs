//! Request extractors: bodies, paths and headers become values or the SPEC's
//! errors, never axum's plain-text rejections.

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Path, Request};
use axum::http::{header, request::Parts, HeaderMap};
use axum::Json;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::error::ApiError;

/// A JSON object body whose rejections answer in the SPEC's error format.
pub(crate) struct AppJson<T>(pub(crate) T);

impl<S, T> FromRequest<S> for AppJson<T>
where
    S: Send + Sync,
    T: DeserializeOwned,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        if !is_json(req.headers()) {
            return Err(ApiError::UnsupportedMediaType);
        }
        let body = Bytes::from_request(req, state).await?;
        // serde fills a struct from a JSON array too, field by position; every
        // body of the SPEC is an object, and `["a@b.c","A"]` is not one.
        if body.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
            return Err(ApiError::BadRequest(
                "the body must be a JSON object".to_owned(),
            ));
        }
        // Every body, typed or kept as JSON (the order's, for idempotency),
        // passes the same check, so a repeated key is a 400 on every route.
        if let Err(problem) = crate::unique_keys::check(&body) {
            if crate::unique_keys::is_repeat(&problem) {
                return Err(ApiError::BadRequest(problem));
            }
        }
        let Json(mut value) = Json::<Value>::from_bytes(&body)?;
        whole_numbers_as_integers(&mut value);
        serde_path_to_error::deserialize(value)
            .map(AppJson)
            .map_err(|err| {
                ApiError::BadRequest(format!(
                    "Failed to deserialize the JSON body into the target type: {err}"
                ))
            })
    }
}

/// Largest magnitude up to which every whole number has an exact `f64`.
const EXACT_IN_F64: f64 = 9_007_199_254_740_992.0;

/// Rewrites every number written with a zero fraction (`47.0`, `4.7e1`) as
/// the integer it is: JSON Schema's `integer`, which the API reference
/// states, admits them, so an integer field takes them too. Beyond 2^53 a
/// float no longer spells one integer, so such numbers stay floats (400).
fn whole_numbers_as_integers(value: &mut Value) {
    match value {
        Value::Number(number) if number.is_f64() => {
            if let Some(float) = number.as_f64() {
                if float.fract() == 0.0 && float.abs() <= EXACT_IN_F64 {
                    // Exact: a whole number within 2^53 converts without loss.
                    *value = Value::from(float as i64);
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(whole_numbers_as_integers),
        Value::Object(fields) => fields.values_mut().for_each(whole_numbers_as_integers),
        _ => {}
    }
}

/// `Content-Type` is `application/json` or `application/<name>+json`, with
/// any parameters. Written here rather than left to axum's check: the `mime`
/// parser behind it refuses the optional space before `;` that HTTP allows
/// (`application/json ; charset=utf-8`).
fn is_json(headers: &HeaderMap) -> bool {
    let Some(value) = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let essence = value.split(';').next().unwrap_or_default().trim();
    let Some((kind, subtype)) = essence.split_once('/') else {
        return false;
    };
    let subtype = subtype.to_ascii_lowercase();
    kind.eq_ignore_ascii_case("application")
        && (subtype == "json" || (subtype.len() > 5 && subtype.ends_with("+json")))
}

/// The one id in a path such as `/v1/courses/{id}`: a positive 64-bit
/// integer in decimal digits (no sign), as the query API reads ids.
pub(crate) struct PathId(pub(crate) i64);

impl<S> FromRequestParts<S> for PathId
where
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let Path(raw) = Path::<String>::from_request_parts(parts, state).await?;
        match raw.parse::<i64>() {
            Ok(id) if id > 0 && raw.bytes().all(|b| b.is_ascii_digit()) => Ok(PathId(id)),
            _ => Err(ApiError::BadRequest(
                "ids in the path are positive integers".to_owned(),
            )),
        }
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
        let mut sent = parts.headers.get_all("idempotency-key").iter();
        let value = sent.next().ok_or(ApiError::IdempotencyKeyRequired)?;
        // Two keys would make the request's identity a guess.
        if sent.next().is_some() {
            return Err(ApiError::BadRequest(
                "send one `Idempotency-Key` header, not several".to_owned(),
            ));
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn whole_floats_are_integers_and_other_numbers_stay_as_sent() {
        let mut value = serde_json::json!({
            "a": 47.0, "b": [1.0, -2.0, 2.5], "c": {"d": 9007199254740992.0},
            "e": 1e300, "f": 7, "g": "8.0"
        });
        whole_numbers_as_integers(&mut value);
        assert_eq!(
            value,
            serde_json::json!({
                "a": 47, "b": [1, -2, 2.5], "c": {"d": 9_007_199_254_740_992_i64},
                "e": 1e300, "f": 7, "g": "8.0"
            })
        );
    }

    #[test]
    fn whole_numbers_parsed_from_text_are_the_integers_they_spell() {
        // Each of these landed one step off an integer under serde_json's
        // default float parsing; every whole number up to 2^53 must not.
        let text =
            r#"{"user_id": 8554.0, "course_ids": [4344110466410422.0, 4.7e1, 9007199254740991.0]}"#;
        let mut value: Value = serde_json::from_str(text).expect("json");
        whole_numbers_as_integers(&mut value);
        assert_eq!(
            value,
            serde_json::json!({"user_id": 8554, "course_ids": [4_344_110_466_410_422_i64, 47, 9_007_199_254_740_991_i64]})
        );
        // A spread of whole numbers below 2^53, as a generator spells them.
        let mut n: i64 = 1;
        while n < 9_007_199_254_740_992 {
            for spelled in [format!("{n}.0"), format!("{n}.000"), format!("-{n}.0")] {
                let mut value: Value = serde_json::from_str(&spelled).expect("json");
                whole_numbers_as_integers(&mut value);
                let expected = if spelled.starts_with('-') { -n } else { n };
                assert_eq!(value, Value::from(expected), "{spelled}");
            }
            n += n / 7 + 1;
        }
    }

    #[test]
    fn json_is_application_json_or_a_json_suffix_with_any_parameters() {
        let with = |value: &'static str| {
            let mut headers = HeaderMap::new();
            headers.insert(header::CONTENT_TYPE, value.parse().expect("header"));
            is_json(&headers)
        };
        for yes in [
            "application/json",
            "Application/JSON",
            "application/json; charset=utf-8",
            "application/json ; charset=UTF-8",
            "application/problem+json",
        ] {
            assert!(with(yes), "{yes}");
        }
        for no in [
            "text/plain",
            "application/jsonx",
            "application/+json",
            "json",
            "application/xml; x=application/json",
        ] {
            assert!(!with(no), "{no}");
        }
        assert!(!is_json(&HeaderMap::new()));
    }
}
