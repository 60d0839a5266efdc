//! The command side of command → projector → query: an HTTP API that
//! validates each write and commits it to PostgreSQL in one transaction. The
//! projector reads those commits from the WAL; this crate never talks to Redis.
//!
//! Tests and an all-in-one binary start it in-process with [`Application`].

mod auth;
mod config;
mod db;
mod error;
mod expiry;
mod extract;
mod metrics;
mod routes;
mod startup;

pub use config::Config;
pub use startup::{migrate, Application};
