//! What the overload scenario records of each round and admission, and the
//! ratios it judges them by.

use std::{collections::BTreeMap, time::Instant};

use serde::{Deserialize, Serialize};

use super::super::{median_of, process_cpu_s};
use crate::load::{Latency, Phase};

/// What the scenario measured.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Overload {
    /// Orders per second the command API carries, measured at the start of
    /// every round by a closed loop that nothing is shed from: the median,
    /// and each round's.
    pub capacity_rps: f64,
    pub capacity_rounds: Vec<f64>,
    pub capacity_connections: usize,
    /// Offered orders per second under overload: `factor` × the round's
    /// capacity (the median here).
    pub factor: f64,
    pub offered_rps: f64,
    /// Connections of the overload's open loop (the most in flight at once).
    pub connections: usize,
    /// The admission as shipped with the pool sized to the database's cores
    /// (the goals judge it), the same with the default pool, then the old one.
    pub admissions: Vec<Admission>,
}

/// One command API under the same loads, round after round.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Admission {
    /// `sized` (as shipped, the pool four per core of the database),
    /// `default` (as shipped, the default pool) or `old` (256 admitted, 2 s
    /// to wait).
    pub key: String,
    /// Its settings, for people.
    pub label: String,
    /// In the order run.
    pub rounds: Vec<Round>,
}

/// One round of an admission: the unloaded latency, then the overload.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Round {
    /// The capacity measured at the start of the round.
    pub capacity_rps: f64,
    /// Cores the command API and the load generator used meanwhile.
    #[serde(default)]
    pub capacity_cpu: Cpu,
    /// Cores they used during the overload.
    #[serde(default)]
    pub overload_cpu: Cpu,
    /// Orders at half the capacity: the unloaded latency.
    pub unloaded: Phase,
    /// Orders at `factor` × capacity.
    pub overload: Phase,
    /// 503s due in the overload's window, and their latency.
    pub shed: u64,
    pub shed_latency: Latency,
    /// 503s of the whole overload phase answered without `Retry-After`.
    pub shed_without_retry_after: u64,
    /// The command API's own count of requests it shed during the overload,
    /// by reason (`command_api_requests_shed_total`).
    pub shed_counted: BTreeMap<String, f64>,
    /// The database against the answers, over every request of the phase.
    pub written: Written,
}

impl Overload {
    /// The admission `key` (`sized`, `default` or `old`).
    pub fn admission(&self, key: &str) -> Option<&Admission> {
        self.admissions.iter().find(|a| a.key == key)
    }
}

/// Share of a phase's due requests that may fail before it no longer
/// counts as the load it is stated at.
const FAILED_SHARE: f64 = 0.01;

impl Round {
    /// 201s per second during the overload / the capacity, when the
    /// overload was offered in full.
    pub fn goodput_ratio(&self) -> Option<f64> {
        (self.capacity_rps > 0.0 && self.offered_in_full())
            .then(|| self.overload.achieved_rps / self.capacity_rps)
    }

    /// The accepted orders' p99 under overload / unloaded, when both
    /// phases were what they are stated to be.
    pub fn p99_ratio(&self) -> Option<f64> {
        let unloaded = self.unloaded.latency.p99_ms;
        (unloaded > 0.0 && self.overload.ok > 0 && self.offered_in_full() && self.was_unloaded())
            .then(|| self.overload.latency.p99_ms / unloaded)
    }

    /// Requests due in the overload's window that got no answer: never sent
    /// because every connection was busy, a failed connection, or a timeout.
    pub fn unanswered(&self) -> u64 {
        self.overload.statuses.get(&0).copied().unwrap_or(0)
    }

    /// At most 1% of the overload's due requests went unanswered.
    pub fn offered_in_full(&self) -> bool {
        let due: u64 = self.overload.statuses.values().sum();
        due > 0 && self.unanswered() as f64 <= FAILED_SHARE * due as f64
    }

    /// The phase at half the capacity placed (nearly) every order: a busy
    /// machine can make half the capacity measured earlier an overload too.
    pub fn was_unloaded(&self) -> bool {
        let due = self.unloaded.ok + self.unloaded.errors;
        due > 0 && self.unloaded.errors as f64 <= FAILED_SHARE * due as f64
    }
}

impl Admission {
    /// The median round's goodput ratio, of the rounds offered in full.
    pub fn goodput_ratio(&self) -> Option<f64> {
        median_of(self.rounds.iter().filter_map(Round::goodput_ratio))
    }

    /// The median round's p99 ratio, of the rounds that measured one.
    pub fn p99_ratio(&self) -> Option<f64> {
        median_of(self.rounds.iter().filter_map(Round::p99_ratio))
    }

    /// The median of a figure over every round.
    pub fn median(&self, figure: impl Fn(&Round) -> f64) -> f64 {
        median_of(self.rounds.iter().map(figure)).unwrap_or(0.0)
    }

    /// The database against the answers, over every round.
    pub fn written(&self) -> Written {
        self.rounds.iter().fold(Written::default(), |sum, r| {
            let w = &r.written;
            Written {
                requests: sum.requests + w.requests,
                created: sum.created + w.created,
                refused: sum.refused + w.refused,
                orders: sum.orders + w.orders,
                lost: sum.lost + w.lost,
                written_by_refused: sum.written_by_refused + w.written_by_refused,
                written_otherwise: sum.written_otherwise + w.written_otherwise,
            }
        })
    }

    /// Why no round gave a goodput ratio, or a p99 ratio (`latency`).
    pub fn unmeasured(&self, latency: bool) -> Option<String> {
        let measured = self.rounds.iter().any(|r| {
            if latency {
                r.p99_ratio().is_some()
            } else {
                r.goodput_ratio().is_some()
            }
        });
        if measured || self.rounds.is_empty() {
            return None;
        }
        let short = self.rounds.iter().filter(|r| !r.offered_in_full()).count();
        let busy = self.rounds.iter().filter(|r| !r.was_unloaded()).count();
        Some(format!(
            "of {} rounds, {short} had more than 1% of the overload's orders never sent or unanswered (a lighter \
             load than stated){}",
            self.rounds.len(),
            if latency {
                format!(
                    ", and {busy} had more than 1% of the orders at half the capacity refused or unsent (the \
                     machine was too busy for that rate to be unloaded)"
                )
            } else {
                String::new()
            }
        ))
    }
}

/// Cores (CPU seconds per second) two processes used during a phase: the
/// rest of the machine's is what PostgreSQL had, with anyone else's work.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
pub struct Cpu {
    /// The command API under load.
    pub api_cores: f64,
    /// The load generator (this process).
    pub load_cores: f64,
}

impl Cpu {
    /// Runs `phase`, measuring the cores process `api` and this one used.
    pub(super) async fn of<T>(
        api: Option<u32>,
        phase: impl std::future::Future<Output = T>,
    ) -> (T, Cpu) {
        let cpu = |pid: Option<u32>| pid.and_then(process_cpu_s).unwrap_or(0.0);
        let me = Some(std::process::id());
        let (api_before, load_before, started) = (cpu(api), cpu(me), Instant::now());
        let out = phase.await;
        let seconds = started.elapsed().as_secs_f64().max(f64::EPSILON);
        let used = Cpu {
            api_cores: (cpu(api) - api_before) / seconds,
            load_cores: (cpu(me) - load_before) / seconds,
        };
        (out, used)
    }
}

/// Orders in the database against the answers, for every request of one
/// phase (warm-up included).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Written {
    pub requests: u64,
    /// Answered 201.
    pub created: u64,
    /// Answered 503.
    pub refused: u64,
    /// Orders in the database from the phase's requests.
    pub orders: u64,
    /// Answered 201, but not in the database.
    pub lost: u64,
    /// In the database, but answered 503.
    pub written_by_refused: u64,
    /// In the database, but answered neither 201 nor 503, or not at all.
    pub written_otherwise: u64,
}

impl Written {
    /// Answers that misreport what was written.
    pub fn untrue(&self) -> u64 {
        self.lost + self.written_by_refused + self.written_otherwise
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A phase of `ok` answers and `failed` with no answer, its p99 `p99_ms`.
    fn phase(achieved_rps: f64, ok: u64, failed: u64, p99_ms: f64) -> Phase {
        Phase {
            label: String::new(),
            mode: "fixed rate".into(),
            connections: 1,
            offered_rps: Some(1.0),
            achieved_rps,
            ok,
            errors: failed,
            statuses: [(201, ok), (0, failed)].into(),
            duration_s: 1.0,
            latency: Latency {
                p99_ms,
                ..Latency::default()
            },
            timeline: Vec::new(),
        }
    }

    fn round(unloaded: Phase, overload: Phase) -> Round {
        Round {
            capacity_rps: 100.0,
            capacity_cpu: Cpu::default(),
            overload_cpu: Cpu::default(),
            unloaded,
            overload,
            shed: 0,
            shed_latency: Latency::default(),
            shed_without_retry_after: 0,
            shed_counted: BTreeMap::new(),
            written: Written::default(),
        }
    }

    #[test]
    fn a_round_that_was_not_the_load_it_states_gives_no_ratio_and_says_why() {
        let calm = || phase(50.0, 500, 0, 10.0);
        let admission = Admission {
            key: "sized".into(),
            label: String::new(),
            rounds: vec![
                round(calm(), phase(90.0, 900, 0, 20.0)),
                // Half the capacity was an overload too: no p99 ratio.
                round(phase(40.0, 400, 100, 300.0), phase(80.0, 800, 0, 30.0)),
                // The client could not send its load: no ratio at all.
                round(calm(), phase(10.0, 100, 50, 90.0)),
            ],
        };
        let goodput: Vec<_> = admission.rounds.iter().map(Round::goodput_ratio).collect();
        assert_eq!(goodput, [Some(0.9), Some(0.8), None]);
        let p99: Vec<_> = admission.rounds.iter().map(Round::p99_ratio).collect();
        assert_eq!(p99, [Some(2.0), None, None]);
        // Medians of what was measured (the upper of two).
        assert_eq!(admission.goodput_ratio(), Some(0.9));
        assert_eq!(admission.p99_ratio(), Some(2.0));
        assert!(admission.unmeasured(true).is_none());

        let busy = Admission {
            rounds: admission.rounds[1..].to_vec(),
            ..admission
        };
        assert_eq!(busy.p99_ratio(), None);
        let why = busy.unmeasured(true).expect("a reason");
        assert!(why.starts_with("of 2 rounds, 1 had more than 1%"), "{why}");
        assert!(
            why.contains("and 1 had more than 1% of the orders at half the capacity"),
            "{why}"
        );
        assert!(busy.unmeasured(false).is_none());
    }
}
