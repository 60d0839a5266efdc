//! Redis servers of a test's own: `redis-server` processes on free ports, in
//! a temporary directory, that a test stops and starts again, empty or from
//! an older dump (real persistence: `SAVE` writes the RDB a restart loads),
//! alone or as a three-primary cluster. Killed and removed on drop.
//!
//! Needs `redis-server` and `redis-cli` on `PATH` (the local stack installs them).

use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};

use crate::{programs::free_port, tls::ServerCert};

/// A program on `PATH`.
fn on_path(name: &str) -> Result<PathBuf> {
    std::env::var_os("PATH")
        .and_then(|path| {
            std::env::split_paths(&path)
                .map(|dir| dir.join(name))
                .find(|p| p.is_file())
        })
        .with_context(|| format!("{name} is not on PATH (bash deploy/local.sh up installs it)"))
}

/// `n` ports on 127.0.0.1 free together with their cluster bus port (+10000).
fn free_cluster_ports(n: usize) -> Result<Vec<u16>> {
    let seed = std::process::id() as u64 * 7919
        + std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .subsec_nanos() as u64;
    let mut ports = Vec::new();
    for i in 0..2000u64 {
        let port = 20_000 + ((seed + i * 131) % 20_000) as u16;
        let free = |p: u16| std::net::TcpListener::bind(("127.0.0.1", p)).is_ok();
        if !ports.contains(&port) && free(port) && free(port + 10_000) {
            ports.push(port);
            if ports.len() == n {
                return Ok(ports);
            }
        }
    }
    bail!("no {n} free port pairs")
}

/// `redis-cli -p port args…`, its output; over TLS when `tls_ca` (the CA to trust) is given.
fn cli_to(port: u16, tls_ca: Option<&Path>, args: &[&str]) -> Result<String> {
    let mut command = Command::new(on_path("redis-cli")?);
    if let Some(ca) = tls_ca {
        command.arg("--tls").arg("--cacert").arg(ca);
    }
    let out = command
        .args(["-p", &port.to_string()])
        .args(args)
        .stdin(Stdio::null())
        .output()?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Waits until `redis-cli -p port args…` prints `want`.
async fn wait_for(
    port: u16,
    tls_ca: Option<&Path>,
    args: &[&str],
    want: &str,
    within: Duration,
) -> Result<()> {
    let deadline = Instant::now() + within;
    loop {
        if cli_to(port, tls_ca, args)?.contains(want) {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("redis on port {port}: no {want:?} within {within:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// One `redis-server` with no persistence of its own (no RDB schedule, no
/// AOF): only an explicit [`RedisServer::save`] writes a dump.
pub struct RedisServer {
    port: u16,
    dir: PathBuf,
    cluster: bool,
    /// TLS only (`--port 0`): its certificate, and the CA that signed it.
    tls: Option<(ServerCert, PathBuf)>,
    child: Option<Child>,
    saves: u32,
}

impl RedisServer {
    /// Starts one Redis on a free port, in a fresh temporary directory.
    pub async fn start() -> Result<Self> {
        Self::start_on(free_port()?, false, None).await
    }

    /// Starts one Redis that speaks TLS only, with `cert` (signed by the CA
    /// whose certificate is `ca`); clients need no certificate of their own.
    pub async fn start_tls(cert: &ServerCert, ca: &Path) -> Result<Self> {
        Self::start_on(free_port()?, false, Some((cert.clone(), ca.to_owned()))).await
    }

    async fn start_on(
        port: u16,
        cluster: bool,
        tls: Option<(ServerCert, PathBuf)>,
    ) -> Result<Self> {
        let dir = std::env::temp_dir().join(crate::unique_name(&format!("redis{port}")));
        std::fs::create_dir_all(&dir)?;
        let mut server = Self {
            port,
            dir,
            cluster,
            tls,
            child: None,
            saves: 0,
        };
        server.launch().await?;
        Ok(server)
    }

    /// Starts the process and waits until it answers (after loading its dump).
    async fn launch(&mut self) -> Result<()> {
        let mut command = Command::new(on_path("redis-server")?);
        let port = self.port.to_string();
        match &self.tls {
            None => command.args(["--port", &port]),
            Some((cert, ca)) => command
                .args(["--port", "0", "--tls-port", &port])
                .arg("--tls-cert-file")
                .arg(&cert.cert)
                .arg("--tls-key-file")
                .arg(&cert.key)
                .arg("--tls-ca-cert-file")
                .arg(ca)
                .args(["--tls-auth-clients", "no"]),
        };
        command
            .args(["--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(&self.dir)
            .args(["--dbfilename", "dump.rdb"])
            .args(["--maxmemory-policy", "noeviction", "--daemonize", "no"]);
        if self.cluster {
            command
                .args(["--cluster-enabled", "yes"])
                .args(["--cluster-config-file", "nodes.conf"]);
            if self.tls.is_some() {
                command.args(["--tls-cluster", "yes"]);
            }
        }
        let child = command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting redis-server")?;
        self.child = Some(child);
        wait_for(
            self.port,
            self.tls_ca(),
            &["ping"],
            "PONG",
            Duration::from_secs(20),
        )
        .await
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `REDIS_URL` of this one Redis.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// `REDIS_URL` of this one Redis over TLS.
    pub fn tls_url(&self) -> String {
        format!("rediss://127.0.0.1:{}", self.port)
    }

    fn tls_ca(&self) -> Option<&Path> {
        self.tls.as_ref().map(|(_, ca)| ca.as_path())
    }

    /// `redis-cli` against this server, its output.
    pub fn cli(&self, args: &[&str]) -> Result<String> {
        cli_to(self.port, self.tls_ca(), args)
    }

    /// The server's `run_id` (new at every start).
    pub fn run_id(&self) -> Result<String> {
        self.cli(&["info", "server"])?
            .lines()
            .find_map(|l| l.strip_prefix("run_id:"))
            .map(|id| id.trim().to_owned())
            .context("INFO server has no run_id")
    }

    /// `SAVE`s the dataset now and keeps a copy of the dump; returns its path.
    pub fn save(&mut self) -> Result<PathBuf> {
        let reply = self.cli(&["save"])?;
        if !reply.contains("OK") {
            bail!("SAVE on port {}: {reply}", self.port);
        }
        self.saves += 1;
        let copy = self.dir.join(format!("saved-{}.rdb", self.saves));
        std::fs::copy(self.dir.join("dump.rdb"), &copy)?;
        Ok(copy)
    }

    /// SIGKILL: the server dies without writing anything.
    pub fn kill(&mut self) -> Result<()> {
        if let Some(mut child) = self.child.take() {
            child.kill()?;
            child.wait()?;
        }
        Ok(())
    }

    /// Kills the server and starts it again on the same port with no data:
    /// a restart without persistence.
    pub async fn restart_empty(&mut self) -> Result<()> {
        self.kill()?;
        let dump = self.dir.join("dump.rdb");
        if dump.exists() {
            std::fs::remove_file(dump)?;
        }
        self.launch().await
    }

    /// Kills the server and starts it again on the same port from `dump`
    /// (a copy [`RedisServer::save`] kept): a restore from an older snapshot.
    pub async fn restart_from(&mut self, dump: &Path) -> Result<()> {
        self.kill()?;
        std::fs::copy(dump, self.dir.join("dump.rdb"))?;
        self.launch().await
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Three `redis-server` primaries forming one cluster (no replicas).
pub struct RedisCluster {
    nodes: Vec<RedisServer>,
    /// The CA of the nodes' certificates, for a cluster over TLS.
    tls_ca: Option<PathBuf>,
}

impl RedisCluster {
    /// Starts the servers on free ports, forms the cluster and waits until
    /// every node reports `cluster_state:ok`.
    pub async fn start() -> Result<Self> {
        Self::start_with(None).await
    }

    /// As [`RedisCluster::start`], every node (and the cluster bus) speaking
    /// TLS only with `cert`, signed by the CA whose certificate is `ca`.
    pub async fn start_tls(cert: &ServerCert, ca: &Path) -> Result<Self> {
        Self::start_with(Some((cert.clone(), ca.to_owned()))).await
    }

    async fn start_with(tls: Option<(ServerCert, PathBuf)>) -> Result<Self> {
        let mut nodes = Vec::new();
        for port in free_cluster_ports(3)? {
            nodes.push(RedisServer::start_on(port, true, tls.clone()).await?);
        }
        let tls_ca = tls.map(|(_, ca)| ca);
        let cluster = Self { nodes, tls_ca };
        let mut create = Command::new(on_path("redis-cli")?);
        if let Some(ca) = &cluster.tls_ca {
            create.arg("--tls").arg("--cacert").arg(ca);
        }
        create.arg("--cluster").arg("create");
        for port in cluster.ports() {
            create.arg(format!("127.0.0.1:{port}"));
        }
        let mut child = tokio::process::Command::from(create)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()?;
        // It waits for the nodes to meet, forever if they never do (a
        // cluster bus that cannot connect): bounded here.
        if tokio::time::timeout(Duration::from_secs(60), child.wait())
            .await
            .is_err()
        {
            child.kill().await?;
        }
        let created = child.wait_with_output().await?;
        if !created.status.success() {
            bail!(
                "redis-cli --cluster create failed: {}{}",
                String::from_utf8_lossy(&created.stdout),
                String::from_utf8_lossy(&created.stderr)
            );
        }
        cluster.wait_ok().await?;
        Ok(cluster)
    }

    /// Waits until every node reports `cluster_state:ok`.
    pub async fn wait_ok(&self) -> Result<()> {
        for port in self.ports() {
            wait_for(
                port,
                self.tls_ca.as_deref(),
                &["cluster", "info"],
                "cluster_state:ok",
                Duration::from_secs(30),
            )
            .await?;
        }
        Ok(())
    }

    /// The nodes' ports.
    pub fn ports(&self) -> Vec<u16> {
        self.nodes.iter().map(RedisServer::port).collect()
    }

    /// `REDIS_URL` as a list of the nodes.
    pub fn url(&self) -> String {
        self.ports()
            .iter()
            .map(|p| format!("127.0.0.1:{p}"))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// `REDIS_URL` as a list of the nodes over TLS (`rediss://` each).
    pub fn tls_url(&self) -> String {
        self.ports()
            .iter()
            .map(|p| format!("rediss://127.0.0.1:{p}"))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// `redis-cli -p port args…`, its output.
    pub fn cli(&self, port: u16, args: &[&str]) -> Result<String> {
        cli_to(port, self.tls_ca.as_deref(), args)
    }

    /// The node on `port`.
    pub fn node(&mut self, port: u16) -> Result<&mut RedisServer> {
        self.nodes
            .iter_mut()
            .find(|n| n.port == port)
            .with_context(|| format!("no cluster node on port {port}"))
    }

    /// The keys matching `pattern` that each node itself holds, by port.
    pub fn keys_by_node(&self, pattern: &str) -> Result<BTreeMap<u16, BTreeSet<String>>> {
        self.ports()
            .into_iter()
            .map(|port| {
                let out = cli_to(
                    port,
                    self.tls_ca.as_deref(),
                    &["--scan", "--pattern", pattern],
                )?;
                Ok((port, out.lines().map(str::to_owned).collect()))
            })
            .collect()
    }
}
