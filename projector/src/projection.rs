//! Changes → per-entity entries stamped with their position, and the
//! rendering of view JSON from an entity's aggregates.
//!
//! A stamp is `(commit LSN, index of the change in its transaction)` written
//! as fixed-width hex, so Redis (Lua) compares stamps as plain strings and a
//! transaction too large for one flush can be resumed where it stopped.

use std::collections::{BTreeMap, HashMap};

use chrono::{DateTime, Utc};
use views::{CourseDetail, Lsn, TopCompany};

use crate::decode::Change;

/// The stamp of entities built from the initial snapshot: older than any
/// streamed change.
pub const SNAPSHOT_STAMP: &str = "000000000000000000000000";

/// The stamp of change `index` of the transaction committed at `commit_lsn`.
pub fn stamp(commit_lsn: Lsn, index: u32) -> String {
    format!("{:016X}{index:08X}", commit_lsn.0)
}

/// The commit LSN a stamp carries.
pub fn stamp_lsn(stamp: &str) -> Lsn {
    stamp
        .get(..16)
        .and_then(|h| u64::from_str_radix(h, 16).ok())
        .map(Lsn)
        .unwrap_or_default()
}

/// One change to apply to a course aggregate, at its stamp.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Entry {
    Row {
        stamp: String,
        fields: Vec<(String, String)>,
    },
    Enroll {
        stamp: String,
        delta: i64,
        company: Option<String>,
    },
}

/// Changes waiting for the next flush, grouped by entity, in commit order.
#[derive(Debug, Default)]
pub struct Batch {
    /// Course id → its entries, oldest first.
    pub courses: BTreeMap<i64, Vec<Entry>>,
    /// Row changes buffered.
    pub changes: usize,
    /// End LSN of the last transaction whose changes are all in this batch
    /// (or in earlier flushes): what the flush lets us acknowledge.
    pub commit_end: Option<Lsn>,
    /// Transactions completed in this batch.
    pub transactions: u64,
}

impl Batch {
    /// Adds a decoded change at `stamp`.
    pub fn push(&mut self, stamp: String, change: Change) {
        self.changes += 1;
        match change {
            Change::CourseRow { id, fields } => {
                self.courses
                    .entry(id)
                    .or_default()
                    .push(Entry::Row { stamp, fields });
            }
            Change::Enrollment {
                course_id,
                delta,
                company,
            } => {
                self.courses
                    .entry(course_id)
                    .or_default()
                    .push(Entry::Enroll {
                        stamp,
                        delta,
                        company,
                    });
            }
        }
    }

    /// Nothing to write and nothing to acknowledge.
    pub fn is_empty(&self) -> bool {
        self.courses.is_empty() && self.commit_end.is_none()
    }
}

/// A course's aggregates as the initial build reads them from the snapshot.
#[derive(Debug, Clone)]
pub struct CourseAggregate {
    pub id: i64,
    /// Row fields, `n` (active students) and `stamp`, as in the Redis hash.
    pub fields: HashMap<String, String>,
    /// Active students per company.
    pub tallies: Vec<(String, i64)>,
}

/// Renders the course detail JSON from its aggregate hash and top companies.
/// `None` while the course row itself has not been seen.
pub fn render_course(
    id: i64,
    agg: &HashMap<String, String>,
    top_companies: Vec<TopCompany>,
) -> Option<Vec<u8>> {
    let text = |k: &str| agg.get(k).cloned().unwrap_or_default();
    let created_at = parse_pg_timestamp(agg.get("created_at")?)?;
    let detail = CourseDetail {
        id,
        title: text("title"),
        summary: text("summary"),
        description_html: text("description_html"),
        category: text("category"),
        instructor: text("instructor"),
        price_krw: agg.get("price_krw")?.parse().ok()?,
        sale: None,
        student_count: agg.get("n").and_then(|n| n.parse().ok()).unwrap_or(0),
        top_companies,
        created_at,
        lsn: stamp_lsn(
            agg.get("stamp")
                .map(String::as_str)
                .unwrap_or(SNAPSHOT_STAMP),
        )
        .to_string(),
    };
    serde_json::to_vec(&detail).ok()
}

/// Orders company tallies as SPEC asks: most students first, ties by name.
pub fn top_five(mut tallies: Vec<(String, i64)>) -> Vec<TopCompany> {
    tallies.retain(|(_, n)| *n > 0);
    tallies.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    tallies
        .into_iter()
        .take(5)
        .map(|(company, students)| TopCompany { company, students })
        .collect()
}

/// Parses PostgreSQL's text form of a `timestamptz` (sessions run with
/// `TimeZone=UTC`, `DateStyle=ISO`), e.g. `2026-11-21 21:30:00.123456+00`.
pub fn parse_pg_timestamp(text: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_str(text, "%Y-%m-%d %H:%M:%S%.f%#z")
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamps_order_as_strings_like_their_positions() {
        let a = stamp(Lsn(0x0FFF_FFFF), 5);
        let b = stamp(Lsn(0x1000_0000), 0);
        let c = stamp(Lsn(0x1000_0000), 1);
        assert!(SNAPSHOT_STAMP < a.as_str() && a < b && b < c);
        assert_eq!(stamp_lsn(&b), Lsn(0x1000_0000));
        assert_eq!(a.len(), SNAPSHOT_STAMP.len());
    }

    #[test]
    fn top_five_sorts_by_students_then_name_and_drops_empty() {
        let top = top_five(vec![
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
    fn parses_postgres_timestamps_with_and_without_fraction() {
        let t = parse_pg_timestamp("2026-11-21 21:30:00.123456+00").expect("parses");
        assert_eq!(t.to_rfc3339(), "2026-11-21T21:30:00.123456+00:00");
        assert!(parse_pg_timestamp("2026-11-21 21:30:00+00").is_some());
    }
}
