//! The course catalogue: writes courses, and only the columns a change names,
//! so an untouched `description_html` stays TOASTed and unsent to the projector.

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::{PgConnection, Postgres, QueryBuilder};
use utoipa::ToSchema;

/// Every column a client sees, heavy HTML included: only single-course
/// answers select it.
const COURSE_COLUMNS: &str = "id, title, summary, description_html, category, instructor, \
                              price_krw, created_at, updated_at";

/// A course as stored, with its HTML.
#[derive(Serialize, sqlx::FromRow, ToSchema)]
pub(crate) struct Course {
    id: i64,
    title: String,
    summary: String,
    description_html: String,
    category: String,
    instructor: String,
    price_krw: i64,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

/// Course fields that passed validation; `None` means "leave as is".
#[derive(Default)]
pub(crate) struct CourseChanges {
    pub(crate) title: Option<String>,
    pub(crate) summary: Option<String>,
    pub(crate) description_html: Option<String>,
    pub(crate) category: Option<String>,
    pub(crate) instructor: Option<String>,
    pub(crate) price_krw: Option<i64>,
}

impl CourseChanges {
    fn is_empty(&self) -> bool {
        self.title.is_none()
            && self.summary.is_none()
            && self.description_html.is_none()
            && self.category.is_none()
            && self.instructor.is_none()
            && self.price_krw.is_none()
    }
}

/// Inserts a course whose every field is given.
pub(crate) async fn create(
    conn: &mut PgConnection,
    course: CourseChanges,
) -> Result<Course, sqlx::Error> {
    // One statement, committed as it completes.
    crate::deadline::committing();
    sqlx::query_as(
        "INSERT INTO courses (title, summary, description_html, category, instructor, price_krw) \
         VALUES ($1, $2, $3, $4, $5, $6) \
         RETURNING id, title, summary, description_html, category, instructor, price_krw, \
                   created_at, updated_at",
    )
    .bind(course.title)
    .bind(course.summary)
    .bind(course.description_html)
    .bind(course.category)
    .bind(course.instructor)
    .bind(course.price_krw)
    .fetch_one(conn)
    .await
}

/// Writes the given fields of course `id` and returns it; `None` when there
/// is no such course. No change at all reads the course and writes nothing.
pub(crate) async fn update(
    conn: &mut PgConnection,
    id: i64,
    changes: CourseChanges,
) -> Result<Option<Course>, sqlx::Error> {
    if changes.is_empty() {
        let mut query = QueryBuilder::<Postgres>::new("SELECT ");
        query
            .push(COURSE_COLUMNS)
            .push(" FROM courses WHERE id = ")
            .push_bind(id);
        return query.build_query_as().fetch_optional(conn).await;
    }
    let mut query = QueryBuilder::<Postgres>::new("UPDATE courses SET ");
    let mut set = query.separated(", ");
    // Column names are fixed text; every value is a bound parameter.
    if let Some(title) = changes.title {
        set.push("title = ").push_bind_unseparated(title);
    }
    if let Some(summary) = changes.summary {
        set.push("summary = ").push_bind_unseparated(summary);
    }
    if let Some(description_html) = changes.description_html {
        set.push("description_html = ")
            .push_bind_unseparated(description_html);
    }
    if let Some(category) = changes.category {
        set.push("category = ").push_bind_unseparated(category);
    }
    if let Some(instructor) = changes.instructor {
        set.push("instructor = ").push_bind_unseparated(instructor);
    }
    if let Some(price_krw) = changes.price_krw {
        set.push("price_krw = ").push_bind_unseparated(price_krw);
    }
    set.push("updated_at = now()");
    query
        .push(" WHERE id = ")
        .push_bind(id)
        .push(" RETURNING ")
        .push(COURSE_COLUMNS);
    crate::deadline::committing();
    query.build_query_as().fetch_optional(conn).await
}
