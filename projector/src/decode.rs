//! pgoutput messages → domain changes the projection understands.
//!
//! Parsing the wire format is pg_walstream's; this module keeps the relation
//! map (updated by every `Relation` message, so added columns are picked up
//! mid-stream) and turns row tuples of the tables we project into [`Change`]s.

use std::collections::HashMap;

use pg_walstream::{LogicalReplicationMessage, LogicalReplicationParser, TupleData};

/// A change to a projected entity, in commit order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// Columns of a course row that were written (unchanged TOAST columns are
    /// absent, so they never blank a field).
    CourseRow {
        id: i64,
        fields: Vec<(String, String)>,
    },
    /// An active enrollment appeared (+1) or ended (-1) for a course.
    Enrollment {
        course_id: i64,
        delta: i64,
        company: Option<String>,
    },
}

/// The stream could not be turned into changes.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("pgoutput parse error: {0}")]
    Parse(String),
    #[error("change for relation {0} before its Relation message")]
    UnknownRelation(u32),
    #[error("{table}: column {column} missing or not a number")]
    BadColumn {
        table: &'static str,
        column: &'static str,
    },
    #[error("table {0} was truncated: the views must be rebuilt")]
    Truncated(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Table {
    Courses,
    Enrollments,
    Other,
}

#[derive(Debug)]
struct Relation {
    table: Table,
    name: String,
    columns: Vec<String>,
}

/// Course columns copied into the course aggregate (and so into its views).
const COURSE_FIELDS: [&str; 7] = [
    "title",
    "summary",
    "description_html",
    "category",
    "instructor",
    "price_krw",
    "created_at",
];

/// Decodes the payloads of `XLogData` messages (Begin and Commit are parsed by
/// the replication client before they get here).
pub struct Decoder {
    parser: LogicalReplicationParser,
    relations: HashMap<u32, Relation>,
}

impl Default for Decoder {
    fn default() -> Self {
        Self {
            parser: LogicalReplicationParser::with_protocol_version(1),
            relations: HashMap::new(),
        }
    }
}

/// A row as (column name → text value); NULLs and unchanged TOAST are absent.
struct Row<'a> {
    relation: &'a Relation,
    tuple: &'a TupleData,
}

impl Row<'_> {
    fn text(&self, column: &str) -> Option<std::borrow::Cow<'_, str>> {
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
                relation_name,
                columns,
                ..
            } => {
                let table = match &*relation_name {
                    "courses" => Table::Courses,
                    "enrollments" => Table::Enrollments,
                    _ => Table::Other,
                };
                let columns = columns.iter().map(|c| c.name.to_string()).collect();
                self.relations.insert(
                    relation_id,
                    Relation {
                        table,
                        name: relation_name.to_string(),
                        columns,
                    },
                );
                Ok(Vec::new())
            }
            LogicalReplicationMessage::Insert { relation_id, tuple } => {
                let relation = self.relation(relation_id)?;
                let row = Row {
                    relation,
                    tuple: &tuple,
                };
                match relation.table {
                    Table::Courses => Ok(vec![course_row(&row)?]),
                    Table::Enrollments => Ok(enrollment(&row, 1)?.into_iter().collect()),
                    Table::Other => Ok(Vec::new()),
                }
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
                match relation.table {
                    Table::Courses => Ok(vec![course_row(&new)?]),
                    Table::Enrollments => {
                        // REPLICA IDENTITY FULL gives the old row, so the
                        // change is exactly "old active" minus "new active".
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
                    Table::Other => Ok(Vec::new()),
                }
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
                    Table::Courses => {
                        tracing::warn!(
                            "a course row was deleted; its views are kept until the next rebuild"
                        );
                        Ok(Vec::new())
                    }
                    Table::Other => Ok(Vec::new()),
                }
            }
            LogicalReplicationMessage::Truncate { relation_ids, .. } => {
                for id in relation_ids {
                    if let Some(r) = self.relations.get(&id) {
                        if r.table != Table::Other {
                            return Err(DecodeError::Truncated(r.name.clone()));
                        }
                    }
                }
                Ok(Vec::new())
            }
            _ => Ok(Vec::new()),
        }
    }

    fn relation(&self, id: u32) -> Result<&Relation, DecodeError> {
        self.relations
            .get(&id)
            .ok_or(DecodeError::UnknownRelation(id))
    }
}

fn course_row(row: &Row<'_>) -> Result<Change, DecodeError> {
    let id = row.int("courses", "id")?;
    let fields = COURSE_FIELDS
        .iter()
        .filter_map(|&f| row.text(f).map(|v| (f.to_owned(), v.into_owned())))
        .collect();
    Ok(Change::CourseRow { id, fields })
}

/// The enrollment's contribution with `sign`, if it is active.
fn enrollment(row: &Row<'_>, sign: i64) -> Result<Option<Change>, DecodeError> {
    if !row.is_null("revoked_at") {
        return Ok(None);
    }
    enrollment_unchecked(row, sign).map(Some)
}

fn enrollment_unchecked(row: &Row<'_>, sign: i64) -> Result<Change, DecodeError> {
    Ok(Change::Enrollment {
        course_id: row.int("enrollments", "course_id")?,
        delta: sign,
        company: row
            .text("company")
            .filter(|c| !c.is_empty())
            .map(|c| c.into_owned()),
    })
}
