//! The Markdown page: the ratios first, then the machine, the command that
//! reproduces the run, every table, and the plots beside them.

use std::{collections::BTreeMap, fmt::Write as _, path::Path};

use anyhow::Result;

use crate::{
    analysis::{analysis, cpu_ranking},
    plot,
    results::{Meta, Ratio, Results},
    scenarios::{median_of, rounds_spread, Subject},
};

/// Writes `<name>.md`, `<name>.json` and the plots into `dir`.
pub fn write(r: &Results, dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir)?;
    let name = &r.meta.name;
    std::fs::write(
        dir.join(format!("{name}.json")),
        serde_json::to_vec_pretty(r)?,
    )?;
    let plots = plot::all(r, dir)?;
    std::fs::write(dir.join(format!("{name}.md")), markdown(r, &plots))?;
    Ok(())
}

fn fmt_opt(v: Option<f64>, digits: usize) -> String {
    v.map(|v| format!("{v:.digits$}"))
        .unwrap_or_else(|| "–".into())
}

/// The load average when the run started and ended, when recorded: how
/// busy the machine was besides the run.
fn load_sentence(m: &Meta) -> String {
    if m.load_before.is_empty() {
        return String::new();
    }
    let after = if m.load_after.is_empty() {
        "–"
    } else {
        &m.load_after
    };
    format!(
        " Load average (1, 5, 15 min) at the start: {}; at the end: {after}.",
        m.load_before
    )
}

/// Where PostgreSQL kept its data, and what that means for the order figures.
fn storage_sentence(file_system: &str) -> String {
    match file_system {
        "" => String::new(),
        "tmpfs" => " PostgreSQL's data directory is in memory (tmpfs): a commit's WAL flush waits \
            for no disk, so a shared disk's stalls stay out of the rounds; on a disk every order, \
            through the API and in pgbench alike, also waits for its flush."
            .to_owned(),
        other => format!(
            " PostgreSQL's data directory is on {other}: every commit waits for its WAL flush \
             on that disk, and the disk's stalls move the order figures."
        ),
    }
}

/// The Markdown page.
pub fn markdown(r: &Results, plots: &[(String, String)]) -> String {
    let mut md = String::new();
    let m = &r.meta;
    let _ = writeln!(md, "# Benchmark report: {}\n", m.name);
    let _ = writeln!(
        md,
        "Machine: {} cores ({}), {:.1} GiB memory, Linux {}; PostgreSQL {}, Redis {}.{} \
         Absolute figures drift from run to run; the ratios, measured side by side in one run, \
         are what hold.{}\n",
        m.machine.cores,
        m.machine.cpu,
        m.machine.memory_gib,
        m.machine.kernel,
        m.machine.postgres,
        m.machine.redis,
        storage_sentence(&m.machine.postgres_storage),
        load_sentence(m)
    );
    let _ = writeln!(
        md,
        "Reproduce: `{}` (scale `{}`, {:.0} s, started {}).\n",
        m.command, m.scale.name, m.duration_s, m.started_at
    );
    match m.scale.name.as_str() {
        "full" => {}
        "smoke" => {
            let _ = writeln!(md, "**This is a smoke run: tiny data and sub-second phases. It proves the harness works; its figures say nothing about speed.**\n");
        }
        _ => {
            let _ = writeln!(md, "**This is a quick run: less data and shorter phases than the full scale. Its ratios compare within the run; its absolute figures are not the full run's.**\n");
        }
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
            "The Redis-path goals are measured on the hot course's page, read with a read-your-writes token the \
             projection has reached (`?min_lsn=`, from a query API with pre-warming off), so no in-process copy \
             answers: each read waits for an MGET to Redis, its own or one shared with the reads that arrived while \
             it was on its way. It is set against the bare endpoint sending the very same bytes and against the \
             monolith computing that page live (student count and top companies over the course's enrollments). \
             The random courses take the same Redis path with an uncached key each time; against the monolith's \
             cheapest page (one row, the count kept on it) they are reported beside the goals.\n"
        );
    }
    if r.read("redis_get").is_some() {
        let _ = writeln!(
            md,
            "The one-GET ceiling is the bare endpoint's process doing, per request, one Redis `GET` of the hot \
             course's stored view with the query API's client and settings, and answering the bytes read as they \
             are ({} bytes, LZ4, where the query API answers the {}-byte page): what one Redis round trip per read \
             allows on this machine. The query API's Redis path is reported against it beside the goal.\n",
            r.hot_stored_bytes, r.hot_page_bytes
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
            "At 90% of the median maximum, {behind} subject(s) had requests that failed or were still unsent when \
             the phase ended (both count as failed), so their 90% latencies are not those of a load they carried.\n"
        );
    }
    if !r.read_cpu.is_empty() {
        let rate = r.read_cpu[0].rate;
        let _ = writeln!(
            md,
            "CPU per read: the hot course's page by each path, and the random courses, all at {rate:.0} req/s (half \
             the slowest path's maximum) for {:.1} s; user and system time of each process over the reads answered. \
             {}\n",
            m.scale.rate_phase.as_secs_f64(),
            cpu_ranking(r)
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
             (median; rounds {}, max / min {}), mean latency {:.2} ms ({} transactions).\n",
            p.clients,
            p.tps,
            p.rounds.iter().map(|v| format!("{v:.0}")).collect::<Vec<_>>().join(", "),
            rounds_spread(&p.rounds)
                .map(|v| format!("{v:.2}"))
                .unwrap_or_else(|| "–".into()),
            p.latency_avg_ms,
            p.transactions
        );
    }
    round_activity(&mut md, r);
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
    rush_section(&mut md, r);
    all_in_one_section(&mut md, r);
    let _ = writeln!(
        md,
        "## Takeover: a standby projector after kill -9 of the active one\n"
    );
    if let Some(t) = &r.takeover {
        let _ = writeln!(
            md,
            "Two projectors on one slot, one active and one standby, while orders stream in at {:.0}/s \
             ({} answered, {} failed). {} times: SIGKILL the active one, write an order through the command \
             API, and read it through the query API with its `X-Commit-Lsn` until it is there; then the killed \
             one is started again as the new standby. From the kill to the order readable: p50 {:.0} ms, \
             max {:.0} ms.\n",
            t.stream_rate,
            t.stream_orders,
            t.stream_errors,
            t.kills.len(),
            t.p50_ms,
            t.max_ms
        );
        let _ = writeln!(
            md,
            "| kill | order written, ms after the kill | order readable, ms after the kill |"
        );
        let _ = writeln!(md, "|---:|---:|---:|");
        for (i, k) in t.kills.iter().enumerate() {
            let _ = writeln!(
                md,
                "| {} | {:.0} | {:.0} |",
                i + 1,
                k.written_ms,
                k.visible_ms
            );
        }
        let _ = writeln!(md);
    }
    overload_section(&mut md, r);
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
                "CPU per row change during the projector's drain (user and system time of each process): \
                 {projector:.1} µs in the projector, {redis:.1} µs in Redis, {walsender}{total:.1} µs in all. \
                 At that cost the {} cores carry at most {:.0} changes/s with nothing else running; the drain \
                 kept {:.2} cores busy.\n",
                m.machine.cores,
                m.machine.cores as f64 * 1e6 / total.max(f64::EPSILON),
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

/// The rush: every round's three phases side by side, and the cores each
/// process used in each phase.
fn rush_section(md: &mut String, r: &Results) {
    let _ = writeln!(md, "## Rush: a sale's reads and orders together\n");
    let Some(x) = &r.rush else {
        return;
    };
    let m = &r.meta;
    let mix: Vec<String> = crate::scenarios::rush::MIX
        .iter()
        .map(|(read, share)| format!("{share}% {}", read.label()))
        .collect();
    let _ = writeln!(
        md,
        "A sale event of {} courses with {} seats each, created through the command API, running and pre-warmed \
         by the query API serving the reads. {} round(s) of three phases, the first to go turning each round, each \
         {:.1} s after {:.1} s of warm-up: the read mix alone at saturation ({} connections: {}); orders on the \
         event's courses alone at {:.0}/s on a fixed schedule (open loop, a fresh user each, priced and seated by \
         the event); and both together. The projector runs throughout, so alone means without the other load. \
         Commit to visible: from the order's answer (its `X-Commit-Lsn`) to the projection's watermark in Redis \
         reaching it (polled every millisecond, as in the freshness scenario), and to the query API serving the \
         event page with an `X-Projection-Lsn` at or past it (revalidated every 5 ms with its `ETag`); those \
         pollers run in the phases with orders only. Each ratio is the median of the rounds' ratios.\n",
        x.courses,
        x.seat_limit,
        x.rounds.len(),
        x.phase_s,
        m.scale.warmup.as_secs_f64(),
        x.read_connections,
        mix.join(", "),
        x.order_rate
    );
    let _ = writeln!(
        md,
        "| round | reads alone, req/s | with orders | ratio | orders alone p50 / p99 ms | with reads | p99 ratio | \
         failed alone / with reads | visible p50 / p99 / max ms, alone | with reads | event page served, p50 / p99 / \
         max ms | pre-warmed hits / misses |"
    );
    let _ = writeln!(md, "|---:|---:|---:|---:|---|---|---:|---|---|---|---|---|");
    for (i, round) in x.rounds.iter().enumerate() {
        let lags = |f: &crate::scenarios::freshness::Freshness| {
            format!(
                "{:.1} / {:.1} / {:.1}{}",
                f.p50_ms,
                f.p99_ms,
                f.max_ms,
                if f.unseen > 0 {
                    format!(" ({} not seen)", f.unseen)
                } else {
                    String::new()
                }
            )
        };
        let _ = writeln!(
            md,
            "| {} | {:.0} | {:.0} | {} | {:.1} / {:.1} | {:.1} / {:.1} | {} | {} / {} | {} | {} | {} | {} / {} |",
            i + 1,
            round.reads_alone.achieved_rps,
            round.reads.achieved_rps,
            fmt_opt(round.read_ratio(), 2),
            round.orders_alone.latency.p50_ms,
            round.orders_alone.latency.p99_ms,
            round.orders.latency.p50_ms,
            round.orders.latency.p99_ms,
            fmt_opt(round.order_p99_ratio(), 2),
            round.orders_alone.errors,
            round.orders.errors,
            lags(&round.orders_alone_freshness),
            lags(&round.freshness),
            lags(&round.served),
            fmt_opt(round.warm_hits, 0),
            fmt_opt(round.warm_misses, 0),
        );
    }
    let _ = writeln!(
        md,
        "\nFailed: orders without a 2xx answer, or still unsent when the phase ended. A round whose orders had more \
         than 1% failed gives no order ratio and no lag figure. Reads that failed: {} alone, {} with the orders \
         (all rounds).\n",
        x.rounds.iter().map(|r| r.reads_alone.errors).sum::<u64>(),
        x.rounds.iter().map(|r| r.reads.errors).sum::<u64>(),
    );
    let _ = writeln!(
        md,
        "Cores by process (CPU seconds per second, user and system, the median of the rounds; PostgreSQL is every \
         process of its server), on {} cores:\n",
        m.machine.cores
    );
    let _ = writeln!(
        md,
        "| phase | query API | command API | projector | PostgreSQL | Redis | load generator | all these | the \
         machine, every process |"
    );
    let _ = writeln!(md, "|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    type Of = fn(&crate::scenarios::rush::Round) -> crate::scenarios::rush::Cores;
    let phases: [(&str, Of); 3] = [
        ("reads alone", |r| r.reads_alone_cores),
        ("orders alone", |r| r.orders_alone_cores),
        ("together", |r| r.cores),
    ];
    for (what, of) in phases {
        let all: Vec<_> = x.rounds.iter().map(of).collect();
        let cores = crate::scenarios::rush::Cores::median(&all);
        let each: Vec<String> = cores.each().iter().map(|(_, c)| fmt_opt(*c, 2)).collect();
        let _ = writeln!(
            md,
            "| {what} | {} | {:.2} | {} |",
            each.join(" | "),
            cores.total(),
            fmt_opt(cores.machine, 2)
        );
    }
    let _ = writeln!(md);
}

/// The all-in-one against the three processes: each deployment's medians
/// and rounds, then the cores each process used in each phase.
fn all_in_one_section(md: &mut String, r: &Results) {
    let _ = writeln!(md, "## All-in-one against the three processes\n");
    let Some(x) = &r.all_in_one else {
        return;
    };
    let m = &r.meta;
    let rounds = x.deployments.first().map_or(0, |d| d.rounds.len());
    let _ = writeln!(
        md,
        "The command API, the projector and the query API run as three processes and as the `all-in-one` binary \
         (one process, one runtime, the same libraries and settings), each deployment on its own copy of the seeded \
         database, taken before any order, with its own replication slot and Redis key prefix, so neither's orders \
         reach the other's projector. Both stay up; in each of {rounds} round(s) they take turns, the first to go \
         alternating, and only the one whose turn it is gets load (the other idles: its query API re-reads its \
         pre-warmed set, its projector sends heartbeats, and the walsender of its slot reads the other's WAL to \
         skip it). A turn: its projector catches up (vacuum, checkpoint, \
         the watermark at the end of the WAL); the hot course's pre-warmed page at saturation ({} connections); the \
         same page from Redis, read with a read-your-writes token its projection has reached; orders at {:.0}/s on \
         a fixed schedule for {:.1} s, timed from each order's answer to the projection's watermark in Redis \
         reaching its `X-Commit-Lsn` (as in the freshness scenario); and orders spread over the catalogue at \
         saturation ({} connections). Each phase follows {:.1} s of warm-up; a saturation phase lasts {:.1} s. Each \
         figure is the median of a deployment's rounds; each ratio divides the all-in-one's by the three \
         processes'.\n",
        x.read_connections,
        x.order_rate,
        m.scale.freshness_phase.as_secs_f64(),
        x.order_connections,
        m.scale.warmup.as_secs_f64(),
        m.scale.round.as_secs_f64(),
    );
    let _ = writeln!(
        md,
        "| deployment | initial build s | warmed hot read req/s | Redis path req/s | orders/s at saturation | \
         orders at {:.0}/s: achieved, failed | visible p50 / p99 / max ms |",
        x.order_rate
    );
    let _ = writeln!(md, "|---|---:|---|---|---|---|---|");
    type Figure = fn(&crate::scenarios::all_in_one::Round) -> f64;
    for d in &x.deployments {
        let figure = |of: Figure| {
            let all: Vec<String> = d.rounds.iter().map(|r| format!("{:.0}", of(r))).collect();
            format!("{:.0} ({})", d.median(of), all.join(", "))
        };
        let _ = writeln!(
            md,
            "| {} | {:.1} | {} | {} | {} | {:.0}, {} | {:.1} / {} / {:.1} |",
            d.label,
            d.initial_build_s,
            figure(|r| r.hot.achieved_rps),
            figure(|r| r.hot_redis.achieved_rps),
            figure(|r| r.orders.achieved_rps),
            d.median(|r| r.fresh_orders.achieved_rps),
            d.rounds.iter().map(|r| r.fresh_orders.errors).sum::<u64>(),
            d.median(|r| r.freshness.p50_ms),
            fmt_opt(d.freshness_p99(), 1),
            d.rounds
                .iter()
                .map(|r| r.freshness.max_ms)
                .fold(0.0, f64::max),
        );
    }
    let _ = writeln!(
        md,
        "\nIn parentheses, every round's figure. Failed: orders on the schedule without a 2xx answer or still \
         unsent when the phase ended (all rounds); a round with more than 1% failed gives no p99. The max is the \
         longest lag of all rounds.\n"
    );
    let _ = writeln!(
        md,
        "Cores by process (CPU seconds per second, user and system, the median of the rounds, warm-up included; \
         PostgreSQL is every process of its server), on {} cores:\n",
        m.machine.cores
    );
    let _ = writeln!(
        md,
        "| deployment | phase | programs | PostgreSQL | Redis | load generator | the machine, every process |"
    );
    let _ = writeln!(md, "|---|---|---|---:|---:|---:|---:|");
    type Of = fn(&crate::scenarios::all_in_one::Round) -> crate::scenarios::rush::Cores;
    let phases: [(&str, Of); 4] = [
        ("warmed hot read", |r| r.hot_cores),
        ("Redis path", |r| r.hot_redis_cores),
        ("orders on the schedule", |r| r.freshness_cores),
        ("orders at saturation", |r| r.orders_cores),
    ];
    let idle: Vec<String> = x
        .deployments
        .iter()
        .filter_map(|d| {
            let cores = median_of(d.rounds.iter().filter_map(|r| r.other_idle_cores))?;
            let other = x.deployments.iter().find(|o| o.key != d.key)?;
            Some(format!(
                "the {}, {cores:.3} cores during the turns of the {}",
                other.label, d.label
            ))
        })
        .collect();
    for d in &x.deployments {
        for (what, of) in phases {
            let c = d.cores(of);
            let programs = match c.all_in_one {
                Some(one) => format!("all-in-one {one:.2}"),
                None => {
                    let each = [
                        ("command API", c.command_api),
                        ("query API", c.query_api),
                        ("projector", c.projector),
                    ];
                    let sum: f64 = each.iter().filter_map(|(_, v)| *v).sum();
                    let parts: Vec<String> = each
                        .iter()
                        .map(|(who, v)| format!("{who} {}", fmt_opt(*v, 2)))
                        .collect();
                    format!("{} = {sum:.2}", parts.join(" + "))
                }
            };
            let _ = writeln!(
                md,
                "| {} | {what} | {programs} | {} | {} | {} | {} |",
                d.label,
                fmt_opt(c.postgres, 2),
                fmt_opt(c.redis, 2),
                fmt_opt(c.load_generator, 2),
                fmt_opt(c.machine, 2)
            );
        }
    }
    if !idle.is_empty() {
        let _ = writeln!(
            md,
            "\nThe programs of the deployment idling meanwhile used (median of the turns, from after the catch-up \
             to the end): {}.",
            idle.join("; ")
        );
    }
    let _ = writeln!(md);
}

/// The overload scenario: capacity, then every admission under the same
/// loads round after round, and the database read back against the answers.
fn overload_section(md: &mut String, r: &Results) {
    let _ = writeln!(
        md,
        "## Overload: admission at three times the order capacity\n"
    );
    let Some(o) = &r.overload else {
        return;
    };
    let m = &r.meta;
    let capacity_rounds: Vec<String> = o
        .capacity_rounds
        .iter()
        .map(|v| format!("{v:.0}"))
        .collect();
    let rounds = o.admissions.first().map(|a| a.rounds.len()).unwrap_or(0);
    let _ = writeln!(
        md,
        "{rounds} round(s), each: the capacity, orders placed by a closed loop of {} connections for {:.1} s \
         against the command API with the old admission (it sheds nothing at that many; median {:.0} orders/s, \
         rounds {}); orders at half that capacity for {:.1} s to each admission (the unloaded latency); then \
         orders at {:.0}x that capacity (median {:.0}/s) for {:.1} s after {:.1} s of warm-up to each in turn (the \
         first to go alternates), open loop on up to {} connections: a request leaves when it is due \
         whatever came of the earlier ones, its latency counts from then, and a 503 is not retried. The command \
         APIs run side by side on one database, each with the pool its row below states; a checkpoint precedes each \
         overload. Every order is placed by a user of a course no other request of the scenario gives that \
         user, under an `Idempotency-Key` of its own, so the orders read back from the database name the \
         requests that placed them.\n",
        o.capacity_connections,
        m.scale.round.as_secs_f64(),
        o.capacity_rps,
        capacity_rounds.join(", "),
        m.scale.rate_phase.as_secs_f64(),
        o.factor,
        o.offered_rps,
        m.scale.overload_phase.as_secs_f64(),
        m.scale.warmup.as_secs_f64(),
        o.connections
    );
    let _ = writeln!(
        md,
        "| round | admission | capacity, orders/s | unloaded p99 ms | 201/s under overload | / capacity | accepted p50 / p99 / max ms | \
         p99 / unloaded p99 | 503s | 503 p50 / p99 / max ms | 503 without Retry-After | shed as counted by the \
         API | no answer | cores, command API + load generator: at capacity / under overload |"
    );
    let _ = writeln!(
        md,
        "|---:|---|---:|---:|---:|---:|---|---:|---:|---|---:|---|---:|---|"
    );
    for i in 0..rounds {
        for a in &o.admissions {
            let Some(round) = a.rounds.get(i) else {
                continue;
            };
            let l = &round.overload.latency;
            let s = &round.shed_latency;
            let counted: Vec<String> = round
                .shed_counted
                .iter()
                .map(|(reason, n)| format!("{reason} {n:.0}"))
                .collect();
            let unloaded = if round.was_unloaded() {
                format!("{:.1}", round.unloaded.latency.p99_ms)
            } else {
                format!(
                    "{:.1} ({} of {} refused or unsent)",
                    round.unloaded.latency.p99_ms,
                    round.unloaded.errors,
                    round.unloaded.ok + round.unloaded.errors
                )
            };
            let _ = writeln!(
                md,
                "| {} | {} | {:.0} | {unloaded} | {:.0} | {} | {:.1} / {:.1} / {:.1} | {} | {} | {:.1} / {:.1} / {:.1} | {} | \
                 {} | {} | {:.2} + {:.2} / {:.2} + {:.2} |",
                i + 1,
                a.key,
                round.capacity_rps,
                round.overload.achieved_rps,
                fmt_opt(round.goodput_ratio(), 2),
                l.p50_ms,
                l.p99_ms,
                l.max_ms,
                fmt_opt(round.p99_ratio(), 2),
                round.shed,
                s.p50_ms,
                s.p99_ms,
                s.max_ms,
                round.shed_without_retry_after,
                if counted.is_empty() { "–".to_owned() } else { counted.join(", ") },
                round.unanswered(),
                round.capacity_cpu.api_cores,
                round.capacity_cpu.load_cores,
                round.overload_cpu.api_cores,
                round.overload_cpu.load_cores,
            );
        }
    }
    let _ = writeln!(md);
    for a in &o.admissions {
        let _ = writeln!(
            md,
            "- `{}`, {}: goodput / capacity {} and accepted p99 / unloaded p99 {} (the median rounds).",
            a.key,
            a.label,
            fmt_opt(a.goodput_ratio(), 2),
            fmt_opt(a.p99_ratio(), 2)
        );
    }
    let _ = writeln!(
        md,
        "\nA ratio is blank for a round whose phase was not the load it is stated at: more than 1% of the \
         overload's orders never sent or unanswered, or more than 1% of the orders at half the capacity refused \
         or unsent (on a busy machine half the capacity measured earlier can be an overload too). 503s and their \
         latency count the requests due in the measured window; the API's own count \
         (`command_api_requests_shed_total`, by reason: `concurrency` at the admission limit, `db_pool` after \
         waiting for a connection) and the `Retry-After` check cover the whole phase. No answer: never sent (no \
         free connection) or no response.\n"
    );
    for a in &o.admissions {
        let mut others: BTreeMap<u16, u64> = BTreeMap::new();
        for round in &a.rounds {
            for (status, n) in &round.overload.statuses {
                if ![0, 201, 503].contains(status) {
                    *others.entry(*status).or_insert(0) += n;
                }
            }
        }
        if !others.is_empty() {
            let others: Vec<String> = others
                .iter()
                .map(|(s, n)| format!("{n} answered {s}"))
                .collect();
            let _ = writeln!(
                md,
                "- `{}` under overload: also {}.",
                a.key,
                others.join(", ")
            );
        }
    }
    let _ = writeln!(
        md,
        "What the database holds against what was answered, over every request of the overload phases (warm-up \
         included):\n"
    );
    let _ = writeln!(
        md,
        "| admission | requests | answered 201 | answered 503 | orders in the database | 201 not in the database | \
         503 in the database | in the database, answered otherwise or not at all |"
    );
    let _ = writeln!(md, "|---|---:|---:|---:|---:|---:|---:|---:|");
    for a in &o.admissions {
        let w = a.written();
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {} | {} | {} | {} |",
            a.key,
            w.requests,
            w.created,
            w.refused,
            w.orders,
            w.lost,
            w.written_by_refused,
            w.written_otherwise
        );
    }
    let _ = writeln!(md);
}

/// What the database server did in each order round, beside the round's figure.
fn round_activity(md: &mut String, r: &Results) {
    let mut rows: Vec<(usize, &str, f64, &crate::steady::Activity)> = Vec::new();
    for s in &r.orders {
        for (i, (rps, did)) in s.rounds.iter().zip(&s.activity).enumerate() {
            rows.push((i, &s.label, *rps, did));
        }
    }
    if let Some(p) = &r.pgbench {
        for (i, (tps, did)) in p.rounds.iter().zip(&p.activity).enumerate() {
            rows.push((i, "pgbench, the same SQL", *tps, did));
        }
    }
    if rows.is_empty() {
        return;
    }
    rows.sort_by_key(|row| row.0);
    let _ = writeln!(
        md,
        "Each subject first runs one unmeasured round. Before each round both databases are vacuumed and \
         analyzed, the server is checkpointed and left until no autovacuum worker runs, so a round does not \
         pay for the writes of the rounds and scenarios before it. What the \
         server did during each round (pg_stat_wal, checkpoints started, pg_stat_activity sampled every 100 ms: \
         what the client backends inside a transaction were doing, `CPU` when active without a wait event, \
         `client` when idle in the transaction, waiting for the client's next statement) and the cores the load generator \
         and the whole machine used:\n"
    );
    let _ = writeln!(md, "| round | subject | per s | server |");
    let _ = writeln!(md, "|---:|---|---:|---|");
    for (i, label, rps, did) in rows {
        let _ = writeln!(
            md,
            "| {} | {label} | {rps:.0} | {} |",
            i + 1,
            did.describe()
        );
    }
    let _ = writeln!(md);
}

fn subjects_table(md: &mut String, subjects: &[Subject]) {
    if subjects.is_empty() {
        return;
    }
    let _ = writeln!(
        md,
        "| subject | max req/s (median) | rounds | max / min | errors | at 50%: p50 / p99 / max ms | at 90%: p50 / p99 / max ms |"
    );
    let _ = writeln!(md, "|---|---:|---|---:|---:|---|---|");
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
        let spread = s
            .spread()
            .map(|v| format!("{v:.2}"))
            .unwrap_or_else(|| "–".into());
        let _ = writeln!(
            md,
            "| {} | {:.0} | {} | {spread} | {} | {} | {} |",
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
