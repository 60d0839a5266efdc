//! The request deadline: past it a request is answered 503, unless it is
//! committing. A write whose COMMIT (or autocommitted statement) is on its
//! way is waited for, so that its answer says what the database did: a 503
//! for a committed write would have its retry write again.

use std::sync::{
    atomic::{AtomicBool, Ordering::Relaxed},
    Arc,
};
use std::time::Duration;

use axum::{
    extract::{Request, State},
    middleware::Next,
    response::{IntoResponse, Response},
};
use service::Shedding;

use crate::error::ApiError;

tokio::task_local! {
    /// Set once the request's handler has started to commit.
    static COMMITTING: Arc<AtomicBool>;
}

/// Marks the current request as committing: from here the deadline waits
/// for its answer, which the statement timeout bounds. Outside a request
/// (startup, tests of the domain alone) it does nothing.
pub(crate) fn committing() {
    let _ = COMMITTING.try_with(|flag| flag.store(true, Relaxed));
}

/// The request deadline, and how much longer a committing request is
/// waited for (the statement timeout: PostgreSQL answers a COMMIT within it
/// unless the connection itself stalls).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Deadline {
    pub(crate) limit: Duration,
    pub(crate) grace: Duration,
}

/// Middleware: answers 503 `unavailable` once the limit has passed, unless
/// the handler has begun to commit by then; that one gets the grace too.
pub(crate) async fn enforce(
    State(deadline): State<Deadline>,
    request: Request,
    next: Next,
) -> Response {
    let flag = Arc::new(AtomicBool::new(false));
    let answer = COMMITTING.scope(flag.clone(), next.run(request));
    tokio::pin!(answer);
    tokio::select! {
        response = &mut answer => return response,
        () = tokio::time::sleep(deadline.limit) => {}
    }
    if flag.load(Relaxed) {
        tracing::info!(
            deadline_ms = deadline.limit.as_millis() as u64,
            "past the request deadline while committing: waiting for the commit"
        );
        match tokio::time::timeout(deadline.grace, answer).await {
            Ok(response) => return response,
            Err(_) => tracing::warn!(
                grace_ms = deadline.grace.as_millis() as u64,
                "the commit did not answer within the grace: its outcome is unknown"
            ),
        }
    }
    Shedding::mark(
        ApiError::Unavailable("the request took too long, retry shortly").into_response(),
        Shedding::DEADLINE,
    )
}
