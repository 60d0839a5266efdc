//! Checkout: one transaction prices the courses, claims event seats, writes
//! the order, its items and one enrollment per course, under the caller's
//! idempotency key; and its compensation, cancellation.

mod cancel;
mod enrollment;
mod idempotency;
mod joined;
mod order;
mod pricing;
mod seats;

use chrono::{DateTime, Utc};
use serde::Serialize;
use utoipa::ToSchema;

use crate::error::FieldErrors;

pub(crate) use cancel::cancel;
pub(crate) use enrollment::{enroll, Enrollment};
pub(crate) use idempotency::{place, Placed};
pub use joined::{CHECKOUT_FACTS, CHECKOUT_WRITE};
pub use pricing::COURSE_PRICES;

/// An order whose values passed the checks that need no database: 1 to 500
/// distinct positive course ids.
pub(crate) struct NewOrder {
    pub(crate) user_id: i64,
    pub(crate) course_ids: Vec<i64>,
    pub(crate) event_id: Option<i64>,
    /// Claim the key and read every fact in one statement, and write in one
    /// (the release toggle `checkout-joined-lookup`); else a statement a step.
    pub(crate) joined_lookup: bool,
}

/// Which prices an order may have.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Pricing {
    /// A checkout: any price.
    Paid,
    /// A direct enrollment: only where the price is 0.
    FreeOnly,
}

/// The order as answered to the client, and as stored for replays.
#[derive(Serialize, ToSchema)]
#[schema(as = Order)]
pub(crate) struct Receipt {
    pub(crate) id: i64,
    user_id: i64,
    event_id: Option<i64>,
    status: OrderStatus,
    /// The sum of the items' prices.
    pub(crate) total_krw: i64,
    /// In the order the course ids were given.
    items: Vec<Item>,
    created_at: DateTime<Utc>,
    /// Only on a cancelled order.
    #[serde(skip_serializing_if = "Option::is_none")]
    cancelled_at: Option<DateTime<Utc>>,
}

impl Receipt {
    /// The answer for `order` of `items`, written under id `id` at `created_at`.
    fn completed(
        order: &NewOrder,
        items: Vec<Item>,
        total_krw: i64,
        id: i64,
        created_at: DateTime<Utc>,
    ) -> Self {
        Receipt {
            id,
            user_id: order.user_id,
            event_id: order.event_id,
            status: OrderStatus::Completed,
            total_krw,
            items,
            created_at,
            cancelled_at: None,
        }
    }
}

/// Where an order stands. Payment is out of scope: an order completes when
/// it is written.
#[derive(Clone, Copy, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
enum OrderStatus {
    Completed,
    Cancelled,
}

/// A course of an order and the price paid for it.
#[derive(Serialize, sqlx::FromRow, ToSchema)]
#[schema(as = OrderItem)]
struct Item {
    course_id: i64,
    price_krw: i64,
}

/// Why a checkout, an enrollment or a cancellation wrote nothing.
#[derive(Debug, thiserror::Error)]
pub(crate) enum CheckoutError {
    /// Values the database refutes: an unknown user, course or event, an
    /// event not running, a total too large, a price above 0 where only free
    /// courses may be taken.
    #[error("some fields are invalid")]
    Invalid(FieldErrors),
    /// The user is actively enrolled in these courses (empty: one of them).
    #[error("already enrolled in {0:?}")]
    AlreadyEnrolled(Vec<i64>),
    /// No free seat is left in the event for these courses.
    #[error("sold out: {0:?}")]
    SoldOut(Vec<i64>),
    /// The idempotency key holds the answer to a different request.
    #[error("the idempotency key was used with another request")]
    KeyReused,
    /// The key's row vanished on every attempt (the expiry job took it).
    #[error("the idempotency key kept changing hands")]
    KeyChangingHands,
    /// A key was committed without its response: a bug.
    #[error("an idempotency key was committed without its response")]
    KeyWithoutResponse,
    /// There is no such order.
    #[error("there is no order {0}")]
    NoOrder(i64),
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
}

impl CheckoutError {
    fn invalid(field: &'static str, problem: impl Into<String>) -> Self {
        let mut errors = FieldErrors::default();
        errors.add(field, problem);
        CheckoutError::Invalid(errors)
    }
}
