//! `deploy/redis/redis.conf`, the production Redis settings, on a real
//! server: it starts with them, keeps views (noeviction, AOF every second),
//! and the projector builds and streams against it.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use e2e::programs::free_port;
use e2e::tools::deploy_dir;
use e2e::{unique_name, Stack};
use reqwest::StatusCode;

/// A redis-server on the production file, killed (and its directory
/// removed) on drop.
struct Server {
    child: Child,
    port: u16,
    dir: PathBuf,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Server {
    fn cli(&self, args: &[&str]) -> Result<String> {
        let out = Command::new("redis-cli")
            .args(["-p", &self.port.to_string()])
            .args(args)
            .output()
            .context("running redis-cli (bash deploy/local.sh up installs it)")?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    fn setting(&self, name: &str) -> Result<String> {
        let answer = self.cli(&["config", "get", name])?;
        Ok(answer.lines().nth(1).unwrap_or_default().to_owned())
    }
}

async fn start() -> Result<Server> {
    let port = free_port()?;
    let dir = std::env::temp_dir().join(unique_name("redis-prod"));
    std::fs::create_dir_all(&dir)?;
    // Only what a test machine needs differently: its port, loopback, a
    // directory of its own, the foreground.
    let child = Command::new("redis-server")
        .arg(deploy_dir().join("redis/redis.conf"))
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .arg("--dir")
        .arg(&dir)
        .args(["--daemonize", "no"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting redis-server (bash deploy/local.sh up installs it)")?;
    let server = Server { child, port, dir };
    let deadline = Instant::now() + Duration::from_secs(20);
    while !server.cli(&["ping"])?.contains("PONG") {
        if Instant::now() > deadline {
            bail!("redis-server with deploy/redis/redis.conf did not answer within 20 s");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(server)
}

#[tokio::test]
async fn the_production_redis_settings_keep_views_and_the_projector_streams_against_them(
) -> Result<()> {
    let server = start().await?;
    for (name, want) in [
        ("maxmemory-policy", "noeviction"),
        ("appendonly", "yes"),
        ("appendfsync", "everysec"),
        ("aof-use-rdb-preamble", "yes"),
        ("maxmemory", &(7u64 << 30).to_string()),
    ] {
        let got = server.setting(name)?;
        ensure!(got == want, "{name} is {got:?}, not {want:?}");
    }

    let mut stack = Stack::start_with_redis(&format!("redis://127.0.0.1:{}", server.port)).await?;
    let course = stack.course("Kept course", "<p>kept</p>", 1000).await?;
    stack.start_projector().await?;
    let user = stack
        .user(&format!("{}@example.com", unique_name("u")), None)
        .await?;
    let lsn = stack.buy(user, course).await?;
    let read = stack
        .get_fresh(&format!("/v1/courses/{course}"), &lsn)
        .await?;
    ensure!(read.status == StatusCode::OK, "read: {}", read.status);
    ensure!(
        read.body["student_count"] == 1,
        "course view: {}",
        read.body
    );
    stack.cleanup().await
}
