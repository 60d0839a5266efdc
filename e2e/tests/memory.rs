//! Memory is bounded in bytes, not only in changes: one transaction of
//! 20,000 courses with 50 KB of HTML each (about 1 GB of rows) streams
//! through the projector in flushes cut by `PROJECTOR_FLUSH_MAX_BYTES`, and
//! its peak resident memory stays far below what the rows weigh. (Cut at
//! 20,000 changes alone, one flush would hold the whole gigabyte.)
//!
//! `PROJECTOR_FLUSH_MAX_BYTES` and `PROJECTOR_FLUSH_MAX_CHANGES` in the
//! test's environment reach the projector, so the same run shows the peak
//! without the byte cut (and then fails its ceiling).

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use e2e::Stack;
use fred::prelude::*;

const COURSES: i32 = 20_000;
const HTML_BYTES: usize = 50_000;
/// The projector's peak resident memory may not pass this.
const CEILING_BYTES: u64 = 256 << 20;
const MIB: f64 = (1 << 20) as f64;

/// A field of `/proc/<pid>/status` in bytes (`VmHWM`: the peak resident set).
fn proc_status_bytes(pid: u32, field: &str) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kib: u64 = status
        .lines()
        .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))
        .with_context(|| format!("no {field} in /proc/{pid}/status"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()?;
    Ok(kib * 1024)
}

/// CPU seconds (user and system) process `pid` has used.
fn cpu_seconds(pid: u32) -> Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name, which is in parentheses.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .context("malformed /proc/<pid>/stat")?
        .1
        .split_whitespace()
        .collect();
    let ticks: u64 = fields.get(11).context("no utime")?.parse::<u64>()?
        + fields.get(12).context("no stime")?.parse::<u64>()?;
    // Linux reports clock ticks of 1/100 s (USER_HZ) on every platform it runs on here.
    Ok(ticks as f64 / 100.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_transaction_of_a_gigabyte_of_course_html_streams_in_bounded_memory() -> Result<()> {
    let mut stack = Stack::start().await?;
    stack.start_projector().await?;
    let pid = stack.projector_pid().context("the projector runs")?;
    let idle = proc_status_bytes(pid, "VmHWM")?;

    // LZ4 rather than pglz for the TOASTed HTML: the same rows reach the
    // projector, written in a fraction of the time.
    stack
        .pg
        .batch_execute("ALTER TABLE courses ALTER COLUMN description_html SET COMPRESSION lz4")
        .await?;
    // One statement, server side: each course gets the same realistic HTML
    // rotated by its own offset (the same entropy, no two pages alike).
    let html = e2e::realistic_html(HTML_BYTES, 15);
    let started = Instant::now();
    stack
        .pg
        .execute(
            "INSERT INTO courses (title, summary, description_html, category, instructor, price_krw) \
             SELECT 'Bulk course ' || i, 'summary ' || i, \
                    '<!-- ' || i || ' -->' || substr($1, r.o) || substr($1, 1, r.o - 1), \
                    'bulk', 'Kim', 1000 + i \
               FROM generate_series(1, $2::int) AS i, \
                    LATERAL (SELECT (i * 7919) % length($1) + 1 AS o) AS r",
            &[&html, &COURSES],
        )
        .await?;
    let written: views::Lsn = stack.current_lsn().await?.parse()?;
    let inserted = started.elapsed();

    // A generous bound: a debug projector on a busy machine is slow.
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let applied = stack
            .projector_metric("projector_applied_lsn")
            .await?
            .unwrap_or(0.0) as u64;
        if applied >= written.0 {
            break;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "the transaction was not projected in time (applied {applied:#x}, written {written})"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let projected = started.elapsed() - inserted;
    let peak = proc_status_bytes(pid, "VmHWM")?;
    println!(
        "projector peak RSS {:.1} MiB (idle {:.1} MiB; ceiling {:.0} MiB) for {COURSES} courses \
         of {HTML_BYTES} B of HTML in one transaction: inserted in {:.1} s, projected in {:.1} s \
         more, projector CPU {:.1} s",
        peak as f64 / MIB,
        idle as f64 / MIB,
        CEILING_BYTES as f64 / MIB,
        inserted.as_secs_f64(),
        projected.as_secs_f64(),
        cpu_seconds(pid)?,
    );

    // Every course's page is there, with its whole description.
    let checking = Instant::now();
    let lengths: Vec<(i64, i64)> = stack
        .pg
        .query(
            "SELECT id, octet_length(description_html)::int8 FROM courses ORDER BY id",
            &[],
        )
        .await?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(lengths.len(), COURSES as usize);
    let keys = views::Keys::new(stack.prefix.clone());
    let marker: String = stack.redis.get(keys.generation_marker()).await?;
    let generation = serde_json::from_str::<views::GenerationMarker>(&marker)?.generation;
    for chunk in lengths.chunks(500) {
        let names: Vec<String> = chunk
            .iter()
            .map(|(id, _)| keys.course_view(generation, *id))
            .collect();
        let values: Vec<Option<Vec<u8>>> = stack.redis.mget(names).await?;
        for ((id, length), value) in chunk.iter().zip(values) {
            let value = value.with_context(|| format!("no view of course {id}"))?;
            let page: views::CoursePage = serde_json::from_slice(&views::decode(&value)?)?;
            assert_eq!(
                page.description_html.len() as i64,
                *length,
                "course {id}'s description"
            );
        }
    }

    println!(
        "checked every page in {:.1} s",
        checking.elapsed().as_secs_f64()
    );
    assert!(
        peak < CEILING_BYTES,
        "peak RSS {:.1} MiB is over the {:.0} MiB ceiling",
        peak as f64 / MIB,
        CEILING_BYTES as f64 / MIB
    );
    stack.cleanup().await
}
