//! The all-in-one process: the three programs on one runtime, each on its
//! own address. A write through it is read back through it, and SIGTERM
//! stops all three gracefully.

use std::{
    process::Stdio,
    time::{Duration, Instant},
};

use anyhow::{bail, ensure, Context, Result};
use e2e::{programs, Stack};
use reqwest::StatusCode;

#[tokio::test]
async fn a_write_through_the_all_in_one_process_is_read_back_through_it() -> Result<()> {
    let mut stack = Stack::start().await?;
    let outcome = write_and_read(&mut stack).await;
    stack.cleanup().await?;
    outcome
}

async fn write_and_read(stack: &mut Stack) -> Result<()> {
    let ports = [
        programs::free_port()?,
        programs::free_port()?,
        programs::free_port()?,
    ];
    let [command, query, projector] = ports.map(|p| format!("127.0.0.1:{p}"));
    let log = std::env::temp_dir().join(format!("{}.log", e2e::unique_name("all-in-one")));
    // The projector's URL from a file of its own, as a credential would be.
    let projector_url = std::env::temp_dir().join(e2e::unique_name("projector-url"));
    std::fs::write(
        &projector_url,
        format!("{}\n", stack.projector_database_url),
    )?;
    let mut child = tokio::process::Command::new(programs::binary("all-in-one")?)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("RUST_LOG", "info")
        .env("DATABASE_URL", &stack.database_url)
        .env("REDIS_URL", &stack.redis_url)
        .env("KEY_PREFIX", &stack.prefix)
        .env("PROJECTOR_DATABASE_URL_FILE", &projector_url)
        .env("PROJECTOR_SLOT", &stack.slot)
        .env("PROJECTOR_PUBLICATION", &stack.publication)
        .env("PROJECTOR_HEARTBEAT_SECS", "1")
        .env("COMMAND_API_ADDR", &command)
        // The query API's address as a flag of its section, the others from
        // the environment: both ways reach the program.
        .args(["--query-api", "--addr", &query])
        .env("PROJECTOR_ADDR", &projector)
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&log)?)
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .context("starting all-in-one")?;

    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()?;
    let deadline = Instant::now() + Duration::from_secs(60);
    for addr in [&command, &query, &projector] {
        loop {
            if let Some(status) = child.try_wait()? {
                bail!(
                    "all-in-one exited early ({status}): {}",
                    std::fs::read_to_string(&log)?
                );
            }
            let ready = http.get(format!("http://{addr}/ready")).send().await;
            if ready.is_ok_and(|r| r.status() == StatusCode::OK) {
                break;
            }
            ensure!(Instant::now() < deadline, "{addr} never became ready");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    // The harness's requests go to the all-in-one process from here on.
    stack.command = format!("http://{command}");
    stack.query = format!("http://{query}");
    let user = stack
        .user("one-process@example.com", Some("Monolith Ltd"))
        .await?;
    let course = stack
        .course("One process", "<p>All three, one runtime.</p>", 1000)
        .await?;
    let lsn = stack.buy(user, course).await?;
    let page = stack
        .get_fresh(&format!("/v1/courses/{course}"), &lsn)
        .await?
        .ensure_status(StatusCode::OK)?;
    assert_eq!(page.body["student_count"], 1, "{}", page.body);
    assert_eq!(page.body["top_companies"][0]["company"], "Monolith Ltd");
    let library = stack
        .get_fresh(&format!("/v1/users/{user}/courses"), &lsn)
        .await?
        .ensure_status(StatusCode::OK)?;
    assert_eq!(library.body["courses"][0]["id"], course, "{}", library.body);

    // SIGTERM: all three stop gracefully, and the process exits 0.
    let pid = child.id().context("no pid")?;
    let killed = std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()?;
    ensure!(killed.success(), "kill -TERM failed");
    let status = tokio::time::timeout(Duration::from_secs(30), child.wait())
        .await
        .context("all-in-one did not stop within 30 s of SIGTERM")??;
    let output = std::fs::read_to_string(&log)?;
    ensure!(
        status.success(),
        "all-in-one exited with {status}: {output}"
    );
    for program in ["command-api", "query-api", "projector"] {
        ensure!(
            output
                .lines()
                .any(|l| l.contains("stopped") && l.contains(&format!("program=\"{program}\""))),
            "no line says {program} stopped:\n{output}"
        );
    }
    Ok(())
}
