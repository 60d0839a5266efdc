//! The processes under test and the resources each scenario owns, named
//! after this run (`bench_<pid>_...`) and dropped at the end.
//!
//! Leftovers of runs that died are dropped at the start: a leaked slot makes
//! PostgreSQL keep WAL forever.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::Stdio,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use fred::prelude::*;
use sqlx::{Connection, PgConnection};
use tokio::process::{Child, Command};

/// Where the programs, the local stack and the logs are.
#[derive(Debug, Clone)]
pub struct Env {
    /// Any database of the server (`.../postgres`): databases are created from it.
    pub admin_url: String,
    pub redis_url: String,
    /// Directory of `command-api`, `query-api`, `projector` and `all-in-one`.
    pub bin_dir: PathBuf,
    /// The `bench` binary, which also serves the baselines.
    pub bench_exe: PathBuf,
    /// Child processes' output goes here, one file each.
    pub log_dir: PathBuf,
    /// Prefix of every name this run creates.
    pub run: String,
}

impl Env {
    /// The URL of database `name` on the same server.
    pub fn database_url(&self, name: &str) -> String {
        let (base, _) = self
            .admin_url
            .rsplit_once('/')
            .unwrap_or((&self.admin_url, ""));
        format!("{base}/{name}")
    }

    /// A name for this run: `bench_<pid>_<what>`.
    pub fn name(&self, what: &str) -> String {
        format!("{}_{what}", self.run)
    }

    /// host and port of the PostgreSQL server, for the command-line tools.
    pub fn pg_host_port(&self) -> (String, u16) {
        let (_, host, port) = authority(&self.admin_url, 5432);
        (host, port)
    }

    /// The user of the PostgreSQL URL (`postgres` when it names none).
    pub fn pg_user(&self) -> String {
        authority(&self.admin_url, 5432)
            .0
            .map(|user| user.split(':').next().unwrap_or("postgres").to_owned())
            .unwrap_or_else(|| "postgres".to_owned())
    }

    /// host and port of Redis.
    pub fn redis_host_port(&self) -> (String, u16) {
        let (_, host, port) = authority(&self.redis_url, 6379);
        (host, port)
    }

    /// A connection to the admin database.
    pub async fn admin(&self) -> Result<PgConnection> {
        PgConnection::connect(&self.admin_url)
            .await
            .with_context(|| {
                format!(
                    "connecting to {}: is the local stack up (bash deploy/local.sh up)?",
                    self.admin_url
                )
            })
    }

    /// A Redis client.
    pub async fn redis(&self) -> Result<Client> {
        let url: views::RedisUrl = self.redis_url.parse()?;
        let client = Builder::from_config(url.config()).build()?;
        client.init().await.context("connecting to Redis")?;
        Ok(client)
    }
}

/// A free port on 127.0.0.1 (bound, read, released).
pub fn free_addr() -> Result<SocketAddr> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?)
}

/// A child process serving HTTP on `addr`.
pub struct Program {
    pub name: String,
    pub addr: SocketAddr,
    child: Child,
}

impl Program {
    /// Starts `exe args` with `envs`; output goes to `<log_dir>/<name>.log`.
    pub fn spawn(
        env: &Env,
        name: &str,
        exe: &Path,
        args: &[&str],
        envs: &[(&str, String)],
        addr: SocketAddr,
    ) -> Result<Self> {
        std::fs::create_dir_all(&env.log_dir)?;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(env.log_dir.join(format!("{name}.log")))?;
        let mut command = Command::new(exe);
        command
            .args(args)
            // `BENCH_PROGRAM_LOG` raises the programs' log level for a
            // diagnostic run (their logs cost time, so `warn` by default).
            .env(
                "RUST_LOG",
                std::env::var("BENCH_PROGRAM_LOG").unwrap_or_else(|_| "warn".to_owned()),
            )
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(true);
        for (key, value) in envs {
            command.env(key, value);
        }
        let child = command
            .spawn()
            .with_context(|| format!("starting {}", exe.display()))?;
        Ok(Program {
            name: name.to_owned(),
            addr,
            child,
        })
    }

    /// One of the workspace's programs from `bin_dir`.
    pub fn workspace(
        env: &Env,
        name: &str,
        binary: &str,
        envs: &[(&str, String)],
        addr: SocketAddr,
    ) -> Result<Self> {
        let exe = env.bin_dir.join(binary);
        if !exe.exists() {
            bail!(
                "{} is missing: build the programs first (cargo build --release --bins)",
                exe.display()
            );
        }
        Self::spawn(env, name, &exe, &[], envs, addr)
    }

    /// The process id.
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// Waits until `path` answers 200.
    pub async fn wait_ok(&mut self, path: &str, timeout: Duration) -> Result<()> {
        self.wait_ok_at(self.addr, path, timeout).await
    }

    /// Waits until `path` at `addr` answers 200: a process serving on
    /// several addresses (the all-in-one) is ready when each of them is.
    pub async fn wait_ok_at(
        &mut self,
        addr: SocketAddr,
        path: &str,
        timeout: Duration,
    ) -> Result<()> {
        let deadline = Instant::now() + timeout;
        let url = format!("http://{addr}{path}");
        loop {
            if let Some(status) = self.child.try_wait()? {
                bail!(
                    "{} exited before it answered {path} ({status}); see its log",
                    self.name
                );
            }
            if let Ok((200, _)) = crate::load::get(addr, path).await {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "{} did not answer {url} with 200 within {timeout:?}",
                    self.name
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// SIGKILL: no flush, no goodbye; returns once the process is reaped.
    pub async fn kill(mut self) -> Result<()> {
        self.child.kill().await?;
        Ok(())
    }

    /// SIGTERM, then up to 20 s for a clean exit, then SIGKILL.
    pub async fn stop(mut self) -> Result<()> {
        if let Some(pid) = self.child.id() {
            let _ = std::process::Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status();
        }
        match tokio::time::timeout(Duration::from_secs(20), self.child.wait()).await {
            Ok(status) => {
                status?;
            }
            Err(_) => {
                tracing::warn!(program = %self.name, "did not stop within 20 s of SIGTERM; killing it");
                self.child.kill().await?;
            }
        }
        Ok(())
    }
}

/// The sum of the samples at `addr`'s `/metrics` whose name `wanted`
/// accepts (`None`: no such metric, or no metrics).
pub async fn metric_sum(addr: SocketAddr, wanted: impl Fn(&str) -> bool) -> Option<f64> {
    let (status, body) = crate::load::get(addr, "/metrics").await.ok()?;
    if status != 200 {
        return None;
    }
    let text = String::from_utf8_lossy(&body);
    let samples: Vec<f64> = text
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| wanted(l.split(['{', ' ']).next().unwrap_or("")))
        .filter_map(|l| l.rsplit(' ').next()?.parse().ok())
        .collect();
    (!samples.is_empty()).then(|| samples.iter().sum())
}

/// The postmaster of the PostgreSQL server at `env`, when it runs on this
/// machine (the parent of a backend of ours, itself named `postgres`).
pub async fn postmaster_pid(env: &Env) -> Option<u32> {
    let mut admin = env.admin().await.ok()?;
    let backend: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
        .fetch_one(&mut admin)
        .await
        .ok()?;
    let _ = admin.close().await;
    let postmaster = crate::cpu::parent_pid(u32::try_from(backend).ok()?)?;
    let name = std::fs::read_to_string(format!("/proc/{postmaster}/comm")).ok()?;
    (name.trim() == "postgres").then_some(postmaster)
}

/// The command API's role (deploy/roles.sql): the programs run as in
/// `deploy/local.sh run`, each with its own least-privilege role.
pub const COMMAND_ROLE: &str = "course_sales_command";
/// The projector's role (deploy/roles.sql): REPLICATION and SELECT on the
/// published tables.
pub const PROJECTOR_ROLE: &str = "course_sales_projector";
/// The publication the migrations create (the projector's default), the
/// only one the projector's role can stream.
pub const PUBLICATION: &str = "cqrs_projector";

/// Creates the service roles with deploy/roles.sql (idempotent) before any
/// database is migrated: the migrations grant only to roles that exist.
pub async fn ensure_roles(env: &Env) -> Result<()> {
    let mut admin = env.admin().await?;
    sqlx::raw_sql(include_str!("../../deploy/roles.sql"))
        .execute(&mut admin)
        .await
        .context("creating the service roles (deploy/roles.sql)")?;
    Ok(())
}

/// `url` with its user (and password) replaced by `role`: the local stack
/// trusts 127.0.0.1, so the roles need no password there.
pub fn as_role(url: &str, role: &str) -> String {
    // The `url` crate keeps whatever else the URL holds (port, database,
    // query) as it was.
    let Ok(mut parsed) = url::Url::parse(url) else {
        return url.to_owned();
    };
    if parsed.set_username(role).is_err() || parsed.set_password(None).is_err() {
        return url.to_owned();
    }
    parsed.into()
}

/// Creates database `name` (dropping a leftover of the same name first).
pub async fn create_database(env: &Env, name: &str) -> Result<String> {
    let mut admin = env.admin().await?;
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
    )))
    .execute(&mut admin)
    .await?;
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&mut admin)
        .await
        .with_context(|| format!("creating database {name}"))?;
    Ok(env.database_url(name))
}

/// Creates database `name` as a file-level copy of `template` (which must
/// have no open connections).
pub async fn copy_database(env: &Env, template: &str, name: &str) -> Result<String> {
    let mut admin = env.admin().await?;
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
    )))
    .execute(&mut admin)
    .await?;
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "CREATE DATABASE {name} TEMPLATE {template}"
    )))
    .execute(&mut admin)
    .await
    .with_context(|| format!("copying database {template} to {name}"))?;
    Ok(env.database_url(name))
}

/// Drops every slot, database and key prefix whose name starts with
/// `prefix` (this run's, at its end; a dead run's, at the start).
pub async fn drop_everything(env: &Env, prefix: &str) -> Result<()> {
    let mut admin = env.admin().await?;
    let pattern = format!("{}%", prefix.replace('_', "\\_"));
    let slots: Vec<(String, bool, Option<i32>)> = sqlx::query_as(
        "SELECT slot_name::text, active, active_pid FROM pg_replication_slots WHERE slot_name LIKE $1",
    )
    .bind(&pattern)
    .fetch_all(&mut admin)
    .await?;
    for (slot, active, pid) in slots {
        if active {
            if let Some(pid) = pid {
                // A consumer of a dead run (pg_recvlogical) may still hold it.
                let _ = sqlx::query("SELECT pg_terminate_backend($1)")
                    .bind(pid)
                    .execute(&mut admin)
                    .await;
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
        if let Err(err) = sqlx::query("SELECT pg_drop_replication_slot($1)")
            .bind(&slot)
            .execute(&mut admin)
            .await
        {
            tracing::warn!(slot, error = %err, "could not drop replication slot");
        }
    }
    let databases: Vec<String> =
        sqlx::query_scalar("SELECT datname::text FROM pg_database WHERE datname LIKE $1")
            .bind(&pattern)
            .fetch_all(&mut admin)
            .await?;
    for db in databases {
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
            "DROP DATABASE IF EXISTS {db} WITH (FORCE)"
        )))
        .execute(&mut admin)
        .await
        .with_context(|| format!("dropping database {db}"))?;
    }
    let redis = env.redis().await?;
    delete_keys(&redis, &format!("{prefix}*")).await?;
    Ok(())
}

/// Names of earlier runs whose process is gone: `bench_<pid>` prefixes.
pub async fn dead_runs(env: &Env) -> Result<Vec<String>> {
    let mut admin = env.admin().await?;
    let names: Vec<String> = sqlx::query_scalar(
        "SELECT slot_name::text FROM pg_replication_slots WHERE slot_name LIKE 'bench\\_%' \
         UNION SELECT datname::text FROM pg_database WHERE datname LIKE 'bench\\_%'",
    )
    .fetch_all(&mut admin)
    .await?;
    let mut runs: Vec<String> = names
        .iter()
        .filter_map(|n| {
            let pid: u32 = n.strip_prefix("bench_")?.split('_').next()?.parse().ok()?;
            let alive = Path::new(&format!("/proc/{pid}")).exists();
            (!alive).then(|| format!("bench_{pid}_"))
        })
        .collect();
    runs.sort();
    runs.dedup();
    Ok(runs)
}

/// Deletes the keys matching `pattern` (SCAN + UNLINK, never KEYS).
pub async fn delete_keys(redis: &Client, pattern: &str) -> Result<u64> {
    Ok(views::delete_matching(redis, pattern, |_| false).await?)
}

/// The user info (if any), host and port (`default_port` when absent) of a
/// `scheme://[user[:password]@]host[:port][/...]` URL.
fn authority(url: &str, default_port: u16) -> (Option<String>, String, u16) {
    let rest = url.split_once("://").map(|(_, r)| r).unwrap_or(url);
    let authority = rest.split('/').next().unwrap_or(rest);
    let (user, hostport) = match authority.rsplit_once('@') {
        Some((user, hostport)) => (Some(user.to_owned()), hostport),
        None => (None, authority),
    };
    let (host, port) = match hostport.rsplit_once(':') {
        Some((h, p)) => (h.to_owned(), p.parse().unwrap_or(default_port)),
        None => (hostport.to_owned(), default_port),
    };
    (user, host, port)
}

#[cfg(test)]
mod authority_tests {
    use super::{as_role, authority};

    #[test]
    fn a_url_as_a_role_keeps_host_port_and_database() {
        assert_eq!(
            as_role("postgres://postgres@127.0.0.1:55432/bench_1_cqrs", "r"),
            "postgres://r@127.0.0.1:55432/bench_1_cqrs"
        );
        assert_eq!(as_role("postgres://u:p@db/x", "r"), "postgres://r@db/x");
    }

    #[test]
    fn urls_split_into_user_host_and_port() {
        assert_eq!(
            authority("postgres://postgres@127.0.0.1:55432/postgres", 5432),
            (Some("postgres".into()), "127.0.0.1".into(), 55432)
        );
        assert_eq!(
            authority("redis://localhost", 6379),
            (None, "localhost".into(), 6379)
        );
        assert_eq!(
            authority("postgres://u:p@db/x", 5432),
            (Some("u:p".into()), "db".into(), 5432)
        );
    }
}
