//! Changes → per-entity entries stamped with their position, and the
//! rendering of view JSON from an entity's aggregates.
//!
//! A stamp is `(commit LSN, index of the change in its transaction)` written
//! as fixed-width hex, so Redis (Lua) compares stamps as plain strings and a
//! transaction too large for one flush can be resumed where it stopped.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use chrono::{DateTime, Utc};
use views::{
    CourseCard, CoursePage, CourseStats, EventView, Lsn, OrderItem, OrderView, Sale, TopCompany,
};

// Re-exported: the sink reads stored timestamps through the projection.
pub use crate::decode::parse_pg_timestamp;
use crate::decode::{Change, COURSE_FIELDS};

/// The stamp of entities built from the initial snapshot: older than any
/// streamed change.
pub const SNAPSHOT_STAMP: &str = "000000000000000000000000";

/// The stamp of change `index` of the transaction committed at `commit_lsn`.
/// The initial build uses commit LSN zero, below every streamed change.
pub fn stamp(commit_lsn: Lsn, index: u32) -> String {
    // By hand: every change gets one, and `format!` was a visible share of
    // the projector's time.
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    let digit = |value: u64, shift: u32| char::from(HEX[((value >> shift) & 0xf) as usize]);
    let mut out = String::with_capacity(24);
    out.extend((0..16).rev().map(|i| digit(commit_lsn.0, 4 * i)));
    out.extend((0..8).rev().map(|i| digit(u64::from(index), 4 * i)));
    out
}

/// The commit LSN a stamp carries.
pub fn stamp_lsn(stamp: &str) -> Lsn {
    stamp
        .get(..16)
        .and_then(|h| u64::from_str_radix(h, 16).ok())
        .map(Lsn)
        .unwrap_or_default()
}

/// An entity with an aggregate hash and views of its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Entity {
    Course(i64),
    Event(i64),
    Order(i64),
}

/// One change to apply to an entity's aggregate, at its stamp.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Entry {
    /// Set these hash fields.
    Fields {
        stamp: String,
        fields: Vec<(String, String)>,
    },
    /// Active enrollments of a course changed by `delta` (with its company
    /// tally and, for an event's seat, the event's claimed count).
    Enroll {
        stamp: String,
        delta: i64,
        company: Option<String>,
        event_id: Option<i64>,
    },
}

impl Entry {
    /// The change sets a column of the course row: the stored page shows
    /// them all, so it is rewritten; every other change (enrollments, seat
    /// limits) rewrites only the stats and the card.
    pub fn touches_page(&self) -> bool {
        match self {
            Entry::Fields { fields, .. } => fields
                .iter()
                .any(|(name, _)| COURSE_FIELDS.contains(&name.as_str())),
            Entry::Enroll { .. } => false,
        }
    }
}

/// The aggregate a fresh entity's entries make on their own: their fields in
/// order, and the stamp of the last one (enrollment counts are not kept).
pub fn aggregate_of(entries: &[Entry]) -> HashMap<String, String> {
    let mut agg = HashMap::new();
    for entry in entries {
        if let Entry::Fields { stamp, fields } = entry {
            for (k, v) in fields {
                agg.insert(k.clone(), v.clone());
            }
            agg.insert("stamp".to_owned(), stamp.clone());
        }
    }
    agg
}

/// A course's aggregate as Redis holds it at the stamp it carries: its hash
/// fields (without the HTML) and every company tally. Kept in process so
/// that a flush of enrollments can render the course's stats and card
/// itself and apply and write in one script, which checks that Redis is
/// still at this stamp (otherwise the flush falls back to reading the
/// aggregate back).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KnownCourse {
    pub agg: HashMap<String, String>,
    pub tallies: HashMap<String, i64>,
}

impl KnownCourse {
    /// From an aggregate and all its tallies as the apply script returned
    /// them (the HTML, if returned, is not kept).
    pub fn new(mut agg: HashMap<String, String>, tallies: &[(String, i64)]) -> Self {
        agg.remove("description_html");
        KnownCourse {
            agg,
            tallies: tallies.iter().filter(|(_, n)| *n > 0).cloned().collect(),
        }
    }

    /// The stamp Redis must hold for this state to be its own.
    pub fn stamp(&self) -> &str {
        self.agg.get("stamp").map(String::as_str).unwrap_or("")
    }

    /// Moves this state past `entries`, as the apply script would; `false`
    /// if one of them is not newer than the state (a replay: Redis decides),
    /// and the state is then partly moved and must be dropped. In place, so
    /// an enrollment does not copy a hot course's thousand company tallies.
    pub fn advance(&mut self, entries: &[Entry]) -> bool {
        for entry in entries {
            let stamp = match entry {
                Entry::Fields { stamp, .. } | Entry::Enroll { stamp, .. } => stamp,
            };
            if stamp.as_str() <= self.stamp() {
                return false;
            }
            match entry {
                Entry::Fields { fields, .. } => {
                    for (k, v) in fields {
                        if k == "description_html" {
                            return false;
                        }
                        self.agg.insert(k.clone(), v.clone());
                    }
                }
                Entry::Enroll {
                    delta,
                    company,
                    event_id,
                    ..
                } => {
                    if add(&mut self.agg, "n", *delta).is_none() {
                        return false;
                    }
                    if let Some(event) = event_id {
                        if add(&mut self.agg, &format!("cl:{event}"), *delta).is_none() {
                            return false;
                        }
                    }
                    if let Some(company) = company {
                        match self.tallies.get_mut(company) {
                            Some(n) => {
                                *n += delta;
                                if *n <= 0 {
                                    self.tallies.remove(company);
                                }
                            }
                            None if *delta > 0 => {
                                self.tallies.insert(company.clone(), *delta);
                            }
                            None => {}
                        }
                    }
                }
            }
            match self.agg.get_mut("stamp") {
                Some(last) => last.clone_from(stamp),
                None => {
                    self.agg.insert("stamp".to_owned(), stamp.clone());
                }
            }
        }
        true
    }

    /// The state after `entries` (see [`KnownCourse::advance`]), leaving this
    /// one as it is.
    #[cfg(test)]
    pub fn advanced(&self, entries: &[Entry]) -> Option<KnownCourse> {
        let mut next = self.clone();
        next.advance(entries).then_some(next)
    }

    /// The five companies with the most students (SPEC's order).
    /// Picked without copying the other tallies: a hot course has one per
    /// company of its students, and this runs at every flush that enrolls.
    pub fn top_companies(&self) -> Vec<TopCompany> {
        pick_top(self.tallies.iter().map(|(c, n)| (c.as_str(), *n)))
    }
}

/// How many companies a course page lists (SPEC: `top_companies`).
const TOP: usize = 5;

/// Adds `delta` to an integer hash field, as `HINCRBY` does.
fn add(agg: &mut HashMap<String, String>, field: &str, delta: i64) -> Option<()> {
    match agg.get_mut(field) {
        Some(v) => {
            let now: i64 = v.parse().ok()?;
            *v = (now + delta).to_string();
        }
        None => {
            agg.insert(field.to_owned(), delta.to_string());
        }
    }
    Some(())
}

/// What a user's library does with a course.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LibraryOp {
    /// Enrolled at this time (µs).
    Add(i64),
    Remove,
}

/// Changes waiting for the next flush, grouped by entity, in commit order.
#[derive(Debug, Default)]
pub struct Batch {
    /// Entity → its entries, oldest first.
    pub entities: BTreeMap<Entity, Vec<Entry>>,
    /// (user, course) → the last library operation. Library writes are set
    /// operations (add, remove), so replaying them in order converges.
    pub library: BTreeMap<(i64, i64), LibraryOp>,
    /// Entities whose first change in this batch inserted their row: their
    /// whole state is in the batch, so their views render from its entries
    /// alone (one script, no aggregate read back).
    pub fresh: BTreeSet<Entity>,
    /// Row changes buffered.
    pub changes: usize,
    /// End LSN of the last transaction whose changes are all in this batch
    /// (or in earlier flushes), or a later position the stream passed
    /// outside any transaction: what the flush lets us acknowledge.
    pub commit_end: Option<Lsn>,
    /// Transactions completed in this batch.
    pub transactions: u64,
    /// Commit time of the first transaction completed in this batch (µs
    /// since the Unix epoch, by the server's clock): how stale the batch's
    /// oldest change is when it lands.
    pub first_commit_unix_us: Option<i64>,
    /// When this batch received its first completed transaction.
    pub first_received: Option<std::time::Instant>,
}

impl Batch {
    /// Adds a decoded change at `stamp`.
    pub fn push(&mut self, stamp: String, change: Change) {
        self.changes += 1;
        match change {
            Change::Course { id, fields } => self.fields(Entity::Course(id), stamp, fields),
            Change::Event { id, fields } => self.fields(Entity::Event(id), stamp, fields),
            Change::Order {
                id,
                fields,
                inserted,
            } => {
                if inserted && !self.entities.contains_key(&Entity::Order(id)) {
                    self.fresh.insert(Entity::Order(id));
                }
                self.fields(Entity::Order(id), stamp, fields)
            }
            Change::Enrollment {
                course_id,
                user_id,
                delta,
                company,
                event_id,
                created_us,
            } => {
                let op = if delta > 0 {
                    LibraryOp::Add(created_us)
                } else {
                    LibraryOp::Remove
                };
                self.library.insert((user_id, course_id), op);
                self.entities
                    .entry(Entity::Course(course_id))
                    .or_default()
                    .push(Entry::Enroll {
                        stamp,
                        delta,
                        company,
                        event_id,
                    });
            }
            Change::EventCourse {
                event_id,
                course_id,
                seat_limit,
            } => {
                let limit = seat_limit
                    .map(|l| l.to_string())
                    .unwrap_or_else(|| "-".into());
                self.fields(
                    Entity::Event(event_id),
                    stamp.clone(),
                    vec![(format!("course:{course_id}"), limit.clone())],
                );
                self.fields(
                    Entity::Course(course_id),
                    stamp,
                    vec![(format!("ev:{event_id}"), limit)],
                );
            }
            Change::OrderItem {
                order_id,
                course_id,
                price_krw,
            } => self.fields(
                Entity::Order(order_id),
                stamp,
                vec![(format!("item:{course_id}"), price_krw.to_string())],
            ),
        }
    }

    fn fields(&mut self, entity: Entity, stamp: String, fields: Vec<(String, String)>) {
        if !fields.is_empty() {
            self.entities
                .entry(entity)
                .or_default()
                .push(Entry::Fields { stamp, fields });
        }
    }

    /// Nothing to write and nothing to acknowledge.
    pub fn is_empty(&self) -> bool {
        self.entities.is_empty() && self.library.is_empty() && self.commit_end.is_none()
    }
}

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
        .filter_map(|k| k.strip_prefix("ev:")?.parse().ok())
        .collect()
}

fn lsn_of(agg: &HashMap<String, String>) -> String {
    stamp_lsn(
        agg.get("stamp")
            .map(String::as_str)
            .unwrap_or(SNAPSHOT_STAMP),
    )
    .to_string()
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
/// itself has not been seen.
pub fn render_course(
    id: i64,
    agg: &HashMap<String, String>,
    top_companies: Vec<TopCompany>,
    events: &HashMap<i64, EventTerms>,
    with_page: bool,
) -> Option<RenderedCourse> {
    let text = |k: &str| agg.get(k).cloned().unwrap_or_default();
    let price_krw: i64 = agg.get("price_krw")?.parse().ok()?;
    let mut sales: Vec<Sale> = course_event_ids(agg)
        .into_iter()
        .filter_map(|event_id| {
            let terms = events.get(&event_id)?;
            let seats_left = match agg.get(&format!("ev:{event_id}")).map(String::as_str) {
                Some("-") | None => None,
                Some(limit) => {
                    let limit: i64 = limit.parse().ok()?;
                    let claimed: i64 = agg
                        .get(&format!("cl:{event_id}"))
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
            text("description_html")
        } else {
            String::new()
        },
        category: text("category"),
        instructor: text("instructor"),
        price_krw,
        created_at: parse_pg_timestamp(agg.get("created_at")?)?,
    };
    let stats = CourseStats {
        student_count: agg.get("n").and_then(|n| n.parse().ok()).unwrap_or(0),
        top_companies,
        lsn: lsn_of(agg),
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
pub fn render_event(id: i64, agg: &HashMap<String, String>) -> Option<Vec<u8>> {
    let terms = EventTerms::from_agg(agg)?;
    let mut course_ids: Vec<i64> = agg
        .keys()
        .filter_map(|k| k.strip_prefix("course:")?.parse().ok())
        .collect();
    course_ids.sort_unstable();
    serde_json::to_vec(&EventView {
        id,
        name: agg.get("name")?.clone(),
        starts_at: terms.starts_at,
        ends_at: terms.ends_at,
        discount_percent: terms.discount_percent,
        course_ids,
        lsn: lsn_of(agg),
    })
    .ok()
}

/// Renders an order view; `None` while the order row has not been seen.
pub fn render_order(id: i64, agg: &HashMap<String, String>) -> Option<Vec<u8>> {
    let mut items: Vec<OrderItem> = agg
        .iter()
        .filter_map(|(k, v)| {
            Some(OrderItem {
                course_id: k.strip_prefix("item:")?.parse().ok()?,
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
        lsn: lsn_of(agg),
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
fn pick_top<'a>(tallies: impl IntoIterator<Item = (&'a str, i64)>) -> Vec<TopCompany> {
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
    fn stamps_order_as_strings_like_their_positions() {
        let a = stamp(Lsn(0x0FFF_FFFF), 5);
        let b = stamp(Lsn(0x1000_0000), 0);
        let c = stamp(Lsn(0x1000_0000), 1);
        assert!(SNAPSHOT_STAMP < stamp(Lsn(0), 1).as_str());
        assert!(stamp(Lsn(0), u32::MAX) < a && a < b && b < c);
        assert_eq!(stamp_lsn(&b), Lsn(0x1000_0000));
        assert_eq!(a.len(), SNAPSHOT_STAMP.len());
        for (lsn, index) in [
            (0, 0),
            (0x16B_3748, 7),
            (u64::MAX, u32::MAX),
            (0xABC, 0xDEF0),
        ] {
            assert_eq!(stamp(Lsn(lsn), index), format!("{lsn:016X}{index:08X}"));
        }
    }

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
    fn a_known_course_picks_its_top_five_as_top_five_sorts_them() {
        let tallies: Vec<(String, i64)> = (0..40)
            .map(|i| (format!("company {:02}", (i * 17) % 40), (i * 7) % 6))
            .collect();
        let known = KnownCourse::new(HashMap::new(), &tallies);
        assert_eq!(known.top_companies(), top_five(&tallies));
        assert_eq!(known.top_companies().len(), 5);
        assert!(KnownCourse::new(HashMap::new(), &[])
            .top_companies()
            .is_empty());
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
        let rendered = render_course(1, &agg, Vec::new(), &events, false).expect("renders");
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
        let with_page = render_course(1, &agg, Vec::new(), &events, true).expect("renders");
        let page: serde_json::Value =
            serde_json::from_slice(&with_page.page.expect("asked for")).expect("json");
        assert_eq!(page["title"], "t");
        assert!(page.get("student_count").is_none() && page.get("sales").is_none());
    }

    #[test]
    fn a_known_course_advances_as_the_apply_script_would_and_refuses_replays() {
        let agg: HashMap<String, String> = [("n", "2"), ("stamp", "0000000000000010AAAAAAAA")]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        let known = KnownCourse::new(agg, &[("acme".to_owned(), 2), ("gone".to_owned(), 0)]);
        assert_eq!(known.tallies.len(), 1, "empty tallies are dropped");
        let enroll = |at: u64, delta: i64, company: Option<&str>| Entry::Enroll {
            stamp: stamp(Lsn(at), 0),
            delta,
            company: company.map(str::to_owned),
            event_id: Some(4),
        };
        let next = known
            .advanced(&[
                enroll(0x20, 1, Some("globex")),
                enroll(0x21, -1, Some("acme")),
            ])
            .expect("newer entries apply");
        assert_eq!(next.agg["n"], "2");
        assert_eq!(next.agg["cl:4"], "0");
        assert_eq!(next.stamp(), stamp(Lsn(0x21), 0));
        let names: Vec<_> = next
            .top_companies()
            .into_iter()
            .map(|t| t.company)
            .collect();
        assert_eq!(names, ["acme", "globex"]);
        let gone = next
            .advanced(&[enroll(0x22, -1, Some("acme"))])
            .expect("applies");
        assert!(
            !gone.tallies.contains_key("acme"),
            "a tally at zero is removed"
        );
        assert!(
            next.advanced(&[enroll(0x10, 1, None)]).is_none(),
            "an entry not newer than the state is a replay"
        );
    }
}
