//! Everything one run measured, as stored in `<name>.json` and read back by
//! `--render`: the plots, the ratios and the Markdown page are drawn from it.

use serde::{Deserialize, Serialize};

use crate::{
    scale::Scale,
    scenarios::{
        all_in_one::AllInOne,
        freshness::Freshness,
        overload::Overload,
        reads::{CartComparison, ReadCpu},
        rush::Rush,
        storage::Storage,
        stream::Stream,
        takeover::Takeover,
        Subject,
    },
    seed::Seeded,
    tools::{Machine, Pgbench, Profile, RedisBench},
};

/// About the run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Meta {
    /// The report's name: the local date, `YYYY-MM-DD` (with `-smoke` for smoke runs).
    pub name: String,
    pub started_at: String,
    pub duration_s: f64,
    /// The command that reproduces the run.
    pub command: String,
    pub machine: Machine,
    pub scale: Scale,
    /// Where the course descriptions came from.
    pub corpus: String,
    /// `/proc/loadavg` when the run started and when it ended: how busy the
    /// shared machine was besides the run.
    #[serde(default)]
    pub load_before: String,
    #[serde(default)]
    pub load_after: String,
}

/// Seconds some set-up steps took.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Timings {
    pub seed_s: f64,
    pub initial_build_s: f64,
}

/// Everything one run measured.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Results {
    pub meta: Meta,
    pub seeded: Option<Seeded>,
    pub timings: Timings,
    pub storage: Option<Storage>,
    pub redis_benchmark: Vec<RedisBench>,
    /// Bytes of the hot course page as the query API answers it (and the bare endpoint).
    pub hot_page_bytes: usize,
    /// Bytes of the hot course's stored view (what the one-GET ceiling reads and answers).
    #[serde(default)]
    pub hot_stored_bytes: usize,
    pub reads: Vec<Subject>,
    pub cart: Option<CartComparison>,
    /// CPU per read of the page's paths at one rate.
    #[serde(default)]
    pub read_cpu: Vec<ReadCpu>,
    pub orders: Vec<Subject>,
    pub pgbench: Option<Pgbench>,
    pub freshness: Vec<Freshness>,
    pub stream: Option<Stream>,
    /// Takeovers of a standby projector after SIGKILLs of the active one.
    #[serde(default)]
    pub takeover: Option<Takeover>,
    /// Orders at three times the capacity, under the admission as shipped
    /// and the old one.
    #[serde(default)]
    pub overload: Option<Overload>,
    /// A sale's reads and orders together, against each alone.
    #[serde(default)]
    pub rush: Option<Rush>,
    /// The all-in-one process against the three processes, side by side.
    #[serde(default)]
    pub all_in_one: Option<AllInOne>,
    /// Where the CPU went on the paths behind the ratios (perf).
    #[serde(default)]
    pub profiles: Vec<Profile>,
    pub ratios: Vec<Ratio>,
    pub notes: Vec<String>,
    /// Scenarios that failed, with why.
    pub errors: Vec<String>,
}

/// One ratio of the table.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Ratio {
    pub key: String,
    pub name: String,
    /// `None` when a scenario it needs did not run, or when it ran but
    /// could not measure what the goal is stated at (see `unmeasured`).
    pub value: Option<f64>,
    /// The goal as written (`≥ 0.8`), or `reported` for context rows.
    pub goal: String,
    pub met: Option<bool>,
    /// The two figures it divides.
    pub detail: String,
    /// Why a scenario that ran gave no value: the host could not carry the
    /// load the goal is stated at (a slow or busy machine, not a failure).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unmeasured: Option<String>,
}

impl Results {
    pub fn read(&self, key: &str) -> Option<&Subject> {
        self.reads.iter().find(|s| s.key == key)
    }

    pub fn order(&self, key: &str) -> Option<&Subject> {
        self.orders.iter().find(|s| s.key == key)
    }

    /// Records the outcome of one scenario: its value, or its error.
    pub fn record<T>(&mut self, what: &str, outcome: anyhow::Result<T>) -> Option<T> {
        match outcome {
            Ok(v) => Some(v),
            Err(err) => {
                tracing::error!(
                    scenario = what,
                    error = format!("{err:#}"),
                    "scenario failed"
                );
                self.errors.push(format!("{what}: {err:#}"));
                None
            }
        }
    }
}
