//! What several of the query API's test files share.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fred::prelude::*;

/// A `redis-server` of a test's own (other processes use the shared one),
/// killed when dropped. `redis-server` must be on PATH.
pub struct OwnRedis(Child);

impl OwnRedis {
    /// Started on a port free a moment ago; returns it and its URL.
    #[allow(dead_code)] // not every test file starts one this way
    pub fn start() -> anyhow::Result<(Self, String)> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        Ok((Self::start_on(port)?, format!("redis://127.0.0.1:{port}")))
    }

    /// Started on `port`, without persistence.
    pub fn start_on(port: u16) -> anyhow::Result<Self> {
        let child = Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--port", &port.to_string()])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .spawn()
            .map_err(|err| {
                anyhow::anyhow!("starting redis-server (installed by deploy/local.sh): {err}")
            })?;
        Ok(Self(child))
    }
}

impl Drop for OwnRedis {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A client of `url`, once the server answers.
#[allow(dead_code)] // not every test file reads Redis itself
pub async fn client(url: &str) -> anyhow::Result<Client> {
    let config: views::RedisUrl = url.parse()?;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let redis = Builder::from_config(config.config()).build()?;
        match redis.init().await {
            Ok(_) => return Ok(redis),
            Err(_) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(err) => return Err(anyhow::anyhow!("redis at {url} never answered: {err}")),
        }
    }
}
