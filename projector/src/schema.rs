//! What the views read of the published tables: each column and the type it
//! is read as. Checked at every pgoutput `Relation` message (before a row of
//! a new shape is applied) and against the catalog before a snapshot build,
//! so a schema change the views cannot follow stops the stream with one
//! clear error rather than a retry loop (see `halt`).
//!
//! The rule, per kind of DDL on a published table:
//! - a column added, or a column no view reads dropped, renamed or retyped:
//!   followed (nothing to do);
//! - a column a view reads retyped within its kind (integers of any width,
//!   `text`/`varchar`): followed;
//! - a column a view reads dropped, renamed, or retyped to another kind, a
//!   table renamed or taken out of the publication: streaming halts;
//! - `TRUNCATE`: followed by a rebuild into a new generation (see `decode`);
//! - a table no view reads added to the publication: its changes are ignored.

use std::borrow::Cow;

use tokio_postgres::Client;

/// How the views read a column's text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Parsed as a 64-bit integer.
    Integer,
    /// Copied as is.
    Text,
    /// Parsed as PostgreSQL's `timestamptz` text.
    Timestamptz,
}

/// Type OIDs (pg_type.dat), for the types named here.
mod oid {
    pub const BOOL: u32 = 16;
    pub const INT8: u32 = 20;
    pub const INT2: u32 = 21;
    pub const INT4: u32 = 23;
    pub const TEXT: u32 = 25;
    pub const JSON: u32 = 114;
    pub const FLOAT4: u32 = 700;
    pub const FLOAT8: u32 = 701;
    pub const MONEY: u32 = 790;
    pub const BPCHAR: u32 = 1042;
    pub const VARCHAR: u32 = 1043;
    pub const DATE: u32 = 1082;
    pub const TIMESTAMP: u32 = 1114;
    pub const TIMESTAMPTZ: u32 = 1184;
    pub const NUMERIC: u32 = 1700;
    pub const UUID: u32 = 2950;
    pub const JSONB: u32 = 3802;
}

impl Kind {
    /// The column's text reads the same for a column of type `type_oid`.
    /// (`char(n)` pads with blanks and `timestamp` has no offset: not the same.)
    fn accepts(self, type_oid: u32) -> bool {
        match self {
            Kind::Integer => matches!(type_oid, oid::INT8 | oid::INT4 | oid::INT2),
            Kind::Text => matches!(type_oid, oid::TEXT | oid::VARCHAR),
            Kind::Timestamptz => type_oid == oid::TIMESTAMPTZ,
        }
    }
}

/// A column a view reads: its name, how it is read, and its type in the
/// migrations (what the operator restores).
#[derive(Debug)]
pub struct Column {
    pub name: &'static str,
    pub kind: Kind,
    pub sql_type: &'static str,
}

const fn col(name: &'static str, kind: Kind, sql_type: &'static str) -> Column {
    Column {
        name,
        kind,
        sql_type,
    }
}

use Kind::{Integer, Text, Timestamptz};

/// Every published table and the columns its views read (the decoder's
/// `*_FIELDS` and keys, and the snapshot build's queries).
pub const TABLES: &[(&str, &[Column])] = &[
    (
        "courses",
        &[
            col("id", Integer, "bigint"),
            col("title", Text, "text"),
            col("summary", Text, "text"),
            col("description_html", Text, "text"),
            col("category", Text, "text"),
            col("instructor", Text, "text"),
            col("price_krw", Integer, "bigint"),
            col("created_at", Timestamptz, "timestamptz"),
        ],
    ),
    (
        "sale_events",
        &[
            col("id", Integer, "bigint"),
            col("name", Text, "text"),
            col("starts_at", Timestamptz, "timestamptz"),
            col("ends_at", Timestamptz, "timestamptz"),
            col("discount_percent", Integer, "integer"),
        ],
    ),
    (
        "sale_event_courses",
        &[
            col("event_id", Integer, "bigint"),
            col("course_id", Integer, "bigint"),
            col("seat_limit", Integer, "integer"),
        ],
    ),
    (
        "orders",
        &[
            col("id", Integer, "bigint"),
            col("user_id", Integer, "bigint"),
            col("event_id", Integer, "bigint"),
            col("status", Text, "text"),
            col("total_krw", Integer, "bigint"),
            col("created_at", Timestamptz, "timestamptz"),
        ],
    ),
    (
        "order_items",
        &[
            col("order_id", Integer, "bigint"),
            col("course_id", Integer, "bigint"),
            col("price_krw", Integer, "bigint"),
        ],
    ),
    (
        "enrollments",
        &[
            col("user_id", Integer, "bigint"),
            col("course_id", Integer, "bigint"),
            col("event_id", Integer, "bigint"),
            col("company", Text, "text"),
            col("created_at", Timestamptz, "timestamptz"),
            col("revoked_at", Timestamptz, "timestamptz"),
        ],
    ),
];

/// A change to the source the views cannot follow: replaying the stream
/// would meet it again, so retrying cannot help; the operator must act.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SchemaProblem {
    #[error("table {table} has no column {column} (dropped or renamed), which the views read: add it back as {sql_type} (or rename it back), or run a projector release that reads the new shape")]
    MissingColumn {
        table: &'static str,
        column: &'static str,
        sql_type: &'static str,
    },
    #[error("column {column} of table {table} is now {found}, which the views cannot read as {sql_type}: change it back (ALTER TABLE {table} ALTER COLUMN {column} TYPE {sql_type}), or run a projector release that reads the new type")]
    Retyped {
        table: &'static str,
        column: &'static str,
        found: String,
        sql_type: &'static str,
    },
    #[error("table {table} is missing (dropped, renamed, or moved out of schema public): restore it, or run a projector release that reads the new name")]
    MissingTable { table: &'static str },
    #[error("table {table} was renamed to {now}: rename it back (ALTER TABLE {now} RENAME TO {table}), or run a projector release that reads the new name")]
    RenamedTable { table: &'static str, now: String },
    #[error("publication {publication} does not publish table {table}, so its views would silently stop changing: ALTER PUBLICATION {publication} ADD TABLE {table}")]
    NotPublished { publication: String, table: String },
    #[error("a row of {table} has no readable {column} (NULL or malformed) though the views need it: correct the row, then run `projector rebuild`")]
    BadValue { table: String, column: String },
}

impl SchemaProblem {
    /// The table it is about.
    pub fn table(&self) -> &str {
        match self {
            SchemaProblem::MissingColumn { table, .. }
            | SchemaProblem::Retyped { table, .. }
            | SchemaProblem::MissingTable { table }
            | SchemaProblem::RenamedTable { table, .. } => table,
            SchemaProblem::NotPublished { table, .. } | SchemaProblem::BadValue { table, .. } => {
                table
            }
        }
    }

    /// The column it is about, if one.
    pub fn column(&self) -> Option<&str> {
        match self {
            SchemaProblem::MissingColumn { column, .. } | SchemaProblem::Retyped { column, .. } => {
                Some(column)
            }
            SchemaProblem::BadValue { column, .. } => Some(column),
            _ => None,
        }
    }

    /// Whether the catalog shows when it is fixed (else only the operator's
    /// `projector rebuild` says so: a bad row is data, not schema).
    pub fn seen_in_catalog(&self) -> bool {
        !matches!(self, SchemaProblem::BadValue { .. })
    }
}

/// The columns the views read of `table`, if it is a published table.
pub fn columns_of(table: &str) -> Option<&'static [Column]> {
    TABLES
        .iter()
        .find(|(name, _)| *name == table)
        .map(|(_, columns)| *columns)
}

/// Checks the shape of a published table (`columns` as name and type OID)
/// against what its views read.
pub fn check(
    table: &'static str,
    needed: &[Column],
    columns: &[(impl AsRef<str>, u32)],
) -> Result<(), SchemaProblem> {
    for need in needed {
        match columns.iter().find(|(name, _)| name.as_ref() == need.name) {
            None => {
                return Err(SchemaProblem::MissingColumn {
                    table,
                    column: need.name,
                    sql_type: need.sql_type,
                })
            }
            Some((_, type_oid)) if !need.kind.accepts(*type_oid) => {
                return Err(SchemaProblem::Retyped {
                    table,
                    column: need.name,
                    found: type_name(*type_oid).into_owned(),
                    sql_type: need.sql_type,
                })
            }
            Some(_) => {}
        }
    }
    Ok(())
}

/// A type's SQL name, for the messages.
fn type_name(type_oid: u32) -> Cow<'static, str> {
    Cow::Borrowed(match type_oid {
        oid::BOOL => "boolean",
        oid::INT8 => "bigint",
        oid::INT2 => "smallint",
        oid::INT4 => "integer",
        oid::TEXT => "text",
        oid::JSON => "json",
        oid::FLOAT4 => "real",
        oid::FLOAT8 => "double precision",
        oid::MONEY => "money",
        oid::BPCHAR => "character",
        oid::VARCHAR => "character varying",
        oid::DATE => "date",
        oid::TIMESTAMP => "timestamp without time zone",
        oid::TIMESTAMPTZ => "timestamp with time zone",
        oid::NUMERIC => "numeric",
        oid::UUID => "uuid",
        oid::JSONB => "jsonb",
        other => return Cow::Owned(format!("the type with OID {other}")),
    })
}

/// The first table the publication does not carry, if any.
pub async fn check_publication(
    pg: &Client,
    publication: &str,
) -> anyhow::Result<Option<SchemaProblem>> {
    let published: Vec<String> = pg
        .query(
            "SELECT tablename::text FROM pg_publication_tables \
              WHERE pubname = $1 AND schemaname = 'public'",
            &[&publication],
        )
        .await?
        .iter()
        .map(|row| row.get(0))
        .collect();
    Ok(TABLES
        .iter()
        .find(|(table, _)| !published.iter().any(|p| p == table))
        .map(|(table, _)| SchemaProblem::NotPublished {
            publication: publication.to_owned(),
            table: (*table).to_owned(),
        }))
}

/// The first problem the tables as they are now would give a snapshot build.
pub async fn check_tables(pg: &Client) -> anyhow::Result<Option<SchemaProblem>> {
    let names: Vec<&str> = TABLES.iter().map(|(table, _)| *table).collect();
    let rows = pg
        .query(
            "SELECT c.relname::text, a.attname::text, a.atttypid \
               FROM pg_class c \
               JOIN pg_namespace n ON n.oid = c.relnamespace \
               JOIN pg_attribute a ON a.attrelid = c.oid \
              WHERE n.nspname = 'public' AND c.relname = ANY($1) \
                AND a.attnum > 0 AND NOT a.attisdropped",
            &[&names],
        )
        .await?;
    for (table, needed) in TABLES {
        let columns: Vec<(String, u32)> = rows
            .iter()
            .filter(|row| row.get::<_, &str>(0) == *table)
            .map(|row| (row.get(1), row.get(2)))
            .collect();
        if columns.is_empty() {
            return Ok(Some(SchemaProblem::MissingTable { table }));
        }
        if let Err(problem) = check(table, needed, &columns) {
            return Ok(Some(problem));
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decode::{COURSE_FIELDS, EVENT_FIELDS, ORDER_FIELDS};

    fn read(table: &str) -> Vec<&'static str> {
        columns_of(table)
            .expect("a published table")
            .iter()
            .map(|c| c.name)
            .collect()
    }

    #[test]
    fn the_columns_checked_are_the_columns_the_views_read() {
        let published: Vec<&str> = TABLES.iter().map(|(t, _)| *t).collect();
        assert_eq!(published, crate::source::PUBLISHED_TABLES);
        for (table, fields) in [
            ("courses", &COURSE_FIELDS[..]),
            ("sale_events", &EVENT_FIELDS[..]),
            ("orders", &ORDER_FIELDS[..]),
        ] {
            for field in fields {
                assert!(read(table).contains(field), "{table}.{field}");
            }
        }
    }

    #[test]
    fn the_migrated_shape_passes_and_wider_or_narrower_kin_types_too() {
        let courses = columns_of("courses").expect("published");
        let migrated: Vec<(&str, u32)> = [
            ("id", oid::INT8),
            ("title", oid::TEXT),
            ("summary", oid::VARCHAR),
            ("description_html", oid::TEXT),
            ("category", oid::TEXT),
            ("instructor", oid::TEXT),
            ("price_krw", oid::INT4),
            ("created_at", oid::TIMESTAMPTZ),
            ("updated_at", oid::TIMESTAMPTZ),
            ("a_new_column", oid::JSONB),
        ]
        .into();
        assert_eq!(check("courses", courses, &migrated), Ok(()));
    }

    #[test]
    fn a_missing_or_retyped_column_names_the_table_the_column_and_the_fix() {
        let events = columns_of("sale_events").expect("published");
        let renamed = [
            ("id", oid::INT8),
            ("title", oid::TEXT),
            ("starts_at", oid::TIMESTAMPTZ),
            ("ends_at", oid::TIMESTAMPTZ),
            ("discount_percent", oid::INT4),
        ];
        let problem = check("sale_events", events, &renamed).expect_err("name is gone");
        assert_eq!(problem.table(), "sale_events");
        assert_eq!(problem.column(), Some("name"));
        assert!(problem.to_string().contains("no column name"), "{problem}");

        let retyped = [
            ("id", oid::INT8),
            ("name", oid::TEXT),
            ("starts_at", oid::TIMESTAMP),
            ("ends_at", oid::TIMESTAMPTZ),
            ("discount_percent", oid::NUMERIC),
        ];
        let problem = check("sale_events", events, &retyped).expect_err("retyped");
        assert_eq!(
            problem.to_string(),
            "column starts_at of table sale_events is now timestamp without time zone, \
             which the views cannot read as timestamptz: change it back (ALTER TABLE \
             sale_events ALTER COLUMN starts_at TYPE timestamptz), or run a projector \
             release that reads the new type"
        );
        assert!(problem.seen_in_catalog());
        assert!(type_name(99_999).contains("99999"));
    }
}
