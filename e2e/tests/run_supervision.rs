//! `bash deploy/local.sh run` supervises its programs: one that dies is
//! restarted with a back-off while the others keep answering, and Ctrl-C or
//! SIGTERM stops every process the run started.
//!
//! Each test runs the script itself on free ports, with a database, slot
//! and key prefix of its own on the test PostgreSQL and Redis.

use std::{
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use anyhow::{bail, ensure, Context, Result};
use e2e::local_run::{group_processes, LocalRun};
use reqwest::StatusCode;
use serde_json::{json, Value};

fn client() -> Result<reqwest::Client> {
    Ok(reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()?)
}

async fn status(http: &reqwest::Client, url: &str) -> Option<StatusCode> {
    http.get(url).send().await.ok().map(|r| r.status())
}

/// Waits until `url` answers `want`.
async fn wait_status(
    http: &reqwest::Client,
    url: &str,
    want: StatusCode,
    timeout: Duration,
) -> Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        let got = status(http, url).await;
        if got == Some(want) {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("{url} answered {got:?}, not {want}, for {timeout:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Probes every url's `/ready` every 100 ms until `stop`; returns how many
/// probes were made and the ones that did not answer 200.
fn probe_until(
    http: reqwest::Client,
    hosts: Vec<String>,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<(u64, Vec<String>)> {
    tokio::spawn(async move {
        let (mut probes, mut failures) = (0, Vec::new());
        while !stop.load(Ordering::Relaxed) {
            for host in &hosts {
                probes += 1;
                let got = status(&http, &format!("http://{host}/ready")).await;
                if got != Some(StatusCode::OK) {
                    failures.push(format!("{host}/ready: {got:?}"));
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        (probes, failures)
    })
}

/// Waits for a projector process other than `old` to listen on `addr`.
async fn new_projector_on(run: &LocalRun, addr: &str, old: u32) -> Result<u32> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match run.projector_on(addr) {
            Some(pid) if pid != old => return Ok(pid),
            _ if Instant::now() > deadline => {
                bail!("no new projector on {addr} within 30 s:\n{}", run.tail())
            }
            _ => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

/// A new course, user and order through the command API, read back through
/// the query API with the order's token: the projection streams.
async fn an_order_is_projected(http: &reqwest::Client, run: &LocalRun, tag: &str) -> Result<()> {
    let post = |path: &str, body: Value| {
        http.post(format!("http://{}{path}", run.command))
            .json(&body)
            .send()
    };
    let created = |v: &Value| v["id"].as_i64().context("no id in the answer");
    let course: Value = post(
        "/v1/courses",
        json!({"title": format!("Supervised {tag}"), "summary": "s", "description_html": "<p>x</p>",
               "category": "ops", "instructor": "Kim", "price_krw": 1000}),
    )
    .await?
    .json()
    .await?;
    let course = created(&course)?;
    let user: Value = post(
        "/v1/users",
        json!({"email": format!("{tag}@example.com"), "name": "Op", "company": "Acme"}),
    )
    .await?
    .json()
    .await?;
    let user = created(&user)?;
    let order = http
        .post(format!("http://{}/v1/orders", run.command))
        .header("Idempotency-Key", tag)
        .json(&json!({"user_id": user, "course_ids": [course]}))
        .send()
        .await?;
    ensure!(
        order.status() == StatusCode::CREATED,
        "order: {}",
        order.status()
    );
    let lsn = order
        .headers()
        .get("x-commit-lsn")
        .and_then(|v| v.to_str().ok())
        .context("no X-Commit-Lsn")?
        .to_owned();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let page = http
            .get(format!("http://{}/v1/courses/{course}", run.query))
            .header("X-Min-Lsn", &lsn)
            .header("X-Max-Wait-Ms", "5000")
            .send()
            .await?;
        if page.status() == StatusCode::OK {
            let page: Value = page.json().await?;
            ensure!(page["student_count"] == 1, "course {course}: {page}");
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!(
                "the order at {lsn} was not projected within 60 s ({}):\n{}",
                page.status(),
                run.tail()
            );
        }
    }
}

/// After the script exited: no process of its group is left (its programs,
/// their log prefixers, its sleeps), and no program answers any more.
async fn everything_is_gone(http: &reqwest::Client, run: &LocalRun) -> Result<()> {
    // Zombies are reaped by init a moment after the script exits.
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut left = group_processes(run.pid());
    while !left.is_empty() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
        left = group_processes(run.pid());
    }
    ensure!(left.is_empty(), "left running: {left:?}\n{}", run.tail());
    for host in [&run.command, &run.query, &run.projector, &run.standby] {
        let got = status(http, &format!("http://{host}/health")).await;
        ensure!(got.is_none(), "{host} still answers ({got:?})");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_projector_killed_under_run_is_restarted_while_the_apis_keep_answering_and_ctrl_c_stops_everything(
) -> Result<()> {
    let mut run = LocalRun::start(&[]).await?;
    let http = client()?;
    let projectors = run.pids_of("projector");
    ensure!(projectors.len() == 1, "one projector: {projectors:?}");
    let (command_pids, query_pids) = (run.pids_of("command-api"), run.pids_of("query-api"));

    // kill -9 the projector while both APIs are probed.
    let stop = Arc::new(AtomicBool::new(false));
    let probes = probe_until(
        http.clone(),
        vec![run.command.clone(), run.query.clone()],
        stop.clone(),
    );
    let from = run.lines().len();
    run.signal_process(projectors[0], "KILL")?;
    run.wait_for_line(from, Duration::from_secs(30), |l| {
        l == "[stack] projector exited (status 137); restarting in 1 s"
    })
    .await?;
    new_projector_on(&run, &run.projector.clone(), projectors[0]).await?;
    wait_status(
        &http,
        &format!("http://{}/ready", run.projector),
        StatusCode::OK,
        Duration::from_secs(60),
    )
    .await?;
    stop.store(true, Ordering::Relaxed);
    let (made, failures) = probes.await?;
    ensure!(made > 0, "the APIs were never probed");
    ensure!(
        failures.is_empty(),
        "the APIs stopped answering while the projector was down: {failures:?}"
    );
    assert_eq!(run.pids_of("command-api"), command_pids, "never restarted");
    assert_eq!(run.pids_of("query-api"), query_pids, "never restarted");
    an_order_is_projected(&http, &run, &format!("after-kill-{}", run.pid())).await?;

    // Ctrl-C reaches the whole group, as in a terminal.
    let from = run.lines().len();
    let stopping = Instant::now();
    run.signal_group("INT")?;
    let exit = run.wait_exit(Duration::from_secs(30)).await?;
    eprintln!("stopped {:?} after Ctrl-C", stopping.elapsed());
    assert_eq!(exit.code(), Some(130), "{}", run.tail());
    everything_is_gone(&http, &run).await?;
    let restarts: Vec<String> = run
        .lines()
        .into_iter()
        .skip(from)
        .filter(|l| l.starts_with("[stack]") && l.contains("restarting"))
        .collect();
    assert!(
        restarts.is_empty(),
        "restarted while stopping: {restarts:?}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standby_projector_under_run_takes_over_when_the_active_one_is_killed_and_sigterm_stops_both(
) -> Result<()> {
    let mut run = LocalRun::start(&["--standby"]).await?;
    let http = client()?;
    let ready = run
        .wait_for_line(0, Duration::ZERO, |l| l.starts_with("ready: "))
        .await?;
    ensure!(
        ready.contains(&format!("standby projector http://{}", run.standby)),
        "{ready}"
    );
    let active = run
        .projector_on(&run.projector)
        .context("no active projector")?;
    let standby = run
        .projector_on(&run.standby)
        .context("no standby projector")?;
    let standby_ready = format!("http://{}/ready", run.standby);
    wait_status(
        &http,
        &standby_ready,
        StatusCode::SERVICE_UNAVAILABLE,
        Duration::from_secs(10),
    )
    .await
    .context("a standby is not ready")?;

    // kill -9 the active one: the standby takes over, the killed one comes
    // back as the new standby.
    let from = run.lines().len();
    run.signal_process(active, "KILL")?;
    run.wait_for_line(from, Duration::from_secs(30), |l| {
        l == "[stack] projector exited (status 137); restarting in 1 s"
    })
    .await?;
    wait_status(
        &http,
        &standby_ready,
        StatusCode::OK,
        Duration::from_secs(30),
    )
    .await
    .context("the standby did not take over")?;
    assert_eq!(
        run.projector_on(&run.standby),
        Some(standby),
        "never restarted"
    );
    new_projector_on(&run, &run.projector.clone(), active).await?;
    let restarted = format!("http://{}", run.projector);
    wait_status(
        &http,
        &format!("{restarted}/health"),
        StatusCode::OK,
        Duration::from_secs(30),
    )
    .await?;
    assert_eq!(
        status(&http, &format!("{restarted}/ready")).await,
        Some(StatusCode::SERVICE_UNAVAILABLE),
        "the restarted projector waits as the standby"
    );
    an_order_is_projected(&http, &run, &format!("after-takeover-{}", run.pid())).await?;

    // SIGTERM to the script alone, as a service manager sends it.
    run.signal_script("TERM")?;
    let exit = run.wait_exit(Duration::from_secs(30)).await?;
    assert_eq!(exit.code(), Some(143), "{}", run.tail());
    everything_is_gone(&http, &run).await
}
