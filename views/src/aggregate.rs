//! The fields of the aggregate hashes (`…:agg`, `…:text`): written by the
//! projector's Rust and by its Lua script, so named once here (the script's
//! test checks its literals against these).

/// Stamp of the last change applied to the entity (Lua compares stamps as strings).
pub const STAMP: &str = "stamp";

/// Stamp of the views last written from the aggregate.
pub const VIEW_STAMP: &str = "vstamp";

/// A course's active students.
pub const STUDENTS: &str = "n";

/// Prefix of `cl:<event id>`: a course's seats claimed through that event.
pub const CLAIMED_PREFIX: &str = "cl:";

/// Prefix of `ev:<event id>`: a course's seat limit in that event, or [`UNLIMITED`].
pub const SEAT_LIMIT_PREFIX: &str = "ev:";

/// The seat limit of an event that does not limit seats.
pub const UNLIMITED: &str = "-";

/// The category a course is ranked in, so a category change can remove it
/// from the old one's rankings.
pub const RANKED_CATEGORY: &str = "rankcat";

/// Prefix of `course:<course id>` in an event's aggregate: the course's seat
/// limit in it, or [`UNLIMITED`].
pub const EVENT_COURSE_PREFIX: &str = "course:";

/// Prefix of `item:<course id>` in an order's aggregate: the price paid.
pub const ORDER_ITEM_PREFIX: &str = "item:";

/// The course's heavy column: kept in the `text` hash, not in `agg`.
pub const DESCRIPTION_HTML: &str = "description_html";

/// `cl:<event id>`.
#[inline]
pub fn claimed(event_id: i64) -> String {
    format!("{CLAIMED_PREFIX}{event_id}")
}

/// `ev:<event id>`.
#[inline]
pub fn seat_limit(event_id: i64) -> String {
    format!("{SEAT_LIMIT_PREFIX}{event_id}")
}

/// `course:<course id>`.
#[inline]
pub fn event_course(course_id: i64) -> String {
    format!("{EVENT_COURSE_PREFIX}{course_id}")
}

/// `item:<course id>`.
#[inline]
pub fn order_item(course_id: i64) -> String {
    format!("{ORDER_ITEM_PREFIX}{course_id}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_id_fields_are_their_prefix_then_the_id() {
        assert_eq!(claimed(4), "cl:4");
        assert_eq!(seat_limit(4), "ev:4");
        assert_eq!(event_course(12), "course:12");
        assert_eq!(order_item(-1), "item:-1");
    }
}
