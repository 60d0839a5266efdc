//! The command API's ops flags: kill switches that stop a part of checkout
//! before it touches the database, the order-intake cap, and the release
//! toggle of the one-round-trip checkout lookup. The README lists them.

use std::sync::Mutex;
use std::time::Instant;

use service::{EvaluationContext, FlagDefault, FlagSpec, Flags};

use crate::error::ApiError;

/// Kill switch: every order and direct enrollment (maintenance).
pub(crate) const ORDERS: &str = "checkout-orders";
/// Kill switch: direct enrollments.
pub(crate) const ENROLLMENTS: &str = "checkout-enrollments";
/// Kill switch, targeted by `eventId`: purchases through one sale event.
pub(crate) const EVENT_PURCHASES: &str = "checkout-event-purchases";
/// Most orders taken per second by this process; 0: no cap.
pub(crate) const ORDER_RATE: &str = "checkout-order-rate";
/// Kill switch: the idempotency-key expiry job.
pub(crate) const KEY_EXPIRY: &str = "idempotency-key-expiry";
/// Release toggle, by user id: the checkout claims its key and reads every
/// fact in one statement and writes in one, instead of a statement a step.
pub(crate) const JOINED_LOOKUP: &str = "checkout-joined-lookup";

/// Every flag the command API reads, with its default.
pub(crate) static SPECS: &[FlagSpec] = &[
    FlagSpec {
        key: ORDERS,
        default: FlagDefault::Bool(true),
        about: "Orders and direct enrollments; off answers them 503 feature_disabled.",
    },
    FlagSpec {
        key: ENROLLMENTS,
        default: FlagDefault::Bool(true),
        about: "Direct enrollments; off answers them 503 feature_disabled.",
    },
    FlagSpec {
        key: EVENT_PURCHASES,
        default: FlagDefault::Bool(true),
        about: "Orders and enrollments through a sale event (target by eventId); off answers them 503 feature_disabled.",
    },
    FlagSpec {
        key: ORDER_RATE,
        default: FlagDefault::Int(0),
        about: "Most orders and direct enrollments per second this process takes (0: no cap); over it 503 unavailable.",
    },
    FlagSpec {
        key: KEY_EXPIRY,
        default: FlagDefault::Bool(true),
        about: "The idempotency-key expiry job; off pauses it.",
    },
    FlagSpec {
        key: JOINED_LOOKUP,
        default: FlagDefault::Bool(true),
        about: "Release toggle by user id: the checkout in two statements (one reads, one writes); off: a statement a step.",
    },
];

fn on(flags: &Flags, key: &str, context: &EvaluationContext) -> bool {
    flags.get_boolean_value(key, context, true)
}

/// Refuses a checkout (an order, or a direct enrollment) the switches stop:
/// checked before any database work, so nothing is written or claimed.
pub(crate) fn admit(
    flags: &Flags,
    enrollment: bool,
    event_id: Option<i64>,
) -> Result<(), ApiError> {
    let none = EvaluationContext::default();
    if !on(flags, ORDERS, &none) {
        return Err(ApiError::FeatureDisabled(ORDERS));
    }
    if enrollment && !on(flags, ENROLLMENTS, &none) {
        return Err(ApiError::FeatureDisabled(ENROLLMENTS));
    }
    if let Some(event_id) = event_id {
        let event = EvaluationContext::default().with("eventId", event_id);
        if !on(flags, EVENT_PURCHASES, &event) {
            return Err(ApiError::FeatureDisabled(EVENT_PURCHASES));
        }
    }
    Ok(())
}

/// Whether `user_id` is in the rollout of the two-statement checkout.
pub(crate) fn joined_lookup(flags: &Flags, user_id: i64) -> bool {
    let user = EvaluationContext::with_targeting_key(user_id.to_string());
    flags.get_boolean_value(JOINED_LOOKUP, &user, true)
}

/// The order-intake cap: a token bucket holding at most one second of
/// orders, refilled at the rate the flag sets now.
#[derive(Debug)]
pub(crate) struct Intake {
    bucket: Mutex<Bucket>,
}

#[derive(Debug)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl Intake {
    pub(crate) fn new() -> Self {
        Self {
            bucket: Mutex::new(Bucket {
                tokens: 0.0,
                at: Instant::now(),
            }),
        }
    }

    /// Takes one order's token, or refuses with 503 when the cap is reached.
    pub(crate) fn take(&self, flags: &Flags) -> Result<(), ApiError> {
        let rate = flags.get_integer_value(ORDER_RATE, &EvaluationContext::default(), 0);
        if rate <= 0 {
            return Ok(());
        }
        let rate = rate as f64;
        let Ok(mut bucket) = self.bucket.lock() else {
            return Ok(());
        };
        let now = Instant::now();
        let refill = now.duration_since(bucket.at).as_secs_f64() * rate;
        bucket.tokens = (bucket.tokens + refill).min(rate);
        bucket.at = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Ok(())
        } else {
            Err(ApiError::Unavailable(
                "order intake is over its cap (flag `checkout-order-rate`), retry shortly",
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn without_a_flag_file_every_checkout_is_admitted_and_nothing_capped() {
        let flags = Flags::defaults(SPECS);
        assert!(admit(&flags, true, Some(3)).is_ok());
        let intake = Intake::new();
        assert!((0..1000).all(|_| intake.take(&flags).is_ok()));
        assert!(joined_lookup(&flags, 1));
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

    /// The one-statement lookup's rollout: a tenth of 10,000 users at 10 %,
    /// each of them still in at 50 %.
    #[test]
    fn the_lookup_rollout_takes_its_share_and_widening_it_keeps_every_user() {
        let dir = std::env::temp_dir().join(format!("rollout-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("flags.json");
        let write = |percent: u32| {
            let flags = serde_json::json!({"flags": {JOINED_LOOKUP: {
                "state": "ENABLED", "variants": {"on": true, "off": false}, "defaultVariant": "off",
                "targeting": {"fractional": [["on", percent], ["off", 100 - percent]]}}}});
            std::fs::write(&path, flags.to_string()).expect("written");
        };
        let users = |flags: &Flags| -> Vec<bool> {
            (1..=10_000)
                .map(|user| joined_lookup(flags, user))
                .collect()
        };
        write(10);
        let args = service::FlagsArgs {
            flags_file: Some(path.clone()),
        };
        let at_ten = users(&Flags::load(&args, SPECS, None));
        let share = at_ten.iter().filter(|on| **on).count();
        assert!((850..=1150).contains(&share), "{share} of 10000 at 10 %");
        write(50);
        let at_fifty = users(&Flags::load(&args, SPECS, None));
        let share = at_fifty.iter().filter(|on| **on).count();
        assert!((4850..=5150).contains(&share), "{share} of 10000 at 50 %");
        assert!(at_ten
            .iter()
            .zip(&at_fifty)
            .all(|(ten, fifty)| !ten || *fifty));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
