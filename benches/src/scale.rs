//! How big a run is: the full run (by hand) and the smoke run (CI) exercise
//! the same scenarios at different sizes and durations.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Sizes and durations of one run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Scale {
    /// `full`, `quick` or `smoke`.
    pub name: String,
    /// Users in the write model; a fifth of them name a company.
    pub users: i64,
    /// Courses, each with a description of real HTML.
    pub courses: i64,
    /// Bytes of HTML per course description.
    pub description_bytes: usize,
    /// Active enrollments of the hot course (course 1).
    pub hot_enrollments: i64,
    /// Courses after the hot one with `warm_enrollments` each.
    pub warm_courses: i64,
    pub warm_enrollments: i64,
    /// Enrollments of every other course.
    pub cold_enrollments: i64,
    /// Courses of the running sale event (the cart reads all of them).
    pub cart_size: i64,
    /// Load before every measured phase, discarded.
    #[serde(with = "secs")]
    pub warmup: Duration,
    /// Saturation is measured in this many rounds, the subjects of a
    /// scenario taking turns, and each subject's median round counts: on a
    /// shared machine a burst of someone else's work then hits one round of
    /// one subject instead of a whole subject.
    pub rounds: usize,
    /// Length of one saturation round.
    #[serde(with = "secs")]
    pub round: Duration,
    /// Length of a fixed-rate phase.
    #[serde(with = "secs")]
    pub rate_phase: Duration,
    /// Connections of the load generator at saturation (reads, orders).
    pub read_connections: usize,
    pub order_connections: usize,
    /// Connections available to the fixed-rate schedule (enough that the
    /// schedule, not the pool, decides when a request leaves).
    pub rate_connections: usize,
    /// pgbench clients (the command API's pool size); each round runs as
    /// long as a saturation round, or this many transactions per client.
    pub pgbench_clients: usize,
    pub pgbench_transactions: Option<u64>,
    /// Row changes the projector and pg_recvlogical consume.
    pub stream_changes: u64,
    /// Offered order rates of the freshness scenario, orders per second.
    pub freshness_rates: Vec<f64>,
    #[serde(with = "secs")]
    pub freshness_phase: Duration,
    /// Requests per redis-benchmark run.
    pub redis_requests: u64,
    /// Times the takeover scenario SIGKILLs the active projector.
    #[serde(default)]
    pub takeover_kills: usize,
    /// Orders per second streamed through the takeovers.
    #[serde(default)]
    pub takeover_rate: f64,
    /// Time left between a takeover and the next kill, so the restarted
    /// projector is waiting as the standby when it comes.
    #[serde(default, with = "secs")]
    pub takeover_settle: Duration,
    /// The overload scenario's offered order rate, as a multiple of the
    /// capacity it measures first.
    #[serde(default)]
    pub overload_factor: f64,
    /// Length of each overload phase (after the warm-up).
    #[serde(default, with = "secs")]
    pub overload_phase: Duration,
    /// Rounds of the overload scenario, each an unloaded phase and an
    /// overload of each admission; the median round counts.
    #[serde(default)]
    pub overload_rounds: usize,
    /// Connections of the overload's open loop, the most requests in flight
    /// at once: generous, so the client never limits the load.
    #[serde(default)]
    pub overload_connections: usize,
    /// The rush scenario's orders per second, on a fixed schedule, on the
    /// courses of its seat-limited event.
    #[serde(default)]
    pub rush_order_rate: f64,
}

/// Durations as seconds in the JSON summary.
mod secs {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_f64(d.as_secs_f64())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        Ok(Duration::from_secs_f64(f64::deserialize(d)?.max(0.0)))
    }
}

impl Scale {
    /// The full run: production-like data, phases long enough for stable percentiles.
    pub fn full() -> Self {
        Scale {
            name: "full".to_owned(),
            // Every order of the run takes a fresh user: on a fast machine
            // the run places well over a million orders.
            users: 3_000_000,
            courses: 10_000,
            description_bytes: 10 * 1024,
            hot_enrollments: 40_000,
            warm_courses: 100,
            warm_enrollments: 2_000,
            cold_enrollments: 10,
            cart_size: 125,
            warmup: Duration::from_secs(1),
            rounds: 5,
            round: Duration::from_secs(5),
            rate_phase: Duration::from_secs(10),
            read_connections: 32,
            order_connections: 32,
            rate_connections: 128,
            pgbench_clients: 16,
            pgbench_transactions: None,
            stream_changes: 1_000_000,
            freshness_rates: vec![250.0, 500.0, 1000.0],
            freshness_phase: Duration::from_secs(20),
            redis_requests: 200_000,
            takeover_kills: 10,
            takeover_rate: 100.0,
            takeover_settle: Duration::from_secs(3),
            overload_factor: 3.0,
            overload_phase: Duration::from_secs(20),
            overload_rounds: 3,
            overload_connections: 1024,
            rush_order_rate: 166.0,
        }
    }

    /// A scaled-down full run (a few minutes): the full run's shapes on
    /// fewer users and enrollments, with shorter phases.
    pub fn quick() -> Self {
        Scale {
            name: "quick".to_owned(),
            // Half are the seeded enrollments' pool; the orders and
            // freshness scenarios need about 100,000 fresh ones.
            users: 400_000,
            hot_enrollments: 20_000,
            warm_enrollments: 500,
            cold_enrollments: 3,
            round: Duration::from_secs(3),
            rate_phase: Duration::from_secs(5),
            stream_changes: 200_000,
            freshness_phase: Duration::from_secs(8),
            redis_requests: 100_000,
            overload_phase: Duration::from_secs(8),
            ..Self::full()
        }
    }

    /// The smoke run: every scenario, tiny and short; proves the harness
    /// works, says nothing about speed.
    pub fn smoke() -> Self {
        Scale {
            name: "smoke".to_owned(),
            users: 20_000,
            courses: 300,
            description_bytes: 10 * 1024,
            hot_enrollments: 500,
            warm_courses: 10,
            warm_enrollments: 50,
            cold_enrollments: 2,
            cart_size: 125,
            warmup: Duration::from_millis(100),
            rounds: 1,
            round: Duration::from_millis(300),
            rate_phase: Duration::from_millis(300),
            read_connections: 4,
            order_connections: 4,
            rate_connections: 8,
            pgbench_clients: 2,
            pgbench_transactions: Some(20),
            stream_changes: 1_000,
            freshness_rates: vec![20.0, 40.0, 80.0],
            freshness_phase: Duration::from_millis(500),
            redis_requests: 2_000,
            takeover_kills: 3,
            takeover_rate: 20.0,
            takeover_settle: Duration::from_millis(500),
            overload_factor: 3.0,
            overload_phase: Duration::from_secs(2),
            overload_rounds: 1,
            overload_connections: 64,
            // A debug build on a CI machine: the harness, not the rate.
            rush_order_rate: 40.0,
        }
    }

    /// Users whose ids are at most this are the seeded enrollments' pool
    /// (half of them, and at most 500,000); orders placed by the benchmark
    /// use the users above it, one user per order, so no order meets an
    /// existing enrollment.
    pub fn enrolled_pool(&self) -> i64 {
        (self.users / 2).min(500_000)
    }

    /// The ids of the sale event's courses: the hot course and the rest
    /// spread evenly over the catalogue.
    pub fn cart_ids(&self) -> Vec<i64> {
        let step = (self.courses / self.cart_size).max(1);
        (0..self.cart_size).map(|k| 1 + k * step).collect()
    }

    /// The ids of the rush scenario's seat-limited event: as many courses as
    /// the running sale's, each the one after a course of it, so no course
    /// is in both.
    pub fn rush_ids(&self) -> Vec<i64> {
        self.cart_ids()
            .into_iter()
            .map(|id| id % self.courses.max(1) + 1)
            .collect()
    }
}
