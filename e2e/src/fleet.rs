//! Several projector processes against one stack's slot: the active one and
//! its standbys, each with its own address, instance name and log lines.

use std::{
    process::Stdio,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use reqwest::StatusCode;
use serde_json::Value as Json;
use tokio::{
    io::{AsyncBufReadExt, BufReader},
    process::Child,
};

use crate::Stack;

/// One projector process of a fleet.
pub struct Instance {
    /// Its `PROJECTOR_INSTANCE`.
    pub name: String,
    /// Its ops address (`host:port`).
    pub addr: String,
    child: Child,
    /// Its log (JSON lines), collected as it writes them.
    log: Arc<Mutex<Vec<String>>>,
    /// Short timeouts: a paused (SIGSTOP) process accepts connections but
    /// never answers.
    http: reqwest::Client,
}

impl Stack {
    /// Starts a projector process named `name` on a port of its own, logging
    /// at INFO as JSON (collected, see [`Instance::logged`]), with `env` on top.
    pub fn spawn_instance(&self, name: &str, env: &[(&str, &str)]) -> Result<Instance> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let addr = format!("127.0.0.1:{port}");
        let mut command = self.projector_command()?;
        command
            .env("PROJECTOR_ADDR", &addr)
            .env("PROJECTOR_INSTANCE", name)
            .env("LOG_FORMAT", "json")
            .env(
                "RUST_LOG",
                std::env::var("PROJECTOR_LOG").unwrap_or_else(|_| "info".into()),
            );
        for (key, value) in env {
            command.env(key, value);
        }
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .context("starting the projector binary")?;
        let log = Arc::new(Mutex::new(Vec::new()));
        let stdout = child.stdout.take().context("no stdout")?;
        let stderr = child.stderr.take().context("no stderr")?;
        for reader in [
            Box::new(stdout) as Box<dyn tokio::io::AsyncRead + Send + Unpin>,
            Box::new(stderr),
        ] {
            let log = log.clone();
            tokio::spawn(async move {
                let mut lines = BufReader::new(reader).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    if let Ok(mut log) = log.lock() {
                        log.push(line);
                    }
                }
            });
        }
        Ok(Instance {
            name: name.to_owned(),
            addr,
            child,
            log,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(2))
                .build()?,
        })
    }

    /// Starts an instance per name of `names`, each with `env` on top, and
    /// waits until exactly one is active; returns them and its index.
    pub async fn start_fleet(
        &self,
        names: &[&str],
        env: &[(&str, &str)],
        timeout: Duration,
    ) -> Result<(Vec<Instance>, usize)> {
        let fleet: Vec<Instance> = names
            .iter()
            .map(|name| self.spawn_instance(name, env))
            .collect::<Result<_>>()?;
        let active = wait_for_one_active(&fleet.iter().collect::<Vec<_>>(), timeout).await?;
        Ok((fleet, active))
    }

    /// Runs `projector <args>` against this stack and returns its standard
    /// output, failing when it fails.
    pub async fn projector_subcommand(&self, args: &[&str]) -> Result<String> {
        let output = self
            .projector_command()?
            .env("RUST_LOG", "warn")
            .args(args)
            .stdin(Stdio::null())
            .output()
            .await?;
        if !output.status.success() {
            bail!(
                "projector {args:?} failed ({}): {}",
                output.status,
                String::from_utf8_lossy(&output.stderr)
            );
        }
        Ok(String::from_utf8(output.stdout)?)
    }
}

impl Instance {
    /// The process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// `/ready`: its status and body (an error when it does not answer).
    pub async fn ready(&self) -> Result<(StatusCode, Json)> {
        let r = self
            .http
            .get(format!("http://{}/ready", self.addr))
            .send()
            .await?;
        let status = r.status();
        Ok((status, r.json().await.unwrap_or(Json::Null)))
    }

    /// A value of its `/metrics` (`None` when absent).
    pub async fn metric(&self, name: &str) -> Result<Option<f64>> {
        let text = self
            .http
            .get(format!("http://{}/metrics", self.addr))
            .send()
            .await?
            .text()
            .await?;
        Ok(text
            .lines()
            .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.parse().ok()))
    }

    /// Answers `/ready` with 200 and says `projector_active 1`.
    pub async fn is_active(&self) -> bool {
        let ready = matches!(self.ready().await, Ok((StatusCode::OK, _)));
        ready && matches!(self.metric("projector_active").await, Ok(Some(v)) if v == 1.0)
    }

    /// Says it is a standby: `/ready` 503 naming it, `projector_active 0`.
    pub async fn is_standby(&self) -> bool {
        let standby = match self.ready().await {
            Ok((StatusCode::SERVICE_UNAVAILABLE, body)) => body["error"]["message"]
                .as_str()
                .is_some_and(|m| m.contains("standby")),
            _ => false,
        };
        standby && matches!(self.metric("projector_active").await, Ok(Some(v)) if v == 0.0)
    }

    /// The log lines whose message contains `needle`.
    pub fn logged(&self, needle: &str) -> Vec<String> {
        self.log
            .lock()
            .map(|log| {
                log.iter()
                    .filter(|line| {
                        serde_json::from_str::<Json>(line)
                            .ok()
                            .and_then(|l| l["message"].as_str().map(str::to_owned))
                            .is_some_and(|m| m.contains(needle))
                    })
                    .cloned()
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The last `n` log lines (for failure messages).
    pub fn tail(&self, n: usize) -> String {
        self.log
            .lock()
            .map(|log| log[log.len().saturating_sub(n)..].join("\n"))
            .unwrap_or_default()
    }

    /// Sends a signal (`KILL`, `STOP`, `CONT`, `TERM`) to the process.
    pub fn signal(&self, signal: &str) -> Result<()> {
        let pid = self.pid().context("the instance has exited")?;
        let status = std::process::Command::new("kill")
            .args([format!("-{signal}"), pid.to_string()])
            .status()?;
        anyhow::ensure!(status.success(), "kill -{signal} {pid} failed");
        Ok(())
    }

    /// SIGKILL, and waits for the exit.
    pub async fn kill(mut self) -> Result<()> {
        self.child.start_kill()?;
        self.child.wait().await?;
        Ok(())
    }
}

/// SIGKILLs every instance of `fleet`, and waits for their exits.
pub async fn kill_all(fleet: Vec<Instance>) -> Result<()> {
    for instance in fleet {
        instance.kill().await?;
    }
    Ok(())
}

/// Waits until exactly one of `instances` is active and every other one a
/// standby; returns the active one's index.
pub async fn wait_for_one_active(instances: &[&Instance], timeout: Duration) -> Result<usize> {
    let deadline = Instant::now() + timeout;
    loop {
        let mut active = Vec::new();
        let mut standby = 0;
        for (i, instance) in instances.iter().enumerate() {
            if instance.is_active().await {
                active.push(i);
            } else if instance.is_standby().await {
                standby += 1;
            }
        }
        if let [one] = active[..] {
            if standby + 1 == instances.len() {
                return Ok(one);
            }
        }
        if Instant::now() > deadline {
            let logs: Vec<String> = instances
                .iter()
                .map(|i| format!("--- {}:\n{}", i.name, i.tail(20)))
                .collect();
            bail!(
                "no single active instance within {timeout:?} (active: {active:?}, standbys: {standby})\n{}",
                logs.join("\n")
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
