//! Sale events: an event, its courses, and one seat row per limited seat,
//! which checkout later claims.

use std::collections::HashSet;

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::{Connection, PgConnection};
use utoipa::ToSchema;

use crate::db::commit_with_lsn;

/// An event that passed the checks that need no database.
pub(crate) struct NewEvent {
    pub(crate) name: String,
    pub(crate) starts_at: DateTime<Utc>,
    pub(crate) ends_at: DateTime<Utc>,
    pub(crate) discount_percent: i32,
    pub(crate) course_ids: Vec<i64>,
    /// `None`: unlimited seats.
    pub(crate) seat_limits: Vec<Option<i32>>,
}

/// An event as stored.
#[derive(Serialize, sqlx::FromRow, ToSchema)]
#[schema(as = SaleEvent)]
pub(crate) struct EventRow {
    id: i64,
    name: String,
    starts_at: DateTime<Utc>,
    ends_at: DateTime<Utc>,
    discount_percent: i32,
    created_at: DateTime<Utc>,
}

/// A course of an event as stored.
#[derive(Serialize, ToSchema)]
pub(crate) struct EventCourse {
    course_id: i64,
    /// `null`: unlimited.
    seat_limit: Option<i32>,
}

/// An event with its courses.
#[derive(Serialize, ToSchema)]
pub(crate) struct Event {
    #[serde(flatten)]
    event: EventRow,
    courses: Vec<EventCourse>,
}

/// Why an event was not created.
#[derive(Debug, thiserror::Error)]
pub(crate) enum EventError {
    /// These course ids name no course.
    #[error("unknown course ids: {0:?}")]
    UnknownCourses(Vec<i64>),
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
}

/// Creates the event, its courses and its seats in one transaction,
/// committed on `conn`, with an LSN at or after the commit.
pub(crate) async fn create(
    conn: &mut PgConnection,
    event: NewEvent,
) -> Result<(Event, Option<String>), EventError> {
    let mut tx = conn.begin().await?;

    let known: Vec<i64> = sqlx::query_scalar("SELECT id FROM courses WHERE id = ANY($1)")
        .bind(&event.course_ids)
        .fetch_all(&mut *tx)
        .await?;
    let known: HashSet<i64> = known.into_iter().collect();
    let unknown: Vec<i64> = event
        .course_ids
        .iter()
        .filter(|id| !known.contains(id))
        .copied()
        .collect();
    if !unknown.is_empty() {
        return Err(EventError::UnknownCourses(unknown));
    }

    let created: EventRow = sqlx::query_as(
        "INSERT INTO sale_events (name, starts_at, ends_at, discount_percent) \
         VALUES ($1, $2, $3, $4) \
         RETURNING id, name, starts_at, ends_at, discount_percent, created_at",
    )
    .bind(&event.name)
    .bind(event.starts_at)
    .bind(event.ends_at)
    .bind(event.discount_percent)
    .fetch_one(&mut *tx)
    .await?;
    sqlx::query(
        "INSERT INTO sale_event_courses (event_id, course_id, seat_limit) \
         SELECT $1, c.course_id, c.seat_limit \
         FROM UNNEST($2::bigint[], $3::integer[]) AS c(course_id, seat_limit)",
    )
    .bind(created.id)
    .bind(&event.course_ids)
    .bind(&event.seat_limits)
    .execute(&mut *tx)
    .await?;
    // One row per seat, so buyers claim different rows instead of
    // decrementing one shared counter.
    sqlx::query(
        "INSERT INTO event_seats (event_id, course_id, seat_no) \
         SELECT $1, c.course_id, seat.no \
         FROM UNNEST($2::bigint[], $3::integer[]) AS c(course_id, seat_limit) \
         CROSS JOIN LATERAL generate_series(1, c.seat_limit) AS seat(no) \
         WHERE c.seat_limit IS NOT NULL",
    )
    .bind(created.id)
    .bind(&event.course_ids)
    .bind(&event.seat_limits)
    .execute(&mut *tx)
    .await?;
    let lsn = commit_with_lsn(tx).await?;

    let courses = event
        .course_ids
        .iter()
        .zip(&event.seat_limits)
        .map(|(course_id, seat_limit)| EventCourse {
            course_id: *course_id,
            seat_limit: *seat_limit,
        })
        .collect();
    let event = Event {
        event: created,
        courses,
    };
    Ok((event, lsn))
}
