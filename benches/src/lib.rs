//! The benchmark harness: every scenario measured next to its baseline in the
//! same run, and a report that opens with the ratios that matter.
//!
//! The programs under test and the baselines run as child processes, so no
//! server shares a runtime with the load generator. Each scenario owns its
//! database, replication slot and Redis key prefix, and drops them at the end.

mod analysis;
pub mod baseline;
pub mod corpus;
pub mod cpu;
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
pub mod steady;
pub mod tools;

pub use run::{run, Options};
pub use scale::Scale;
