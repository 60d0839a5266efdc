//! The command and query APIs as the real binaries, their log in a file of
//! their own, so a test can read what an operator would read. Killed on drop.

use std::{
    fs::File,
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::{Mutex, OnceLock},
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};

use crate::unique_name;

/// Ports the machine's other stacks use: never picked here.
fn reserved(port: u16) -> bool {
    (55400..=55499).contains(&port) || (56300..=56499).contains(&port)
}

/// A free port on 127.0.0.1 outside the reserved ranges.
pub fn free_port() -> Result<u16> {
    for _ in 0..100 {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        if !reserved(port) {
            return Ok(port);
        }
    }
    bail!("no free port outside the reserved ranges")
}

/// The executable of `name` (`command-api`, `query-api`, `projector`),
/// built by `cargo build --workspace --bin <name>` once per test process, in
/// the profile and target directory of the running test binary: `cargo test
/// -p e2e` does not rebuild other packages' binaries, so whatever sits in
/// `target/` could be old code. The build is a no-op when nothing changed;
/// parallel test binaries wait on cargo's own lock. Cargo's output is shown
/// only when the build fails.
pub fn binary(name: &'static str) -> Result<PathBuf> {
    // A failed build is remembered too: every test of the process gets its
    // error rather than building again.
    type Built = Vec<(&'static str, Result<PathBuf, String>)>;
    static BUILT: OnceLock<Mutex<Built>> = OnceLock::new();
    let mut built = BUILT
        .get_or_init(Mutex::default)
        .lock()
        .map_err(|_| anyhow::anyhow!("a build panicked"))?;
    let built = match built.iter().position(|(n, _)| *n == name) {
        Some(at) => &built[at].1,
        None => {
            built.push((name, build(name).map_err(|err| format!("{err:#}"))));
            &built[built.len() - 1].1
        }
    };
    built.clone().map_err(anyhow::Error::msg)
}

/// Builds `name` as described at [`binary`] and returns the path cargo
/// reports for it.
fn build(name: &str) -> Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let profile_dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .context("the test binary is not in a target directory")?;
    let target_dir = profile_dir
        .parent()
        .context("the test binary is not in a target directory")?;
    let profile = match profile_dir.file_name().and_then(|n| n.to_str()) {
        Some("debug") => "dev",
        Some(other) => other,
        None => bail!("{} has no profile name", profile_dir.display()),
    };
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let manifest = concat!(env!("CARGO_MANIFEST_DIR"), "/../Cargo.toml");
    // `--workspace`: features resolved as by `cargo build --workspace
    // --bins`; `-p <name>` resolves others, so each command would rebuild
    // what the other had built.
    let output = Command::new(&cargo)
        .args(["build", "--workspace", "--bin", name, "--profile"])
        .arg(profile)
        .arg("--manifest-path")
        .arg(manifest)
        .arg("--target-dir")
        .arg(target_dir)
        .arg("--message-format=json-render-diagnostics")
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {cargo:?} to build {name}"))?;
    if !output.status.success() {
        bail!(
            "building {name} failed ({}):\n{}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let path = String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|m| m["reason"] == "compiler-artifact" && m["target"]["name"] == name)
        .find_map(|m| m["executable"].as_str().map(PathBuf::from))
        .with_context(|| format!("cargo built no {name} executable"))?;
    Ok(path)
}

/// Runs `name` with `args` and only `env` (and `PATH`) until it exits, at
/// most `within`; its exit status (`None`: still running then, killed) and
/// everything it printed.
pub async fn run_to_exit(
    name: &'static str,
    args: &[&str],
    env: &[(&str, &str)],
    within: Duration,
) -> Result<(Option<std::process::ExitStatus>, String)> {
    let mut child = tokio::process::Command::new(binary(name)?)
        .args(args)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("LOG_FORMAT", "text")
        .env("RUST_LOG", "info")
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("starting {name}"))?;
    let status = match tokio::time::timeout(within, child.wait()).await {
        Ok(status) => Some(status?),
        Err(_) => {
            child.kill().await?;
            None
        }
    };
    let output = child.wait_with_output().await?;
    let printed = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    Ok((status, printed))
}

/// One running API binary and the file its log goes to.
pub struct Program {
    child: Child,
    log: PathBuf,
    /// `http://127.0.0.1:<port>`.
    pub url: String,
}

impl Program {
    /// Starts `name` listening on a free port (`addr_env` names the setting),
    /// with `env` and text logs at `info`, and waits until `/health` answers.
    pub async fn start(name: &'static str, addr_env: &str, env: &[(&str, &str)]) -> Result<Self> {
        let port = free_port()?;
        let log = std::env::temp_dir().join(format!("{}.log", unique_name(name)));
        let out = File::create(&log)?;
        let child = Command::new(binary(name)?)
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env(addr_env, format!("127.0.0.1:{port}"))
            .env("LOG_FORMAT", "text")
            .env("RUST_LOG", "info")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .with_context(|| format!("starting {name}"))?;
        let program = Program {
            child,
            log,
            url: format!("http://127.0.0.1:{port}"),
        };
        let http = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(answer) = http.get(format!("{}/health", program.url)).send().await {
                if answer.status().is_success() {
                    return Ok(program);
                }
            }
            if Instant::now() > deadline {
                bail!("{name} did not answer /health in 30s:\n{}", program.log()?);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Everything it logged so far.
    pub fn log(&self) -> Result<String> {
        Ok(std::fs::read_to_string(&self.log)?)
    }

    /// The lines it logged at WARN or ERROR so far.
    pub fn warnings(&self) -> Result<Vec<String>> {
        Ok(self
            .log()?
            .lines()
            .filter(|line| line.contains(" WARN ") || line.contains(" ERROR "))
            .map(str::to_owned)
            .collect())
    }
}

impl Drop for Program {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.log);
    }
}
