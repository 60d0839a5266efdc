//! `POST /v1/events`: parse and check a sale event, then create it with its
//! courses and seats.

use std::collections::HashSet;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use chrono::{DateTime, Datelike, FixedOffset, SubsecRound, Utc};
use serde::Deserialize;
use utoipa::ToSchema;

use crate::auth::Admin;
use crate::error::{
    join_ids, ApiError, BodyRefused, ErrorBody, FieldErrors, Unauthorized, Unavailable,
};
use crate::extract::AppJson;
use crate::routes::{reference, written};
use crate::sale_event::{self, Event, EventError, NewEvent};
use crate::state::AppState;

/// Longest event name accepted, in characters.
const NAME_MAX_CHARS: usize = 200;
/// Most courses one event may hold.
const MAX_COURSES: usize = 1_000;
/// Most seats one course may have in an event.
const MAX_SEATS_PER_COURSE: i64 = 100_000;
/// Most seat rows one event may create: they are written in one statement
/// that must finish well inside the statement timeout.
const MAX_SEATS_TOTAL: i64 = 200_000;

/// A new sale event. It runs in the half-open window `[starts_at, ends_at)`;
/// during it its courses sell at `price_krw * (100 - discount_percent) / 100`,
/// rounded down.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct CreateEvent {
    #[schema(schema_with = name_schema)]
    name: String,
    /// RFC 3339 with offset; stored and returned in UTC, to the microsecond.
    starts_at: DateTime<FixedOffset>,
    /// After `starts_at`.
    ends_at: DateTime<FixedOffset>,
    #[schema(minimum = 0, maximum = 100, example = 50)]
    discount_percent: i64,
    /// At most 1,000 distinct courses and 200,000 limited seats in all.
    #[schema(max_items = 1000)]
    courses: Vec<CreateEventCourse>,
}

fn name_schema() -> utoipa::openapi::Object {
    reference::required_text(NAME_MAX_CHARS, "1 to 200 characters, not blank.")
}

/// A course of an event.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct CreateEventCourse {
    #[schema(minimum = 1)]
    course_id: i64,
    /// Seats sold through the event (0 to 100,000); absent or `null` is unlimited.
    #[serde(default)]
    #[schema(minimum = 0, maximum = 100_000)]
    seat_limit: Option<i64>,
}

impl TryFrom<CreateEvent> for NewEvent {
    type Error = ApiError;

    fn try_from(request: CreateEvent) -> Result<Self, ApiError> {
        let mut errors = FieldErrors::default();
        let name = request.name.trim().to_owned();
        errors.storable("name", &name);
        if name.is_empty() {
            errors.add("name", "must not be empty");
        } else if request.name.chars().count() > NAME_MAX_CHARS {
            errors.add(
                "name",
                format!("must be at most {NAME_MAX_CHARS} characters"),
            );
        }
        let starts_at = event_time(&mut errors, "starts_at", request.starts_at);
        let ends_at = event_time(&mut errors, "ends_at", request.ends_at);
        if ends_at <= starts_at {
            errors.add("ends_at", "must be after starts_at");
        }
        let discount_percent = i32::try_from(request.discount_percent)
            .ok()
            .filter(|percent| (0..=100).contains(percent));
        if discount_percent.is_none() {
            errors.add("discount_percent", "must be between 0 and 100");
        }
        if request.courses.len() > MAX_COURSES {
            errors.add(
                "courses",
                format!("must hold at most {MAX_COURSES} courses"),
            );
        }
        let mut seen = HashSet::with_capacity(request.courses.len());
        let mut total_seats: i64 = 0;
        let mut course_ids = Vec::with_capacity(request.courses.len());
        let mut seat_limits = Vec::with_capacity(request.courses.len());
        for course in &request.courses {
            if course.course_id <= 0 {
                errors.add("courses", "course ids are positive integers");
            } else if !seen.insert(course.course_id) {
                errors.add(
                    "courses",
                    format!("course {} is listed twice", course.course_id),
                );
            }
            let limit = match course.seat_limit {
                Some(limit) if !(0..=MAX_SEATS_PER_COURSE).contains(&limit) => {
                    errors.add(
                        "courses",
                        format!("seat_limit must be between 0 and {MAX_SEATS_PER_COURSE}"),
                    );
                    None
                }
                Some(limit) => {
                    total_seats += limit;
                    i32::try_from(limit).ok()
                }
                None => None,
            };
            course_ids.push(course.course_id);
            seat_limits.push(limit);
        }
        if total_seats > MAX_SEATS_TOTAL {
            errors.add(
                "courses",
                format!("at most {MAX_SEATS_TOTAL} limited seats per event"),
            );
        }
        errors.into_result()?;
        Ok(NewEvent {
            name,
            starts_at,
            ends_at,
            discount_percent: discount_percent.unwrap_or_default(),
            course_ids,
            seat_limits,
        })
    }
}

/// A time as PostgreSQL will store it: in UTC, to the microsecond (so that
/// `ends_at > starts_at` is checked on the stored values), within years
/// 1 to 9999 (so that no time is out of the database's range).
fn event_time(
    errors: &mut FieldErrors,
    field: &'static str,
    value: DateTime<FixedOffset>,
) -> DateTime<Utc> {
    let value = value.with_timezone(&Utc).trunc_subsecs(6);
    if !(1..=9999).contains(&value.year()) {
        errors.add(field, "must be between the years 1 and 9999");
    }
    value
}

/// Create a sale event.
///
/// Each limited seat becomes a row that checkout claims, so buyers never
/// contend on one counter.
#[utoipa::path(
    post,
    path = "/v1/events",
    operation_id = "create_event",
    tag = "events",
    request_body = CreateEvent,
    security((), ("admin_token" = [])),
    responses(
        (status = 201, description = "The new event and its courses.", body = Event,
            headers(("X-Commit-Lsn" = String, description = "Read-your-writes token: an LSN at or after the commit."))),
        Unauthorized,
        (status = 422, description = "`validation_failed`, with `fields` (an unknown course is one).", body = ErrorBody),
        BodyRefused,
        Unavailable,
    )
)]
pub(super) async fn create(
    _admin: Admin,
    State(state): State<AppState>,
    AppJson(request): AppJson<CreateEvent>,
) -> Result<Response, ApiError> {
    let event = NewEvent::try_from(request)?;
    let mut conn = state.pool.acquire().await?;
    let (created, lsn) = sale_event::create(&mut conn, event)
        .await
        .map_err(|err| match err {
            EventError::UnknownCourses(ids) => {
                FieldErrors::single("courses", format!("unknown course ids: {}", join_ids(&ids)))
            }
            EventError::Database(err) => ApiError::Database(err),
        })?;
    Ok(written(StatusCode::CREATED, lsn, &created))
}
