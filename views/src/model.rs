//! The shapes of the views, as the query API serves them (SPEC "Query API").

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// Bumped whenever a view's shape changes, so a release rebuilds into a new
/// generation instead of serving mixed shapes.
pub const VIEW_SCHEMA_VERSION: u32 = 1;

/// The value of the generation marker: which generation readers use.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GenerationMarker {
    /// The live generation number.
    pub generation: u64,
    /// [`VIEW_SCHEMA_VERSION`] of the views in it.
    pub schema: u32,
    /// A rebuild in progress into this generation, if any (readers keep
    /// serving `generation`, marked stale).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub building: Option<u64>,
}

/// The running sale of a course, as shown on its page.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sale {
    pub event_id: i64,
    pub price_krw: i64,
    pub discount_percent: i32,
    pub starts_at: DateTime<Utc>,
    pub ends_at: DateTime<Utc>,
    pub seats_left: Option<i64>,
}

/// One company among a course's top five.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopCompany {
    pub company: String,
    pub students: i64,
}

/// The course detail view: `GET /v1/courses/{id}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CourseDetail {
    pub id: i64,
    pub title: String,
    pub summary: String,
    pub description_html: String,
    pub category: String,
    pub instructor: String,
    pub price_krw: i64,
    pub sale: Option<Sale>,
    pub student_count: i64,
    pub top_companies: Vec<TopCompany>,
    pub created_at: DateTime<Utc>,
    /// LSN of the last change reflected in this view, in `%X/%X` form.
    pub lsn: String,
}
