//! Views rendered from an entity's aggregates, as the JSON readers get.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use views::{
    aggregate, CourseCard, CoursePage, CourseStats, EventView, Lsn, OrderItem, OrderView, Sale,
    TopCompany,
};

use super::batch::{stamp_lsn, SNAPSHOT_STAMP};
use crate::decode::parse_pg_timestamp;

/// How many companies a course page lists (SPEC: `top_companies`).
const TOP: usize = 5;

/// When and how much an event sells its courses for (events never change
/// after they are created, so the projector may keep them in memory).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventTerms {
    pub starts_at: DateTime<Utc>,
    pub ends_at: DateTime<Utc>,
    pub discount_percent: i32,
}

impl EventTerms {
    /// Reads the terms from an event aggregate.
    pub fn from_agg(agg: &HashMap<String, String>) -> Option<Self> {
        Some(EventTerms {
            starts_at: parse_pg_timestamp(agg.get("starts_at")?)?,
            ends_at: parse_pg_timestamp(agg.get("ends_at")?)?,
            discount_percent: agg.get("discount_percent")?.parse().ok()?,
        })
    }
}

/// The events a course aggregate says it is sold by (`ev:<event id>`).
pub fn course_event_ids(agg: &HashMap<String, String>) -> Vec<i64> {
    agg.keys()
        .filter_map(|k| k.strip_prefix(aggregate::SEAT_LIMIT_PREFIX)?.parse().ok())
        .collect()
}

/// The `lsn` a view says: the commit LSN of the last change applied to its
/// aggregate, or `snapshot_lsn` for one still as the initial build made it
/// (its stamps carry commit LSN zero, below every streamed change).
fn lsn_of(agg: &HashMap<String, String>, snapshot_lsn: Lsn) -> String {
    let lsn = stamp_lsn(
        agg.get(aggregate::STAMP)
            .map(String::as_str)
            .unwrap_or(SNAPSHOT_STAMP),
    );
    if lsn == Lsn(0) { snapshot_lsn } else { lsn }.to_string()
}

/// A course rendered from its aggregates: the page (only when asked for),
/// the stats and the card, as JSON.
#[derive(Debug)]
pub struct RenderedCourse {
    pub page: Option<Vec<u8>>,
    pub stats: Vec<u8>,
    pub card: Vec<u8>,
}

/// Renders a course from its aggregate hash, its top companies and the terms
/// of its events: the stats and card always, the page when `with_page` (the
/// aggregate then holds `description_html`). `None` while the course row
/// itself has not been seen. `snapshot_lsn`: see [`Batch::snapshot_lsn`].
///
/// [`Batch::snapshot_lsn`]: super::Batch::snapshot_lsn
pub fn render_course(
    id: i64,
    agg: &HashMap<String, String>,
    top_companies: Vec<TopCompany>,
    events: &HashMap<i64, EventTerms>,
    with_page: bool,
    snapshot_lsn: Lsn,
) -> Option<RenderedCourse> {
    let text = |k: &str| agg.get(k).cloned().unwrap_or_default();
    let price_krw: i64 = agg.get("price_krw")?.parse().ok()?;
    let mut sales: Vec<Sale> = course_event_ids(agg)
        .into_iter()
        .filter_map(|event_id| {
            let terms = events.get(&event_id)?;
            let limit = agg.get(&aggregate::seat_limit(event_id));
            let seats_left = match limit.map(String::as_str) {
                Some(aggregate::UNLIMITED) | None => None,
                Some(limit) => {
                    let limit: i64 = limit.parse().ok()?;
                    let claimed: i64 = agg
                        .get(&aggregate::claimed(event_id))
                        .and_then(|c| c.parse().ok())
                        .unwrap_or(0);
                    Some((limit - claimed).max(0))
                }
            };
            Some(Sale {
                event_id,
                price_krw: price_krw * (100 - i64::from(terms.discount_percent)) / 100,
                discount_percent: terms.discount_percent,
                starts_at: terms.starts_at,
                ends_at: terms.ends_at,
                seats_left,
            })
        })
        .collect();
    sales.sort_by_key(|s| s.event_id);
    let page = CoursePage {
        id,
        title: text("title"),
        summary: text("summary"),
        // Filled only when the page is written: the aggregate carries the
        // HTML only then (an enrollment never moves 10 KB out of Redis).
        description_html: if with_page {
            text(aggregate::DESCRIPTION_HTML)
        } else {
            String::new()
        },
        category: text("category"),
        instructor: text("instructor"),
        price_krw,
        created_at: parse_pg_timestamp(agg.get("created_at")?)?,
    };
    let stats = CourseStats {
        student_count: agg
            .get(aggregate::STUDENTS)
            .and_then(|n| n.parse().ok())
            .unwrap_or(0),
        top_companies,
        lsn: lsn_of(agg, snapshot_lsn),
        sales,
    };
    let card = CourseCard::new(&page, &stats);
    Some(RenderedCourse {
        page: if with_page {
            Some(serde_json::to_vec(&page).ok()?)
        } else {
            None
        },
        stats: serde_json::to_vec(&stats).ok()?,
        card: serde_json::to_vec(&card).ok()?,
    })
}

/// Renders an event view; `None` while the event row has not been seen.
pub fn render_event(id: i64, agg: &HashMap<String, String>, snapshot_lsn: Lsn) -> Option<Vec<u8>> {
    let terms = EventTerms::from_agg(agg)?;
    let mut course_ids: Vec<i64> = agg
        .keys()
        .filter_map(|k| k.strip_prefix(aggregate::EVENT_COURSE_PREFIX)?.parse().ok())
        .collect();
    course_ids.sort_unstable();
    serde_json::to_vec(&EventView {
        id,
        name: agg.get("name")?.clone(),
        starts_at: terms.starts_at,
        ends_at: terms.ends_at,
        discount_percent: terms.discount_percent,
        course_ids,
        lsn: lsn_of(agg, snapshot_lsn),
    })
    .ok()
}

/// Renders an order view; `None` while the order row has not been seen.
pub fn render_order(id: i64, agg: &HashMap<String, String>, snapshot_lsn: Lsn) -> Option<Vec<u8>> {
    let mut items: Vec<OrderItem> = agg
        .iter()
        .filter_map(|(k, v)| {
            Some(OrderItem {
                course_id: k.strip_prefix(aggregate::ORDER_ITEM_PREFIX)?.parse().ok()?,
                price_krw: v.parse().ok()?,
            })
        })
        .collect();
    items.sort_by_key(|i| i.course_id);
    serde_json::to_vec(&OrderView {
        id,
        user_id: agg.get("user_id")?.parse().ok()?,
        status: agg.get("status")?.clone(),
        total_krw: agg.get("total_krw")?.parse().ok()?,
        items,
        event_id: agg.get("event_id").and_then(|e| e.parse().ok()),
        created_at: parse_pg_timestamp(agg.get("created_at")?)?,
        lsn: lsn_of(agg, snapshot_lsn),
    })
    .ok()
}

/// Orders company tallies as SPEC asks: most students first, ties by name.
pub fn top_five(tallies: &[(String, i64)]) -> Vec<TopCompany> {
    pick_top(tallies.iter().map(|(c, n)| (c.as_str(), *n)))
}

/// The first [`TOP`] of `tallies` in SPEC's order, empty ones dropped,
/// picked in one pass without copying or sorting the others (a hot course
/// has a tally per company of its students).
pub(super) fn pick_top<'a>(tallies: impl IntoIterator<Item = (&'a str, i64)>) -> Vec<TopCompany> {
    let mut top: Vec<(&str, i64)> = Vec::with_capacity(TOP + 1);
    for (company, n) in tallies {
        if n <= 0 {
            continue;
        }
        let at = top.partition_point(|&(c, m)| m > n || (m == n && c < company));
        if at < TOP {
            top.insert(at, (company, n));
            top.truncate(TOP);
        }
    }
    top.into_iter()
        .map(|(company, students)| TopCompany {
            company: company.to_owned(),
            students,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn top_five_sorts_by_students_then_name_and_drops_empty() {
        let top = top_five(&[
            ("b".into(), 3),
            ("a".into(), 3),
            ("z".into(), 9),
            ("gone".into(), 0),
            ("c".into(), 1),
            ("d".into(), 1),
            ("e".into(), 1),
        ]);
        let names: Vec<_> = top.iter().map(|t| t.company.as_str()).collect();
        assert_eq!(names, ["z", "a", "b", "c", "d"]);
    }

    #[test]
    fn a_view_built_from_the_snapshot_says_its_consistent_point_and_a_streamed_one_its_commit() {
        use super::super::batch::stamp;
        let point = Lsn(0x16B_3748);
        let order = |stamp: String| -> HashMap<String, String> {
            [
                ("user_id", "7"),
                ("status", "completed"),
                ("total_krw", "1000"),
                ("created_at", "2026-11-21 21:30:00+00"),
                ("stamp", stamp.as_str()),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect()
        };
        let lsn = |agg: &HashMap<String, String>, snapshot: Lsn| {
            let view = render_order(1, agg, snapshot).expect("renders");
            serde_json::from_slice::<serde_json::Value>(&view).expect("json")["lsn"].clone()
        };
        let built = order(stamp(Lsn(0), 42));
        assert_eq!(lsn(&built, point), "0/16B3748");
        assert!(
            stamp(Lsn(0), 42) < stamp(Lsn(point.0 + 1), 0),
            "its stamp stays below every streamed change"
        );
        let streamed = order(stamp(Lsn(0x1_0000_0000), 0));
        assert_eq!(lsn(&streamed, point), "1/0");
        assert_eq!(lsn(&streamed, Lsn(0)), "1/0");
    }

    #[test]
    fn a_course_sale_is_priced_down_and_counts_claimed_seats() {
        let agg: HashMap<String, String> = [
            ("title", "t"),
            ("price_krw", "10001"),
            ("created_at", "2026-11-21 21:30:00+00"),
            ("n", "3"),
            ("ev:4", "10"),
            ("cl:4", "3"),
            ("ev:5", "-"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        let terms = EventTerms {
            starts_at: parse_pg_timestamp("2026-11-21 20:00:00+00").expect("time"),
            ends_at: parse_pg_timestamp("2026-11-22 20:00:00+00").expect("time"),
            discount_percent: 33,
        };
        let events = HashMap::from([(4, terms.clone()), (5, terms)]);
        let rendered = render_course(1, &agg, Vec::new(), &events, false, Lsn(0)).expect("renders");
        assert!(rendered.page.is_none(), "the page only when asked for");
        let stats: serde_json::Value = serde_json::from_slice(&rendered.stats).expect("json");
        assert_eq!(
            stats["sales"][0]["price_krw"], 6700,
            "10001 * 67 / 100 rounded down"
        );
        assert_eq!(stats["sales"][0]["seats_left"], 7);
        assert!(stats["sales"][1]["seats_left"].is_null());
        assert_eq!(stats["student_count"], 3);
        let card: serde_json::Value = serde_json::from_slice(&rendered.card).expect("json");
        assert!(card.get("description_html").is_none() && card.get("top_companies").is_none());
        assert_eq!(card["sales"], stats["sales"]);
        let with_page = render_course(1, &agg, Vec::new(), &events, true, Lsn(0)).expect("renders");
        let page: serde_json::Value =
            serde_json::from_slice(&with_page.page.expect("asked for")).expect("json");
        assert_eq!(page["title"], "t");
        assert!(page.get("student_count").is_none() && page.get("sales").is_none());
    }
}
