//! The outside tools that give the databases' own ceilings (pgbench,
//! pg_recvlogical, redis-benchmark), and what the machine is.

use std::{path::PathBuf, process::Stdio, time::Duration};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use tokio::process::Command;

/// Finds a PostgreSQL client tool: on PATH, else in the newest
/// `/usr/lib/postgresql/<major>/bin` (Debian keeps some only there).
pub fn pg_tool(name: &str) -> Result<PathBuf> {
    if let Some(path) = on_path(name) {
        return Ok(path);
    }
    let mut dirs: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path().join("bin").join(name))
        .filter(|p| p.exists())
        .collect();
    dirs.sort_by_key(|p| {
        p.components()
            .nth(4)
            .and_then(|c| c.as_os_str().to_str())
            .and_then(|v| v.parse::<u32>().ok())
            .unwrap_or(0)
    });
    dirs.pop()
        .with_context(|| format!("{name} not found (install PostgreSQL's client tools)"))
}

/// A tool on PATH.
pub fn on_path(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(name))
            .find(|p| p.is_file())
    })
}

/// Runs `command` to completion within `limit`, returning its stdout.
pub async fn output(mut command: Command, limit: Duration) -> Result<String> {
    command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let child = command.spawn().context("starting a benchmark tool")?;
    let out = tokio::time::timeout(limit, child.wait_with_output())
        .await
        .context("a benchmark tool ran past its time limit")??;
    if !out.status.success() {
        bail!(
            "benchmark tool failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// What pgbench measured.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Pgbench {
    pub clients: usize,
    /// Transactions per second of every round (the median is `tps`).
    #[serde(default)]
    pub rounds: Vec<f64>,
    pub transactions: u64,
    pub tps: f64,
    pub latency_avg_ms: f64,
    /// What the database server did in each round, in the order run.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub activity: Vec<crate::steady::Activity>,
}

/// Parses pgbench's summary.
pub fn parse_pgbench(text: &str) -> Result<Pgbench> {
    let mut out = Pgbench::default();
    for line in text.lines() {
        let line = line.trim();
        if let Some(rest) = line.strip_prefix("tps = ") {
            out.tps = rest
                .split_whitespace()
                .next()
                .and_then(|v| v.parse().ok())
                .unwrap_or(0.0);
        } else if let Some(rest) = line.strip_prefix("latency average = ") {
            out.latency_avg_ms = rest
                .split_whitespace()
                .next()
                .and_then(|v| v.parse().ok())
                .unwrap_or(0.0);
        } else if let Some(rest) = line.strip_prefix("number of transactions actually processed: ")
        {
            out.transactions = rest
                .split(['/', ' '])
                .next()
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
        } else if let Some(rest) = line.strip_prefix("number of clients: ") {
            out.clients = rest.parse().unwrap_or(0);
        }
    }
    if out.tps <= 0.0 {
        bail!("pgbench printed no tps: {text}");
    }
    Ok(out)
}

/// One line of redis-benchmark's CSV output.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RedisBench {
    pub value_bytes: usize,
    pub what: String,
    pub requests: u64,
    pub connections: usize,
    pub rps: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

/// Parses the last data line of `redis-benchmark --csv`:
/// `"test","rps","avg_latency_ms","min_latency_ms","p50_latency_ms","p95_latency_ms","p99_latency_ms","max_latency_ms"`.
pub fn parse_redis_benchmark(text: &str) -> Result<(f64, f64, f64, f64)> {
    let line = text
        .lines()
        .rfind(|l| !l.starts_with("\"test\"") && l.contains(','))
        .context("redis-benchmark printed no result line")?;
    let fields: Vec<f64> = line
        .split(',')
        .skip(1)
        .map(|f| f.trim_matches('"').parse().unwrap_or(0.0))
        .collect();
    match fields.as_slice() {
        [rps, _avg, _min, p50, _p95, p99, max, ..] => Ok((*rps, *p50, *p99, *max)),
        _ => bail!("unexpected redis-benchmark line: {line}"),
    }
}

/// The machine the run was measured on.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Machine {
    pub cores: usize,
    pub cpu: String,
    pub memory_gib: f64,
    pub kernel: String,
    pub postgres: String,
    pub redis: String,
    /// The file system PostgreSQL's data directory is on (`tmpfs`: in
    /// memory, where a commit's WAL flush waits for no disk); empty when
    /// unknown (and in reports from before it was recorded).
    #[serde(default)]
    pub postgres_storage: String,
}

impl Machine {
    /// Cores, CPU model, memory and kernel from /proc.
    pub fn read() -> Self {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu = cpuinfo
            .lines()
            .find(|l| l.starts_with("model name"))
            .and_then(|l| l.split_once(':'))
            .map(|(_, v)| v.trim().to_owned())
            .unwrap_or_else(|| "unknown".to_owned());
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        let kib: f64 = meminfo
            .lines()
            .find(|l| l.starts_with("MemTotal:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0);
        Machine {
            cores: std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1),
            cpu,
            memory_gib: kib / 1024.0 / 1024.0,
            kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
                .unwrap_or_default()
                .trim()
                .to_owned(),
            postgres: String::new(),
            redis: String::new(),
            postgres_storage: String::new(),
        }
    }
}

/// The type of the file system `path` is on, by the longest mount point of
/// `mounts` (the text of `/proc/self/mounts`) that holds it.
pub fn file_system_of(mounts: &str, path: &str) -> Option<String> {
    mounts
        .lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let _device = fields.next()?;
            let point = fields.next()?;
            let kind = fields.next()?;
            let inside = point == "/"
                || path == point
                || path
                    .strip_prefix(point)
                    .is_some_and(|rest| rest.starts_with('/'));
            inside.then(|| (point.len(), kind.to_owned()))
        })
        .max_by_key(|(len, _)| *len)
        .map(|(_, kind)| kind)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_path_is_on_the_file_system_of_its_longest_mount_point() {
        let mounts = "/dev/vda1 / ext4 rw 0 0\n\
                      tmpfs /dev/shm tmpfs rw 0 0\n\
                      /dev/vdb /dev/shmem xfs rw 0 0\n";
        let of = |path| file_system_of(mounts, path);
        assert_eq!(of("/dev/shm/bench/postgres/data").as_deref(), Some("tmpfs"));
        assert_eq!(of("/dev/shm").as_deref(), Some("tmpfs"));
        assert_eq!(of("/dev/shmem/data").as_deref(), Some("xfs"));
        assert_eq!(of("/dev/shmx/data").as_deref(), Some("ext4"));
        assert_eq!(of("/work/.stack/postgres/data").as_deref(), Some("ext4"));
        assert_eq!(file_system_of("", "/x"), None);
    }

    #[test]
    fn pgbench_summary_is_read() {
        let text = "transaction type: orders.sql\nnumber of clients: 16\nnumber of transactions actually processed: 12345\nlatency average = 12.969 ms\ntps = 1233.725188 (without initial connection time)\n";
        let p = parse_pgbench(text).expect("parses");
        assert_eq!(p.clients, 16);
        assert_eq!(p.transactions, 12345);
        assert!((p.tps - 1233.725188).abs() < 1e-6);
        assert!((p.latency_avg_ms - 12.969).abs() < 1e-9);
    }

    #[test]
    fn redis_benchmark_csv_is_read() {
        let text = "\"test\",\"rps\",\"avg_latency_ms\",\"min_latency_ms\",\"p50_latency_ms\",\"p95_latency_ms\",\"p99_latency_ms\",\"max_latency_ms\"\n\"GET x\",\"52356.02\",\"0.501\",\"0.104\",\"0.471\",\"0.751\",\"1.087\",\"3.223\"\n";
        let (rps, p50, p99, max) = parse_redis_benchmark(text).expect("parses");
        assert!((rps - 52356.02).abs() < 1e-6);
        assert!((p50 - 0.471).abs() < 1e-9);
        assert!((p99 - 1.087).abs() < 1e-9);
        assert!((max - 3.223).abs() < 1e-9);
    }
}

/// Where a process spent its CPU while a load ran, from `perf record`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Profile {
    /// What was profiled (the subject and the process).
    pub what: String,
    /// Share of samples by binary or library (the kernel is `[kernel.kallsyms]`).
    pub dsos: Vec<(f64, String)>,
    /// The hottest symbols, each with its share of all samples.
    pub symbols: Vec<(f64, String)>,
}

/// Whether `perf` can sample here (installed, and allowed to).
pub async fn perf_works() -> bool {
    let Some(perf) = on_path("perf") else {
        return false;
    };
    let mut command = Command::new(perf);
    command.args(["stat", "-e", "task-clock", "true"]);
    output(command, Duration::from_secs(10)).await.is_ok()
}

/// Samples process `pid` (or, with `None`, the whole machine) for
/// `seconds` while `load` runs, then reads the profile back: the load's
/// result and the profile. Shares are by library for one process and by
/// process name for the whole machine.
pub async fn profile_while<T>(
    pid: Option<u32>,
    seconds: u64,
    what: &str,
    dir: &std::path::Path,
    load: impl std::future::Future<Output = Result<T>>,
) -> Result<(T, Profile)> {
    let perf = on_path("perf").context("perf not found")?;
    std::fs::create_dir_all(dir)?;
    let data = dir.join(format!("perf-{}.data", what.replace([' ', '/', ','], "_")));
    let mut record = Command::new(&perf);
    record.args(["record", "-F", "499", "-g"]);
    match pid {
        Some(pid) => record.args(["-p", &pid.to_string()]),
        None => record.arg("-a"),
    };
    record
        .arg("-o")
        .arg(&data)
        .args(["--", "sleep", &seconds.to_string()]);
    let recording = output(record, Duration::from_secs(seconds + 60));
    let (loaded, recorded) = tokio::join!(load, recording);
    recorded.context("perf record")?;
    let report = |sort: &'static str| {
        let mut command = Command::new(&perf);
        command
            .args([
                "report",
                "--stdio",
                "--no-children",
                "-g",
                "none",
                "--percent-limit",
                "0.7",
                "--sort",
                sort,
                "-i",
            ])
            .arg(&data);
        output(command, Duration::from_secs(120))
    };
    let dsos = parse_perf(
        &report(if pid.is_some() { "dso" } else { "comm" }).await?,
        8,
    );
    let symbols = parse_perf(&report("symbol").await?, 25);
    let _ = std::fs::remove_file(&data);
    Ok((
        loaded?,
        Profile {
            what: what.to_owned(),
            dsos,
            symbols,
        },
    ))
}

/// `perf report --stdio` lines: `  6.49%  [.] symbol`.
fn parse_perf(text: &str, keep: usize) -> Vec<(f64, String)> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let l = l.trim();
            let (pct, rest) = l.split_once('%')?;
            let pct: f64 = pct.trim().parse().ok()?;
            let name = rest.trim();
            let name = name
                .strip_prefix("[.] ")
                .or_else(|| name.strip_prefix("[k] "))
                .unwrap_or(name);
            // Columns are padded with runs of spaces; the name is the first.
            let name = name.split("  ").next().unwrap_or(name).trim();
            Some((pct, name.chars().take(110).collect()))
        })
        .take(keep)
        .collect()
}
