//! The alerting kit of `deploy/` checked by the engines that run it:
//! promtool checks the rules and runs their unit tests (a normal week, a
//! sale's surge, a projector stall, an order collapse mid-sale and a
//! checkout failing one order in twenty), amtool checks the Alertmanager
//! configuration and its routes, and a real Alertmanager groups an
//! incident and inhibits symptoms by their causes.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use e2e::programs::free_port;
use e2e::tools::{deploy_dir, ensure as ensure_tool, run};
use serde_json::{json, Value as Json};

fn rules() -> PathBuf {
    deploy_dir().join("prometheus/rules.yml")
}

fn alertmanager_config() -> PathBuf {
    deploy_dir().join("alertmanager/alertmanager.yml")
}

fn path_str(path: &std::path::Path) -> Result<&str> {
    path.to_str().context("a path that is not UTF-8")
}

#[test]
fn the_rules_pass_promtool_check_and_their_unit_tests_and_load_in_the_example_config() -> Result<()>
{
    let promtool = ensure_tool("promtool", "promtool")?;
    let checked = run(&promtool, &["check", "rules", path_str(&rules())?])?;
    ensure!(
        checked.contains("SUCCESS"),
        "promtool check rules:\n{checked}"
    );
    let tests = deploy_dir().join("prometheus/rules_test.yml");
    let tested = run(&promtool, &["test", "rules", path_str(&tests)?])?;
    ensure!(tested.contains("SUCCESS"), "promtool test rules:\n{tested}");
    // The example server configuration loads the same rules.
    let config = deploy_dir().join("prometheus/prometheus.yml");
    let checked = run(&promtool, &["check", "config", path_str(&config)?])?;
    ensure!(
        checked.contains("SUCCESS"),
        "promtool check config:\n{checked}"
    );
    Ok(())
}

/// `(alert name, runbook anchor)` of every alerting rule, read line by line
/// (`- alert: Name` and then its `runbook_url:`).
fn alerts_and_runbook_anchors() -> Result<Vec<(String, Option<String>)>> {
    let text = std::fs::read_to_string(rules())?;
    let mut found: Vec<(String, Option<String>)> = Vec::new();
    for line in text.lines().map(str::trim) {
        if let Some(name) = line.strip_prefix("- alert: ") {
            found.push((name.trim().to_owned(), None));
        } else if let Some(url) = line.strip_prefix("runbook_url: ") {
            let last = found.last_mut().context("a runbook_url before any alert")?;
            last.1 = url.rsplit_once('#').map(|(_, anchor)| anchor.to_owned());
        }
    }
    Ok(found)
}

#[test]
fn every_alert_links_to_its_own_section_of_the_runbook() -> Result<()> {
    let runbook = std::fs::read_to_string(deploy_dir().join("RUNBOOK.md"))?;
    let headings: Vec<&str> = runbook
        .lines()
        .filter_map(|line| line.strip_prefix("### "))
        .map(str::trim)
        .collect();
    let alerts = alerts_and_runbook_anchors()?;
    ensure!(
        alerts.len() >= 10,
        "only {} alerts found in rules.yml",
        alerts.len()
    );
    for (name, anchor) in alerts {
        // GitHub's anchor of a heading that is one word: lower case.
        ensure!(
            anchor.as_deref() == Some(name.to_lowercase().as_str()),
            "{name}: runbook_url should end in #{}, not {anchor:?}",
            name.to_lowercase()
        );
        ensure!(
            headings.contains(&name.as_str()),
            "RUNBOOK.md has no `### {name}` section"
        );
    }
    Ok(())
}

#[test]
fn every_alert_is_held_silent_on_a_normal_day_and_through_a_sale() -> Result<()> {
    // The unit tests' first group is the normal week and the sale: each
    // alert must be asserted absent there, so a new alert that would page
    // on a sale's surge cannot slip past the tests unnoticed.
    let tests = std::fs::read_to_string(deploy_dir().join("prometheus/rules_test.yml"))?;
    let first_group = tests
        .split("\n  - interval:")
        .nth(1)
        .context("no test group in rules_test.yml")?;
    for (name, _) in alerts_and_runbook_anchors()? {
        ensure!(
            first_group.contains(&format!("alertname: {name}\n        exp_alerts: []")),
            "rules_test.yml's normal-week group does not assert that {name} stays silent"
        );
    }
    Ok(())
}

#[test]
fn the_alertmanager_configuration_passes_amtool_and_routes_pages_and_tickets() -> Result<()> {
    let amtool = ensure_tool("amtool", "amtool")?;
    let config = alertmanager_config();
    let config = path_str(&config)?;
    let checked = run(&amtool, &["check-config", config])?;
    ensure!(
        checked.contains("SUCCESS"),
        "amtool check-config:\n{checked}"
    );
    let file = format!("--config.file={config}");
    for (severity, receiver) in [("page", "page"), ("ticket", "ticket")] {
        let routed = run(
            &amtool,
            &[
                "config",
                "routes",
                "test",
                &file,
                &format!("severity={severity}"),
                "incident=checkout",
            ],
        )?;
        ensure!(
            routed.lines().any(|line| line.trim() == receiver),
            "severity={severity} should reach receiver {receiver}:\n{routed}"
        );
    }
    Ok(())
}

/// A running Alertmanager, killed on drop.
struct Alertmanager {
    child: Child,
    url: String,
    _storage: TempDir,
}

impl Drop for Alertmanager {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A directory removed on drop.
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

async fn start_alertmanager() -> Result<Alertmanager> {
    // Debian's package ships the server beside amtool.
    ensure_tool("amtool", "amtool")?;
    let binary = ensure_tool("amtool", "prometheus-alertmanager")?;
    let storage = TempDir(std::env::temp_dir().join(e2e::unique_name("alertmanager")));
    std::fs::create_dir_all(&storage.0)?;
    let port = free_port()?;
    let child = Command::new(binary)
        .arg(format!(
            "--config.file={}",
            path_str(&alertmanager_config())?
        ))
        .arg(format!("--storage.path={}", path_str(&storage.0)?))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        // No cluster: no gossip port, nothing to wait for.
        .arg("--cluster.listen-address=")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting prometheus-alertmanager")?;
    let manager = Alertmanager {
        child,
        url: format!("http://127.0.0.1:{port}"),
        _storage: storage,
    };
    let http = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(answer) = http.get(format!("{}/-/ready", manager.url)).send().await {
            if answer.status().is_success() {
                return Ok(manager);
            }
        }
        if Instant::now() > deadline {
            bail!("alertmanager did not answer /-/ready within 30 s");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn alert(labels: &[(&str, &str)]) -> Json {
    let labels: serde_json::Map<String, Json> = labels
        .iter()
        .map(|(k, v)| ((*k).to_owned(), json!(v)))
        .collect();
    json!({"labels": labels, "annotations": {"summary": "test"}})
}

/// The alert named `name` (with `service`, when given) as Alertmanager
/// sees it now.
fn find<'a>(alerts: &'a [Json], name: &str, service: &str) -> Option<&'a Json> {
    alerts
        .iter()
        .find(|a| a["labels"]["alertname"] == name && a["labels"]["service"] == service)
}

fn inhibited(alert: Option<&Json>) -> Option<bool> {
    alert.map(|a| {
        a["status"]["inhibitedBy"]
            .as_array()
            .is_some_and(|by| !by.is_empty())
    })
}

/// Posts `alerts`, then waits until Alertmanager's view of each expected
/// `(alert name, service, inhibited)` holds; the alerts it holds then.
async fn post_and_settle(
    manager: &Alertmanager,
    alerts: Json,
    expected: &[(&str, &str, bool)],
) -> Result<Vec<Json>> {
    let http = reqwest::Client::new();
    http.post(format!("{}/api/v2/alerts", manager.url))
        .json(&alerts)
        .send()
        .await?
        .error_for_status()?;
    // Inhibition follows the sources as Alertmanager takes them in.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let seen: Vec<Json> = http
            .get(format!("{}/api/v2/alerts", manager.url))
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        let settled = expected
            .iter()
            .all(|(name, service, muted)| inhibited(find(&seen, name, service)) == Some(*muted));
        if settled {
            return Ok(seen);
        }
        if Instant::now() > deadline {
            let states: Vec<String> = expected
                .iter()
                .map(|(name, service, muted)| {
                    format!(
                        "{name}/{service}: inhibited {:?}, expected {muted}",
                        inhibited(find(&seen, name, service))
                    )
                })
                .collect();
            bail!("inhibition not as expected:\n{}", states.join("\n"));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn alertmanager_makes_one_incident_of_related_alerts_and_inhibits_symptoms_by_causes(
) -> Result<()> {
    let manager = start_alertmanager().await?;
    let page = ("severity", "page");

    // A stalled projector and its consequences.
    let projection = json!([
        alert(&[
            ("alertname", "ProjectorStalled"),
            page,
            ("incident", "projection"),
            ("service", "projector"),
            ("cause", "projector")
        ]),
        alert(&[
            ("alertname", "FreshnessDegraded"),
            page,
            ("incident", "projection"),
            ("service", "projector")
        ]),
        alert(&[
            ("alertname", "ViewsStaleTooLong"),
            page,
            ("incident", "projection"),
            ("service", "query-api")
        ]),
    ]);
    post_and_settle(
        &manager,
        projection,
        &[
            ("ProjectorStalled", "projector", false),
            ("FreshnessDegraded", "projector", true),
            ("ViewsStaleTooLong", "query-api", true),
        ],
    )
    .await?;

    // Then PostgreSQL goes down: checkout's symptoms are its doing (and
    // the stall now is too); reads burning at the same time are not.
    let outage = json!([
        alert(&[
            ("alertname", "PostgresUnreachable"),
            page,
            ("incident", "checkout"),
            ("service", "postgresql"),
            ("cause", "postgresql")
        ]),
        alert(&[
            ("alertname", "ErrorBudgetBurnFast"),
            page,
            ("incident", "checkout"),
            ("service", "command-api"),
            ("slo", "availability")
        ]),
        alert(&[
            ("alertname", "OrdersCollapsed"),
            page,
            ("incident", "checkout"),
            ("service", "command-api")
        ]),
        alert(&[
            ("alertname", "ErrorBudgetBurnFast"),
            page,
            ("incident", "storefront"),
            ("service", "query-api"),
            ("slo", "availability")
        ]),
    ]);
    let seen = post_and_settle(
        &manager,
        outage,
        &[
            ("PostgresUnreachable", "postgresql", false),
            ("ErrorBudgetBurnFast", "command-api", true),
            ("OrdersCollapsed", "command-api", true),
            ("ErrorBudgetBurnFast", "query-api", false),
            ("ProjectorStalled", "projector", true),
        ],
    )
    .await?;
    ensure!(
        seen.len() == 7,
        "alertmanager holds {} alerts, not 7",
        seen.len()
    );

    // Then Redis goes down too: now the reads' burn is explained.
    let redis = json!([alert(&[
        ("alertname", "RedisUnreachable"),
        page,
        ("incident", "storefront"),
        ("service", "redis"),
        ("cause", "redis")
    ])]);
    post_and_settle(
        &manager,
        redis,
        &[
            ("RedisUnreachable", "redis", false),
            ("ErrorBudgetBurnFast", "query-api", true),
            ("PostgresUnreachable", "postgresql", false),
        ],
    )
    .await?;

    // One group per incident: three notifications, not eight.
    let groups: Vec<Json> = reqwest::Client::new()
        .get(format!("{}/api/v2/alerts/groups", manager.url))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    let mut incidents: Vec<(String, usize)> = groups
        .iter()
        .map(|g| {
            (
                g["labels"]["incident"].as_str().unwrap_or("?").to_owned(),
                g["alerts"].as_array().map_or(0, Vec::len),
            )
        })
        .collect();
    incidents.sort();
    ensure!(
        incidents
            == [
                ("checkout".to_owned(), 3),
                ("projection".to_owned(), 3),
                ("storefront".to_owned(), 2)
            ],
        "groups: {incidents:?}"
    );
    Ok(())
}
