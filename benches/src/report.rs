//! The report: everything measured (JSON), the ratios that matter against
//! their goals, and a Markdown page that opens with those ratios, the
//! machine and the command that reproduces it, with the plots beside it.

use std::{fmt::Write as _, path::Path};

use anyhow::Result;
use serde::{Deserialize, Serialize};

use crate::{
    scale::Scale,
    scenarios::{
        freshness::Freshness,
        reads::{CartComparison, ReadCpu},
        storage::Storage,
        stream::Stream,
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
    pub reads: Vec<Subject>,
    pub cart: Option<CartComparison>,
    /// CPU per read of the page's paths at one rate.
    #[serde(default)]
    pub read_cpu: Vec<ReadCpu>,
    pub orders: Vec<Subject>,
    pub pgbench: Option<Pgbench>,
    pub freshness: Vec<Freshness>,
    pub stream: Option<Stream>,
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
}

fn rps(s: Option<&Subject>) -> Option<f64> {
    s.map(Subject::max_rps).filter(|v| *v > 0.0)
}

/// The ratios the report opens with.
pub fn ratios(r: &Results) -> Vec<Ratio> {
    let mut out = Vec::new();
    let mut push =
        |key: &str, name: &str, num: Option<f64>, den: Option<f64>, goal: &str, detail: String| {
            let value = match (num, den) {
                (Some(n), Some(d)) if d > 0.0 => Some(n / d),
                _ => None,
            };
            let met = value.and_then(|v| {
                if let Some(t) = goal.strip_prefix("≥ ") {
                    t.parse::<f64>().ok().map(|t| v >= t)
                } else if let Some(t) = goal.strip_prefix("≤ ") {
                    t.parse::<f64>().ok().map(|t| v <= t)
                } else {
                    None
                }
            });
            out.push(Ratio {
                key: key.to_owned(),
                name: name.to_owned(),
                value,
                goal: goal.to_owned(),
                met,
                detail,
                unmeasured: None,
            });
        };
    let f = |v: Option<f64>| v.map(|v| format!("{v:.0}")).unwrap_or_else(|| "–".into());
    let (bare, hot, hot_redis, random) = (
        rps(r.read("bare")),
        rps(r.read("hot")),
        rps(r.read("hot_redis")),
        rps(r.read("random")),
    );
    let (pg_count, pg_companies, pg_hot) = (
        rps(r.read("pg_count")),
        rps(r.read("pg_companies")),
        rps(r.read("pg_companies_hot")),
    );
    push(
        "hot_over_bare",
        "warmed hot read RPS / bare axum RPS",
        hot,
        bare,
        "≥ 0.8",
        format!("{} / {} req/s", f(hot), f(bare)),
    );
    // The subject is one page, the hot course's: the bare endpoint
    // sends its bytes, and the same page from PostgreSQL is the monolith's
    // live aggregate of it. Random courses are reported beside it.
    push(
        "redis_over_bare",
        "Redis-path read RPS / bare axum RPS (hot course, read-your-writes token)",
        hot_redis,
        bare,
        "≥ 0.5",
        format!("{} / {} req/s", f(hot_redis), f(bare)),
    );
    push(
        "redis_over_pg",
        "Redis-path read RPS / PostgreSQL-path read RPS (the same page: hot course, student count and top companies)",
        hot_redis,
        pg_hot,
        "≥ 15",
        format!("{} / {} req/s", f(hot_redis), f(pg_hot)),
    );
    push(
        "random_over_bare",
        "Redis-path read RPS / bare axum RPS (random course of all)",
        random,
        bare,
        "reported",
        format!("{} / {} req/s", f(random), f(bare)),
    );
    push(
        "random_over_pg",
        "Redis-path read RPS / PostgreSQL-path read RPS (random course, page with student count kept on the row)",
        random,
        pg_count,
        "reported",
        format!("{} / {} req/s", f(random), f(pg_count)),
    );
    push(
        "random_over_pg_companies",
        "Redis-path read RPS / PostgreSQL-path read RPS (random course, page with top companies)",
        random,
        pg_companies,
        "reported",
        format!("{} / {} req/s", f(random), f(pg_companies)),
    );
    let (cart, single) = match &r.cart {
        Some(c) => (Some(c.cart.latency.p50_ms), Some(c.single.latency.p50_ms)),
        None => (None, None),
    };
    let ms = |v: Option<f64>| v.map(|v| format!("{v:.2}")).unwrap_or_else(|| "–".into());
    push(
        "cart_over_single",
        "125-id cart latency / single read latency (p50, same rate)",
        cart,
        single,
        "≤ 2",
        format!(
            "{} / {} ms at {:.0} req/s",
            ms(cart),
            ms(single),
            r.cart.as_ref().map(|c| c.rate).unwrap_or(0.0)
        ),
    );
    let (hot_o, spread_o) = (rps(r.order("cqrs_hot")), rps(r.order("cqrs_spread")));
    push(
        "hot_over_spread_orders",
        "hot-course orders/s / spread orders/s",
        hot_o,
        spread_o,
        "≥ 0.9",
        format!("{} / {} orders/s", f(hot_o), f(spread_o)),
    );
    let (mono_hot, mono_spread) = (
        rps(r.order("monolith_hot")),
        rps(r.order("monolith_spread")),
    );
    push(
        "monolith_hot_over_spread_orders",
        "monolith path: hot-course orders/s / spread orders/s",
        mono_hot,
        mono_spread,
        "reported",
        format!(
            "{} / {} orders/s (expected about 0.2)",
            f(mono_hot),
            f(mono_spread)
        ),
    );
    let pgbench = r.pgbench.as_ref().map(|p| p.tps);
    push(
        "endpoint_over_pgbench",
        "order endpoint orders/s / pgbench same SQL",
        spread_o,
        pgbench,
        "≥ 0.6",
        format!("{} / {} orders/s", f(spread_o), f(pgbench)),
    );
    let (proj, recv) = match &r.stream {
        Some(s) => (
            Some(s.projector_changes_per_s),
            Some(s.recvlogical_changes_per_s),
        ),
        None => (None, None),
    };
    push(
        "projector_over_recvlogical",
        "projector changes/s / pg_recvlogical changes/s",
        proj,
        recv,
        "≥ 0.7",
        format!("{} / {} changes/s", f(proj), f(recv)),
    );
    let top = top_freshness(&r.freshness);
    push(
        "freshness_p99",
        "freshness p99 at 1,000 orders/s (ms)",
        top.value,
        Some(1.0),
        "≤ 50",
        top.detail,
    );
    let lz4 = r.storage.as_ref().map(|s| s.view_ratio);
    push(
        "lz4_over_raw",
        "LZ4 bytes / raw bytes, course view with 10 KB of real HTML",
        lz4,
        Some(1.0),
        "≤ 0.55",
        match &r.storage {
            Some(s) => format!(
                "{:.0} / {:.0} bytes per view (mean of {})",
                s.mean_view_stored_bytes, s.mean_view_raw_bytes, s.views
            ),
            None => "–".into(),
        },
    );
    if let Some(ratio) = out.iter_mut().find(|x| x.key == "freshness_p99") {
        ratio.unmeasured = top.unmeasured;
    }
    out
}

/// The freshness ratio's parts, from the phase at the highest offered rate.
struct TopFreshness {
    value: Option<f64>,
    detail: String,
    unmeasured: Option<String>,
}

/// A rate at which no order got through has no lag to report; one the
/// command API fell well short of measured a lighter load than the goal's,
/// so it gives no value either, and says why.
fn top_freshness(freshness: &[Freshness]) -> TopFreshness {
    let Some(top) = freshness
        .iter()
        .max_by(|a, b| a.offered_rps.total_cmp(&b.offered_rps))
        .filter(|t| t.orders > 0)
    else {
        return TopFreshness {
            value: None,
            detail: "–".into(),
            unmeasured: None,
        };
    };
    let short = top.achieved_rps < 0.9 * top.offered_rps;
    TopFreshness {
        value: (!short).then_some(top.p99_ms),
        detail: format!(
            "p99 {:.1} ms at {:.0} orders/s offered ({:.0} achieved{})",
            top.p99_ms,
            top.offered_rps,
            top.achieved_rps,
            if short { ": too few to count" } else { "" }
        ),
        unmeasured: short.then(|| {
            format!(
                "the command API answered {:.0} of the {:.0} orders/s offered, so the lag was measured at a \
                 lighter load",
                top.achieved_rps, top.offered_rps
            )
        }),
    }
}

/// Share of a profile's samples taken by a process or library whose name
/// contains `name` (0 when there is no such profile or line).
fn share(r: &Results, profile: &str, name: &str) -> f64 {
    r.profiles
        .iter()
        .filter(|p| p.what.contains(profile))
        .flat_map(|p| p.dsos.iter())
        .filter(|(_, n)| n.contains(name))
        .map(|(pct, _)| *pct)
        .sum()
}

/// "In the profile of ..., the kernel takes N% and the hottest symbols are
/// ...": the evidence for an analysis, or nothing when it was not profiled.
fn profile_sentence(r: &Results, profile: &str) -> String {
    let Some(p) = r.profiles.iter().find(|p| p.what.contains(profile)) else {
        return String::new();
    };
    let kernel: f64 = p
        .dsos
        .iter()
        .filter(|(_, n)| n.contains("kernel"))
        .map(|(v, _)| v)
        .sum();
    let hottest: Vec<String> = p
        .symbols
        .iter()
        .take(5)
        .map(|(v, n)| format!("`{n}` {v:.1}%"))
        .collect();
    format!(
        "In the profile ({}), the kernel's socket work takes {kernel:.0}% of the samples and the hottest symbols \
         are {}: no single hot spot, a spread per-request cost. ",
        p.what,
        hottest.join(", ")
    )
}

/// The CPU per read of the Redis path against the bare endpoint's, and
/// the ratio of throughputs those costs allow on shared cores.
fn cpu_sentence(r: &Results) -> String {
    let of = |key: &str| r.read_cpu.iter().find(|c| c.key == key);
    let (Some(bare), Some(redis)) = (of("bare"), of("hot_redis")) else {
        return String::new();
    };
    format!(
        "At one rate, a Redis-path read cost {:.1} µs of CPU in all (query API {:.1}, Redis {}, load generator {:.1}) \
         against {:.1} µs for the bare endpoint (server {:.1}, load generator {:.1}): with every process on the same \
         two cores, those costs alone allow a ratio of about {:.2}; at saturation it is lower still, as the bare \
         endpoint and its load generator get cheaper per request when each wake-up finds many connections ready, \
         while each Redis-path read also waits for its own round trip to Redis. ",
        redis.total_us(),
        redis.server_us,
        redis
            .redis_us
            .map(|v| format!("{v:.1}"))
            .unwrap_or_else(|| "unmeasured".into()),
        redis.load_us,
        bare.total_us(),
        bare.server_us,
        bare.load_us,
        bare.total_us() / redis.total_us().max(f64::EPSILON),
    )
}

/// Why a goal is missed and what would close the gap: the analysis behind
/// each ratio, from the profiles (`perf`) of this code on this machine and
/// the figures of the same run; shown only where a goal is missed.
fn analysis(key: &str, r: &Results) -> Option<String> {
    let rps = |k: &str| r.read(k).map(Subject::max_rps).unwrap_or(0.0);
    let redis_get = r
        .redis_benchmark
        .iter()
        .find(|b| b.what.contains("view"))
        .map(|b| b.rps)
        .unwrap_or(0.0);
    let served_warm = r
        .notes
        .iter()
        .any(|n| n.contains("in-process cache hits") && !n.contains(" 0 in-process"));
    Some(match key {
        "hot_over_bare" => format!(
            "The bare endpoint writes a prepared buffer. {}{}Closing the gap: fewer layers per request (the \
             request id, span, metrics, concurrency limit, load shedding and timeout each wrap the call on their \
             own) or a second core's worth of headroom beside Redis and the load generator.",
            if served_warm {
                "A warmed read is a lookup: the served bytes and `ETag` of a pre-warmed page are made when the warm \
                 set is refreshed, so a hit parses, copies and hashes nothing; what is left per request is the \
                 service around it (HTTP parsing, the request id, the request's span and metrics, the concurrency \
                 limit, load shedding and timeout layers, the freshness headers), which the bare endpoint does not \
                 have. "
            } else {
                "Pre-warming did not serve these reads (no cache hits were counted), so the warmed read measured the \
                 Redis path (see the next row). "
            },
            profile_sentence(r, "hot course"),
        ),
        "redis_over_bare" => format!(
            "{}Every read is one round trip for the generation marker, its watermark, the course's page and stats: an \
             MGET, shared by the reads that arrive while another is on its way, which asks for a key several of them \
             want once (so Redis sends the hot page once per MGET, not once per read). The page is then made from \
             the bytes read: decompressed, joined with the stats, its sale picked and its `ETag` hashed, unless the \
             last page made for that course came from the very same bytes in the same span between sale boundaries, \
             which is handed out again (every read still reads Redis and compares). Redis, the query API and the load \
             generator share the two cores{}. {}Most of what is left is the service around every read (HTTP, the \
             response's socket write, which on the loopback also runs the receiver's side) and the query API's round \
             trip to Redis (a socket write and read on the loopback, and the wake-ups of the client's connection \
             task). In trials neither a Unix socket to Redis nor another client (redis-rs against fred, at the same \
             number of commands in flight) changed that cost measurably; sharing one MGET among the reads that arrive \
             together, sending each key once and reusing a page made from the same bytes did, and are in.",
            cpu_sentence(r),
            // Absent when this run did not benchmark Redis alone (`--only`).
            if redis_get > 0.0 {
                format!("; redis-benchmark alone reached {redis_get:.0} GET/s of the same value")
            } else {
                String::new()
            },
            profile_sentence(r, "Redis path (read-your-writes token)")
        ),
        "redis_over_pg" => format!(
            "The monolith's hot page aggregates the course's enrollments on every read ({:.0} req/s); its cheapest \
             page, one row with the count kept on it, reached {:.0} req/s, where the Redis path of a random course \
             reached {:.0}. Closing the gap is on the Redis path (see above).",
            rps("pg_companies_hot"),
            rps("pg_count"),
            rps("random"),
        ),
        "cart_over_single" => "The cart's 125 courses are the running event's, so they are pre-warmed: each \
             served card (sale already picked for the current sale window) is copied from the warm set straight \
             into the body, with no per-card reference count taken or dropped, and the ids are looked up with a \
             fast hasher. What is left is the size: the cart's body is about 3.5 times the single page's, and \
             every byte crosses the loopback twice and is read by the load generator, on the same two cores. \
             Read from Redis instead (cards not warm), the 125 cards are one MGET and each is served by the clock \
             from its stored sales list."
            .to_owned(),
        "hot_over_spread_orders" => "Every hot order inserts into the same leaf pages of `enrollments_course_idx` \
             (all keys equal) and of the partial unique index, so the inserts contend on buffer locks; there is no \
             shared row, so the gap stays small. Closing it: an index that spreads equal keys (a hash index, or a \
             key with the enrollment id first)."
            .to_owned(),
        "endpoint_over_pgbench" => format!(
            "pgbench runs the same statements from a thin C client; the command API adds HTTP and JSON handling, a \
             pool checkout, nine round trips to PostgreSQL per order plus one for the commit LSN, and it and the load \
             generator take CPU from PostgreSQL on the same two cores (whole-machine order profile: PostgreSQL \
             {:.0}%, the API's and the generator's runtime threads {:.0}%). Closing the gap: fewer round trips \
             (the order's inserts in one statement with data-modifying CTEs, or pipelined execution) and the commit \
             LSN from the same round trip as the COMMIT.",
            share(r, "orders", "postgres"),
            share(r, "orders", "tokio")
        ),
        "projector_over_recvlogical" => {
            let cpu = r
                .stream
                .as_ref()
                .and_then(|s| Some((s.cpu.as_ref()?.per_change_us(s.changes), s)));
            let budget = match cpu {
                Some(((projector, redis, walsender, total), s)) => format!(
                    " Per row change the drain cost {projector:.1} µs of CPU in the projector, {redis:.1} µs in \
                     Redis and {} in the walsender that decodes the slot, {total:.1} µs in all: on two cores that \
                     is a ceiling of {:.0} changes/s with nothing else running, {:.2} of pg_recvlogical's rate, \
                     before any wait between the stages. Redis alone, single-threaded, would cap the drain at \
                     {:.0} changes/s.",
                    walsender
                        .map(|w| format!("{w:.1} µs"))
                        .unwrap_or_else(|| "an unmeasured share".to_owned()),
                    2e6 / total.max(f64::EPSILON),
                    2e6 / total.max(f64::EPSILON) / s.recvlogical_changes_per_s.max(1.0),
                    1e6 / redis.max(f64::EPSILON),
                ),
                None => String::new(),
            };
            format!(
                "pg_recvlogical throws the decoded stream away; the projector turns it into views before it \
                 confirms. In the drain profile the projector takes {:.0}% of the machine, Redis {:.0}% and \
                 PostgreSQL's decoding {:.0}%.{budget} An enrollment touches only its course's small stats view \
                 and card, never the 10 KB page; a new order, and a course whose aggregate the projector holds, \
                 are applied and written by one script call each, 32 calls to a command (fred flushes its socket \
                 after every script command); a flush's first step goes to Redis in chunks while the rest is \
                 planned, with one sorted-set command per key (rankings, libraries); script arguments are slices \
                 of shared buffers; a known course is advanced in place and its top five picked without copying \
                 its tallies; mimalloc is the allocator (glibc's heap consolidation was a sixth of the drain). \
                 Closing the gap: two flushes in flight, so that the projector finishes one while Redis starts \
                 the next (delicate: per-entity stamps mean a later flush must not apply an entity before an \
                 earlier one does), and the projector and Redis on cores of their own, not shared with \
                 PostgreSQL's decoder.",
                share(r, "projector draining", "projector") + share(r, "projector draining", "tokio"),
                share(r, "projector draining", "redis"),
                share(r, "projector draining", "postgres")
            )
        }
        "freshness_p99" => {
            let top = r
                .freshness
                .iter()
                .max_by(|a, b| a.offered_rps.total_cmp(&b.offered_rps))?;
            let low = r.freshness.first()?;
            let alone = match r.order("cqrs_spread").map(Subject::max_rps) {
                Some(alone) if alone > 0.0 => format!(" (alone, {alone:.0})"),
                _ => String::new(),
            };
            format!(
                "At {:.0} orders/s offered the whole pipeline (load generator, command API, PostgreSQL, projector, \
                 Redis) shares two cores: with the projector and Redis busy beside it, the command API answered \
                 {:.0} orders/s{alone}. The tail is a few stalls of 100 ms and more in which every stage waits, not \
                 a backlog in one: in a diagnostic run with the projector's per-flush log (`BENCH_PROGRAM_LOG=\
                 projector=debug`), flushes of a single transaction reached the projector 85 ms after their commit, \
                 before it had done anything with them, while others waited on Redis as long; the host's CPU \
                 pressure (`/proc/pressure/cpu`) read 30-50% even with the run stopped. At {:.0} orders/s the lag \
                 is p50 {:.1} ms, p99 {:.1} ms. Closing the rest needs the programs off the database's machine, or \
                 fewer programs per core.",
                top.offered_rps, top.achieved_rps, low.offered_rps, low.p50_ms, low.p99_ms
            )
        }
        "lz4_over_raw" => "LZ4's fast mode finds fewer matches in prose than in markup; LZ4 HC or zstd would store \
             fewer bytes at more CPU per write."
            .to_owned(),
        _ => return None,
    })
}

/// Writes `<name>.md`, `<name>.json` and the plots into `dir`.
pub fn write(r: &Results, dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir)?;
    let name = &r.meta.name;
    std::fs::write(
        dir.join(format!("{name}.json")),
        serde_json::to_vec_pretty(r)?,
    )?;
    let plots = crate::plot::all(r, dir)?;
    std::fs::write(dir.join(format!("{name}.md")), markdown(r, &plots))?;
    Ok(())
}

fn fmt_opt(v: Option<f64>, digits: usize) -> String {
    v.map(|v| format!("{v:.digits$}"))
        .unwrap_or_else(|| "–".into())
}

/// The Markdown page.
pub fn markdown(r: &Results, plots: &[(String, String)]) -> String {
    let mut md = String::new();
    let m = &r.meta;
    let _ = writeln!(md, "# Benchmark report: {}\n", m.name);
    let _ = writeln!(
        md,
        "Machine: {} cores ({}), {:.1} GiB memory, Linux {}; PostgreSQL {}, Redis {}. \
         The machine is shared and small, so absolute figures drift from run to run; \
         the ratios, measured side by side in one run, are what hold.\n",
        m.machine.cores,
        m.machine.cpu,
        m.machine.memory_gib,
        m.machine.kernel,
        m.machine.postgres,
        m.machine.redis
    );
    let _ = writeln!(
        md,
        "Reproduce: `{}` (scale `{}`, {:.0} s, started {}).\n",
        m.command, m.scale.name, m.duration_s, m.started_at
    );
    if m.scale.name != "full" {
        let _ = writeln!(md, "**This is a smoke run: tiny data and sub-second phases. It proves the harness works; its figures say nothing about speed.**\n");
    }
    let _ = writeln!(md, "## The ratios\n");
    let _ = writeln!(md, "| ratio | measured | goal | met | from |");
    let _ = writeln!(md, "|---|---:|---|---|---|");
    for ratio in &r.ratios {
        let met = match ratio.met {
            Some(true) => "yes",
            Some(false) => "**no**",
            None => "",
        };
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {} |",
            ratio.name,
            fmt_opt(ratio.value, 2),
            ratio.goal,
            met,
            ratio.detail
        );
    }
    let _ = writeln!(md);
    if !r.errors.is_empty() {
        let _ = writeln!(md, "**Scenarios that failed** (their ratios are blank):\n");
        for e in &r.errors {
            let _ = writeln!(md, "- {}", e.replace('\n', " "));
        }
        let _ = writeln!(md);
    }
    for note in &r.notes {
        let _ = writeln!(md, "- {note}");
    }
    if !r.notes.is_empty() {
        let _ = writeln!(md);
    }

    let _ = writeln!(md, "## Data\n");
    let _ = writeln!(md, "Course descriptions: {}.", m.corpus);
    if let Some(s) = &r.seeded {
        let _ = writeln!(
            md,
            "{} users ({} with a company, {} distinct companies), {} courses (mean description {:.0} bytes), \
             {} enrollments ({} on the hot course), one running sale event over {} courses; database {:.0} MB. \
             Seeded in {:.0} s; the projector's initial build took {:.0} s.\n",
            s.users, s.users_with_company, s.companies, s.courses, s.mean_description_bytes,
            s.enrollments, s.hot_course_enrollments, m.scale.cart_size, s.database_mb,
            r.timings.seed_s, r.timings.initial_build_s
        );
    }
    let _ = writeln!(md, "## Reads\n");
    let _ = writeln!(
        md,
        "Each subject: throughput at saturation ({} connections), measured in {} rounds of {:.1} s (after {:.1} s of \
         warm-up each) with the subjects taking turns, the median round counting; then latency on a fixed schedule \
         at 50% and 90% of that maximum for {:.1} s (open loop: a late answer delays no later request, and latency \
         counts from when a request was due). The hot course page is {} bytes.\n",
        m.scale.read_connections, m.scale.rounds, m.scale.round.as_secs_f64(), m.scale.warmup.as_secs_f64(),
        m.scale.rate_phase.as_secs_f64(), r.hot_page_bytes
    );
    subjects_table(&mut md, &r.reads);
    if r.read("hot_redis").is_some() {
        let _ = writeln!(
            md,
            "The Redis-path goals are measured on the page the other goal rows send, the hot course's, read with a \
             read-your-writes token the projection has reached (`?min_lsn=`, from a query API with pre-warming off): \
             no in-process copy answers and no answer is shared with another read, so each read waits for a Redis \
             round trip (an MGET of its own, or one it shares with the reads that arrived while one was on its way) \
             and compares the bytes it got with those the course's last page was made from (the same bytes: that \
             page is sent again; other bytes: a new page is decompressed and joined). It is set against the bare \
             endpoint sending the very same \
             bytes and against the monolith computing that page live (student count and top companies over the \
             course's enrollments). The random courses take the same Redis path with an uncached key each time; \
             against the monolith's cheapest page (one row, the count kept on it) they are reported beside the \
             goals.\n"
        );
    }
    let behind = r
        .reads
        .iter()
        .chain(&r.orders)
        .filter(|s| s.at_90.as_ref().is_some_and(|p| p.errors > 0))
        .count();
    if behind > 0 {
        let _ = writeln!(
            md,
            "At 90% of the median maximum, {behind} subject(s) fell behind the schedule (requests unsent when \
             the phase ended count as failed): the schedule asked for more than the service sustained during that \
             phase (on this shared machine the load besides the run varies from round to round), so those 90% tails \
             show queueing behind the schedule.\n"
        );
    }
    if !r.read_cpu.is_empty() {
        let rate = r.read_cpu[0].rate;
        let _ = writeln!(
            md,
            "CPU per read: the hot course's page by each path, and the random courses, all at {rate:.0} req/s (half \
             the slowest path's maximum) for {:.1} s; user and system time of each process over the reads answered. \
             At saturation the two cores are shared by all three, so a path's maximum follows its total.\n",
            m.scale.rate_phase.as_secs_f64()
        );
        let _ = writeln!(
            md,
            "| subject | answered | server µs | Redis µs | load generator µs | all µs |"
        );
        let _ = writeln!(md, "|---|---:|---:|---:|---:|---:|");
        for c in &r.read_cpu {
            let _ = writeln!(
                md,
                "| {} | {} | {:.1} | {} | {:.1} | {:.1} |",
                c.label,
                c.answered,
                c.server_us,
                c.redis_us
                    .map(|v| format!("{v:.1}"))
                    .unwrap_or_else(|| "–".into()),
                c.load_us,
                c.total_us()
            );
        }
        let _ = writeln!(md);
    }
    if let Some(c) = &r.cart {
        let _ = writeln!(
            md,
            "Cart against single read, both at {:.0} req/s: cart p50 {:.2} ms, p99 {:.2} ms; single p50 {:.2} ms, p99 {:.2} ms.\n",
            c.rate, c.cart.latency.p50_ms, c.cart.latency.p99_ms, c.single.latency.p50_ms, c.single.latency.p99_ms
        );
    }
    if !r.redis_benchmark.is_empty() {
        let _ = writeln!(
            md,
            "redis-benchmark, GET of the stored values themselves (Redis's own ceiling):\n"
        );
        let _ = writeln!(md, "| value | bytes | req/s | p50 ms | p99 ms | max ms |");
        let _ = writeln!(md, "|---|---:|---:|---:|---:|---:|");
        for b in &r.redis_benchmark {
            let _ = writeln!(
                md,
                "| {} | {} | {:.0} | {:.3} | {:.3} | {:.3} |",
                b.what, b.value_bytes, b.rps, b.p50_ms, b.p99_ms, b.max_ms
            );
        }
        let _ = writeln!(md);
    }
    let _ = writeln!(md, "## Orders\n");
    let _ = writeln!(
        md,
        "One course per order, a fresh user per order, through `POST /v1/orders` with an `Idempotency-Key`; \
         the monolith runs the same transaction plus `UPDATE courses SET student_count = student_count + 1` \
         on a database of its own. The projector is stopped during these phases (the write path alone is measured; \
         the freshness scenario runs the whole pipeline).\n"
    );
    subjects_table(&mut md, &r.orders);
    if let Some(p) = &r.pgbench {
        let _ = writeln!(
            md,
            "pgbench, the same SQL prepared, {} clients, a round after each round of the others: {:.0} transactions/s \
             (median; rounds {}), mean latency {:.2} ms ({} transactions).\n",
            p.clients,
            p.tps,
            p.rounds.iter().map(|v| format!("{v:.0}")).collect::<Vec<_>>().join(", "),
            p.latency_avg_ms,
            p.transactions
        );
    }
    let _ = writeln!(md, "## Freshness: commit to visible\n");
    if !r.freshness.is_empty() {
        let _ = writeln!(md, "| offered orders/s | achieved | orders | failed | p50 ms | p95 ms | p99 ms | max ms | not seen |");
        let _ = writeln!(md, "|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
        for f in &r.freshness {
            let _ = writeln!(
                md,
                "| {:.0} | {:.0} | {} | {} | {:.1} | {:.1} | {:.1} | {:.1} | {} |",
                f.offered_rps,
                f.achieved_rps,
                f.orders,
                f.errors,
                f.p50_ms,
                f.p95_ms,
                f.p99_ms,
                f.max_ms,
                f.unseen
            );
        }
        let _ = writeln!(
            md,
            "\nFailed: orders without an answer, or still unsent when the phase ended because the command API fell \
             behind the schedule. Lag from the moment the client had the order's `X-Commit-Lsn` to the first time the projection's \
             watermark in Redis (polled every millisecond) was at or past it. Before the first phase the projector \
             has caught up with the orders scenario's backlog and the database is vacuumed and checkpointed, so \
             that scenario's leftover work does not land in these phases.\n"
        );
    }
    let _ = writeln!(md, "## Projector against pg_recvlogical\n");
    if let Some(s) = &r.stream {
        let _ = writeln!(
            md,
            "A backlog of {} row changes in {} checkout transactions ({:.0} MB of WAL), drained from two slots \
             created at the same point: pg_recvlogical (pgoutput, output discarded) in {:.2} s ({:.0} changes/s); \
             the projector (decode, project, write Redis, confirm) in {:.2} s ({:.0} changes/s).\n",
            s.changes, s.transactions, s.wal_mb, s.recvlogical_s, s.recvlogical_changes_per_s, s.projector_s, s.projector_changes_per_s
        );
        if let Some(cpu) = &s.cpu {
            let (projector, redis, walsender, total) = cpu.per_change_us(s.changes);
            let walsender = walsender
                .map(|w| format!("{w:.1} µs in the walsender that decodes the projector's slot, "))
                .unwrap_or_default();
            let _ = writeln!(
                md,
                "CPU per row change during the projector's drain (user and system time of each process, \
                 less noisy on a shared machine than the rates): {projector:.1} µs in the projector, \
                 {redis:.1} µs in Redis, {walsender}{total:.1} µs in all. At that cost the two cores \
                 carry at most {:.0} changes/s with nothing else running; the drain kept {:.2} cores busy.\n",
                2e6 / total.max(f64::EPSILON),
                (cpu.projector_s + cpu.redis_s + cpu.walsender_s.unwrap_or(0.0)) / s.projector_s.max(f64::EPSILON),
            );
        }
    }
    let _ = writeln!(md, "## Bytes per view in Redis\n");
    if let Some(s) = &r.storage {
        let _ = writeln!(
            md,
            "{} course views with a mean description of {:.0} bytes of HTML: {:.0} bytes of JSON stored as {:.0} bytes \
             (ratio {:.3}; LZ4 block, `lz4_flex` fast mode). The hot course's view is {} bytes, `MEMORY USAGE` {} bytes. \
             Cards (under 1 KB, stored as JSON): {:.0} bytes raw, {:.0} stored.\n",
            s.views, s.mean_description_bytes, s.mean_view_raw_bytes, s.mean_view_stored_bytes, s.view_ratio,
            s.hot_view_stored_bytes, s.hot_view_memory_usage, s.mean_card_raw_bytes, s.mean_card_stored_bytes
        );
    }
    if !plots.is_empty() {
        let _ = writeln!(md, "## Plots\n");
        for (file, caption) in plots {
            let _ = writeln!(md, "{caption}\n\n![{caption}]({file})\n");
        }
    }
    if !r.profiles.is_empty() {
        let _ = writeln!(
            md,
            "## Profiles\n\nperf (499 Hz, call graphs) on the paths behind the ratios, sampled in extra runs after the measured ones, so the measurements are not perturbed. Shares are of all samples taken.\n"
        );
        for p in &r.profiles {
            let _ = writeln!(md, "**{}**\n", p.what);
            let _ = writeln!(md, "| share | where |\n|---:|---|");
            for (pct, name) in &p.dsos {
                let _ = writeln!(md, "| {pct:.1}% | {} |", name.replace('|', "\\|"));
            }
            let _ = writeln!(md, "\nHottest symbols:\n\n| share | symbol |\n|---:|---|");
            for (pct, name) in p.symbols.iter().take(15) {
                let _ = writeln!(md, "| {pct:.1}% | `{}` |", name.replace('|', "\\|"));
            }
            let _ = writeln!(md);
        }
    }
    let missed: Vec<&Ratio> = r.ratios.iter().filter(|x| x.met == Some(false)).collect();
    let unmeasured: Vec<(&Ratio, &str)> = r
        .ratios
        .iter()
        .filter_map(|x| x.unmeasured.as_deref().map(|why| (x, why)))
        .collect();
    let _ = writeln!(md, "## Closing note\n");
    for (ratio, why) in &unmeasured {
        let _ = writeln!(md, "- **{}: not measured in this run:** {why}.", ratio.name);
    }
    if missed.is_empty() && r.errors.is_empty() {
        if unmeasured.is_empty() {
            let _ = writeln!(md, "Every goal is met in this run.");
        } else {
            let _ = writeln!(md, "\nEvery goal measured in this run is met.");
        }
    } else {
        for ratio in missed {
            let _ = writeln!(
                md,
                "- **{}: {} against {}.** {}",
                ratio.name,
                fmt_opt(ratio.value, 2),
                ratio.goal,
                analysis(&ratio.key, r).unwrap_or_default()
            );
        }
    }
    md
}

fn subjects_table(md: &mut String, subjects: &[Subject]) {
    if subjects.is_empty() {
        return;
    }
    let _ = writeln!(
        md,
        "| subject | max req/s (median) | rounds | errors | at 50%: p50 / p99 / max ms | at 90%: p50 / p99 / max ms |"
    );
    let _ = writeln!(md, "|---|---:|---|---:|---|---|");
    for s in subjects {
        let at = |p: &Option<crate::load::Phase>| match p {
            Some(p) => format!(
                "{:.2} / {:.2} / {:.2} ({:.0} req/s{})",
                p.latency.p50_ms,
                p.latency.p99_ms,
                p.latency.max_ms,
                p.achieved_rps,
                if p.errors > 0 {
                    format!(", {} failed or unsent", p.errors)
                } else {
                    String::new()
                }
            ),
            None => "–".to_owned(),
        };
        let rounds: Vec<String> = s.rounds.iter().map(|v| format!("{v:.0}")).collect();
        let _ = writeln!(
            md,
            "| {} | {:.0} | {} | {} | {} | {} |",
            s.label,
            s.saturation.achieved_rps,
            rounds.join(", "),
            s.saturation.errors,
            at(&s.at_50),
            at(&s.at_90)
        );
    }
    let _ = writeln!(md);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn phase(offered_rps: f64, achieved_rps: f64, orders: u64) -> Freshness {
        Freshness {
            offered_rps,
            achieved_rps,
            orders,
            errors: 0,
            unseen: 0,
            p50_ms: 3.0,
            p95_ms: 8.0,
            p99_ms: 12.5,
            max_ms: 20.0,
            samples: Vec::new(),
        }
    }

    #[test]
    fn freshness_is_read_at_the_highest_rate_the_command_api_carried() {
        let top = top_freshness(&[phase(80.0, 79.0, 40), phase(20.0, 20.0, 10)]);
        assert_eq!(top.value, Some(12.5));
        assert!(top.unmeasured.is_none());
        assert!(top
            .detail
            .starts_with("p99 12.5 ms at 80 orders/s offered (79 achieved)"));
    }

    #[test]
    fn a_rate_the_command_api_fell_short_of_gives_a_reason_instead_of_a_value() {
        let top = top_freshness(&[phase(20.0, 20.0, 10), phase(80.0, 44.0, 22)]);
        assert_eq!(top.value, None);
        let why = top.unmeasured.expect("a reason");
        assert!(why.contains("44 of the 80 orders/s"), "{why}");
        assert!(top.detail.ends_with("too few to count)"), "{}", top.detail);
    }

    #[test]
    fn no_orders_at_all_is_no_value_and_no_reason() {
        let top = top_freshness(&[phase(80.0, 0.0, 0)]);
        assert_eq!(top.value, None);
        assert!(top.unmeasured.is_none());
    }
}
