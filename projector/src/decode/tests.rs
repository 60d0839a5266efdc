//! The decoder fed pgoutput built by hand, and the timestamp parsers.

use pg_walstream::{encode_message_to_bytes, ColumnData, ColumnInfo};

use super::*;

const COURSES: u32 = 16_001;
const ENROLLMENTS: u32 = 16_002;
const ORDERS: u32 = 16_003;
const EVENT_COURSES: u32 = 16_004;
const USERS: u32 = 16_005;

const INT8: u32 = 20;
const INT4: u32 = 23;
const TEXT: u32 = 25;
const TIMESTAMPTZ: u32 = 1184;
const NUMERIC: u32 = 1700;

/// The type the migrations give a column of this name.
fn migrated_type(column: &str) -> u32 {
    match column {
        "seat_limit" | "discount_percent" => INT4,
        c if c == "id" || c.ends_with("_id") || c.ends_with("_krw") => INT8,
        c if c.ends_with("_at") => TIMESTAMPTZ,
        _ => TEXT,
    }
}

fn relation(id: u32, name: &str, columns: &[&str]) -> LogicalReplicationMessage {
    let typed: Vec<(&str, u32)> = columns.iter().map(|c| (*c, migrated_type(c))).collect();
    typed_relation(id, "public", name, &typed)
}

fn typed_relation(
    id: u32,
    namespace: &str,
    name: &str,
    columns: &[(&str, u32)],
) -> LogicalReplicationMessage {
    LogicalReplicationMessage::Relation {
        relation_id: id,
        namespace: namespace.into(),
        relation_name: name.into(),
        replica_identity: b'f',
        columns: columns
            .iter()
            .map(|(c, t)| ColumnInfo::new(0, (*c).to_owned(), *t, -1))
            .collect(),
    }
}

const COURSE_COLUMNS: [&str; 9] = [
    "id",
    "title",
    "summary",
    "description_html",
    "category",
    "instructor",
    "price_krw",
    "created_at",
    "updated_at",
];

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
        relation(COURSES, "courses", &COURSE_COLUMNS),
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
fn truncating_a_projected_table_asks_for_a_rebuild_and_another_is_ignored() {
    let mut decoder = decoder();
    let truncate = |relation_ids| LogicalReplicationMessage::Truncate {
        relation_ids,
        flags: 0,
    };
    assert_eq!(decode(&mut decoder, truncate(vec![USERS])), Ok(Vec::new()));
    let err = decode(&mut decoder, truncate(vec![USERS, ORDERS])).expect_err("refused");
    assert!(err.contains("orders was truncated"), "{err}");
    let err = decode(&mut decoder, truncate(vec![COURSES, USERS, ORDERS])).expect_err("refused");
    assert!(err.contains("courses, orders was truncated"), "{err}");
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
    // A bad value replays as bad: the stream halts on it rather than retrying.
    let mut row = course_row();
    row.columns[0] = ColumnData::null();
    let err = decoder
        .decode(&encode_message_to_bytes(
            &LogicalReplicationMessage::Insert {
                relation_id: COURSES,
                tuple: row,
            },
            1,
        ))
        .expect_err("refused");
    assert_eq!(
        err.halts(),
        Some(SchemaProblem::BadValue {
            table: "courses".into(),
            column: "id".into()
        })
    );
}

/// The course columns with `change` applied to the one named.
fn courses_with(
    change: impl Fn(&'static str) -> Option<(&'static str, u32)>,
) -> Vec<(&'static str, u32)> {
    COURSE_COLUMNS.iter().filter_map(|c| change(c)).collect()
}

fn halted(result: Result<Vec<Change>, DecodeError>) -> SchemaProblem {
    match result {
        Err(err) => err.halts().unwrap_or_else(|| panic!("not a halt: {err}")),
        Ok(changes) => panic!("followed: {changes:?}"),
    }
}

fn decode_raw(
    decoder: &mut Decoder,
    message: LogicalReplicationMessage,
) -> Result<Vec<Change>, DecodeError> {
    decoder.decode(&encode_message_to_bytes(&message, 1))
}

#[test]
fn a_relation_without_a_column_the_views_read_halts_before_any_row_of_it() {
    let mut decoder = decoder();
    let renamed = courses_with(|c| match c {
        "summary" => Some(("subtitle", TEXT)),
        c => Some((c, migrated_type(c))),
    });
    let problem = halted(decode_raw(
        &mut decoder,
        typed_relation(COURSES, "public", "courses", &renamed),
    ));
    assert_eq!(
        problem,
        SchemaProblem::MissingColumn {
            table: "courses",
            column: "summary",
            sql_type: "text"
        }
    );
    // A column no view reads may go; a new one may come.
    let mut decoder = self::decoder();
    let followed = courses_with(|c| match c {
        "updated_at" => Some(("tags", 1009)),
        c => Some((c, migrated_type(c))),
    });
    assert_eq!(
        decode_raw(
            &mut decoder,
            typed_relation(COURSES, "public", "courses", &followed)
        )
        .map_err(|e| e.to_string()),
        Ok(Vec::new())
    );
}

#[test]
fn a_column_retyped_within_its_kind_is_followed_and_to_another_kind_halts() {
    let mut decoder = decoder();
    let narrower = courses_with(|c| match c {
        "price_krw" => Some((c, INT4)),
        "title" => Some((c, 1043)),
        c => Some((c, migrated_type(c))),
    });
    assert!(decode_raw(
        &mut decoder,
        typed_relation(COURSES, "public", "courses", &narrower)
    )
    .is_ok());
    let numeric = courses_with(|c| match c {
        "price_krw" => Some((c, NUMERIC)),
        c => Some((c, migrated_type(c))),
    });
    let problem = halted(decode_raw(
        &mut decoder,
        typed_relation(COURSES, "public", "courses", &numeric),
    ));
    assert_eq!(problem.table(), "courses");
    assert_eq!(problem.column(), Some("price_krw"));
    assert!(problem.to_string().contains("is now numeric"), "{problem}");
}

#[test]
fn a_projected_table_renamed_halts_and_a_namesake_in_another_schema_is_ignored() {
    let mut decoder = decoder();
    let typed: Vec<(&str, u32)> = COURSE_COLUMNS
        .iter()
        .map(|c| (*c, migrated_type(c)))
        .collect();
    assert_eq!(
        halted(decode_raw(
            &mut decoder,
            typed_relation(COURSES, "public", "course_catalogue", &typed)
        )),
        SchemaProblem::RenamedTable {
            table: "courses",
            now: "course_catalogue".into()
        }
    );
    let mut decoder = self::decoder();
    const ARCHIVE: u32 = 17_000;
    let archive = typed_relation(ARCHIVE, "archive", "courses", &[("id", INT8)]);
    assert!(decode_raw(&mut decoder, archive).is_ok());
    let row = LogicalReplicationMessage::Insert {
        relation_id: ARCHIVE,
        tuple: tuple(&[Some("not even a number")]),
    };
    assert_eq!(decode(&mut decoder, row), Ok(Vec::new()));
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
