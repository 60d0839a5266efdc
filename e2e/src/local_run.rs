//! `bash deploy/local.sh run` as a child process, so tests can drive the
//! local stack's supervisor as a developer does: on ports, a database, a
//! slot and a key prefix of its own, on the test PostgreSQL and Redis.

use std::{
    io::{BufRead, BufReader, Read},
    process::{Child, ExitStatus, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};

use crate::{admin_database_url, redis_url, unique_name};

/// A running `deploy/local.sh run`, in a process group of its own (its pid
/// is the group's id), with every line it printed kept.
pub struct LocalRun {
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
    /// `host:port` of each program.
    pub command: String,
    pub query: String,
    pub projector: String,
    pub standby: String,
    db_name: String,
    slot: String,
    prefix: String,
}

/// A process of the run's group, from `/proc`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Process {
    pub pid: u32,
    /// The executable's name (`projector`, `sed`, `bash`...).
    pub comm: String,
}

fn free_port_addr() -> Result<String> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?.to_string())
}

/// The port of `url` (`default` when it names none), after checking that
/// it is on 127.0.0.1, the only host the script serves.
fn local_port(url: &str, default: u16) -> Result<u16> {
    let parsed = url::Url::parse(url).with_context(|| format!("parsing {url}"))?;
    if parsed.host_str() != Some("127.0.0.1") {
        bail!("deploy/local.sh run needs its servers on 127.0.0.1, not {url}");
    }
    Ok(parsed.port().unwrap_or(default))
}

impl LocalRun {
    /// Starts `bash deploy/local.sh run` (with `args`) on free ports, with
    /// the test servers' ports and a database, slot and key prefix of its
    /// own; returns once it printed its `ready` line.
    pub async fn start(args: &[&str]) -> Result<Self> {
        use std::os::unix::process::CommandExt as _;

        let pg_port = local_port(&admin_database_url(), 5432)?;
        let redis_port = local_port(&redis_url(), 6379)?;
        let (command, query, projector, standby) = (
            free_port_addr()?,
            free_port_addr()?,
            free_port_addr()?,
            free_port_addr()?,
        );
        let (db_name, slot, prefix) = (unique_name("run"), unique_name("slot"), unique_name("k"));
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/local.sh");
        let mut child = std::process::Command::new("bash")
            .arg(script)
            .arg("run")
            .args(args)
            .env("LOCAL_PG_PORT", pg_port.to_string())
            .env("LOCAL_REDIS_PORT", redis_port.to_string())
            .env("LOCAL_PG_DATABASE", &db_name)
            .env("KEY_PREFIX", &prefix)
            .env("PROJECTOR_SLOT", &slot)
            .env("COMMAND_API_ADDR", &command)
            .env("QUERY_API_ADDR", &query)
            .env("PROJECTOR_ADDR", &projector)
            .env("PROJECTOR_STANDBY_ADDR", &standby)
            .env("PROJECTOR_HEARTBEAT_SECS", "1")
            .env("RUST_LOG", "info")
            .env_remove("ADMIN_TOKEN")
            .env_remove("STANDBY")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            // As a terminal would: Ctrl-C then reaches the whole group.
            .process_group(0)
            .spawn()
            .context("starting bash deploy/local.sh run")?;
        let lines = Arc::new(Mutex::new(Vec::new()));
        if let Some(out) = child.stdout.take() {
            keep_lines(out, lines.clone());
        }
        if let Some(err) = child.stderr.take() {
            keep_lines(err, lines.clone());
        }
        let mut run = LocalRun {
            child,
            lines,
            command,
            query,
            projector,
            standby,
            db_name,
            slot,
            prefix,
        };
        // A cold build of the workspace comes first.
        run.wait_for_line(0, Duration::from_secs(900), |l| l.starts_with("ready: "))
            .await?;
        Ok(run)
    }

    /// The script's pid, which is also its process group's id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Every line printed so far (the programs' and the script's).
    pub fn lines(&self) -> Vec<String> {
        self.lines.lock().map(|l| l.clone()).unwrap_or_default()
    }

    /// The last lines printed, for failure messages.
    pub fn tail(&self) -> String {
        let lines = self.lines();
        lines[lines.len().saturating_sub(80)..].join("\n")
    }

    /// Waits for a line, from the `from`-th on, that `matches`; fails when
    /// the script exits first or `timeout` passes.
    pub async fn wait_for_line(
        &mut self,
        from: usize,
        timeout: Duration,
        matches: impl Fn(&str) -> bool,
    ) -> Result<String> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(line) = self.lines().iter().skip(from).find(|l| matches(l)) {
                return Ok(line.clone());
            }
            if let Some(status) = self.child.try_wait()? {
                bail!(
                    "deploy/local.sh run exited ({status}) before the line came:\n{}",
                    self.tail()
                );
            }
            if Instant::now() > deadline {
                bail!("no such line within {timeout:?}:\n{}", self.tail());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Every process of the run's group (the script, its programs, their
    /// log prefixers and whatever else it started).
    pub fn processes(&self) -> Vec<Process> {
        group_processes(self.pid())
    }

    /// The pids of the group's processes named `comm`.
    pub fn pids_of(&self, comm: &str) -> Vec<u32> {
        self.processes()
            .into_iter()
            .filter(|p| p.comm == comm)
            .map(|p| p.pid)
            .collect()
    }

    /// The projector process listening on `addr` (by its `PROJECTOR_ADDR`).
    pub fn projector_on(&self, addr: &str) -> Option<u32> {
        let wanted = format!("PROJECTOR_ADDR={addr}");
        self.pids_of("projector").into_iter().find(|pid| {
            std::fs::read(format!("/proc/{pid}/environ"))
                .map(|env| env.split(|b| *b == 0).any(|v| v == wanted.as_bytes()))
                .unwrap_or(false)
        })
    }

    /// Sends `signal` (`INT`, `TERM`, `KILL`...) to the whole group, as
    /// Ctrl-C in a terminal does.
    pub fn signal_group(&self, signal: &str) -> Result<()> {
        send(signal, &format!("-{}", self.pid()))
    }

    /// Sends `signal` to process `pid` alone.
    pub fn signal_process(&self, pid: u32, signal: &str) -> Result<()> {
        send(signal, &pid.to_string())
    }

    /// Sends `signal` to the script alone, as a service manager or `kill` does.
    pub fn signal_script(&self, signal: &str) -> Result<()> {
        send(signal, &self.pid().to_string())
    }

    /// Waits for the script to exit.
    pub async fn wait_exit(&mut self, timeout: Duration) -> Result<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status);
            }
            if Instant::now() > deadline {
                bail!(
                    "deploy/local.sh run did not exit within {timeout:?}:\n{}",
                    self.tail()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for LocalRun {
    /// Whatever happened, nothing of the run outlives the test: its group is
    /// killed, then its database, slot and keys are dropped.
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = send("KILL", &format!("-{}", self.pid()));
            let _ = self.child.wait();
        }
        // Programs whose script was killed are killed with it.
        if !group_processes(self.pid()).is_empty() {
            let _ = send("KILL", &format!("-{}", self.pid()));
        }
        crate::cleanup_resources_from_drop(
            self.db_name.clone(),
            self.slot.clone(),
            self.prefix.clone(),
            redis_url(),
        );
    }
}

fn send(signal: &str, target: &str) -> Result<()> {
    let status = std::process::Command::new("kill")
        .args(["-s", signal, "--", target])
        .stderr(Stdio::null())
        .status()
        .context("running kill")?;
    if !status.success() {
        bail!("kill -s {signal} {target} failed: {status}");
    }
    Ok(())
}

/// Copies the lines of `from` into `into` on a thread of its own, so the
/// pipe never fills and blocks the script.
fn keep_lines(from: impl Read + Send + 'static, into: Arc<Mutex<Vec<String>>>) {
    std::thread::spawn(move || {
        for line in BufReader::new(from).lines() {
            let Ok(line) = line else { break };
            if let Ok(mut lines) = into.lock() {
                lines.push(line);
            }
        }
    });
}

/// The processes whose process group is `pgid` (zombies included: a
/// process is gone only once its parent has reaped it).
pub fn group_processes(pgid: u32) -> Vec<Process> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|entry| {
            let pid: u32 = entry.file_name().to_str()?.parse().ok()?;
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            // `pid (comm) state ppid pgrp ...`; comm may hold spaces and ')'.
            let open = stat.find('(')?;
            let close = stat.rfind(')')?;
            let comm = stat.get(open + 1..close)?.to_owned();
            let mut rest = stat.get(close + 2..)?.split_whitespace();
            let group: u32 = rest.nth(2)?.parse().ok()?;
            (group == pgid).then_some(Process { pid, comm })
        })
        .collect()
}
