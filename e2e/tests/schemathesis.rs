//! An independent fuzzer holds both APIs to their OpenAPI documents:
//! Schemathesis, at a pinned version, runs every check it has against each
//! program's `/openapi.json`, on a database and key prefix of its own (it
//! cancels and edits whatever ids it guesses). Where a check cannot hold by
//! design, the deviation is listed with its reason in `e2e/schemathesis.toml`.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use e2e::programs::Program;
use e2e::{unique_name, Stack};
use serde_json::json;
use tokio::process::Command;

/// The Schemathesis release the documents are checked with.
const VERSION: &str = "4.32.5";
/// Test cases per operation and phase: enough to reach every rule, few
/// enough that both runs take well under a minute each on two cores.
const MAX_EXAMPLES: &str = "30";
/// The longest one API's run may take before the test fails.
const RUN_TIMEOUT: Duration = Duration::from_secs(180);
/// The longest creating the virtual environment and installing may take.
const INSTALL_TIMEOUT: Duration = Duration::from_secs(300);
/// The programs guard their admin routes with this; Schemathesis sends it.
const ADMIN_TOKEN: &str = "schemathesis-admin-token";

#[tokio::test]
async fn both_apis_answer_as_their_openapi_documents_say_under_schemathesis() -> Result<()> {
    let schemathesis = install().await?;

    let mut stack = Stack::start().await?;
    // A little of everything, so reads find views and writes find rows.
    let user = stack
        .user(&format!("{}@example.com", unique_name("u")), Some("Acme"))
        .await?;
    let free = stack.course("Free course", "<p>free</p>", 0).await?;
    let paid = stack.course("Paid course", "<p>paid</p>", 10_000).await?;
    stack
        .post(
            "/v1/events",
            &json!({
                "name": "Running sale", "starts_at": "2020-01-01T00:00:00Z",
                "ends_at": "2100-01-01T00:00:00Z", "discount_percent": 50,
                "courses": [{"course_id": paid, "seat_limit": 100}]
            }),
        )
        .await?
        .created_id()?;
    stack
        .order(
            &unique_name("key"),
            &json!({"user_id": user, "course_ids": [paid]}),
        )
        .await?
        .created_id()?;
    stack
        .post(
            "/v1/enrollments",
            &json!({"user_id": user, "course_id": free}),
        )
        .await?
        .created_id()?;
    stack.start_projector().await?;

    // The real binaries, configured as in production: an admin token set.
    let command = Program::start(
        "command-api",
        "COMMAND_API_ADDR",
        &[
            ("DATABASE_URL", &stack.database_url),
            ("ADMIN_TOKEN", ADMIN_TOKEN),
        ],
    )
    .await?;
    let query = Program::start(
        "query-api",
        "QUERY_API_ADDR",
        &[
            ("REDIS_URL", &stack.redis_url),
            ("KEY_PREFIX", &stack.prefix),
            ("ADMIN_TOKEN", ADMIN_TOKEN),
        ],
    )
    .await?;

    for (name, program) in [("command-api", &command), ("query-api", &query)] {
        run(&schemathesis, name, &program.url)
            .await
            .with_context(|| format!("schemathesis against {name}"))?;
    }
    drop((command, query));
    stack.cleanup().await
}

/// The `schemathesis` executable of a virtual environment kept in the
/// target directory, created and installed once per version. Fails (never
/// skips) when Python, `venv` or `pip` is missing.
async fn install() -> Result<PathBuf> {
    let venv = target_dir()?.join(format!("schemathesis-{VERSION}"));
    let executable = venv.join("bin").join("schemathesis");
    // Written last: a venv without it is half-made and is made again.
    let installed = venv.join("installed");
    if installed.exists() {
        return Ok(executable);
    }
    if venv.exists() {
        std::fs::remove_dir_all(&venv)
            .with_context(|| format!("removing the half-made {}", venv.display()))?;
    }
    let python = std::env::var("PYTHON").unwrap_or_else(|_| "python3".into());
    succeed(
        Command::new(&python).arg("-m").arg("venv").arg(&venv),
        INSTALL_TIMEOUT,
        "creating a virtual environment (python3 with venv is needed)",
    )
    .await?;
    succeed(
        Command::new(venv.join("bin").join("pip"))
            .args(["install", "--quiet", "--disable-pip-version-check"])
            .arg(format!("schemathesis=={VERSION}")),
        INSTALL_TIMEOUT,
        "installing schemathesis with pip",
    )
    .await?;
    let version = succeed(
        Command::new(&executable).arg("--version"),
        INSTALL_TIMEOUT,
        "running schemathesis --version",
    )
    .await?;
    ensure!(version.contains(VERSION), "installed {version:?}");
    std::fs::write(&installed, VERSION)?;
    Ok(executable)
}

/// Runs every check against the document `base` serves; fails on any
/// failure, error or time-out, showing Schemathesis's report.
async fn run(schemathesis: &Path, name: &str, base: &str) -> Result<()> {
    // Schemathesis keeps its crash cache in the working directory: one of
    // its own, in the target directory, removed after a clean run.
    let work = target_dir()?
        .join("schemathesis-runs")
        .join(unique_name(name));
    std::fs::create_dir_all(&work)?;
    let config = concat!(env!("CARGO_MANIFEST_DIR"), "/schemathesis.toml");
    let started = Instant::now();
    let report = succeed(
        Command::new(schemathesis)
            .current_dir(&work)
            .args(["--config-file", config, "run"])
            .arg(format!("{base}/openapi.json"))
            .args(["--checks", "all", "--max-examples", MAX_EXAMPLES])
            .args([
                "--workers",
                "2",
                "--no-color",
                "--generation-database",
                "none",
            ])
            .arg("--header")
            .arg(format!("Authorization: Bearer {ADMIN_TOKEN}")),
        RUN_TIMEOUT,
        "schemathesis run",
    )
    .await?;
    // Its exit status says no failure; a run that tested nothing would
    // say so too, so it must also have generated and passed cases.
    let cases = report.lines().find_map(|line| {
        let (generated, rest) = line.trim().split_once(" generated, ")?;
        let passed = rest
            .split(", ")
            .find_map(|part| part.strip_suffix(" passed"))?;
        Some((generated.parse::<u64>().ok()?, passed.parse::<u64>().ok()?))
    });
    ensure!(
        matches!(cases, Some((generated, passed)) if generated > 0 && passed == generated),
        "schemathesis reported no clean run ({cases:?}):\n{report}"
    );
    eprintln!(
        "schemathesis against {name}: {cases:?} cases (generated, passed) clean in {:?}",
        started.elapsed()
    );
    std::fs::remove_dir_all(&work).ok();
    Ok(())
}

/// Runs `command` to completion within `timeout`; its output, or an error
/// with that output when it fails, times out or cannot start.
async fn succeed(command: &mut Command, timeout: Duration, what: &str) -> Result<String> {
    let child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("{what}: could not start {command:?}"))?;
    let output = tokio::time::timeout(timeout, child.wait_with_output())
        .await
        .with_context(|| format!("{what}: not done within {timeout:?}"))??;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    if !output.status.success() {
        bail!("{what} failed ({}):\n{text}", output.status);
    }
    Ok(text)
}

/// The target directory the running test binary was built in.
fn target_dir() -> Result<PathBuf> {
    let exe = std::env::current_exe()?;
    // The test binary is target/<profile>/deps/<name>.
    exe.parent()
        .and_then(Path::parent)
        .and_then(Path::parent)
        .map(Path::to_path_buf)
        .context("the test binary is not in a target directory")
}
