//! What the views should hold, from the tables: the rows of a few entities
//! read in the audit's snapshot with the initial build's own scans, folded
//! as the apply script folds a stream, and rendered by the projector's own
//! render code.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use tokio_postgres::Client;
use views::aggregate;

use super::{Kind, Subject};
use crate::{
    decode::parse_pg_timestamp,
    projection::{
        render_course, render_event, render_order, stamp, top_five, Batch, Entity, Entry,
        EventTerms, KnownCourse, LibraryOp,
    },
    source::Scan,
};

/// The snapshot position views are rendered with: only a view at a
/// snapshot stamp says it, as its `lsn`, which the audit does not compare
/// (and a repair's stamp carries a position of its own).
const NO_SNAPSHOT: views::Lsn = views::Lsn(0);

/// A course as the tables say, folded into its aggregate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Course {
    /// The aggregate's fields without stamps: the row, the counters (none
    /// at zero), the events' seat limits and the ranked category.
    pub agg: BTreeMap<String, String>,
    pub html: String,
    /// Company → active students (none at zero).
    pub tallies: BTreeMap<String, i64>,
}

/// The three views of a course, as JSON.
pub(super) struct CourseViews {
    pub page: Vec<u8>,
    pub stats: Vec<u8>,
    pub card: Vec<u8>,
}

impl Course {
    pub(super) fn category(&self) -> &str {
        self.agg.get("category").map(String::as_str).unwrap_or("")
    }

    pub(super) fn students(&self) -> i64 {
        counter(&self.agg, aggregate::STUDENTS)
    }

    pub(super) fn created_us(&self) -> Option<i64> {
        parse_pg_timestamp(self.agg.get("created_at")?).map(|t| t.timestamp_micros())
    }

    /// The views the projector renders from this aggregate at `stamp`.
    pub(super) fn render(
        &self,
        id: i64,
        stamp: &str,
        terms: &HashMap<i64, EventTerms>,
    ) -> Option<CourseViews> {
        let mut agg = with_stamp(&self.agg, stamp);
        agg.insert(aggregate::DESCRIPTION_HTML.to_owned(), self.html.clone());
        let tallies: Vec<(String, i64)> = self.tallies.clone().into_iter().collect();
        let views = render_course(id, &agg, top_five(&tallies), terms, true, NO_SNAPSHOT)?;
        Some(CourseViews {
            page: views.page?,
            stats: views.stats,
            card: views.card,
        })
    }
}

/// An event or an order as the tables say: its aggregate without stamps.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Record {
    pub agg: BTreeMap<String, String>,
}

impl Record {
    /// The event view rendered at `stamp`.
    pub(super) fn render_event(&self, id: i64, stamp: &str) -> Option<Vec<u8>> {
        render_event(id, &with_stamp(&self.agg, stamp), NO_SNAPSHOT)
    }

    /// The order view rendered at `stamp`.
    pub(super) fn render_order(&self, id: i64, stamp: &str) -> Option<Vec<u8>> {
        render_order(id, &with_stamp(&self.agg, stamp), NO_SNAPSHOT)
    }

    /// An event's end (µs), its score in the pre-warming index.
    pub(super) fn ends_us(&self) -> Option<i64> {
        parse_pg_timestamp(self.agg.get("ends_at")?).map(|t| t.timestamp_micros())
    }
}

/// What the tables say of the entities of one kind.
#[derive(Debug, Default, PartialEq)]
pub(super) struct Expected {
    pub courses: BTreeMap<i64, Course>,
    pub events: BTreeMap<i64, Record>,
    pub orders: BTreeMap<i64, Record>,
    /// User → course → enrollment time (µs) of the active enrollments.
    pub libraries: BTreeMap<i64, BTreeMap<i64, i64>>,
    /// Category → its courses.
    pub categories: BTreeMap<String, BTreeSet<i64>>,
    /// Terms of the events the courses are sold by.
    pub terms: HashMap<i64, EventTerms>,
}

/// Reads `subjects` (all of `kind`) in the snapshot `pg` is in.
pub(super) async fn read(
    pg: &Client,
    kind: Kind,
    subjects: &[Subject],
) -> anyhow::Result<Expected> {
    let mut expected = Expected::default();
    if subjects.is_empty() {
        return Ok(expected);
    }
    if kind == Kind::Category {
        let names = Subject::category_names(subjects);
        for name in &names {
            expected.categories.insert(name.clone(), BTreeSet::new());
        }
        let rows = pg
            .query(
                "SELECT category, id FROM courses WHERE category = ANY($1)",
                &[&names],
            )
            .await?;
        for row in rows {
            let (name, id): (String, i64) = (row.get(0), row.get(1));
            expected.categories.entry(name).or_default().insert(id);
        }
        return Ok(expected);
    }
    let ids: Vec<i64> = subjects.iter().filter_map(Subject::id).collect();
    let mut batch = Batch::default();
    let mut index = 0;
    for (scan, filter) in scans(kind) {
        for row in pg.query(&scan.sql(Some(filter)), &[&ids]).await? {
            index += 1;
            scan.read(&row)?
                .add_to(&mut batch, stamp(views::Lsn(0), index));
        }
    }
    for (entity, entries) in &batch.entities {
        let folded = fold(entries)?;
        match *entity {
            Entity::Event(id) => {
                if let Some(terms) = EventTerms::from_agg(&folded.agg.clone().into_iter().collect())
                {
                    expected.terms.insert(id, terms);
                }
                if kind == Kind::Event {
                    expected.events.insert(id, Record { agg: folded.agg });
                }
            }
            // A course of an event chunk only carries that event's seat limit.
            Entity::Course(id) if kind == Kind::Course && folded.agg.contains_key("title") => {
                let mut agg = folded.agg;
                if let Some(category) = agg.get("category").cloned() {
                    agg.insert(aggregate::RANKED_CATEGORY.to_owned(), category);
                }
                expected.courses.insert(
                    id,
                    Course {
                        agg,
                        html: folded.html.unwrap_or_default(),
                        tallies: folded.tallies,
                    },
                );
            }
            Entity::Order(id) if kind == Kind::Order => {
                expected.orders.insert(id, Record { agg: folded.agg });
            }
            _ => {}
        }
    }
    if kind == Kind::Library {
        for &user in &ids {
            expected.libraries.insert(user, BTreeMap::new());
        }
        for (&(user, course), op) in &batch.library {
            if let LibraryOp::Add(at) = op {
                expected
                    .libraries
                    .entry(user)
                    .or_default()
                    .insert(course, *at);
            }
        }
    }
    Ok(expected)
}

/// The scans a kind needs, in the build's order, each with the condition
/// that limits it to the rows of the entities `$1` names.
fn scans(kind: Kind) -> &'static [(Scan, &'static str)] {
    match kind {
        Kind::Course => &[
            (
                Scan::Events,
                "id IN (SELECT event_id FROM sale_event_courses WHERE course_id = ANY($1))",
            ),
            (Scan::EventCourses, "course_id = ANY($1)"),
            (Scan::Courses, "id = ANY($1)"),
            (Scan::Tallies, "course_id = ANY($1)"),
        ],
        Kind::Event => &[
            (Scan::Events, "id = ANY($1)"),
            (Scan::EventCourses, "event_id = ANY($1)"),
        ],
        Kind::Order => &[
            (Scan::Orders, "id = ANY($1)"),
            (Scan::OrderItems, "order_id = ANY($1)"),
        ],
        Kind::Library => &[(Scan::Libraries, "user_id = ANY($1)")],
        Kind::Category => &[(Scan::Courses, "category = ANY($1)")],
    }
}

/// The row versions `subjects` are built from, in the snapshot `pg` is in:
/// per table, a digest of the transaction ids (`xmin`) of every row the
/// kind's scans could read, revoked ones included. Any transaction that
/// inserts, updates or deletes one of them changes it (its id is new), even
/// when the values it leaves add up to the same view (an order and its
/// cancel), which comparing values cannot tell.
pub(super) async fn versions(
    pg: &Client,
    kind: Kind,
    subjects: &[Subject],
) -> anyhow::Result<Vec<String>> {
    let ids: Vec<i64> = subjects.iter().filter_map(Subject::id).collect();
    let names = Subject::category_names(subjects);
    let mut digests = Vec::new();
    for (scan, filter) in scans(kind) {
        let sql = format!(
            "SELECT count(*)::text || ':' || \
                    md5(coalesce(string_agg(xmin::text, ',' ORDER BY xmin::text::bigint), '')) \
             FROM {} WHERE {filter}",
            scan.table()
        );
        let row = if kind == Kind::Category {
            pg.query_one(&sql, &[&names]).await?
        } else {
            pg.query_one(&sql, &[&ids]).await?
        };
        digests.push(row.get(0));
    }
    Ok(digests)
}

/// An entity's entries folded as the apply script folds them.
struct Folded {
    agg: BTreeMap<String, String>,
    tallies: BTreeMap<String, i64>,
    html: Option<String>,
}

/// Folds entries in stamp order into the aggregate the apply script would
/// leave: the same fold as a remembered course's (the HTML kept apart, as
/// in the `text` hash).
fn fold(entries: &[Entry]) -> anyhow::Result<Folded> {
    let mut state = KnownCourse::new(HashMap::new(), &[]);
    let mut html = None;
    for entry in entries {
        let applied = match entry {
            Entry::Fields { stamp, fields } => {
                let (heavy, light): (Vec<_>, Vec<_>) = fields
                    .iter()
                    .cloned()
                    .partition(|(k, _)| k == aggregate::DESCRIPTION_HTML);
                if let Some((_, text)) = heavy.into_iter().last() {
                    html = Some(text);
                }
                state.advance(&[Entry::Fields {
                    stamp: stamp.clone(),
                    fields: light,
                }])
            }
            Entry::Enroll { .. } => state.advance(std::slice::from_ref(entry)),
        };
        anyhow::ensure!(applied, "snapshot entries out of stamp order");
    }
    let mut agg: BTreeMap<String, String> = state.agg.into_iter().collect();
    agg.remove(aggregate::STAMP);
    Ok(Folded {
        agg: without_zero_counters(agg),
        tallies: state.tallies.into_iter().filter(|(_, n)| *n > 0).collect(),
        html,
    })
}

/// A counter field (`n`, `cl:<event>`): absent and zero mean the same.
pub(super) fn is_counter(field: &str) -> bool {
    field == aggregate::STUDENTS || field.starts_with(aggregate::CLAIMED_PREFIX)
}

/// The fields without the counters at zero.
pub(super) fn without_zero_counters(agg: BTreeMap<String, String>) -> BTreeMap<String, String> {
    agg.into_iter()
        .filter(|(k, v)| !(is_counter(k) && v.parse::<i64>() == Ok(0)))
        .collect()
}

fn counter(agg: &BTreeMap<String, String>, field: &str) -> i64 {
    agg.get(field).and_then(|n| n.parse().ok()).unwrap_or(0)
}

fn with_stamp(agg: &BTreeMap<String, String>, stamp: &str) -> HashMap<String, String> {
    let mut out: HashMap<String, String> = agg.clone().into_iter().collect();
    out.insert(aggregate::STAMP.to_owned(), stamp.to_owned());
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use views::Lsn;

    #[test]
    fn entries_fold_like_the_apply_script_with_the_html_apart_and_no_zero_counters() {
        let at = |i| stamp(Lsn(0), i);
        let entries = [
            Entry::Fields {
                stamp: at(1),
                fields: vec![
                    ("title".into(), "Rust".into()),
                    (aggregate::DESCRIPTION_HTML.into(), "<p>x</p>".into()),
                ],
            },
            Entry::Enroll {
                stamp: at(2),
                delta: 2,
                company: Some("Acme".into()),
                event_id: Some(4),
            },
            Entry::Enroll {
                stamp: at(3),
                delta: -2,
                company: Some("Acme".into()),
                event_id: Some(4),
            },
            Entry::Enroll {
                stamp: at(4),
                delta: 1,
                company: None,
                event_id: None,
            },
        ];
        let folded = fold(&entries).expect("in order");
        assert_eq!(folded.html.as_deref(), Some("<p>x</p>"));
        assert_eq!(
            folded.agg,
            BTreeMap::from([
                ("title".to_owned(), "Rust".to_owned()),
                ("n".to_owned(), "1".to_owned()),
            ]),
            "no stamp, no html, no claimed seats at zero"
        );
        assert!(folded.tallies.is_empty(), "a company back at zero is gone");
        assert!(fold(&[entries[1].clone(), entries[0].clone()]).is_err());
    }
}
