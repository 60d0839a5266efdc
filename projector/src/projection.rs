//! Changes → stamped per-entity entries (`batch`), the courses' aggregates
//! kept in process (`known`), and the views rendered from aggregates (`render`).

mod batch;
mod known;
mod render;

pub use batch::{aggregate_of, stamp, Batch, Entity, Entry, LibraryOp};
pub use known::KnownCourse;
pub use render::{
    course_event_ids, render_course, render_event, render_order, top_five, EventTerms,
};
