//! The command side: an HTTP API that validates each write and commits it to
//! PostgreSQL in one transaction; the projector reads the commits from the WAL.
//!
//! Tests and an all-in-one binary start it in-process with [`Application`].

mod auth;
mod body;
mod catalogue;
mod checkout;
mod config;
mod db;
mod db_watch;
mod deadline;
mod error;
mod expiry;
mod extract;
mod metrics;
mod routes;
mod sale_event;
mod startup;
mod state;
mod switches;
mod unique_keys;

pub use config::Config;

/// Statements of the write paths, exposed so that tests can `EXPLAIN`
/// exactly what the handlers run.
#[doc(hidden)]
pub mod statements {
    pub use crate::checkout::{CHECKOUT_FACTS, CHECKOUT_WRITE, COURSE_PRICES};
    pub use crate::db::PLAN_CACHE_MODE;
}
pub use startup::{migrate, Application};

/// The pool the handlers run on, exposed so that tests can check how its
/// sessions run the write paths' statements.
#[doc(hidden)]
pub use db::pool;
