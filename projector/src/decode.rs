//! pgoutput messages → the [`Change`]s the projection understands, and the
//! PostgreSQL text forms (timestamps) those changes carry.
//!
//! DDL is not in the stream: pgoutput announces a table's new shape with a
//! `Relation` message before the first row written in it. Each one is
//! checked against what the views read (`schema`), so a shape they cannot
//! follow stops the stream before any row of it is applied. A `TRUNCATE` of
//! a projected table ends the stream for a rebuild; a table no view reads is
//! ignored, said once at INFO.

use std::{
    borrow::Cow,
    collections::{HashMap, HashSet},
};

use chrono::{DateTime, Utc};
use pg_walstream::{LogicalReplicationMessage, LogicalReplicationParser, TupleData};

use crate::schema::{self, SchemaProblem};

/// A change to a projected entity, in commit order. `fields` hold the columns
/// that were written, as text; unchanged TOAST columns are absent, so they
/// never blank a field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    Course {
        id: i64,
        fields: Vec<(String, String)>,
    },
    /// An active enrollment appeared (+1) or ended (-1).
    Enrollment {
        course_id: i64,
        user_id: i64,
        delta: i64,
        company: Option<String>,
        event_id: Option<i64>,
        /// Enrollment time in µs since the epoch (the library's order).
        created_us: i64,
    },
    Event {
        id: i64,
        fields: Vec<(String, String)>,
    },
    /// A course joined an event (`seat_limit` `None`: unlimited).
    EventCourse {
        event_id: i64,
        course_id: i64,
        seat_limit: Option<i64>,
    },
    Order {
        id: i64,
        fields: Vec<(String, String)>,
        /// The row was inserted (the order's state starts here), not updated.
        inserted: bool,
    },
    OrderItem {
        order_id: i64,
        course_id: i64,
        price_krw: i64,
    },
}

/// The stream could not be turned into changes.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("pgoutput parse error: {0}")]
    Parse(String),
    #[error("change for relation {0} before its Relation message")]
    UnknownRelation(u32),
    #[error("{table}: column {column} missing or malformed")]
    BadColumn {
        table: &'static str,
        column: &'static str,
    },
    /// Projected tables (their names, comma-separated) were truncated.
    #[error("table {0} was truncated: the views must be rebuilt")]
    Truncated(String),
    /// A table's new shape lacks what the views read.
    #[error("{0}")]
    Schema(SchemaProblem),
}

impl DecodeError {
    /// The problem replaying the stream would meet again, if this is one:
    /// the stream must halt, not retry.
    pub fn halts(&self) -> Option<SchemaProblem> {
        match self {
            DecodeError::Schema(problem) => Some(problem.clone()),
            DecodeError::BadColumn { table, column } => Some(SchemaProblem::BadValue {
                table: (*table).to_owned(),
                column: (*column).to_owned(),
            }),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Table {
    Courses,
    Enrollments,
    SaleEvents,
    SaleEventCourses,
    Orders,
    OrderItems,
    Other,
}

impl Table {
    /// The projected table a relation is; only schema `public` holds them.
    fn of(namespace: &str, name: &str) -> Self {
        if namespace != "public" {
            return Table::Other;
        }
        match name {
            "courses" => Table::Courses,
            "enrollments" => Table::Enrollments,
            "sale_events" => Table::SaleEvents,
            "sale_event_courses" => Table::SaleEventCourses,
            "orders" => Table::Orders,
            "order_items" => Table::OrderItems,
            _ => Table::Other,
        }
    }

    /// Its name, as `schema` lists it; `None` for a table no view reads.
    fn name(self) -> Option<&'static str> {
        Some(match self {
            Table::Courses => "courses",
            Table::Enrollments => "enrollments",
            Table::SaleEvents => "sale_events",
            Table::SaleEventCourses => "sale_event_courses",
            Table::Orders => "orders",
            Table::OrderItems => "order_items",
            Table::Other => return None,
        })
    }
}

#[derive(Debug)]
struct Relation {
    table: Table,
    name: String,
    columns: Vec<String>,
}

/// Course columns copied into the course aggregate (and so into its views).
pub const COURSE_FIELDS: [&str; 7] = [
    "title",
    "summary",
    "description_html",
    "category",
    "instructor",
    "price_krw",
    "created_at",
];
/// Event columns copied into the event aggregate.
pub const EVENT_FIELDS: [&str; 4] = ["name", "starts_at", "ends_at", "discount_percent"];
/// Order columns copied into the order aggregate.
pub const ORDER_FIELDS: [&str; 5] = ["user_id", "event_id", "status", "total_krw", "created_at"];

/// Decodes the payloads of `XLogData` messages (Begin and Commit are parsed by
/// the replication client before they get here).
pub struct Decoder {
    parser: LogicalReplicationParser,
    relations: HashMap<u32, Relation>,
    /// Relations no view reads, already said to be ignored.
    ignored: HashSet<u32>,
}

impl Default for Decoder {
    fn default() -> Self {
        Self {
            parser: LogicalReplicationParser::with_protocol_version(1),
            relations: HashMap::new(),
            ignored: HashSet::new(),
        }
    }
}

/// A row of a relation, read by column name.
struct Row<'a> {
    relation: &'a Relation,
    tuple: &'a TupleData,
}

impl Row<'_> {
    /// The text of a column; `None` for NULL, unchanged TOAST or no such column.
    fn text(&self, column: &str) -> Option<Cow<'_, str>> {
        let index = self.relation.columns.iter().position(|c| c == column)?;
        let data = self.tuple.get_column(index)?;
        if data.is_null() || data.is_unchanged() {
            return None;
        }
        data.as_str()
    }

    fn is_null(&self, column: &str) -> bool {
        let Some(index) = self.relation.columns.iter().position(|c| c == column) else {
            return true;
        };
        self.tuple.get_column(index).is_none_or(|d| d.is_null())
    }

    fn int(&self, table: &'static str, column: &'static str) -> Result<i64, DecodeError> {
        self.text(column)
            .and_then(|t| t.parse().ok())
            .ok_or(DecodeError::BadColumn { table, column })
    }

    fn opt_int(&self, column: &str) -> Option<i64> {
        self.text(column).and_then(|t| t.parse().ok())
    }

    /// The written columns among `names` (NULL written as "").
    fn fields(&self, names: &[&str]) -> Vec<(String, String)> {
        names
            .iter()
            .filter_map(|&name| {
                let index = self.relation.columns.iter().position(|c| c == name)?;
                let data = self.tuple.get_column(index)?;
                if data.is_unchanged() {
                    return None;
                }
                let value = if data.is_null() {
                    Cow::Borrowed("")
                } else {
                    data.as_str()?
                };
                Some((name.to_owned(), value.into_owned()))
            })
            .collect()
    }
}

impl Decoder {
    /// Decodes one pgoutput message into zero or more changes.
    pub fn decode(&mut self, data: &[u8]) -> Result<Vec<Change>, DecodeError> {
        let message = self
            .parser
            .parse_wal_message(data)
            .map_err(|e| DecodeError::Parse(e.to_string()))?
            .message;
        match message {
            LogicalReplicationMessage::Relation {
                relation_id,
                namespace,
                relation_name,
                columns,
                ..
            } => {
                let table = Table::of(&namespace, &relation_name);
                let name = if &*namespace == "public" {
                    relation_name.to_string()
                } else {
                    format!("{namespace}.{relation_name}")
                };
                self.check_relation(relation_id, table, &name, &columns)?;
                self.relations.insert(
                    relation_id,
                    Relation {
                        table,
                        name,
                        columns: columns.iter().map(|c| c.name.to_string()).collect(),
                    },
                );
                Ok(Vec::new())
            }
            LogicalReplicationMessage::Insert { relation_id, tuple } => {
                let relation = self.relation(relation_id)?;
                upsert(
                    &Row {
                        relation,
                        tuple: &tuple,
                    },
                    true,
                )
            }
            LogicalReplicationMessage::Update {
                relation_id,
                old_tuple,
                new_tuple,
                ..
            } => {
                let relation = self.relation(relation_id)?;
                let new = Row {
                    relation,
                    tuple: &new_tuple,
                };
                if relation.table != Table::Enrollments {
                    return upsert(&new, false);
                }
                // REPLICA IDENTITY FULL gives the old row, so the change is
                // exactly "new active" minus "old active".
                let mut changes = Vec::new();
                match old_tuple.as_ref() {
                    Some(old) => changes.extend(enrollment(
                        &Row {
                            relation,
                            tuple: old,
                        },
                        -1,
                    )?),
                    None => {
                        tracing::warn!("enrollments update without its old row (replica identity is not full); assuming it revoked an active enrollment");
                        if !new.is_null("revoked_at") {
                            changes.push(enrollment_unchecked(&new, -1)?);
                        }
                        return Ok(changes);
                    }
                }
                changes.extend(enrollment(&new, 1)?);
                Ok(changes)
            }
            LogicalReplicationMessage::Delete {
                relation_id,
                old_tuple,
                ..
            } => {
                let relation = self.relation(relation_id)?;
                match relation.table {
                    Table::Enrollments => Ok(enrollment(
                        &Row {
                            relation,
                            tuple: &old_tuple,
                        },
                        -1,
                    )?
                    .into_iter()
                    .collect()),
                    Table::Other => Ok(Vec::new()),
                    _ => {
                        tracing::warn!(table = %relation.name, "a row was deleted; the write model never deletes it, so its views are kept until the next rebuild");
                        Ok(Vec::new())
                    }
                }
            }
            LogicalReplicationMessage::Truncate { relation_ids, .. } => {
                let projected: Vec<&str> = relation_ids
                    .iter()
                    .filter_map(|id| self.relations.get(id))
                    .filter(|r| r.table != Table::Other)
                    .map(|r| r.name.as_str())
                    .collect();
                if projected.is_empty() {
                    Ok(Vec::new())
                } else {
                    Err(DecodeError::Truncated(projected.join(", ")))
                }
            }
            _ => Ok(Vec::new()),
        }
    }

    /// A relation's (new) shape, before any row of it: a projected table
    /// must keep its name and what its views read; another is ignored.
    fn check_relation(
        &mut self,
        relation_id: u32,
        table: Table,
        name: &str,
        columns: &[pg_walstream::ColumnInfo],
    ) -> Result<(), DecodeError> {
        // A renamed table keeps its OID: only the new name tells.
        if let Some(was) = self
            .relations
            .get(&relation_id)
            .and_then(|r| r.table.name())
        {
            if table.name() != Some(was) {
                return Err(DecodeError::Schema(SchemaProblem::RenamedTable {
                    table: was,
                    now: name.to_owned(),
                }));
            }
        }
        match table.name() {
            Some(projected) => {
                let shape: Vec<(&str, u32)> =
                    columns.iter().map(|c| (&*c.name, c.type_id)).collect();
                let needed = schema::columns_of(projected).unwrap_or_default();
                schema::check(projected, needed, &shape).map_err(DecodeError::Schema)
            }
            None => {
                if self.ignored.insert(relation_id) {
                    tracing::info!(
                        table = name,
                        "a table no view reads is in the publication; its changes are ignored"
                    );
                }
                Ok(())
            }
        }
    }

    fn relation(&self, id: u32) -> Result<&Relation, DecodeError> {
        self.relations
            .get(&id)
            .ok_or(DecodeError::UnknownRelation(id))
    }
}

/// An inserted or updated row of a projected table.
fn upsert(row: &Row<'_>, inserted: bool) -> Result<Vec<Change>, DecodeError> {
    Ok(match row.relation.table {
        Table::Courses => vec![Change::Course {
            id: row.int("courses", "id")?,
            fields: row.fields(&COURSE_FIELDS),
        }],
        Table::Enrollments => enrollment(row, 1)?.into_iter().collect(),
        Table::SaleEvents => vec![Change::Event {
            id: row.int("sale_events", "id")?,
            fields: row.fields(&EVENT_FIELDS),
        }],
        Table::SaleEventCourses => vec![Change::EventCourse {
            event_id: row.int("sale_event_courses", "event_id")?,
            course_id: row.int("sale_event_courses", "course_id")?,
            seat_limit: row.opt_int("seat_limit"),
        }],
        Table::Orders => vec![Change::Order {
            id: row.int("orders", "id")?,
            fields: row.fields(&ORDER_FIELDS),
            inserted,
        }],
        Table::OrderItems => vec![Change::OrderItem {
            order_id: row.int("order_items", "order_id")?,
            course_id: row.int("order_items", "course_id")?,
            price_krw: row.int("order_items", "price_krw")?,
        }],
        Table::Other => Vec::new(),
    })
}

/// The enrollment's contribution with `sign`, if it is active.
fn enrollment(row: &Row<'_>, sign: i64) -> Result<Option<Change>, DecodeError> {
    if !row.is_null("revoked_at") {
        return Ok(None);
    }
    enrollment_unchecked(row, sign).map(Some)
}

fn enrollment_unchecked(row: &Row<'_>, sign: i64) -> Result<Change, DecodeError> {
    let created_us = row
        .text("created_at")
        .and_then(|t| parse_pg_timestamp(&t))
        .map(|t| t.timestamp_micros())
        .ok_or(DecodeError::BadColumn {
            table: "enrollments",
            column: "created_at",
        })?;
    Ok(Change::Enrollment {
        course_id: row.int("enrollments", "course_id")?,
        user_id: row.int("enrollments", "user_id")?,
        delta: sign,
        company: row
            .text("company")
            .filter(|c| !c.is_empty())
            .map(Cow::into_owned),
        event_id: row.opt_int("event_id"),
        created_us,
    })
}

/// Parses PostgreSQL's text form of a `timestamptz` (sessions run with
/// `TimeZone=UTC`, `DateStyle=ISO`), e.g. `2026-11-21 21:30:00.123456+00`.
pub fn parse_pg_timestamp(text: &str) -> Option<DateTime<Utc>> {
    parse_utc_timestamp(text).or_else(|| {
        DateTime::parse_from_str(text, "%Y-%m-%d %H:%M:%S%.f%#z")
            .ok()
            .map(|t| t.with_timezone(&Utc))
    })
}

/// The form every timestamp takes here (`YYYY-MM-DD HH:MM:SS[.f]+00`),
/// read by hand: chrono's format-string parser was a tenth of the
/// projector's rendering, which reads `created_at` at every flush.
fn parse_utc_timestamp(text: &str) -> Option<DateTime<Utc>> {
    let b = text.as_bytes();
    let rest = text.strip_suffix("+00")?;
    if rest.len() < 19
        || b[4] != b'-'
        || b[7] != b'-'
        || b[10] != b' '
        || b[13] != b':'
        || b[16] != b':'
    {
        return None;
    }
    let num = |r: std::ops::Range<usize>| -> Option<u32> {
        let digits = rest.get(r)?;
        digits
            .bytes()
            .all(|d| d.is_ascii_digit())
            .then(|| digits.parse().ok())?
    };
    let micros = match rest.get(19..) {
        Some("") => 0,
        Some(fraction) => {
            let digits = fraction.strip_prefix('.')?;
            // PostgreSQL prints at most microseconds; more is not its text.
            if digits.is_empty() || digits.len() > 6 || !digits.bytes().all(|d| d.is_ascii_digit())
            {
                return None;
            }
            let value: u32 = digits.parse().ok()?;
            value * 10u32.pow(6 - digits.len() as u32)
        }
        None => return None,
    };
    let date = chrono::NaiveDate::from_ymd_opt(num(0..4)? as i32, num(5..7)?, num(8..10)?)?;
    let time =
        chrono::NaiveTime::from_hms_micro_opt(num(11..13)?, num(14..16)?, num(17..19)?, micros)?;
    Some(date.and_time(time).and_utc())
}

#[cfg(test)]
mod tests;
