//! The query API's ops flags: storefront kill switches for a storm (waits
//! for read-your-writes tokens, category rankings) and the stale fallback
//! of warm pages while Redis is unreachable. The README lists them.

use axum::{
    extract::{Request, State},
    http::{HeaderName, HeaderValue, StatusCode},
    middleware::Next,
    response::Response,
};
use service::{EvaluationContext, FlagDefault, FlagSpec, Flags};

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

/// Marks an answer made from what was there (200, 304, 404) to a read that
/// carried a read-your-writes token while waits are switched off
/// (`crate::freshness::token` dropped it): a 404 may be a write not projected yet.
pub(crate) async fn mark_ignored_tokens(
    State(flags): State<Flags>,
    request: Request,
    next: Next,
) -> Response {
    let carried = request.headers().contains_key(X_MIN_LSN)
        || request
            .uri()
            .query()
            .is_some_and(|q| q.split('&').any(|pair| pair.starts_with("min_lsn=")));
    // Looked at before the read, as the read itself does.
    let ignored = carried && !on(&flags, READ_YOUR_WRITES);
    let mut response = next.run(request).await;
    let status = response.status();
    let read = status.is_success()
        || status == StatusCode::NOT_MODIFIED
        || status == StatusCode::NOT_FOUND;
    if ignored && read {
        response
            .headers_mut()
            .insert(X_MIN_LSN_IGNORED, HeaderValue::from_static("true"));
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

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
