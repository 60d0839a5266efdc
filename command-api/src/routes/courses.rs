//! `POST /v1/courses` and `PATCH /v1/courses/{id}`: parse and check a
//! course's fields, then write them to the catalogue.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use serde::{Deserialize, Deserializer};
use utoipa::openapi::Object;
use utoipa::ToSchema;

use crate::auth::Admin;
use crate::catalogue::{self, Course, CourseChanges};
use crate::db::commit_lsn;
use crate::error::{ApiError, BodyRefused, ErrorBody, FieldErrors, Unauthorized, Unavailable};
use crate::extract::{AppJson, PathId};
use crate::routes::{reference, written};
use crate::state::AppState;

/// Longest title or instructor accepted, in characters.
const TITLE_MAX_CHARS: usize = 200;
/// Longest summary accepted, in characters.
const SUMMARY_MAX_CHARS: usize = 2_000;
/// Longest category accepted, in characters.
const CATEGORY_MAX_CHARS: usize = 100;
/// Highest price accepted: a trillion won keeps any 500-course order total,
/// and the discount arithmetic on it, far inside 64 bits.
const PRICE_MAX_KRW: i64 = 1_000_000_000_000;

/// A new course. Text is stored trimmed; limits count the text as sent.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct CreateCourse {
    #[schema(schema_with = title_schema)]
    title: String,
    #[schema(schema_with = summary_schema)]
    summary: String,
    #[schema(schema_with = html_schema)]
    description_html: String,
    #[schema(schema_with = category_schema)]
    category: String,
    #[schema(schema_with = instructor_schema)]
    instructor: String,
    /// List price in KRW, 0 (free) to 10^12.
    #[schema(example = 55000, minimum = 0, maximum = 1_000_000_000_000_i64)]
    price_krw: i64,
}

fn title_schema() -> Object {
    reference::required_text(TITLE_MAX_CHARS, "1 to 200 characters, not blank.")
}

fn summary_schema() -> Object {
    reference::text(Some(SUMMARY_MAX_CHARS), "At most 2,000 characters.").build()
}

fn html_schema() -> Object {
    reference::text(None, "The course page's HTML; tens of KB is normal.").build()
}

fn category_schema() -> Object {
    reference::required_text(CATEGORY_MAX_CHARS, "1 to 100 characters, not blank.")
}

fn instructor_schema() -> Object {
    reference::required_text(TITLE_MAX_CHARS, "1 to 200 characters, not blank.")
}

/// A partial update: any subset of the course's fields, each under the same
/// rules as at creation. A field sent as `null` is refused (422).
// `Some(None)` is that explicit `null`; `None` is a field left out.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct UpdateCourse {
    #[serde(default, deserialize_with = "present")]
    #[schema(schema_with = title_schema)]
    title: Option<Option<String>>,
    #[serde(default, deserialize_with = "present")]
    #[schema(schema_with = summary_schema)]
    summary: Option<Option<String>>,
    #[serde(default, deserialize_with = "present")]
    #[schema(schema_with = html_schema)]
    description_html: Option<Option<String>>,
    #[serde(default, deserialize_with = "present")]
    #[schema(schema_with = category_schema)]
    category: Option<Option<String>>,
    #[serde(default, deserialize_with = "present")]
    #[schema(schema_with = instructor_schema)]
    instructor: Option<Option<String>>,
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = i64, minimum = 0, maximum = 1_000_000_000_000_i64)]
    price_krw: Option<Option<i64>>,
}

/// Tells a field sent as `null` (`Some(None)`) from a field left out (`None`).
fn present<'de, T, D>(deserializer: D) -> Result<Option<Option<T>>, D::Error>
where
    T: Deserialize<'de>,
    D: Deserializer<'de>,
{
    Option::<T>::deserialize(deserializer).map(Some)
}

fn required_text(
    errors: &mut FieldErrors,
    field: &'static str,
    value: String,
    max_chars: usize,
) -> String {
    let sent_chars = value.chars().count();
    let value = value.trim().to_owned();
    errors.storable(field, &value);
    if value.is_empty() {
        errors.add(field, "must not be empty");
    } else if sent_chars > max_chars {
        errors.add(field, format!("must be at most {max_chars} characters"));
    }
    value
}

fn summary_text(errors: &mut FieldErrors, value: String) -> String {
    errors.storable("summary", &value);
    if value.chars().count() > SUMMARY_MAX_CHARS {
        errors.add(
            "summary",
            format!("must be at most {SUMMARY_MAX_CHARS} characters"),
        );
    }
    value
}

fn html_text(errors: &mut FieldErrors, value: String) -> String {
    errors.storable("description_html", &value);
    value
}

fn price(errors: &mut FieldErrors, value: i64) -> i64 {
    if value < 0 {
        errors.add("price_krw", "must not be negative");
    } else if value > PRICE_MAX_KRW {
        errors.add("price_krw", format!("must be at most {PRICE_MAX_KRW}"));
    }
    value
}

/// An explicit `null` for a field that cannot be null.
fn not_null<T>(
    errors: &mut FieldErrors,
    field: &'static str,
    value: Option<Option<T>>,
) -> Option<T> {
    match value {
        Some(None) => {
            errors.add(field, "must not be null");
            None
        }
        Some(Some(value)) => Some(value),
        None => None,
    }
}

impl TryFrom<CreateCourse> for CourseChanges {
    type Error = ApiError;

    fn try_from(request: CreateCourse) -> Result<Self, ApiError> {
        let mut errors = FieldErrors::default();
        let changes = CourseChanges {
            title: Some(required_text(
                &mut errors,
                "title",
                request.title,
                TITLE_MAX_CHARS,
            )),
            summary: Some(summary_text(&mut errors, request.summary)),
            description_html: Some(html_text(&mut errors, request.description_html)),
            category: Some(required_text(
                &mut errors,
                "category",
                request.category,
                CATEGORY_MAX_CHARS,
            )),
            instructor: Some(required_text(
                &mut errors,
                "instructor",
                request.instructor,
                TITLE_MAX_CHARS,
            )),
            price_krw: Some(price(&mut errors, request.price_krw)),
        };
        errors.into_result()?;
        Ok(changes)
    }
}

impl TryFrom<UpdateCourse> for CourseChanges {
    type Error = ApiError;

    fn try_from(request: UpdateCourse) -> Result<Self, ApiError> {
        let mut errors = FieldErrors::default();
        let title = not_null(&mut errors, "title", request.title);
        let summary = not_null(&mut errors, "summary", request.summary);
        let description_html = not_null(&mut errors, "description_html", request.description_html);
        let category = not_null(&mut errors, "category", request.category);
        let instructor = not_null(&mut errors, "instructor", request.instructor);
        let price_krw = not_null(&mut errors, "price_krw", request.price_krw);
        let changes = CourseChanges {
            title: title.map(|v| required_text(&mut errors, "title", v, TITLE_MAX_CHARS)),
            summary: summary.map(|v| summary_text(&mut errors, v)),
            description_html: description_html.map(|v| html_text(&mut errors, v)),
            category: category
                .map(|v| required_text(&mut errors, "category", v, CATEGORY_MAX_CHARS)),
            instructor: instructor
                .map(|v| required_text(&mut errors, "instructor", v, TITLE_MAX_CHARS)),
            price_krw: price_krw.map(|v| price(&mut errors, v)),
        };
        errors.into_result()?;
        Ok(changes)
    }
}

/// Create a course.
#[utoipa::path(
    post,
    path = "/v1/courses",
    operation_id = "create_course",
    tag = "courses",
    request_body = CreateCourse,
    security((), ("admin_token" = [])),
    responses(
        (status = 201, description = "The new course.", body = Course,
            headers(("X-Commit-Lsn" = String, description = "Read-your-writes token: an LSN at or after the commit."))),
        Unauthorized,
        (status = 422, description = "`validation_failed`, with `fields`.", body = ErrorBody),
        BodyRefused,
        Unavailable,
    )
)]
pub(super) async fn create(
    _admin: Admin,
    State(state): State<AppState>,
    AppJson(request): AppJson<CreateCourse>,
) -> Result<Response, ApiError> {
    let course = CourseChanges::try_from(request)?;
    let mut conn = state.pool.acquire().await?;
    let created = catalogue::create(&mut conn, course).await?;
    let lsn = commit_lsn(&mut conn).await;
    Ok(written(StatusCode::CREATED, lsn, &created))
}

/// Change some fields of a course.
///
/// Only the given columns are written: an UPDATE that leaves
/// `description_html` out keeps its TOASTed value untouched, which the
/// projector sees as "unchanged" instead of re-reading tens of KB.
#[utoipa::path(
    patch,
    path = "/v1/courses/{id}",
    operation_id = "update_course",
    tag = "courses",
    params(("id" = i64, Path, minimum = 1, description = "The course id.")),
    request_body = UpdateCourse,
    security((), ("admin_token" = [])),
    responses(
        (status = 200, description = "The course after the change.", body = Course,
            headers(("X-Commit-Lsn" = String, description = "Read-your-writes token: an LSN at or after the commit."))),
        Unauthorized,
        (status = 404, description = "`not_found`: there is no such course.", body = ErrorBody),
        (status = 422, description = "`validation_failed`, with `fields`.", body = ErrorBody),
        BodyRefused,
        Unavailable,
    )
)]
pub(super) async fn update(
    _admin: Admin,
    State(state): State<AppState>,
    PathId(id): PathId,
    AppJson(request): AppJson<UpdateCourse>,
) -> Result<Response, ApiError> {
    let changes = CourseChanges::try_from(request)?;
    let mut conn = state.pool.acquire().await?;
    let course = catalogue::update(&mut conn, id, changes).await?;
    let course = course.ok_or_else(|| ApiError::NotFound(format!("there is no course {id}")))?;
    let lsn = commit_lsn(&mut conn).await;
    Ok(written(StatusCode::OK, lsn, &course))
}
