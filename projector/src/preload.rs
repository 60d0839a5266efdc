//! After the stream starts, the sink remembers the courses' aggregates in the
//! background, so the first enrollment of a course costs no extra round trip.

use std::sync::{atomic::Ordering::Relaxed, Arc};

use crate::{
    metrics::Metrics,
    sink::{self, Sink},
};

/// Remembers the courses' aggregates (see [`Sink::preload_known`]). Best
/// effort: a failure only means those courses are read back later.
pub async fn preload_known(
    pg: Arc<tokio_postgres::Client>,
    sink: Sink,
    metrics: Arc<Metrics>,
    generation: u64,
) {
    let started = std::time::Instant::now();
    let ids = match pg
        .query(
            "SELECT id FROM courses ORDER BY id LIMIT $1",
            &[&(sink::KNOWN_COURSES as i64)],
        )
        .await
    {
        Ok(rows) => rows
            .iter()
            .map(|row| row.get::<_, i64>(0))
            .collect::<Vec<_>>(),
        Err(err) => {
            tracing::warn!(error = %err, "could not list the courses to remember");
            return;
        }
    };
    let outcome = sink.preload_known(generation, &ids).await;
    metrics
        .remembered_courses
        .store(sink.remembered_courses() as u64, Relaxed);
    match outcome {
        Ok(loaded) => tracing::info!(
            loaded,
            remembered = sink.remembered_courses(),
            took_ms = started.elapsed().as_millis() as u64,
            "remembered the courses' aggregates"
        ),
        Err(err) => tracing::warn!(error = %err, "could not remember the courses' aggregates"),
    }
}
