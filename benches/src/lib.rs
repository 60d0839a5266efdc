//! The benchmark harness of command → projector → query: every scenario
//! measured next to its baseline, in the same run on the same machine, and a
//! report (Markdown, JSON, PNG plots) that opens with the ratios that matter.
//!
//! The programs under test run as child processes built from this workspace
//! (`target/<profile>/command-api`, `query-api`, `projector`); the baselines
//! (a bare axum endpoint, the monolith's read and write paths) run as child
//! processes of the `bench` binary itself, so no server shares a runtime
//! with the load generator. Each scenario works in its own database,
//! replication slot and Redis key prefix, and drops them at the end.

mod analysis;
pub mod baseline;
pub mod corpus;
pub mod goals;
pub mod load;
pub mod plot;
pub mod report;
pub mod results;
pub mod run;
pub mod scale;
pub mod scenarios;
pub mod seed;
pub mod stack;
pub mod tools;

pub use run::{run, Options};
pub use scale::Scale;
