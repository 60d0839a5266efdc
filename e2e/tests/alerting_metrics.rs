//! Every metric the alerting rules and the Grafana dashboard of `deploy/`
//! read is one the programs export: an alert on a name nothing exports
//! never fires, and a panel on one stays empty, both silently.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use e2e::tools::deploy_dir;
use e2e::{unique_name, Stack};
use reqwest::StatusCode;
use serde_json::Value as Json;

/// The PromQL expressions of a rules file: each `expr:`, inline or as a
/// block (the lines indented deeper than it).
fn rule_expressions(yaml: &str) -> Vec<String> {
    let lines: Vec<&str> = yaml.lines().collect();
    let mut found = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        let line = lines[i];
        let indent = line.len() - line.trim_start().len();
        i += 1;
        let Some(rest) = line.trim_start().strip_prefix("expr:") else {
            continue;
        };
        let rest = rest.trim();
        if rest.starts_with('|') || rest.starts_with('>') {
            let mut block = String::new();
            while i < lines.len()
                && (lines[i].trim().is_empty()
                    || lines[i].len() - lines[i].trim_start().len() > indent)
            {
                block.push_str(lines[i]);
                block.push('\n');
                i += 1;
            }
            found.push(block);
        } else {
            found.push(rest.trim_matches('"').to_owned());
        }
    }
    found
}

/// The names a rules file records.
fn recorded_names(yaml: &str) -> BTreeSet<String> {
    yaml.lines()
        .filter_map(|line| line.trim().strip_prefix("- record:"))
        .map(|name| name.trim().to_owned())
        .collect()
}

/// Every `expr` string anywhere in a Grafana dashboard.
fn dashboard_expressions(value: &Json, found: &mut Vec<String>) {
    match value {
        Json::Object(map) => {
            for (key, inner) in map {
                match (key.as_str(), inner) {
                    ("expr", Json::String(expr)) => found.push(expr.clone()),
                    _ => dashboard_expressions(inner, found),
                }
            }
        }
        Json::Array(items) => items.iter().for_each(|v| dashboard_expressions(v, found)),
        _ => {}
    }
}

/// Words of PromQL that are not metric names.
const KEYWORDS: [&str; 8] = ["and", "or", "unless", "offset", "bool", "inf", "nan", "by"];
/// Aggregation operators, which may come before their parentheses
/// (`sum by (le) (...)`).
const AGGREGATIONS: [&str; 12] = [
    "sum",
    "min",
    "max",
    "avg",
    "count",
    "stddev",
    "stdvar",
    "topk",
    "bottomk",
    "quantile",
    "count_values",
    "group",
];
/// Keywords followed by a parenthesised list of label names.
const LABEL_LISTS: [&str; 6] = [
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
];

/// The metric names an expression selects: identifiers that are not
/// functions (followed by `(`), keywords, label names (in matchers and
/// in `by (...)` and the like) or parts of strings, durations and numbers.
fn metric_names(expr: &str) -> BTreeSet<String> {
    let chars: Vec<char> = expr.chars().collect();
    let mut names = BTreeSet::new();
    let mut i = 0;
    // Skips from an opening bracket to its match.
    let skip_to = |mut i: usize, open: char, close: char| {
        let mut depth = 0;
        while i < chars.len() {
            match chars[i] {
                '"' => {
                    i += 1;
                    while i < chars.len() && chars[i] != '"' {
                        if chars[i] == '\\' {
                            i += 1;
                        }
                        i += 1;
                    }
                }
                c if c == open => depth += 1,
                c if c == close => {
                    depth -= 1;
                    if depth == 0 {
                        return i + 1;
                    }
                }
                _ => {}
            }
            i += 1;
        }
        i
    };
    while i < chars.len() {
        let c = chars[i];
        if c == '"' || c == '\'' {
            i += 1;
            while i < chars.len() && chars[i] != c {
                if chars[i] == '\\' {
                    i += 1;
                }
                i += 1;
            }
            i += 1;
        } else if c == '{' {
            i = skip_to(i, '{', '}');
        } else if c == '[' {
            i = skip_to(i, '[', ']');
        } else if c.is_ascii_digit() || c == '.' {
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '.') {
                i += 1;
            }
        } else if c.is_ascii_alphabetic() || c == '_' || c == ':' {
            let start = i;
            while i < chars.len()
                && (chars[i].is_ascii_alphanumeric() || chars[i] == '_' || chars[i] == ':')
            {
                i += 1;
            }
            let word: String = chars[start..i].iter().collect();
            let mut next = i;
            while next < chars.len() && chars[next].is_whitespace() {
                next += 1;
            }
            let called = chars.get(next) == Some(&'(');
            if LABEL_LISTS.contains(&word.as_str()) {
                if called {
                    i = skip_to(next, '(', ')');
                }
            } else if !called
                && !KEYWORDS.contains(&word.to_lowercase().as_str())
                && !AGGREGATIONS.contains(&word.as_str())
            {
                names.insert(word);
            }
        } else {
            i += 1;
        }
    }
    names
}

/// The sample names of a `/metrics` answer.
fn exported(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter(|line| !line.starts_with('#') && !line.trim().is_empty())
        .filter_map(|line| line.split(['{', ' ']).next())
        .map(str::to_owned)
        .collect()
}

#[test]
fn the_name_reader_finds_metrics_and_nothing_else() {
    let names = metric_names(
        r#"sum by (le) (rate(a_bucket{route=~"/v1/.+", le="0.5"}[5m])) / on (service) group_left () b:rec offset 1d
           > 0.5 and absent(c_total) or label_replace(d, "band", "x y", "", "") - 1e6"#,
    );
    let expected: BTreeSet<String> = ["a_bucket", "b:rec", "c_total", "d"]
        .into_iter()
        .map(str::to_owned)
        .collect();
    assert_eq!(names, expected);
}

#[tokio::test]
async fn every_metric_the_rules_and_the_dashboard_use_is_exported_by_a_program() -> Result<()> {
    let rules = std::fs::read_to_string(deploy_dir().join("prometheus/rules.yml"))?;
    let dashboard: Json = serde_json::from_str(&std::fs::read_to_string(
        deploy_dir().join("grafana/dashboard.json"),
    )?)
    .context("dashboard.json is not JSON")?;
    let recorded = recorded_names(&rules);
    let mut used: Vec<(String, String)> = Vec::new();
    for expr in rule_expressions(&rules) {
        used.extend(
            metric_names(&expr)
                .into_iter()
                .map(|n| (n, "rules.yml".to_owned())),
        );
    }
    let mut panels = Vec::new();
    dashboard_expressions(&dashboard, &mut panels);
    ensure!(
        panels.len() >= 7,
        "only {} queries in the dashboard",
        panels.len()
    );
    for expr in panels {
        used.extend(
            metric_names(&expr)
                .into_iter()
                .map(|n| (n, "dashboard.json".to_owned())),
        );
    }

    // The three programs, with a little traffic so that the series carrying
    // route and status labels exist; a read before the first build is a
    // 503 rebuilding, which the query API counts.
    let mut stack = Stack::start().await?;
    let early = stack.get("/v1/courses/1").await?;
    ensure!(
        early.status == StatusCode::SERVICE_UNAVAILABLE,
        "read before any build: {}",
        early.status
    );
    let course = stack
        .course("Observed course", "<p>observed</p>", 1000)
        .await?;
    let user = stack
        .user(&format!("{}@example.com", unique_name("u")), Some("Acme"))
        .await?;
    stack.start_projector().await?;
    let lsn = stack.buy(user, course).await?;
    let read = stack
        .get_fresh(&format!("/v1/courses/{course}"), &lsn)
        .await?;
    ensure!(read.status == StatusCode::OK, "read: {}", read.status);
    // The projector's histogram of commit-to-applied gets its first sample
    // with the flush of the order; the scrape may come just before it.
    let deadline = Instant::now() + Duration::from_secs(10);
    let (command, query, projector) = loop {
        let scrape = |base: String| {
            let http = stack.http.clone();
            async move {
                http.get(format!("{base}/metrics"))
                    .send()
                    .await?
                    .text()
                    .await
            }
        };
        let command = scrape(stack.command.clone()).await?;
        let query = scrape(stack.query.clone()).await?;
        let projector = String::from_utf8(stack.projector_get("/metrics").await?.raw)?;
        if projector.contains("projector_commit_to_applied_seconds_bucket")
            || Instant::now() > deadline
        {
            break (command, query, projector);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let rebuilding = query
        .lines()
        .find_map(|line| line.strip_prefix("query_api_rebuilding_answers_total "))
        .and_then(|v| v.trim().parse::<f64>().ok());
    ensure!(
        rebuilding == Some(1.0),
        "query_api_rebuilding_answers_total is {rebuilding:?}, not 1"
    );
    let all: BTreeSet<String> = [&command, &query, &projector]
        .into_iter()
        .flat_map(|text| exported(text))
        .collect();

    let mut missing = Vec::new();
    for (name, file) in &used {
        let known = if name.contains(':') {
            recorded.contains(name)
        } else {
            all.contains(name)
        };
        if !known {
            missing.push(format!("{name} (in {file})"));
        }
    }
    missing.sort();
    missing.dedup();
    ensure!(
        missing.is_empty(),
        "used but neither exported by a program nor recorded by rules.yml:\n{}",
        missing.join("\n")
    );
    stack.cleanup().await
}
