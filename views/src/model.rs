//! The shapes of the views: as the projector stores them and as the query
//! API serves them (SPEC "Query API").
//!
//! Course pages and cards depend on the clock (`sale` is the running event),
//! so course stats and cards are stored with every candidate sale in a
//! trailing `"sales"` field and the reader picks by its own clock at request
//! time ([`serve_course`]): a page is right the moment an event starts or
//! ends, with no re-projection.
//!
//! A course's detail is stored in two parts under one hash tag: the page
//! (the row's fields, with the heavy HTML) and the stats (students, top
//! companies, sales, lsn), joined at read time ([`serve_course_page`]), so
//! the stream of enrollments rewrites a few hundred bytes, not the page.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// Bumped whenever a view's shape changes, so a release rebuilds into a new
/// generation (beside the old one, which the previous release's readers keep
/// reading) instead of serving mixed shapes.
pub const VIEW_SCHEMA_VERSION: u32 = 3;

/// A sale of a course by one event (a candidate until the clock picks it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sale {
    pub event_id: i64,
    pub price_krw: i64,
    pub discount_percent: i32,
    pub starts_at: DateTime<Utc>,
    pub ends_at: DateTime<Utc>,
    /// `None`: no seat limit.
    pub seats_left: Option<i64>,
}

impl Sale {
    /// Runs at `now` (window `[starts_at, ends_at)`).
    pub fn is_running(&self, now: DateTime<Utc>) -> bool {
        self.starts_at <= now && now < self.ends_at
    }
}

/// SPEC: the running event with the lowest price and a seat left, ties to the
/// lowest event id.
pub fn pick_sale(candidates: &[Sale], now: DateTime<Utc>) -> Option<&Sale> {
    candidates
        .iter()
        .filter(|s| s.is_running(now) && s.seats_left != Some(0))
        .min_by_key(|s| (s.price_krw, s.event_id))
}

/// One company among a course's top five.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopCompany {
    pub company: String,
    pub students: i64,
}

/// The stored course page: the fields of the course row. Rewritten only when
/// the row changes, so the 10 KB of HTML is never re-rendered, re-compressed
/// or re-sent because somebody enrolled; the served detail is this page
/// joined with the course's [`CourseStats`] ([`serve_course_page`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CoursePage {
    pub id: i64,
    pub title: String,
    pub summary: String,
    pub description_html: String,
    pub category: String,
    pub instructor: String,
    pub price_krw: i64,
    pub created_at: DateTime<Utc>,
}

/// The stored course stats: what enrollments and seat claims change. Small
/// (stored as plain JSON), rewritten at every change of the course.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CourseStats {
    pub student_count: i64,
    pub top_companies: Vec<TopCompany>,
    /// LSN of the last change reflected in the page and the stats, in
    /// `%X/%X` form (the stats are rewritten whenever the page is).
    pub lsn: String,
    /// Every event selling this course; must stay the last field.
    pub sales: Vec<Sale>,
}

/// The stored course card: the detail without `description_html` and
/// `top_companies`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CourseCard {
    pub id: i64,
    pub title: String,
    pub summary: String,
    pub category: String,
    pub instructor: String,
    pub price_krw: i64,
    pub student_count: i64,
    pub created_at: DateTime<Utc>,
    pub lsn: String,
    /// Every event selling this course; must stay the last field.
    pub sales: Vec<Sale>,
}

impl CourseCard {
    /// The card of a course page and its stats.
    pub fn new(page: &CoursePage, stats: &CourseStats) -> Self {
        CourseCard {
            id: page.id,
            title: page.title.clone(),
            summary: page.summary.clone(),
            category: page.category.clone(),
            instructor: page.instructor.clone(),
            price_krw: page.price_krw,
            student_count: stats.student_count,
            created_at: page.created_at,
            lsn: stats.lsn.clone(),
            sales: stats.sales.clone(),
        }
    }
}

/// The stored event view; the query API adds the cards of `course_ids`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventView {
    pub id: i64,
    pub name: String,
    pub starts_at: DateTime<Utc>,
    pub ends_at: DateTime<Utc>,
    pub discount_percent: i32,
    pub course_ids: Vec<i64>,
    pub lsn: String,
}

/// One line of an order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderItem {
    pub course_id: i64,
    pub price_krw: i64,
}

/// The order view, stored as served (`GET /v1/orders/{id}`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderView {
    pub id: i64,
    pub user_id: i64,
    pub status: String,
    pub total_krw: i64,
    pub items: Vec<OrderItem>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub event_id: Option<i64>,
    pub created_at: DateTime<Utc>,
    pub lsn: String,
}

/// A stored course view, stats or card could not be served.
#[derive(Debug, thiserror::Error)]
#[error("stored course view is not a JSON object with a trailing sales field")]
pub struct ServeError;

const SALES_FIELD: &[u8] = b",\"sales\":";

/// Turns a stored course detail or card into the served JSON: the trailing
/// `"sales":[...]` becomes `"sale":<the running pick or null>`. With
/// `only_event`, just that event's sale counts (event pages).
pub fn serve_course(
    stored: &[u8],
    now: DateTime<Utc>,
    only_event: Option<i64>,
) -> Result<Vec<u8>, ServeError> {
    // The sales list is the last field and holds no `,"sales":` itself (its
    // strings are timestamps), so the last occurrence is the field.
    let at = stored
        .windows(SALES_FIELD.len())
        .rposition(|w| w == SALES_FIELD)
        .ok_or(ServeError)?;
    let list = stored
        .get(at + SALES_FIELD.len()..stored.len().saturating_sub(1))
        .ok_or(ServeError)?;
    let sales: Vec<Sale> = serde_json::from_slice(list).map_err(|_| ServeError)?;
    let pick = match only_event {
        Some(event) => sales
            .iter()
            .find(|s| s.event_id == event && s.is_running(now)),
        None => pick_sale(&sales, now),
    };
    let mut out = Vec::with_capacity(at + 200);
    out.extend_from_slice(&stored[..at]);
    out.extend_from_slice(b",\"sale\":");
    serde_json::to_writer(&mut out, &pick).map_err(|_| ServeError)?;
    out.push(b'}');
    Ok(out)
}

/// Turns a stored course page and its stats into the served course detail
/// (`GET /v1/courses/{id}`): the page's fields, then the stats with `sale`
/// picked by the clock `now`. Neither part is parsed beyond the stats' small
/// sales list: the page is joined as the bytes it is stored as.
pub fn serve_course_page(
    page: &[u8],
    stats: &[u8],
    now: DateTime<Utc>,
) -> Result<Vec<u8>, ServeError> {
    let served_stats = serve_course(stats, now, None)?;
    let mut out = Vec::with_capacity(page.len() + served_stats.len());
    out.extend_from_slice(page);
    join_stats(out, &served_stats)
}

/// Why a course page as Redis holds it could not be served.
#[derive(Debug, thiserror::Error)]
pub enum StoredPageError {
    #[error(transparent)]
    Decode(#[from] crate::DecodeError),
    #[error(transparent)]
    Serve(#[from] ServeError),
}

/// [`serve_course_page`] of a page still as Redis holds it (its view value):
/// decompressed straight into the served body, with room left for the
/// stats, so the page's bytes are written once.
pub fn serve_stored_course_page(
    value: &[u8],
    stats: &[u8],
    now: DateTime<Utc>,
) -> Result<Vec<u8>, StoredPageError> {
    let served_stats = serve_course(stats, now, None)?;
    let page = crate::codec::decode_with_room(value, served_stats.len())?;
    Ok(join_stats(page, &served_stats)?)
}

/// `{page fields}` and `{stats fields}` made one object, in `page`'s buffer.
fn join_stats(mut page: Vec<u8>, served_stats: &[u8]) -> Result<Vec<u8>, ServeError> {
    let (Some(b'}'), Some(b'{')) = (page.last(), served_stats.first()) else {
        return Err(ServeError);
    };
    page.pop();
    page.push(b',');
    page.extend_from_slice(&served_stats[1..]);
    Ok(page)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn t(h: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 11, 21, h, 0, 0)
            .single()
            .expect("valid time")
    }

    fn sale(event_id: i64, price_krw: i64, from: u32, to: u32, seats_left: Option<i64>) -> Sale {
        Sale {
            event_id,
            price_krw,
            discount_percent: 10,
            starts_at: t(from),
            ends_at: t(to),
            seats_left,
        }
    }

    #[test]
    fn the_pick_is_the_cheapest_running_sale_with_a_seat_ties_to_the_lowest_event() {
        let sales = [
            sale(5, 100, 1, 3, None),
            sale(4, 100, 1, 3, Some(2)),
            sale(3, 50, 1, 3, Some(0)),
            sale(2, 10, 5, 6, None),
        ];
        assert_eq!(pick_sale(&sales, t(2)).map(|s| s.event_id), Some(4));
        assert_eq!(pick_sale(&sales, t(4)), None);
    }

    #[test]
    fn the_window_is_half_open() {
        let sales = [sale(1, 0, 20, 21, None)];
        assert!(pick_sale(&sales, t(20)).is_some(), "starts at starts_at");
        assert!(pick_sale(&sales, t(21)).is_none(), "over at ends_at");
    }

    #[test]
    fn serving_replaces_the_trailing_sales_with_the_pick() {
        let card = CourseCard {
            id: 7,
            title: "a \"sales\" title,\"sales\":[]".into(),
            summary: String::new(),
            category: "c".into(),
            instructor: "i".into(),
            price_krw: 1000,
            student_count: 3,
            created_at: t(1),
            lsn: "0/1".into(),
            sales: vec![sale(9, 500, 1, 3, Some(4))],
        };
        let stored = serde_json::to_vec(&card).expect("json");
        let during: serde_json::Value =
            serde_json::from_slice(&serve_course(&stored, t(2), None).expect("serves"))
                .expect("json");
        assert_eq!(during["sale"]["event_id"], 9);
        assert_eq!(during["sale"]["seats_left"], 4);
        assert!(during.get("sales").is_none());
        assert_eq!(during["title"], card.title);
        let after: serde_json::Value =
            serde_json::from_slice(&serve_course(&stored, t(3), None).expect("serves"))
                .expect("json");
        assert!(after["sale"].is_null());
        let other_event: serde_json::Value =
            serde_json::from_slice(&serve_course(&stored, t(2), Some(8)).expect("serves"))
                .expect("json");
        assert!(other_event["sale"].is_null());
    }

    #[test]
    fn a_page_is_served_as_its_fields_then_its_stats_with_the_sale_picked() {
        let page = CoursePage {
            id: 7,
            title: "t".into(),
            summary: "s".into(),
            description_html: "<p>\"sales\":[]}</p>".into(),
            category: "c".into(),
            instructor: "i".into(),
            price_krw: 1000,
            created_at: t(1),
        };
        let stats = CourseStats {
            student_count: 3,
            top_companies: vec![TopCompany {
                company: "acme".into(),
                students: 2,
            }],
            lsn: "0/1A".into(),
            sales: vec![sale(9, 500, 1, 3, Some(4))],
        };
        let served = serve_course_page(
            &serde_json::to_vec(&page).expect("json"),
            &serde_json::to_vec(&stats).expect("json"),
            t(2),
        )
        .expect("serves");
        let served: serde_json::Value = serde_json::from_slice(&served).expect("json");
        assert_eq!(served["description_html"], page.description_html);
        assert_eq!(served["student_count"], 3);
        assert_eq!(served["top_companies"][0]["company"], "acme");
        assert_eq!(served["lsn"], "0/1A");
        assert_eq!(served["sale"]["event_id"], 9);
        assert!(served.get("sales").is_none());
        assert!(serve_course_page(b"[]", b"{}", t(2)).is_err());
        let card = CourseCard::new(&page, &stats);
        assert_eq!((card.student_count, card.lsn.as_str()), (3, "0/1A"));
    }

    #[test]
    fn a_page_served_from_its_redis_value_is_the_same_bytes_as_from_its_json() {
        let stats = serde_json::to_vec(&CourseStats {
            student_count: 1,
            top_companies: Vec::new(),
            lsn: "0/2".into(),
            sales: vec![sale(9, 500, 1, 3, None)],
        })
        .expect("json");
        // A short page is stored as JSON, a long one as LZ4.
        for html_bytes in [10, 20_000] {
            let page = serde_json::to_vec(&CoursePage {
                id: 7,
                title: "t".into(),
                summary: "s".into(),
                description_html: (0..html_bytes)
                    .map(|i| char::from(b'a' + (i % 26) as u8))
                    .collect(),
                category: "c".into(),
                instructor: "i".into(),
                price_krw: 1000,
                created_at: t(1),
            })
            .expect("json");
            let value = crate::encode(&page);
            for now in [t(2), t(4)] {
                let from_value = serve_stored_course_page(&value, &stats, now).expect("serves");
                let from_json = serve_course_page(&page, &stats, now).expect("serves");
                assert_eq!(from_value, from_json);
            }
        }
        assert!(matches!(
            serve_stored_course_page(&[9, b'{', b'}'], &stats, t(2)),
            Err(StoredPageError::Decode(_))
        ));
        assert!(matches!(
            serve_stored_course_page(&crate::encode(b"[]"), &stats, t(2)),
            Err(StoredPageError::Serve(_))
        ));
    }
}
