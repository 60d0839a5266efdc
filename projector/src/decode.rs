//! pgoutput messages → the [`Change`]s the projection understands, and the
//! PostgreSQL text forms (timestamps) those changes carry.

use std::{borrow::Cow, collections::HashMap};

use chrono::{DateTime, Utc};
use pg_walstream::{LogicalReplicationMessage, LogicalReplicationParser, TupleData};

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
    #[error("table {0} was truncated: the views must be rebuilt")]
    Truncated(String),
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
    fn of(name: &str) -> Self {
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
}

impl Default for Decoder {
    fn default() -> Self {
        Self {
            parser: LogicalReplicationParser::with_protocol_version(1),
            relations: HashMap::new(),
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
                relation_name,
                columns,
                ..
            } => {
                self.relations.insert(
                    relation_id,
                    Relation {
                        table: Table::of(&relation_name),
                        name: relation_name.to_string(),
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
mod tests {
    use pg_walstream::{encode_message_to_bytes, ColumnData, ColumnInfo};

    use super::*;

    const COURSES: u32 = 16_001;
    const ENROLLMENTS: u32 = 16_002;
    const ORDERS: u32 = 16_003;
    const EVENT_COURSES: u32 = 16_004;
    const USERS: u32 = 16_005;

    fn relation(id: u32, name: &str, columns: &[&str]) -> LogicalReplicationMessage {
        LogicalReplicationMessage::Relation {
            relation_id: id,
            namespace: "public".into(),
            relation_name: name.into(),
            replica_identity: b'f',
            columns: columns
                .iter()
                .map(|c| ColumnInfo::new(0, (*c).to_owned(), 25, -1))
                .collect(),
        }
    }

    /// A tuple from text values; `None` is NULL.
    fn tuple(values: &[Option<&str>]) -> TupleData {
        TupleData::new(
            values
                .iter()
                .map(|v| match v {
                    Some(text) => ColumnData::text(text.as_bytes().to_vec()),
                    None => ColumnData::null(),
                })
                .collect(),
        )
    }

    /// A decoder that has seen the relations of the tests' tables.
    fn decoder() -> Decoder {
        let mut decoder = Decoder::default();
        for message in [
            relation(
                COURSES,
                "courses",
                &[
                    "id",
                    "title",
                    "summary",
                    "description_html",
                    "category",
                    "instructor",
                    "price_krw",
                    "created_at",
                    "updated_at",
                ],
            ),
            relation(
                ENROLLMENTS,
                "enrollments",
                &[
                    "id",
                    "user_id",
                    "course_id",
                    "order_id",
                    "event_id",
                    "company",
                    "created_at",
                    "revoked_at",
                ],
            ),
            relation(
                ORDERS,
                "orders",
                &[
                    "id",
                    "user_id",
                    "event_id",
                    "status",
                    "total_krw",
                    "created_at",
                    "cancelled_at",
                ],
            ),
            relation(
                EVENT_COURSES,
                "sale_event_courses",
                &["event_id", "course_id", "seat_limit"],
            ),
            relation(USERS, "users", &["id", "email"]),
        ] {
            assert_eq!(decode(&mut decoder, message), Ok(Vec::new()));
        }
        decoder
    }

    /// Encodes `message` as pgoutput (protocol 1) and decodes it.
    fn decode(
        decoder: &mut Decoder,
        message: LogicalReplicationMessage,
    ) -> Result<Vec<Change>, String> {
        decoder
            .decode(&encode_message_to_bytes(&message, 1))
            .map_err(|e| e.to_string())
    }

    fn fields(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    fn course_row() -> TupleData {
        tuple(&[
            Some("7"),
            Some("Rust"),
            Some("fast"),
            Some("<p>long</p>"),
            Some("dev"),
            Some("Ferris"),
            Some("30000"),
            Some("2026-11-21 21:30:00+00"),
            Some("2026-11-21 21:30:00+00"),
        ])
    }

    /// An enrollment of user 3 in course 7 at event 4, revoked or not.
    fn enrollment_row(revoked: bool) -> TupleData {
        tuple(&[
            Some("1"),
            Some("3"),
            Some("7"),
            Some("9"),
            Some("4"),
            Some("acme"),
            Some("2026-11-21 21:30:00.5+09"),
            revoked.then_some("2026-11-22 00:00:00+00"),
        ])
    }

    fn active_enrollment(delta: i64) -> Change {
        Change::Enrollment {
            course_id: 7,
            user_id: 3,
            delta,
            company: Some("acme".into()),
            event_id: Some(4),
            created_us: parse_pg_timestamp("2026-11-21 12:30:00.5+00")
                .expect("time")
                .timestamp_micros(),
        }
    }

    #[test]
    fn an_inserted_course_carries_its_projected_columns_in_order() {
        let mut decoder = decoder();
        let changes = decode(
            &mut decoder,
            LogicalReplicationMessage::Insert {
                relation_id: COURSES,
                tuple: course_row(),
            },
        );
        assert_eq!(
            changes,
            Ok(vec![Change::Course {
                id: 7,
                fields: fields(&[
                    ("title", "Rust"),
                    ("summary", "fast"),
                    ("description_html", "<p>long</p>"),
                    ("category", "dev"),
                    ("instructor", "Ferris"),
                    ("price_krw", "30000"),
                    ("created_at", "2026-11-21 21:30:00+00"),
                ]),
            }])
        );
    }

    #[test]
    fn an_update_leaves_unchanged_toast_columns_out() {
        let mut decoder = decoder();
        let mut row = course_row();
        row.columns[3] = ColumnData::unchanged();
        row.columns[1] = ColumnData::text(b"Rust 2".to_vec());
        let changes = decode(
            &mut decoder,
            LogicalReplicationMessage::Update {
                relation_id: COURSES,
                old_tuple: None,
                new_tuple: row,
                key_type: None,
            },
        )
        .expect("decodes");
        let [Change::Course { id: 7, fields }] = changes.as_slice() else {
            panic!("one course change: {changes:?}");
        };
        assert!(fields.iter().all(|(name, _)| name != "description_html"));
        assert!(fields.contains(&("title".into(), "Rust 2".into())));
        assert_eq!(fields.len(), COURSE_FIELDS.len() - 1);
    }

    #[test]
    fn orders_write_null_as_empty_and_know_an_insert_from_an_update() {
        let mut decoder = decoder();
        let row = || {
            tuple(&[
                Some("5"),
                Some("3"),
                None,
                Some("completed"),
                Some("30000"),
                Some("2026-11-21 21:30:00+00"),
                None,
            ])
        };
        let order = |inserted| Change::Order {
            id: 5,
            fields: fields(&[
                ("user_id", "3"),
                ("event_id", ""),
                ("status", "completed"),
                ("total_krw", "30000"),
                ("created_at", "2026-11-21 21:30:00+00"),
            ]),
            inserted,
        };
        let inserted = LogicalReplicationMessage::Insert {
            relation_id: ORDERS,
            tuple: row(),
        };
        assert_eq!(decode(&mut decoder, inserted), Ok(vec![order(true)]));
        let updated = LogicalReplicationMessage::Update {
            relation_id: ORDERS,
            old_tuple: None,
            new_tuple: row(),
            key_type: None,
        };
        assert_eq!(decode(&mut decoder, updated), Ok(vec![order(false)]));
    }

    #[test]
    fn a_seat_limit_of_null_is_unlimited() {
        let mut decoder = decoder();
        let link = |limit| LogicalReplicationMessage::Insert {
            relation_id: EVENT_COURSES,
            tuple: tuple(&[Some("4"), Some("7"), limit]),
        };
        let seat_limit = |seat_limit| {
            Ok(vec![Change::EventCourse {
                event_id: 4,
                course_id: 7,
                seat_limit,
            }])
        };
        assert_eq!(decode(&mut decoder, link(Some("10"))), seat_limit(Some(10)));
        assert_eq!(decode(&mut decoder, link(None)), seat_limit(None));
    }

    #[test]
    fn an_enrollment_counts_up_with_its_time_read_in_utc() {
        let mut decoder = decoder();
        let inserted = LogicalReplicationMessage::Insert {
            relation_id: ENROLLMENTS,
            tuple: enrollment_row(false),
        };
        assert_eq!(
            decode(&mut decoder, inserted),
            Ok(vec![active_enrollment(1)])
        );
    }

    #[test]
    fn an_enrollment_update_is_the_new_active_row_minus_the_old() {
        let mut decoder = decoder();
        let update = |old, new| LogicalReplicationMessage::Update {
            relation_id: ENROLLMENTS,
            old_tuple: Some(enrollment_row(old)),
            new_tuple: enrollment_row(new),
            key_type: Some('O'),
        };
        assert_eq!(
            decode(&mut decoder, update(false, true)),
            Ok(vec![active_enrollment(-1)]),
            "a revocation"
        );
        assert_eq!(
            decode(&mut decoder, update(false, false)),
            Ok(vec![active_enrollment(-1), active_enrollment(1)]),
            "an active row rewritten nets zero"
        );
        assert_eq!(decode(&mut decoder, update(true, true)), Ok(Vec::new()));
    }

    #[test]
    fn an_enrollment_update_without_its_old_row_counts_a_revocation() {
        let mut decoder = decoder();
        let update = |revoked| LogicalReplicationMessage::Update {
            relation_id: ENROLLMENTS,
            old_tuple: None,
            new_tuple: enrollment_row(revoked),
            key_type: None,
        };
        assert_eq!(
            decode(&mut decoder, update(true)),
            Ok(vec![active_enrollment(-1)])
        );
        assert_eq!(decode(&mut decoder, update(false)), Ok(Vec::new()));
    }

    #[test]
    fn a_deleted_active_enrollment_counts_down_and_other_deletes_change_nothing() {
        let mut decoder = decoder();
        let deleted = |relation_id, old_tuple| LogicalReplicationMessage::Delete {
            relation_id,
            old_tuple,
            key_type: 'O',
        };
        assert_eq!(
            decode(&mut decoder, deleted(ENROLLMENTS, enrollment_row(false))),
            Ok(vec![active_enrollment(-1)])
        );
        assert_eq!(
            decode(&mut decoder, deleted(ENROLLMENTS, enrollment_row(true))),
            Ok(Vec::new())
        );
        assert_eq!(
            decode(&mut decoder, deleted(COURSES, course_row())),
            Ok(Vec::new())
        );
        assert_eq!(
            decode(
                &mut decoder,
                deleted(USERS, tuple(&[Some("3"), Some("a@b")]))
            ),
            Ok(Vec::new())
        );
    }

    #[test]
    fn truncating_a_projected_table_is_an_error_and_another_is_ignored() {
        let mut decoder = decoder();
        let truncate = |relation_ids| LogicalReplicationMessage::Truncate {
            relation_ids,
            flags: 0,
        };
        assert_eq!(decode(&mut decoder, truncate(vec![USERS])), Ok(Vec::new()));
        let err = decode(&mut decoder, truncate(vec![USERS, ORDERS])).expect_err("refused");
        assert!(err.contains("orders was truncated"), "{err}");
    }

    #[test]
    fn a_change_before_its_relation_or_with_a_bad_key_is_refused() {
        let mut decoder = decoder();
        let unknown = LogicalReplicationMessage::Insert {
            relation_id: 1,
            tuple: tuple(&[Some("1")]),
        };
        let err = decode(&mut decoder, unknown).expect_err("refused");
        assert!(err.contains("relation 1 before its Relation"), "{err}");
        let mut row = course_row();
        row.columns[0] = ColumnData::text(b"seven".to_vec());
        let bad = LogicalReplicationMessage::Insert {
            relation_id: COURSES,
            tuple: row,
        };
        let err = decode(&mut decoder, bad).expect_err("refused");
        assert!(err.contains("courses: column id"), "{err}");
    }

    #[test]
    fn a_relation_sent_again_with_a_new_column_order_is_followed() {
        let mut decoder = decoder();
        let reordered = relation(
            EVENT_COURSES,
            "sale_event_courses",
            &["seat_limit", "course_id", "event_id"],
        );
        assert_eq!(decode(&mut decoder, reordered), Ok(Vec::new()));
        let link = LogicalReplicationMessage::Insert {
            relation_id: EVENT_COURSES,
            tuple: tuple(&[Some("2"), Some("7"), Some("4")]),
        };
        assert_eq!(
            decode(&mut decoder, link),
            Ok(vec![Change::EventCourse {
                event_id: 4,
                course_id: 7,
                seat_limit: Some(2),
            }])
        );
    }

    #[test]
    fn bytes_that_are_not_pgoutput_are_a_parse_error() {
        let err = Decoder::default().decode(b"\xff").expect_err("refused");
        assert!(matches!(err, DecodeError::Parse(_)), "{err}");
    }

    #[test]
    fn parses_postgres_timestamps_with_and_without_fraction() {
        let t = parse_pg_timestamp("2026-11-21 21:30:00.123456+00").expect("parses");
        assert_eq!(t.to_rfc3339(), "2026-11-21T21:30:00.123456+00:00");
        assert!(parse_pg_timestamp("2026-11-21 21:30:00+00").is_some());
    }

    #[test]
    fn the_hand_parser_reads_timestamps_as_chrono_does() {
        for text in [
            "2026-11-21 21:30:00+00",
            "2026-11-21 21:30:00.1+00",
            "2026-11-21 21:30:00.120000+00",
            "2026-11-21 21:30:00.000001+00",
            "1999-12-31 23:59:59.999999+00",
            "2028-02-29 00:00:00+00",
        ] {
            let by_chrono = DateTime::parse_from_str(text, "%Y-%m-%d %H:%M:%S%.f%#z")
                .expect("chrono parses")
                .with_timezone(&Utc);
            assert_eq!(parse_utc_timestamp(text), Some(by_chrono), "{text}");
        }
        for text in [
            "2026-02-30 00:00:00+00",
            "2026-11-21T21:30:00+00",
            "2026-11-21 21:30:00.+00",
            "2026-11-21 21:30+00",
            "2026-11-21 21:30:00.1234567+00",
            "x",
        ] {
            assert_eq!(parse_utc_timestamp(text), None, "{text}");
        }
        let offset = parse_pg_timestamp("2026-11-21 21:30:00+09").expect("other offsets fall back");
        assert_eq!(offset.to_rfc3339(), "2026-11-21T12:30:00+00:00");
    }

    #[test]
    fn timestamps_at_other_offsets_are_read_in_utc() {
        for (text, utc) in [
            ("2026-11-21 21:30:00+09", "2026-11-21T12:30:00+00:00"),
            ("2026-11-21 21:30:00.25-03", "2026-11-22T00:30:00.250+00:00"),
            ("2026-11-21 21:30:00+05:30", "2026-11-21T16:00:00+00:00"),
            ("2026-01-01 00:30:00+01", "2025-12-31T23:30:00+00:00"),
        ] {
            let parsed = parse_pg_timestamp(text).expect("parses");
            assert_eq!(parsed.to_rfc3339(), utc, "{text}");
        }
    }

    #[test]
    fn text_that_is_not_a_timestamp_is_refused() {
        for text in [
            "",
            "2026-11-21",
            "2026-11-21 21:30:00",
            "2026-13-01 00:00:00+00",
            "2026-11-21 24:00:00+00",
            "2026-11-21 21:30:00+0x",
            "yesterday",
        ] {
            assert_eq!(parse_pg_timestamp(text), None, "{text:?}");
        }
    }
}
