//! The snapshot's table scans: the SQL that reads the write model and what
//! each row becomes in a batch. The initial build reads every row; the audit
//! reads the rows of a few entities, so both project PostgreSQL one way.

use tokio_postgres::Row;

use crate::{
    decode::{parse_pg_timestamp, Change, COURSE_FIELDS, EVENT_FIELDS, ORDER_FIELDS},
    projection::{Batch, Entity, Entry, LibraryOp},
    schema::SchemaProblem,
};

/// One table scan of a snapshot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scan {
    Events,
    EventCourses,
    Courses,
    /// Active enrollments as tallies: one row per (course, company, event).
    Tallies,
    Orders,
    OrderItems,
    /// Active enrollments as library entries.
    Libraries,
}

/// A scanned row, ready for a batch.
#[derive(Debug)]
pub enum Item {
    /// A row change, as the stream would bring it.
    Change(Change),
    /// An entry of an entity's aggregate (enrollment tallies).
    Entry(Entity, Entry),
    /// A course in a user's library, enrolled at `at_us`.
    Library { user: i64, course: i64, at_us: i64 },
}

impl Scan {
    /// Every scan, in the order the build applies them: events first (course
    /// pages need their terms); a course's row before its enrollments, so
    /// stamps rise in the order applied.
    pub const ALL: [Scan; 7] = [
        Scan::Events,
        Scan::EventCourses,
        Scan::Courses,
        Scan::Tallies,
        Scan::Orders,
        Scan::OrderItems,
        Scan::Libraries,
    ];

    /// The scan's SQL, limited to the rows `filter` (an SQL condition that
    /// may use `$1`) admits when given.
    pub fn sql(self, filter: Option<&str>) -> String {
        let (select, table, condition, group) = match self {
            Scan::Events => (
                "id::text, name, starts_at::text, ends_at::text, discount_percent::text",
                "sale_events",
                None,
                "",
            ),
            Scan::EventCourses => (
                "event_id::text, course_id::text, seat_limit::text",
                "sale_event_courses",
                None,
                "",
            ),
            Scan::Courses => (
                "id::text, title, summary, description_html, category, instructor, price_krw::text, created_at::text",
                "courses",
                None,
                "",
            ),
            Scan::Tallies => (
                "course_id::text, coalesce(company, ''), coalesce(event_id::text, ''), count(*)::text",
                "enrollments",
                Some("revoked_at IS NULL"),
                " GROUP BY 1, 2, 3",
            ),
            Scan::Orders => (
                "id::text, user_id::text, coalesce(event_id::text, ''), status, total_krw::text, created_at::text",
                "orders",
                None,
                "",
            ),
            Scan::OrderItems => (
                "order_id::text, course_id::text, price_krw::text",
                "order_items",
                None,
                "",
            ),
            Scan::Libraries => (
                "user_id::text, course_id::text, created_at::text",
                "enrollments",
                Some("revoked_at IS NULL"),
                "",
            ),
        };
        let conditions: Vec<&str> = condition.into_iter().chain(filter).collect();
        let mut sql = format!("SELECT {select} FROM {table}");
        if !conditions.is_empty() {
            sql.push_str(" WHERE (");
            sql.push_str(&conditions.join(") AND ("));
            sql.push(')');
        }
        sql.push_str(group);
        sql
    }

    /// The table it reads.
    pub fn table(self) -> &'static str {
        match self {
            Scan::Events => "sale_events",
            Scan::EventCourses => "sale_event_courses",
            Scan::Courses => "courses",
            Scan::Tallies | Scan::Libraries => "enrollments",
            Scan::Orders => "orders",
            Scan::OrderItems => "order_items",
        }
    }

    /// What a row of this scan becomes. A value it cannot read (a NULL
    /// where a number must be) is a [`SchemaProblem`]: the next build would
    /// meet it again, so it halts rather than retries.
    pub fn read(self, row: &Row) -> anyhow::Result<Item> {
        let number = |i: usize| int(row, i).ok_or_else(|| self.bad(row, i));
        let fields = |names: &[&str]| -> Vec<(String, String)> {
            names
                .iter()
                .enumerate()
                .map(|(i, f)| ((*f).to_owned(), text(row, i + 1)))
                .collect()
        };
        Ok(match self {
            Scan::Events => Item::Change(Change::Event {
                id: number(0)?,
                fields: fields(&EVENT_FIELDS),
            }),
            Scan::EventCourses => Item::Change(Change::EventCourse {
                event_id: number(0)?,
                course_id: number(1)?,
                seat_limit: row.get::<_, Option<String>>(2).and_then(|s| s.parse().ok()),
            }),
            Scan::Courses => Item::Change(Change::Course {
                id: number(0)?,
                fields: fields(&COURSE_FIELDS),
            }),
            Scan::Tallies => {
                let company = text(row, 1);
                Item::Entry(
                    Entity::Course(number(0)?),
                    Entry::Enroll {
                        stamp: String::new(),
                        delta: number(3)?,
                        company: (!company.is_empty()).then_some(company),
                        event_id: text(row, 2).parse().ok(),
                    },
                )
            }
            Scan::Orders => Item::Change(Change::Order {
                id: number(0)?,
                fields: fields(&ORDER_FIELDS),
                // Built like any other entity: its items come from another
                // table's scan, in another batch.
                inserted: false,
            }),
            Scan::OrderItems => Item::Change(Change::OrderItem {
                order_id: number(0)?,
                course_id: number(1)?,
                price_krw: number(2)?,
            }),
            Scan::Libraries => Item::Library {
                user: number(0)?,
                course: number(1)?,
                at_us: parse_pg_timestamp(&text(row, 2))
                    .ok_or_else(|| self.bad(row, 2))?
                    .timestamp_micros(),
            },
        })
    }
}

impl Item {
    /// Adds the item to `batch` at `stamp` (library entries carry none).
    pub fn add_to(self, batch: &mut Batch, stamp: String) {
        match self {
            Item::Change(change) => batch.push(stamp, change),
            Item::Entry(entity, mut entry) => {
                let (Entry::Enroll { stamp: at, .. } | Entry::Fields { stamp: at, .. }) =
                    &mut entry;
                *at = stamp;
                batch.push_entry(entity, entry);
            }
            Item::Library {
                user,
                course,
                at_us,
            } => batch.push_library(user, course, LibraryOp::Add(at_us)),
        }
    }
}

fn text(row: &Row, i: usize) -> String {
    row.get::<_, Option<String>>(i).unwrap_or_default()
}

fn int(row: &Row, i: usize) -> Option<i64> {
    text(row, i).parse().ok()
}

impl Scan {
    fn bad(self, row: &Row, i: usize) -> anyhow::Error {
        let column = row.columns().get(i).map_or("?", |c| c.name());
        SchemaProblem::BadValue {
            table: self.table().to_owned(),
            column: column.to_owned(),
        }
        .into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_filter_joins_the_scans_own_condition_before_its_grouping() {
        assert_eq!(
            Scan::Orders.sql(None),
            "SELECT id::text, user_id::text, coalesce(event_id::text, ''), status, total_krw::text, created_at::text FROM orders"
        );
        let tallies = Scan::Tallies.sql(Some("course_id = ANY($1)"));
        assert!(
            tallies.ends_with(
                "FROM enrollments WHERE (revoked_at IS NULL) AND (course_id = ANY($1)) GROUP BY 1, 2, 3"
            ),
            "{tallies}"
        );
        assert!(Scan::Courses
            .sql(Some("id = ANY($1)"))
            .ends_with("FROM courses WHERE (id = ANY($1))"));
    }
}
