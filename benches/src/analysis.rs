//! The report's prose that judges figures, above all under a missed goal:
//! every comparison and verdict in it is computed from the same run.

use std::cmp::Ordering;

use crate::{goals::rps, results::Results, scenarios::Subject};

/// Two figures within this fraction of each other read as "about the same".
const SAME_WITHIN: f64 = 0.05;
/// A symbol with at least this share of a profile's samples is a hot spot.
const HOT_SPOT_PERCENT: f64 = 10.0;
/// A commit-to-visible lag at least this long counts as a stall.
const STALL_MS: f64 = 100.0;

/// How a measured figure compares with another.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Relation {
    Lower,
    Same,
    Higher,
}

fn relation(figure: f64, other: f64) -> Relation {
    if (figure - other).abs() <= SAME_WITHIN * other.abs() {
        Relation::Same
    } else if figure < other {
        Relation::Lower
    } else {
        Relation::Higher
    }
}

/// "1 core" or "N cores", as the run recorded the machine.
fn cores(r: &Results) -> String {
    match r.meta.machine.cores {
        1 => "1 core".to_owned(),
        n => format!("{n} cores"),
    }
}

/// The query API's in-process cache hits during the reads, from the run's
/// note; `None` when they were not counted.
fn cache_hits(r: &Results) -> Option<f64> {
    r.notes.iter().find_map(|note| {
        note.strip_prefix("The query API counted ")?
            .split_once(" in-process cache hits")?
            .0
            .parse()
            .ok()
    })
}

/// Share of a profile's samples taken by a process or library whose name
/// contains `name`; `None` when there is no such profile.
fn share(r: &Results, profile: &str, name: &str) -> Option<f64> {
    let p = r.profiles.iter().find(|p| p.what.contains(profile))?;
    Some(
        p.dsos
            .iter()
            .filter(|(_, n)| n.contains(name))
            .map(|(pct, _)| *pct)
            .sum(),
    )
}

/// The kernel's share and the hottest symbols of a profile, and whether one
/// of them is a hot spot; nothing when it was not profiled.
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
    let verdict = match p.symbols.first() {
        Some((top, name)) if *top >= HOT_SPOT_PERCENT => {
            format!(": `{name}` is a hot spot at {top:.1}%")
        }
        Some((top, _)) => format!(": none takes more than {top:.1}%, a spread per-request cost"),
        None => String::new(),
    };
    format!(
        "In the profile ({}), the kernel takes {kernel:.0}% of the samples and the hottest symbols are {}{verdict}. ",
        p.what,
        hottest.join(", ")
    )
}

/// The CPU per read of `key` against the bare endpoint's at one rate, the
/// ratio of throughputs those costs allow, and how the ratio measured at
/// saturation compares with it.
fn cpu_sentence(r: &Results, key: &str, what: &str) -> String {
    let of = |key: &str| r.read_cpu.iter().find(|c| c.key == key);
    let (Some(bare), Some(path)) = (of("bare"), of(key)) else {
        return String::new();
    };
    let allowed = bare.total_us() / path.total_us().max(f64::EPSILON);
    let mut out = format!(
        "At {:.0} req/s, {what} cost {:.1} µs of CPU in all (query API {:.1}, Redis {}, load generator {:.1}) \
         against {:.1} µs for the bare endpoint (server {:.1}, load generator {:.1}): with every process on the \
         same {}, those costs alone allow a ratio of about {allowed:.2}",
        path.rate,
        path.total_us(),
        path.server_us,
        path.redis_us
            .map(|v| format!("{v:.1}"))
            .unwrap_or_else(|| "unmeasured".into()),
        path.load_us,
        bare.total_us(),
        bare.server_us,
        bare.load_us,
        cores(r),
    );
    if let (Some(n), Some(d)) = (rps(r.read(key)), rps(r.read("bare"))) {
        let measured = n / d;
        out += &match relation(measured, allowed) {
            Relation::Lower => format!(
                "; at saturation it was {measured:.2}, lower, so more than the CPU per read holds this path back"
            ),
            Relation::Same => format!("; at saturation it was {measured:.2}, about the same"),
            Relation::Higher => format!("; at saturation it was {measured:.2}, higher"),
        };
    }
    let parts = [
        ("the query API", path.server_us),
        ("Redis", path.redis_us.unwrap_or(0.0)),
        ("the load generator", path.load_us),
    ];
    if let Some((who, us)) = parts
        .iter()
        .max_by(|a, b| a.1.partial_cmp(&b.1).unwrap_or(Ordering::Equal))
    {
        out += &format!(". Of its CPU per read, {who} takes the most ({us:.1} µs)");
    }
    out + ". "
}

/// Whether the read paths' maxima at saturation rank as their CPU per read
/// at one rate does (the cheaper, the faster); nothing with fewer than two
/// paths measured both ways.
pub(crate) fn cpu_ranking(r: &Results) -> String {
    let paths: Vec<(f64, f64)> = r
        .read_cpu
        .iter()
        .filter_map(|c| Some((c.total_us(), rps(r.read(&c.key))?)))
        .collect();
    if paths.len() < 2 {
        return String::new();
    }
    let follows = paths.iter().enumerate().all(|(i, (cpu_a, max_a))| {
        paths[i + 1..].iter().all(|(cpu_b, max_b)| {
            match (relation(*cpu_a, *cpu_b), relation(*max_a, *max_b)) {
                (Relation::Same, _) | (_, Relation::Same) => true,
                (cpu, max) => cpu != max,
            }
        })
    });
    if follows {
        "Here the paths' maxima at saturation rank as their CPU per read does: the cheaper the read, the \
         higher its maximum."
            .to_owned()
    } else {
        "Here the paths' maxima at saturation do not rank as their CPU per read does: something besides CPU \
         limits at least one of them."
            .to_owned()
    }
}

/// What the figures of the same run say about a missed goal; `None` for a
/// ratio without analysis.
pub(crate) fn analysis(key: &str, r: &Results) -> Option<String> {
    let read = |k: &str| r.read(k).map(Subject::max_rps).unwrap_or(0.0);
    let order = |k: &str| r.order(k).map(Subject::max_rps).unwrap_or(0.0);
    let text = match key {
        "hot_over_bare" => format!(
            "The bare endpoint sends a prepared buffer; a warmed read is a lookup in the warm set, around which \
             the query API adds HTTP parsing, the request id, span and metrics, the concurrency limit, load \
             shedding, the timeout and the freshness headers. {}{}{}",
            match cache_hits(r) {
                Some(hits) if hits > 0.0 => {
                    format!("The query API counted {hits:.0} in-process cache hits during the reads. ")
                }
                Some(_) => "The query API counted no in-process cache hits during the reads, so the warmed \
                            read took the Redis path (see the next row). "
                    .to_owned(),
                None => String::new(),
            },
            cpu_sentence(r, "hot", "a warmed read"),
            profile_sentence(r, "hot course"),
        ),
        "redis_over_bare" => {
            let redis_get = r
                .redis_benchmark
                .iter()
                .find(|b| b.what.contains("view"))
                .map(|b| b.rps)
                .filter(|v| *v > 0.0);
            format!(
                "{}Each read of this path fetches the generation marker, its watermark, the course's page and \
                 stats with an MGET, shared by the reads that arrive while one is on its way{}. {}",
                cpu_sentence(r, "hot_redis", "a Redis-path read"),
                // Absent when this run did not benchmark Redis alone (`--only`).
                match redis_get {
                    Some(get) => format!(
                        "; redis-benchmark alone reached {get:.0} GET/s of the same value, against {:.0} reads/s \
                         by this path",
                        read("hot_redis")
                    ),
                    None => String::new(),
                },
                profile_sentence(r, "Redis path (read-your-writes token)")
            )
        }
        "redis_over_pg" => format!(
            "The monolith's hot page aggregates the course's enrollments on every read ({:.0} req/s); its cheapest \
             page, one row with the count kept on it, reached {:.0} req/s, and the Redis path of a random course \
             {:.0} ({:.2} times the cheapest page).",
            read("pg_companies_hot"),
            read("pg_count"),
            read("random"),
            read("random") / read("pg_count").max(f64::EPSILON),
        ),
        "cart_over_single" => {
            let c = r.cart.as_ref()?;
            format!(
                "At {:.0} req/s the cart of {} courses answered in p50 {:.2} ms and p99 {:.2} ms, one of its \
                 courses alone in p50 {:.2} ms and p99 {:.2} ms. The cart's courses are the running event's, which \
                 the query API pre-warms; cards that are not warm are read from Redis in one MGET.",
                c.rate,
                r.meta.scale.cart_size,
                c.cart.latency.p50_ms,
                c.cart.latency.p99_ms,
                c.single.latency.p50_ms,
                c.single.latency.p99_ms,
            )
        }
        "hot_over_spread_orders" => {
            let (mono_hot, mono_spread) = (order("monolith_hot"), order("monolith_spread"));
            let monolith = if mono_hot > 0.0 && mono_spread > 0.0 {
                format!(
                    " The monolith, which also updates the course's row, reached {:.2} of its spread rate.",
                    mono_hot / mono_spread
                )
            } else {
                String::new()
            };
            format!(
                "Hot orders reached {:.0} orders/s against {:.0} spread.{monolith} No row is updated, but every hot \
                 order's item and enrollment lock the course's row through their foreign keys (`FOR KEY SHARE`, \
                 a new multixact per order as buyers overlap) and insert into the same leaf pages of \
                 `enrollments_course_idx` (all keys equal). Candidates: an index that spreads equal keys (a hash \
                 index, or a key with the enrollment id first); the foreign keys to `courses`, whose cost was \
                 within the noise when last measured.",
                order("cqrs_hot"),
                order("cqrs_spread"),
            )
        }
        "endpoint_over_pgbench" => {
            let profile = match (
                share(r, "orders", "postgres"),
                share(r, "orders", "tokio"),
            ) {
                (Some(pg), Some(rt)) => format!(
                    " In the whole-machine order profile PostgreSQL takes {pg:.0}% of the samples and the API's \
                     and the load generator's runtime threads {rt:.0}%, on {}.",
                    cores(r)
                ),
                _ => String::new(),
            };
            format!(
                "pgbench runs the same statements from a thin C client; the command API adds HTTP and JSON \
                 handling, a pool checkout (with its ping), and a round trip to PostgreSQL per statement: BEGIN, \
                 the key and the facts, the write, COMMIT and the commit LSN.{profile} Candidates: the commit \
                 LSN in the COMMIT's round trip, and no ping on a connection the pool used a moment ago."
            )
        }
        "projector_over_recvlogical" => {
            let s = r.stream.as_ref()?;
            let budget = match &s.cpu {
                Some(cpu) => {
                    let (projector, redis, walsender, total) = cpu.per_change_us(s.changes);
                    let ceiling = r.meta.machine.cores.max(1) as f64 * 1e6 / total.max(f64::EPSILON);
                    format!(
                        " Per row change the drain cost {projector:.1} µs of CPU in the projector, {redis:.1} µs \
                         in Redis and {} in the walsender that decodes the slot, {total:.1} µs in all: on {} that \
                         is a ceiling of {:.0} changes/s with nothing else running, {:.2} of pg_recvlogical's \
                         rate. Redis alone, single-threaded, would cap the drain at {:.0} changes/s.",
                        walsender
                            .map(|w| format!("{w:.1} µs"))
                            .unwrap_or_else(|| "an unmeasured share".to_owned()),
                        cores(r),
                        ceiling,
                        ceiling / s.recvlogical_changes_per_s.max(1.0),
                        1e6 / redis.max(f64::EPSILON),
                    )
                }
                None => String::new(),
            };
            let profile = match (
                share(r, "projector draining", "projector"),
                share(r, "projector draining", "tokio"),
                share(r, "projector draining", "redis"),
                share(r, "projector draining", "postgres"),
            ) {
                (Some(projector), Some(runtime), Some(redis), Some(postgres)) => format!(
                    " In the drain profile the projector takes {:.0}% of the machine, Redis {redis:.0}% and \
                     PostgreSQL's decoding {postgres:.0}%.",
                    projector + runtime
                ),
                _ => String::new(),
            };
            format!(
                "pg_recvlogical throws the decoded stream away; the projector turns it into views in Redis \
                 before it confirms.{profile}{budget} A candidate: two flushes in flight, so that the projector \
                 plans one while Redis applies the other (a later flush must not apply an entity before an \
                 earlier one does)."
            )
        }
        "freshness_p99" => {
            let top = r
                .freshness
                .iter()
                .max_by(|a, b| a.offered_rps.total_cmp(&b.offered_rps))?;
            let low = r.freshness.first()?;
            let alone = match order("cqrs_spread") {
                alone if alone > 0.0 => format!(" (alone, {alone:.0})"),
                _ => String::new(),
            };
            let stalls = top.samples.iter().filter(|(_, ms)| *ms >= STALL_MS).count();
            let tail = if top.samples.is_empty() {
                String::new()
            } else {
                format!(
                    " Of the {} lags sampled at that rate, {stalls} were {STALL_MS:.0} ms or more (the longest \
                     {:.0} ms).",
                    top.samples.len(),
                    top.max_ms
                )
            };
            format!(
                "At {:.0} orders/s offered the whole pipeline (load generator, command API, PostgreSQL, projector, \
                 Redis) shares {}: the command API answered {:.0} orders/s{alone}.{tail} At {:.0} orders/s the \
                 lag is p50 {:.1} ms, p99 {:.1} ms.",
                top.offered_rps,
                cores(r),
                top.achieved_rps,
                low.offered_rps,
                low.p50_ms,
                low.p99_ms
            )
        }
        "lz4_over_raw" => {
            let s = r.storage.as_ref()?;
            format!(
                "{} course views with a mean description of {:.0} bytes of HTML stored {:.0} of {:.0} bytes on \
                 average with LZ4's fast mode. Candidates, not measured here: LZ4 HC or zstd, at more CPU per write.",
                s.views, s.mean_description_bytes, s.mean_view_stored_bytes, s.mean_view_raw_bytes
            )
        }
        "overload_goodput" | "overload_p99" => {
            let o = r.overload.as_ref()?;
            let new = o.admission("sized")?;
            let others: String = ["default", "old"]
                .iter()
                .filter_map(|key| o.admission(key))
                .map(|a| {
                    format!(
                        " `{}` ({}) under the same load: {:.0} orders/s accepted, p99 {:.1} ms (medians).",
                        a.key,
                        a.label,
                        a.median(|r| r.overload.achieved_rps),
                        a.median(|r| r.overload.latency.p99_ms)
                    )
                })
                .collect();
            let concurrency = new.median(|r| r.shed_counted.get("concurrency").copied().unwrap_or(0.0));
            let db_pool = new.median(|r| r.shed_counted.get("db_pool").copied().unwrap_or(0.0));
            // Little's law: the accepted orders in the API at once, on average.
            let in_flight =
                new.median(|r| r.overload.latency.mean_ms / 1000.0 * r.overload.achieved_rps);
            let text = format!(
                "Medians over the rounds: at {:.0} orders/s offered ({:.0}x the {:.0} measured at saturation in the \
                 round) the \
                 admission as shipped, with the pool sized to the database, accepted {:.0} orders/s (p50 {:.1} ms, p99 {:.1} ms, against a p99 of {:.1} \
                 ms at half the capacity) and shed {:.0} with 503 (p99 {:.1} ms; by the API's count {concurrency:.0} \
                 at the admission limit, {db_pool:.0} after waiting for a connection).{others} On average \
                 {in_flight:.1} accepted orders were in the API at once (mean latency × orders/s): each waits \
                 behind about that many, however few of them PostgreSQL runs at a time on its {}. The command API \
                 and the load generator used {:.2} cores at capacity and {:.2} under the overload, refusing what \
                 they did not admit: what they took more is what PostgreSQL, on the same cores, had less.",
                o.offered_rps,
                o.factor,
                o.capacity_rps,
                new.median(|r| r.overload.achieved_rps),
                new.median(|r| r.overload.latency.p50_ms),
                new.median(|r| r.overload.latency.p99_ms),
                new.median(|r| r.unloaded.latency.p99_ms),
                new.median(|r| r.shed as f64),
                new.median(|r| r.shed_latency.p99_ms),
                cores(r),
                new.median(|r| r.capacity_cpu.api_cores + r.capacity_cpu.load_cores),
                new.median(|r| r.overload_cpu.api_cores + r.overload_cpu.load_cores),
            );
            // Where the accepted orders waited, and so what would bound it.
            let remedy = if key == "overload_p99" && db_pool < 1.0 {
                format!(
                    " The wait for a connection never reached its budget ({db_pool:.0} shed by it), so the queue \
                     is not in front of the pool but in PostgreSQL, which runs the pooled transactions on {}: \
                     the admitted count sets the wait. Admitting about as many as PostgreSQL runs usefully at \
                     once bounds it: `default` above, with a pool of 16 on these cores, shows the wait \
                     that a larger pool adds.",
                    cores(r)
                )
            } else if key == "overload_goodput" {
                // Whether the admission turned away what the database could
                // carry, or every admission lost the same share.
                let shares: Vec<String> = o
                    .admissions
                    .iter()
                    .filter(|a| a.key != new.key)
                    .filter_map(|a| a.goodput_ratio().map(|g| format!("`{}` {g:.2}", a.key)))
                    .collect();
                if shares.is_empty() {
                    String::new()
                } else {
                    format!(
                        " The other admissions under the same load reached {} of the capacity: every one lost \
                         about the same share, so what is missing is not orders an admission refused that the \
                         database could have carried, but the cores the refusals and the load generator took \
                         from PostgreSQL on the same {} (the capacity is measured with nothing refused).",
                        shares.join(", "),
                        cores(r)
                    )
                }
            } else {
                String::new()
            };
            text + &remedy
        }
        "rush_reads" | "rush_order_p99" | "rush_freshness_p99" => rush_analysis(key, r)?,
        "aio_hot" | "aio_hot_redis" | "aio_orders" | "aio_freshness_p99_one" => {
            all_in_one_analysis(key, r)?
        }
        _ => return None,
    };
    Some(text.trim_end().to_owned())
}

/// The all-in-one's figures behind a missed goal: the cores each
/// deployment's programs and the machine used in that phase, and whether
/// the rounds of the two overlap.
fn all_in_one_analysis(key: &str, r: &Results) -> Option<String> {
    use crate::scenarios::{
        all_in_one::{Measured, Round},
        rush::Cores,
    };
    let x = r.all_in_one.as_ref()?;
    let (one, three) = (x.deployment("one")?, x.deployment("three")?);
    type Of = (fn(&Round) -> f64, fn(&Round) -> Cores);
    let (figure, phase_cores): Of = match key {
        "aio_hot" => (|r| r.hot.achieved_rps, |r| r.hot_cores),
        "aio_hot_redis" => (|r| r.hot_redis.achieved_rps, |r| r.hot_redis_cores),
        "aio_orders" => (|r| r.orders.achieved_rps, |r| r.orders_cores),
        _ => (|r| r.freshness.p99_ms, |r| r.freshness_cores),
    };
    let programs = |c: &Cores| {
        [c.all_in_one, c.command_api, c.query_api, c.projector]
            .iter()
            .flatten()
            .sum::<f64>()
    };
    let range = |d: &Measured| {
        let all: Vec<f64> = d.rounds.iter().map(figure).collect();
        let low = all.iter().copied().fold(f64::INFINITY, f64::min);
        let high = all.iter().copied().fold(0.0, f64::max);
        (low, high)
    };
    let (c1, c3) = (one.cores(phase_cores), three.cores(phase_cores));
    let machine = |c: &Cores| c.machine.map(|m| format!("{m:.2}")).unwrap_or("–".into());
    let used = format!(
        "In that phase the all-in-one process used {:.2} cores against {:.2} for the three processes together, \
         PostgreSQL {:.2} against {:.2}; the machine was busy {} and {} of its {} (every process, anyone's).",
        programs(&c1),
        programs(&c3),
        c1.postgres.unwrap_or(0.0),
        c3.postgres.unwrap_or(0.0),
        machine(&c1),
        machine(&c3),
        cores(r),
    );
    if key == "aio_freshness_p99_one" {
        let p99s: Vec<String> = one
            .rounds
            .iter()
            .map(|r| format!("{:.1}", r.freshness.p99_ms))
            .collect();
        return Some(format!(
            "The all-in-one's rounds' p99: {} ms; the three processes' median {} ms. {used}",
            p99s.join(", "),
            three
                .freshness_p99()
                .map_or("–".to_owned(), |v| format!("{v:.1}"))
        ));
    }
    let ((low1, high1), (low3, high3)) = (range(one), range(three));
    let overlap = if high1 >= low3 {
        "they overlap, so the gap is within what this run's rounds moved"
    } else {
        "no round of the all-in-one reached the three processes' slowest"
    };
    Some(format!(
        "{used} Each request cost the programs {:.1} µs of CPU in one process against {:.1} µs in three. The \
         rounds ranged {low1:.0} to {high1:.0} against {low3:.0} to {high3:.0}: {overlap}.",
        programs(&c1) * 1e6 / one.median(figure).max(f64::EPSILON),
        programs(&c3) * 1e6 / three.median(figure).max(f64::EPSILON),
    ))
}

/// The rush's figures behind a missed goal: what each process used, alone
/// and together, from the same rounds.
fn rush_analysis(key: &str, r: &Results) -> Option<String> {
    use crate::scenarios::rush::{Cores, Round};
    let x = r.rush.as_ref()?;
    let median =
        |of: fn(&Round) -> Cores| Cores::median(&x.rounds.iter().map(of).collect::<Vec<_>>());
    let (reads_alone, orders_alone, together) = (
        median(|r| r.reads_alone_cores),
        median(|r| r.orders_alone_cores),
        median(|r| r.cores),
    );
    let c = |v: Option<f64>| v.unwrap_or(0.0);
    let reads_side = |k: &Cores| c(k.query_api) + c(k.redis) + c(k.load_generator);
    let orders_side = |k: &Cores| c(k.command_api) + c(k.projector) + c(k.postgres);
    let list = |k: &Cores| {
        k.each()
            .iter()
            .filter_map(|(who, v)| Some(format!("{who} {:.2}", (*v)?)))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let busiest = |k: &Cores| {
        k.busiest()
            .map(|(who, v)| format!(" Of the processes, {who} used the most: {v:.2} cores."))
            .unwrap_or_default()
    };
    // Milliseconds of CPU per order from cores used at the orders' rate.
    let per_order = |cores: f64| cores * 1e3 / x.order_rate.max(f64::EPSILON);
    let text = match key {
        "rush_reads" => {
            let (alone, with) = (
                x.median(|r| r.reads_alone.achieved_rps),
                x.median(|r| r.reads.achieved_rps),
            );
            let (side_alone, side_with) = (reads_side(&reads_alone), reads_side(&together));
            // Reads per core of the reads' own processes, alone.
            let expected = alone / side_alone.max(f64::EPSILON) * side_with;
            let verdict = match relation(with, expected) {
                Relation::Same => "about what was measured, so the cores the orders' side took account for the \
                                   drop"
                    .to_owned(),
                Relation::Lower => format!(
                    "more than was measured ({with:.0}): each read also cost more CPU together ({:.1} µs against \
                     {:.1} µs alone, in the query API, Redis and the load generator; in the query API alone {:.1} \
                     µs against {:.1} µs)",
                    side_with * 1e6 / with.max(f64::EPSILON),
                    side_alone * 1e6 / alone.max(f64::EPSILON),
                    c(together.query_api) * 1e6 / with.max(f64::EPSILON),
                    c(reads_alone.query_api) * 1e6 / alone.max(f64::EPSILON)
                ),
                Relation::Higher => format!("fewer than were measured ({with:.0})"),
            };
            let hits = x.median(|r| {
                let (h, m) = (r.warm_hits.unwrap_or(0.0), r.warm_misses.unwrap_or(0.0));
                if h + m > 0.0 {
                    h / (h + m)
                } else {
                    0.0
                }
            });
            format!(
                "Medians over the rounds, on {}. Alone, the read mix reached {alone:.0} req/s with the processes \
                 using {:.2} cores ({}). Together it reached {with:.0} req/s with the processes using {:.2} cores \
                 ({}): the orders' side (command API, projector, PostgreSQL) {:.2} against {:.2} with the reads \
                 alone, the reads' side (query API, Redis, load generator) {side_with:.2} against {side_alone:.2}. \
                 At the CPU a read cost alone, the reads' side's cores together carry about {expected:.0} req/s: \
                 {verdict}. Holding 0.85 of the reads at their CPU per read alone leaves {:.2} of the {:.2} cores \
                 the processes used alone for everything else; at {:.0} orders/s the orders' side took {:.2}, \
                 {:.1} ms of CPU per order (the command API {:.1}, PostgreSQL {:.1}, the projector {:.1}).{} {:.0}% \
                 of the query API's pre-warmed lookups hit during the phase together.",
                cores(r),
                reads_alone.total(),
                list(&reads_alone),
                together.total(),
                list(&together),
                orders_side(&together),
                orders_side(&reads_alone),
                (reads_alone.total() - 0.85 * side_alone).max(0.0),
                reads_alone.total(),
                x.order_rate,
                orders_side(&together),
                per_order(orders_side(&together)),
                per_order(c(together.command_api)),
                per_order(c(together.postgres)),
                per_order(c(together.projector)),
                busiest(&together),
                hits * 100.0
            )
        }
        "rush_order_p99" => format!(
            "Medians over the rounds, on {}. Orders alone answered in p50 {:.1} ms and p99 {:.1} ms with the processes \
             using {:.2} cores ({}); with the reads, p50 {:.1} ms and p99 {:.1} ms, with {:.2} cores used ({}), of \
             which the reads' side (query API, Redis, load generator) {:.2}. The command API used {:.2} cores \
             together against {:.2} alone, PostgreSQL {:.2} against {:.2}. {}{}",
            cores(r),
            x.median(|r| r.orders_alone.latency.p50_ms),
            x.median(|r| r.orders_alone.latency.p99_ms),
            orders_alone.total(),
            list(&orders_alone),
            x.median(|r| r.orders.latency.p50_ms),
            x.median(|r| r.orders.latency.p99_ms),
            together.total(),
            list(&together),
            reads_side(&together),
            c(together.command_api),
            c(orders_alone.command_api),
            c(together.postgres),
            c(orders_alone.postgres),
            {
                // Every process's time, anyone else's too: the cores left idle.
                let busy = together.machine.unwrap_or(together.total());
                if busy >= 0.9 * r.meta.machine.cores.max(1) as f64 {
                    format!(
                        "Together the machine's {} cores were {:.2} busy (every process, these {:.2}): each step \
                         of an order, in the command API and in PostgreSQL, waits its turn for a core behind the \
                         reads.",
                        r.meta.machine.cores,
                        busy,
                        together.total()
                    )
                } else {
                    format!(
                        "Together the machine's {} cores were {busy:.2} busy (every process), not all of the \
                         time: not all of the orders' wait is for a core.",
                        r.meta.machine.cores
                    )
                }
            },
            busiest(&together),
        ),
        "rush_freshness_p99" => {
            let alone_p99 = x.median(|r| r.orders_alone_freshness.p99_ms);
            let cause = if alone_p99 > 50.0 {
                "The orders alone miss the goal too, so the pipeline itself sets the lag, not the reads."
            } else {
                "Alone the lag is within the goal, so it is the reads' load that stretches it."
            };
            format!(
                "Medians over the rounds, on {}. The lag to the watermark was p50 {:.1} ms and p99 {alone_p99:.1} ms \
                 with the orders alone, p50 {:.1} ms and p99 {:.1} ms with the reads. {cause} The projector used \
                 {:.2} cores with the reads against {:.2} alone, Redis {:.2} against {:.2} (one thread: 1.00 is its \
                 ceiling), PostgreSQL {:.2} against {:.2}.{}",
                cores(r),
                x.median(|r| r.orders_alone_freshness.p50_ms),
                x.median(|r| r.freshness.p50_ms),
                x.median(|r| r.freshness.p99_ms),
                c(together.projector),
                c(orders_alone.projector),
                c(together.redis),
                c(orders_alone.redis),
                c(together.postgres),
                c(orders_alone.postgres),
                busiest(&together),
            )
        }
        _ => return None,
    };
    Some(text + &rush_profile(r))
}

/// Where the machine's time went in the rush's profile, by process.
fn rush_profile(r: &Results) -> String {
    let Some(p) = r.profiles.iter().find(|p| p.what.contains("sale rush")) else {
        return String::new();
    };
    let top: Vec<String> = p
        .dsos
        .iter()
        .take(6)
        .map(|(pct, name)| format!("{name} {pct:.0}%"))
        .collect();
    let hottest: Vec<String> = p
        .symbols
        .iter()
        .take(5)
        .map(|(pct, name)| format!("`{name}` {pct:.1}%"))
        .collect();
    // perf names a process by its thread: every Rust program's runtime
    // threads are `tokio-rt-worker`, so the table of cores above splits them.
    format!(
        " In a whole-machine profile of one more phase together, the samples by process name: {} \
         (`tokio-rt-worker` is the runtime threads of the query API, the command API, the projector and the load \
         generator together; the cores above split them); the hottest symbols: {}.",
        top.join(", "),
        hottest.join(", ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A committed full run, as `--render` reads it.
    fn committed() -> Results {
        serde_json::from_str(include_str!("../results/2026-12-02.json")).expect("a results file")
    }

    fn subject_mut<'a>(r: &'a mut Results, key: &str) -> &'a mut Subject {
        r.reads
            .iter_mut()
            .find(|s| s.key == key)
            .expect("a subject")
    }

    #[test]
    fn figures_within_five_percent_read_as_the_same() {
        assert_eq!(relation(0.97, 1.0), Relation::Same);
        assert_eq!(relation(0.9, 1.0), Relation::Lower);
        assert_eq!(relation(1.1, 1.0), Relation::Higher);
    }

    #[test]
    fn the_saturation_verdict_follows_the_measured_ratio() {
        let mut r = committed();
        let text = cpu_sentence(&r, "hot_redis", "a Redis-path read");
        assert!(text.contains("at saturation it was 0.42, lower"), "{text}");

        let bare = subject_mut(&mut r, "bare").saturation.achieved_rps;
        subject_mut(&mut r, "hot_redis").saturation.achieved_rps = bare * 0.9;
        let text = cpu_sentence(&r, "hot_redis", "a Redis-path read");
        assert!(text.contains("at saturation it was 0.90, higher"), "{text}");
    }

    #[test]
    fn the_cpu_sentence_counts_the_cores_the_run_recorded() {
        let mut r = committed();
        r.meta.machine.cores = 8;
        let text = cpu_sentence(&r, "hot_redis", "a Redis-path read");
        assert!(text.contains("the same 8 cores"), "{text}");
        assert!(!text.contains("two cores"), "{text}");
    }

    #[test]
    fn a_hot_spot_is_named_only_when_one_symbol_stands_out() {
        let mut r = committed();
        let profile = "hot course read at saturation";
        let p = r
            .profiles
            .iter_mut()
            .find(|p| p.what.contains(profile))
            .expect("a profile");
        p.symbols = vec![(13.6, "inflate".into()), (2.0, "memmove".into())];
        assert!(profile_sentence(&r, profile).contains("`inflate` is a hot spot at 13.6%"));

        let p = r
            .profiles
            .iter_mut()
            .find(|p| p.what.contains(profile))
            .expect("a profile");
        p.symbols = vec![(4.0, "inflate".into()), (2.0, "memmove".into())];
        let text = profile_sentence(&r, profile);
        assert!(text.contains("none takes more than 4.0%"), "{text}");
    }

    #[test]
    fn the_cpu_ranking_verdict_follows_the_figures() {
        let mut r = committed();
        let follows = "rank as their CPU per read does";
        let cpu = |r: &Results, key: &str| {
            r.read_cpu
                .iter()
                .find(|c| c.key == key)
                .expect("cpu")
                .total_us()
        };
        // The cheapest read gets the highest maximum, the dearest the lowest.
        let mut keys: Vec<String> = r.read_cpu.iter().map(|c| c.key.clone()).collect();
        keys.sort_by(|a, b| cpu(&r, a).total_cmp(&cpu(&r, b)));
        for (rank, key) in keys.iter().enumerate() {
            subject_mut(&mut r, key).saturation.achieved_rps = 100_000.0 / (rank + 1) as f64;
        }
        assert!(cpu_ranking(&r).contains(follows), "{}", cpu_ranking(&r));
        // The dearest read now gets the highest maximum.
        let dearest = keys.last().expect("a path").clone();
        subject_mut(&mut r, &dearest).saturation.achieved_rps = 1_000_000.0;
        assert!(
            cpu_ranking(&r).contains("do not rank"),
            "{}",
            cpu_ranking(&r)
        );
    }

    #[test]
    fn cache_hits_are_read_from_the_note_and_zero_hits_say_so() {
        let mut r = committed();
        assert_eq!(cache_hits(&r), Some(5_536_047.0));
        let text = analysis("hot_over_bare", &r).expect("an analysis");
        assert!(
            text.contains("counted 5536047 in-process cache hits"),
            "{text}"
        );

        r.notes = vec!["The query API counted 0 in-process cache hits during the reads.".into()];
        let text = analysis("hot_over_bare", &r).expect("an analysis");
        assert!(text.contains("counted no in-process cache hits"), "{text}");

        r.notes.clear();
        let text = analysis("hot_over_bare", &r).expect("an analysis");
        assert!(!text.contains("cache hits"), "{text}");
    }

    #[test]
    fn a_missed_rush_goal_says_which_process_used_the_cpu() {
        use crate::scenarios::rush::tests::{round, rush};
        let mut r = committed();
        r.rush = Some(rush(vec![round((1000.0, 700.0), (10.0, 40.0), 0, 80.0)]));
        let text = analysis("rush_reads", &r).expect("an analysis");
        assert!(
            text.contains("Of the processes, Redis used the most: 0.90 cores."),
            "{text}"
        );
        assert!(text.contains("Together it reached 700 req/s"), "{text}");
        let text = analysis("rush_order_p99", &r).expect("an analysis");
        assert!(text.contains("p99 10.0 ms"), "{text}");
        assert!(text.contains("p99 40.0 ms"), "{text}");
        let text = analysis("rush_freshness_p99", &r).expect("an analysis");
        assert!(
            text.contains("Alone the lag is within the goal, so it is the reads' load"),
            "{text}"
        );

        // The orders alone past the goal too: the pipeline, not the reads.
        let mut slow = round((1000.0, 700.0), (10.0, 40.0), 0, 80.0);
        slow.orders_alone_freshness.p99_ms = 70.0;
        r.rush = Some(rush(vec![slow]));
        let text = analysis("rush_freshness_p99", &r).expect("an analysis");
        assert!(
            text.contains("The orders alone miss the goal too"),
            "{text}"
        );
    }

    #[test]
    fn a_missing_profile_gives_no_shares_rather_than_zeros() {
        let mut r = committed();
        r.profiles.clear();
        let text = analysis("projector_over_recvlogical", &r).expect("an analysis");
        assert!(!text.contains("drain profile"), "{text}");
        let text = analysis("endpoint_over_pgbench", &r).expect("an analysis");
        assert!(!text.contains("order profile"), "{text}");
    }
}
