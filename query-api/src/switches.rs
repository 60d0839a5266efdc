//! The query API's ops flags: storefront kill switches for a storm (waits
//! for read-your-writes tokens, category rankings) and the stale fallback
//! of warm pages while Redis is unreachable. The README lists them.

use axum::{
    extract::{Request, State},
    http::{HeaderName, HeaderValue, Uri},
    middleware::Next,
    response::Response,
};
use service::{EvaluationContext, FlagDefault, FlagSpec, Flags};
use views::Lsn;

use crate::headers::X_MIN_LSN;

/// Kill switch: waiting for `X-Min-Lsn` / `min_lsn` tokens.
pub(crate) const READ_YOUR_WRITES: &str = "read-your-writes-wait";
/// Serve a warm event's pages, marked stale, while Redis is unreachable.
pub(crate) const STALE_ON_OUTAGE: &str = "stale-views-on-redis-outage";
/// Kill switch: `GET /v1/categories/{category}/courses`.
pub(crate) const CATEGORY_RANKINGS: &str = "category-rankings";
/// The command API's switches that stop an event's sale, read from the same
/// flag file for the readiness check.
pub(crate) const CHECKOUT_ORDERS: &str = "checkout-orders";
pub(crate) const EVENT_PURCHASES: &str = "checkout-event-purchases";

/// Marks a read whose token was ignored because its wait is switched off.
pub(crate) const X_MIN_LSN_IGNORED: HeaderName = HeaderName::from_static("x-min-lsn-ignored");

/// Every flag the query API reads, with its default.
pub(crate) static SPECS: &[FlagSpec] = &[
    FlagSpec {
        key: READ_YOUR_WRITES,
        default: FlagDefault::Bool(true),
        about: "Waits for X-Min-Lsn; off answers at once from what is there, with X-Min-Lsn-Ignored: true.",
    },
    FlagSpec {
        key: STALE_ON_OUTAGE,
        default: FlagDefault::Bool(true),
        about: "A warm event's pages served from process, X-View-Stale: true, while Redis is unreachable; off answers 503.",
    },
    FlagSpec {
        key: CATEGORY_RANKINGS,
        default: FlagDefault::Bool(true),
        about: "Category rankings; off answers them 503 feature_disabled.",
    },
];

/// Whether the switch `key` is on (the default) with no context.
pub(crate) fn on(flags: &Flags, key: &str) -> bool {
    flags.get_boolean_value(key, &EvaluationContext::default(), true)
}

/// With waits switched off, drops a well-formed read-your-writes token from
/// the request (a malformed one stays, to be refused) and marks the answer.
pub(crate) async fn read_your_writes(
    State(flags): State<Flags>,
    mut request: Request,
    next: Next,
) -> Response {
    let header = request.headers().contains_key(X_MIN_LSN);
    let query = request.uri().query().is_some_and(has_token);
    if !(header || query) || on(&flags, READ_YOUR_WRITES) {
        return next.run(request).await;
    }
    let mut ignored = false;
    if header {
        let well_formed = request
            .headers()
            .get(X_MIN_LSN)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.trim().parse::<Lsn>().is_ok());
        if well_formed {
            request.headers_mut().remove(X_MIN_LSN);
            ignored = true;
        }
    }
    if query {
        if let Some(uri) = without_token(request.uri()) {
            *request.uri_mut() = uri;
            ignored = true;
        }
    }
    let mut response = next.run(request).await;
    if ignored && response.status().is_success() {
        response
            .headers_mut()
            .insert(X_MIN_LSN_IGNORED, HeaderValue::from_static("true"));
    }
    response
}

fn has_token(query: &str) -> bool {
    query.split('&').any(|pair| pair.starts_with("min_lsn="))
}

/// `uri` without its well-formed `min_lsn` pairs; `None` if one is malformed.
fn without_token(uri: &Uri) -> Option<Uri> {
    let query = uri.query()?;
    let mut kept = Vec::new();
    for pair in query.split('&') {
        match pair.strip_prefix("min_lsn=") {
            Some(value) => {
                let value = value.replace("%2F", "/").replace("%2f", "/");
                value.parse::<Lsn>().ok()?;
            }
            None => kept.push(pair),
        }
    }
    let path = uri.path();
    let rebuilt = if kept.is_empty() {
        path.to_owned()
    } else {
        format!("{path}?{}", kept.join("&"))
    };
    rebuilt.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_well_formed_tokens_are_dropped_from_the_query() {
        let uri: Uri = "/v1/courses/1?min_lsn=0%2F16B3748&x=1"
            .parse()
            .expect("uri");
        assert_eq!(
            without_token(&uri).map(|u| u.to_string()),
            Some("/v1/courses/1?x=1".to_owned())
        );
        let uri: Uri = "/v1/courses/1?min_lsn=0/1".parse().expect("uri");
        assert_eq!(
            without_token(&uri).map(|u| u.to_string()),
            Some("/v1/courses/1".to_owned())
        );
        let bad: Uri = "/v1/courses/1?min_lsn=nope".parse().expect("uri");
        assert_eq!(without_token(&bad), None);
    }

    #[test]
    fn the_sample_flag_file_is_valid_and_says_the_defaults() {
        let args = service::FlagsArgs {
            flags_file: Some(
                concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/flags.example.json").into(),
            ),
        };
        let flags = Flags::load(&args, SPECS, None);
        let listing = flags.listing();
        assert!(listing["file_problem"].is_null(), "{listing}");
        for flag in listing["flags"].as_array().expect("a list") {
            assert_eq!(flag["value"], flag["default"], "{flag}");
        }
    }
}
