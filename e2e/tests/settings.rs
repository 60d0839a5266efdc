//! Settings as an operator meets them, on the real binaries: `--help` and
//! the README list the same settings with the same defaults, `--help` never
//! shows a secret, secrets come from `_FILE`s, and the projector takes its
//! settings after a subcommand too.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
};

use anyhow::{bail, ensure, Context, Result};
use e2e::programs::binary;

const PROGRAMS: [&str; 3] = ["command-api", "query-api", "projector"];

/// The three, and the process that runs them together (whose `--help`
/// lists its own settings before each program's).
const BINARIES: [&str; 4] = ["command-api", "query-api", "projector", "all-in-one"];

/// Where the all-in-one's own settings end in its `--help`: the programs'
/// settings follow, compared with their own tables.
const ALL_IN_ONE_OWN_END: &str = "Each program reads its settings";

/// Each program's subcommands (the empty one: the program itself).
fn subcommands(program: &str) -> &'static [&'static str] {
    match program {
        "command-api" => &["", "serve", "migrate"],
        "projector" => &["", "run", "rebuild", "status", "drop-slot", "audit"],
        _ => &[""],
    }
}

/// `program [subcommand] --help` with exactly `env`, its output as text.
fn help(program: &'static str, subcommand: &str, env: &[(&str, &str)]) -> Result<String> {
    let mut command = Command::new(binary(program)?);
    if !subcommand.is_empty() {
        command.arg(subcommand);
    }
    let output = command
        .arg("--help")
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .output()?;
    ensure!(
        output.status.success(),
        "{program} {subcommand} --help failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(String::from_utf8(output.stdout)?)
}

/// A setting as one side documents it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Setting {
    flag: String,
    default: Option<String>,
}

/// The settings of `--help` (long form), by environment variable. Every
/// option but `--help` and `--version` must have an environment twin.
fn parse_help(text: &str, source: &str) -> Result<BTreeMap<String, Setting>> {
    // Option entries start on an indented line with `--flag` or `-x, --flag`.
    let mut entries: Vec<(String, String)> = Vec::new();
    for line in text.lines() {
        let trimmed = line.trim_start();
        let indented = line.len() > trimmed.len();
        let short = trimmed.len() > 6
            && trimmed.as_bytes()[0] == b'-'
            && trimmed.as_bytes()[1].is_ascii_alphanumeric()
            && trimmed[2..].starts_with(", --");
        if indented && (trimmed.starts_with("--") || short) {
            let flag = trimmed
                .split_whitespace()
                .find(|word| word.starts_with("--"))
                .map(|word| word.trim_end_matches(','))
                .unwrap_or_default();
            entries.push((flag.to_owned(), String::new()));
        } else if let Some((_, body)) = entries.last_mut() {
            body.push_str(line);
            body.push('\n');
        }
    }
    let mut settings = BTreeMap::new();
    for (flag, body) in entries {
        if flag == "--help" || flag == "--version" {
            continue;
        }
        let env = bracketed(&body, "[env: ")
            .map(|inner| inner.split('=').next().unwrap_or_default().to_owned())
            .with_context(|| format!("{source}: {flag} has no environment twin"))?;
        let default = bracketed(&body, "[default: ");
        let setting = Setting { flag, default };
        if let Some(other) = settings.insert(env.clone(), setting.clone()) {
            ensure!(
                other == setting,
                "{source}: {env} is both {other:?} and {setting:?}"
            );
        }
    }
    Ok(settings)
}

/// What follows `opening` up to the closing `]`, if `text` holds it.
fn bracketed(text: &str, opening: &str) -> Option<String> {
    let start = text.find(opening)? + opening.len();
    let end = text[start..].find(']')? + start;
    Some(text[start..end].trim().to_owned())
}

/// The README's settings, by program and environment variable: every table
/// of its `## Configuration` section with `variable`, `flag` and `default`
/// columns; a row's programs are its `used by` cell, or else the `###`
/// heading above the table.
fn parse_readme(text: &str) -> Result<BTreeMap<&'static str, BTreeMap<String, Setting>>> {
    let start = text
        .find("\n## Configuration\n")
        .context("README: no `## Configuration` section")?;
    let section = &text[start + 1..];
    let section = &section[..section[3..]
        .find("\n## ")
        .map_or(section.len(), |at| at + 3)];
    let mut documented: BTreeMap<&'static str, BTreeMap<String, Setting>> = BTreeMap::new();
    let mut heading = String::new();
    let mut columns: Option<Vec<String>> = None;
    for line in section.lines() {
        if let Some(title) = line.strip_prefix("### ") {
            heading = title.trim().to_owned();
        }
        if !line.starts_with('|') {
            columns = None;
            continue;
        }
        let cells: Vec<String> = line
            .trim()
            .trim_matches('|')
            .split('|')
            .map(|cell| cell.trim().to_owned())
            .collect();
        let Some(names) = &columns else {
            columns = Some(cells.iter().map(|c| c.to_lowercase()).collect());
            continue;
        };
        if cells
            .iter()
            .all(|c| c.chars().all(|ch| ch == '-' || ch == ':'))
        {
            continue;
        }
        let column = |name: &str| names.iter().position(|n| n == name);
        let (Some(variable), Some(flag), Some(default)) =
            (column("variable"), column("flag"), column("default"))
        else {
            continue;
        };
        let env =
            code(&cells[variable]).with_context(|| format!("README row {line:?}: no variable"))?;
        let flag = code(&cells[flag]).with_context(|| format!("README row {line:?}: no flag"))?;
        let default = cells[default]
            .starts_with('`')
            .then(|| code(&cells[default]))
            .flatten();
        let programs: Vec<&'static str> = match column("used by") {
            // "all three" names the programs; the all-in-one is named.
            Some(used_by) => BINARIES
                .into_iter()
                .filter(|p| {
                    cells[used_by].contains(p)
                        || (PROGRAMS.contains(p) && cells[used_by].contains("all three"))
                })
                .collect(),
            None => BINARIES.into_iter().filter(|p| *p == heading).collect(),
        };
        ensure!(
            !programs.is_empty(),
            "README: {env} is in a table under {heading:?}, which names no program"
        );
        for program in programs {
            let setting = Setting {
                flag: flag.clone(),
                default: default.clone(),
            };
            if documented
                .entry(program)
                .or_default()
                .insert(env.clone(), setting)
                .is_some()
            {
                bail!("README documents {env} of {program} twice");
            }
        }
    }
    Ok(documented)
}

/// The text of the first code span of `cell`.
fn code(cell: &str) -> Option<String> {
    let start = cell.find('`')? + 1;
    let end = cell[start..].find('`')? + start;
    Some(cell[start..end].to_owned())
}

#[test]
fn help_and_the_readme_list_the_same_settings_with_the_same_defaults() -> Result<()> {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md"))?;
    let documented = parse_readme(&readme)?;
    let mut problems = Vec::new();
    for program in BINARIES {
        let mut listed = BTreeMap::new();
        for subcommand in subcommands(program) {
            let source = format!("{program} {subcommand} --help");
            let text = help(program, subcommand, &[])?;
            let own = match program {
                "all-in-one" => text
                    .split_once(ALL_IN_ONE_OWN_END)
                    .map(|(own, _)| own)
                    .context("all-in-one --help: where its own settings end is not marked")?,
                _ => &text,
            };
            for (env, setting) in parse_help(own, &source)? {
                if let Some(other) = listed.insert(env.clone(), setting.clone()) {
                    ensure!(
                        other == setting,
                        "{source}: {env} differs between subcommands"
                    );
                }
            }
        }
        let least = if program == "all-in-one" { 2 } else { 5 };
        ensure!(
            listed.len() > least,
            "{program} --help lists almost nothing: {listed:?}"
        );
        let empty = BTreeMap::new();
        let readme = documented.get(program).unwrap_or(&empty);
        for (env, help) in &listed {
            match readme.get(env) {
                None => problems.push(format!(
                    "{program}: {env} ({}) is in --help but not in the README",
                    help.flag
                )),
                Some(doc) if doc.flag != help.flag => problems.push(format!(
                    "{program}: {env} is {} in --help but {} in the README",
                    help.flag, doc.flag
                )),
                Some(doc) if doc.default != help.default => problems.push(format!(
                    "{program}: {env} defaults to {:?} in --help but {:?} in the README",
                    help.default, doc.default
                )),
                Some(_) => {}
            }
        }
        for (env, doc) in readme {
            if !listed.contains_key(env) {
                problems.push(format!(
                    "{program}: the README lists {env} ({}), which --help does not",
                    doc.flag
                ));
            }
        }
    }
    ensure!(
        problems.is_empty(),
        "--help and the README differ:\n{}",
        problems.join("\n")
    );
    Ok(())
}

#[test]
fn the_readme_parser_notices_a_difference() -> Result<()> {
    let readme = "x\n## Configuration\n\n### projector\n\n| variable | flag | default | meaning |\n|---|---|---|---|\n| `PROJECTOR_SLOT` | `--slot` | `other` | m |\n| `PROJECTOR_INSTANCE` | `--instance-name` | host name | m |\n\n## Next\n| variable | flag | default |\n|---|---|---|\n| `X` | `--x` | `1` |\n";
    let parsed = parse_readme(readme)?;
    let projector = &parsed["projector"];
    assert_eq!(projector.len(), 2, "{parsed:?}");
    assert_eq!(
        projector["PROJECTOR_SLOT"].default.as_deref(),
        Some("other")
    );
    assert_eq!(projector["PROJECTOR_INSTANCE"].default, None);
    let help = parse_help(&help("projector", "", &[])?, "projector --help")?;
    assert_eq!(
        help["PROJECTOR_SLOT"].default.as_deref(),
        Some("cqrs_projector")
    );
    assert_eq!(help["PROJECTOR_INSTANCE"].default, None);
    assert_eq!(help["PROJECTOR_SLOT"].flag, "--slot");
    Ok(())
}

const DATABASE_PASSWORD: &str = "Db-Pa55word-7f3a";
const REDIS_PASSWORD: &str = "Redis-Pa55word-91c2";
const ADMIN_TOKEN: &str = "Admin-T0ken-5e8d";

#[test]
fn help_never_shows_a_secret_value() -> Result<()> {
    let database_url = format!("postgres://app:{DATABASE_PASSWORD}@db.internal:5432/courses");
    let redis_url = format!("redis://:{REDIS_PASSWORD}@redis.internal:6379");
    let env = [
        ("DATABASE_URL", database_url.as_str()),
        ("REDIS_URL", redis_url.as_str()),
        ("ADMIN_TOKEN", ADMIN_TOKEN),
    ];
    for program in PROGRAMS.into_iter().chain(["all-in-one"]) {
        for subcommand in subcommands(program) {
            let text = help(program, subcommand, &env)?;
            for secret in [DATABASE_PASSWORD, REDIS_PASSWORD, ADMIN_TOKEN] {
                ensure!(
                    !text.contains(secret),
                    "{program} {subcommand} --help shows a secret:\n{text}"
                );
            }
            // Hidden, not absent: the settings are listed, without a value.
            let listed = ["DATABASE_URL", "REDIS_URL", "ADMIN_TOKEN"]
                .into_iter()
                .filter(|name| text.contains(&format!("[env: {name}")))
                .inspect(|name| {
                    assert!(
                        text.contains(&format!("[env: {name}]")),
                        "{program} {subcommand}: {name} is listed with a value:\n{text}"
                    )
                })
                .count();
            ensure!(
                listed > 0,
                "{program} {subcommand} lists no secret setting:\n{text}"
            );
        }
    }
    Ok(())
}

/// A file of the test's own holding `content`, removed on drop.
struct SecretFile(PathBuf);

impl SecretFile {
    fn new(content: &str) -> Result<Self> {
        let path = std::env::temp_dir().join(e2e::unique_name("secret"));
        std::fs::write(&path, content)?;
        Ok(Self(path))
    }

    fn path(&self) -> &str {
        self.0.to_str().unwrap_or_default()
    }
}

impl Drop for SecretFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Runs `program args` with exactly `env` to its end (for settings refused at start).
fn run_to_end(program: &'static str, args: &[&str], env: &[(&str, &str)]) -> Result<Output> {
    let mut child = Command::new(binary(program)?)
        .args(args)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("RUST_LOG", "debug")
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    // A program that took the settings would serve: never wait forever.
    for _ in 0..200 {
        if child.try_wait()?.is_some() {
            return Ok(child.wait_with_output()?);
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let _ = child.kill();
    let output = child.wait_with_output()?;
    bail!(
        "{program} {args:?} kept running: {}",
        String::from_utf8_lossy(&output.stderr)
    )
}

#[test]
fn a_secret_and_its_file_together_or_an_unreadable_file_stop_the_program_at_start() -> Result<()> {
    let file = SecretFile::new(&format!(
        "postgres://app:{DATABASE_PASSWORD}@127.0.0.1:1/x\n"
    ))?;
    let both = run_to_end(
        "command-api",
        &[],
        &[
            ("DATABASE_URL", "postgres://app@127.0.0.1:1/x"),
            ("DATABASE_URL_FILE", file.path()),
            ("COMMAND_API_ADDR", "127.0.0.1:0"),
        ],
    )?;
    let stderr = String::from_utf8_lossy(&both.stderr);
    ensure!(!both.status.success(), "{stderr}");
    ensure!(stderr.contains("--database-url-file"), "{stderr}");
    ensure!(!stderr.contains(DATABASE_PASSWORD), "{stderr}");

    let missing = Path::new("/nonexistent").join(e2e::unique_name("token"));
    let missing = missing.to_str().unwrap_or_default();
    for (program, setting) in [
        ("command-api", "ADMIN_TOKEN_FILE"),
        ("query-api", "REDIS_URL_FILE"),
        ("projector", "DATABASE_URL_FILE"),
    ] {
        let output = run_to_end(
            program,
            &[],
            &[(setting, missing), ("QUERY_API_ADDR", "127.0.0.1:0")],
        )?;
        let stderr = String::from_utf8_lossy(&output.stderr);
        ensure!(!output.status.success(), "{program}: {stderr}");
        ensure!(
            stderr.contains(setting) && stderr.contains(missing),
            "{program}: the error names neither the setting nor the file: {stderr}"
        );
    }
    Ok(())
}

/// `url` with `password` given for its user (`postgres://user@…` or
/// `redis://…`): the local PostgreSQL trusts 127.0.0.1 and ignores it.
fn with_password(url: &str, password: &str) -> Result<String> {
    let mut parsed = url::Url::parse(url)?;
    parsed
        .set_password(Some(password))
        .map_err(|()| anyhow::anyhow!("{url} takes no password"))?;
    Ok(parsed.into())
}

/// Polls `url` until it answers `status` (at most `secs` seconds).
async fn wait_for_status(
    http: &reqwest::Client,
    url: &str,
    status: u16,
    secs: u64,
) -> Result<reqwest::Response> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    loop {
        if let Ok(answer) = http.get(url).send().await {
            if answer.status().as_u16() == status {
                return Ok(answer);
            }
        }
        ensure!(
            std::time::Instant::now() < deadline,
            "{url} never answered {status}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

/// Waits until `program`'s log holds `text` (at most `secs` seconds).
async fn wait_for_log(program: &e2e::programs::Program, text: &str, secs: u64) -> Result<()> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    while !program.log()?.contains(text) {
        ensure!(
            std::time::Instant::now() < deadline,
            "no {text:?} in the log:\n{}",
            program.log()?
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    Ok(())
}

/// Every program started with its secrets from files, password-bearing URLs
/// (a Redis that requires its password), logging at `debug`: they work, the
/// admin token guards their routes, and no secret reaches a log line, even
/// where a wrong password or an unreachable server is logged.
#[tokio::test]
async fn secrets_read_from_files_work_and_no_log_line_shows_one() -> Result<()> {
    use e2e::programs::{free_port, Program};

    let redis = e2e::redis_server::RedisServer::start().await?;
    redis.cli(&["config", "set", "requirepass", REDIS_PASSWORD])?;
    let redis_url = with_password(&redis.url(), REDIS_PASSWORD)?;
    let stack = e2e::Stack::start_with_redis(&redis_url).await?;
    let database_url = with_password(&stack.database_url, DATABASE_PASSWORD)?;
    let database_file = SecretFile::new(&format!("{database_url}\n"))?;
    let redis_file = SecretFile::new(&format!("{redis_url}\n"))?;
    let token_file = SecretFile::new(&format!("{ADMIN_TOKEN}\n"))?;
    let http = reqwest::Client::new();
    let bearer = format!("Bearer {ADMIN_TOKEN}");
    let debug = ("RUST_LOG", "debug");

    let projector = Program::start(
        "projector",
        "PROJECTOR_ADDR",
        &[
            ("DATABASE_URL_FILE", database_file.path()),
            ("REDIS_URL_FILE", redis_file.path()),
            ("ADMIN_TOKEN_FILE", token_file.path()),
            ("KEY_PREFIX", &stack.prefix),
            ("PROJECTOR_SLOT", &stack.slot),
            ("PROJECTOR_PUBLICATION", &stack.publication),
            debug,
        ],
    )
    .await?;
    wait_for_status(&http, &format!("{}/ready", projector.url), 200, 60).await?;
    let status_url = format!("{}/v1/ops/status", projector.url);
    for refused in [None, Some("Bearer wrong"), Some(ADMIN_TOKEN)] {
        let mut request = http.get(&status_url);
        if let Some(value) = refused {
            request = request.header("authorization", value);
        }
        let answer = request.send().await?;
        ensure!(answer.status() == 401, "{refused:?}: {}", answer.status());
        let body: serde_json::Value = answer.json().await?;
        ensure!(body["error"]["code"] == "unauthorized", "{body}");
    }
    let status: serde_json::Value = http
        .get(&status_url)
        .header("authorization", &bearer)
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    ensure!(status["slot"] == stack.slot.as_str(), "{status}");
    ensure!(status["generation"].is_u64(), "{status}");

    // The query API reads the projector's views through the file's URL.
    let query = Program::start(
        "query-api",
        "QUERY_API_ADDR",
        &[
            ("REDIS_URL_FILE", redis_file.path()),
            ("ADMIN_TOKEN_FILE", token_file.path()),
            ("KEY_PREFIX", &stack.prefix),
            debug,
        ],
    )
    .await?;
    wait_for_status(&http, &format!("{}/ready", query.url), 200, 30).await?;
    let prewarm = format!("{}/v1/ops/prewarm", query.url);
    ensure!(http.get(&prewarm).send().await?.status() == 401);
    let answer = http
        .get(&prewarm)
        .header("authorization", &bearer)
        .send()
        .await?;
    ensure!(answer.status() == 200, "{}", answer.status());

    // The command API reaches PostgreSQL through the file's URL and guards
    // back-office writes with the file's token.
    let command = Program::start(
        "command-api",
        "COMMAND_API_ADDR",
        &[
            ("DATABASE_URL_FILE", database_file.path()),
            ("ADMIN_TOKEN_FILE", token_file.path()),
            debug,
        ],
    )
    .await?;
    wait_for_status(&http, &format!("{}/ready", command.url), 200, 30).await?;
    let course = serde_json::json!({"title": "t", "summary": "s", "description_html": "<p>d</p>",
        "category": "c", "instructor": "i", "price_krw": 1000});
    let courses = format!("{}/v1/courses", command.url);
    ensure!(http.post(&courses).json(&course).send().await?.status() == 401);
    let answer = http
        .post(&courses)
        .json(&course)
        .header("authorization", &bearer)
        .send()
        .await?;
    ensure!(answer.status() == 201, "{}", answer.status());

    // Problems logged with the URLs at hand: a wrong Redis password, an
    // unreachable PostgreSQL (and Redis), a projector with no admin token.
    let closed = free_port()?;
    let wrong_redis = with_password(&redis.url(), "Wrong-Pa55word-33b1")?;
    let unreachable_database =
        format!("postgres://postgres:{DATABASE_PASSWORD}@127.0.0.1:{closed}/courses");
    let unreachable_redis = format!("redis://:{REDIS_PASSWORD}@127.0.0.1:{closed}");
    let lost_query = Program::start(
        "query-api",
        "QUERY_API_ADDR",
        &[
            ("REDIS_URL", &wrong_redis),
            ("ADMIN_TOKEN", ADMIN_TOKEN),
            debug,
        ],
    )
    .await?;
    let lost_command = Program::start(
        "command-api",
        "COMMAND_API_ADDR",
        &[("DATABASE_URL", &unreachable_database), debug],
    )
    .await?;
    let lost_projector = Program::start(
        "projector",
        "PROJECTOR_ADDR",
        &[
            ("DATABASE_URL", &unreachable_database),
            ("REDIS_URL", &redis_url),
            debug,
        ],
    )
    .await?;
    wait_for_status(&http, &format!("{}/ready", lost_query.url), 503, 10).await?;
    wait_for_status(&http, &format!("{}/ready", lost_command.url), 503, 10).await?;
    // Without a configured token the projector's ops routes are off.
    let answer = http
        .get(format!("{}/v1/ops/status", lost_projector.url))
        .header("authorization", "Bearer ")
        .send()
        .await?;
    ensure!(answer.status() == 401, "{}", answer.status());
    wait_for_log(&lost_projector, "retrying", 20).await?;
    wait_for_log(&lost_projector, "no ADMIN_TOKEN configured", 1).await?;
    // The problem names where, with the password masked.
    wait_for_log(
        &lost_projector,
        &format!("PostgreSQL at postgres://postgres:***@127.0.0.1:{closed}/courses"),
        1,
    )
    .await?;

    // Programs refused at start say why without the password.
    let refused = [
        run_to_end(
            "query-api",
            &[],
            // A list mixing TLS and plain nodes is refused.
            &[(
                "REDIS_URL",
                &format!("rediss://:{REDIS_PASSWORD}@h:6380,redis://h2:6381"),
            )],
        )?,
        run_to_end(
            "command-api",
            &[],
            &[(
                "DATABASE_URL",
                &format!("postgres://u:{DATABASE_PASSWORD}@h:port/db"),
            )],
        )?,
        run_to_end(
            "projector",
            &["status"],
            &[
                ("DATABASE_URL", &unreachable_database),
                ("REDIS_URL", &unreachable_redis),
            ],
        )?,
        // A file named by mistake: its content is another secret.
        run_to_end(
            "projector",
            &["status"],
            &[("DATABASE_URL_FILE", token_file.path())],
        )?,
        run_to_end("query-api", &[], &[("REDIS_URL_FILE", token_file.path())])?,
        run_to_end(
            "command-api",
            &[],
            &[("DATABASE_URL_FILE", token_file.path())],
        )?,
    ];
    let mut logs = Vec::new();
    for output in &refused {
        ensure!(!output.status.success(), "{output:?}");
        logs.push(String::from_utf8_lossy(&output.stderr).into_owned());
        logs.push(String::from_utf8_lossy(&output.stdout).into_owned());
    }
    for program in [
        &projector,
        &query,
        &command,
        &lost_query,
        &lost_command,
        &lost_projector,
    ] {
        logs.push(program.log()?);
    }
    ensure!(
        logs.iter()
            .any(|log| log.contains("WRONGPASS") || log.contains("invalid username-password")),
        "no program logged the wrong Redis password:\n{}",
        logs.join("\n---\n")
    );
    for log in &logs {
        for secret in [
            DATABASE_PASSWORD,
            REDIS_PASSWORD,
            ADMIN_TOKEN,
            "Wrong-Pa55word",
        ] {
            ensure!(!log.contains(secret), "a log shows {secret}:\n{log}");
        }
    }
    drop((
        projector,
        query,
        command,
        lost_query,
        lost_command,
        lost_projector,
    ));
    stack.cleanup().await
}

/// `projector status` (and every subcommand) takes its settings after the
/// subcommand, and `GET /v1/ops/status` answers what it prints.
#[tokio::test]
async fn projector_subcommands_take_settings_after_them_and_ops_status_agrees() -> Result<()> {
    use e2e::programs::Program;

    let stack = e2e::Stack::start().await?;
    let http = reqwest::Client::new();
    let projector = Program::start(
        "projector",
        "PROJECTOR_ADDR",
        &[
            ("DATABASE_URL", &stack.database_url),
            ("REDIS_URL", &stack.redis_url),
            ("KEY_PREFIX", &stack.prefix),
            ("PROJECTOR_SLOT", &stack.slot),
            ("PROJECTOR_PUBLICATION", &stack.publication),
            ("ADMIN_TOKEN", ADMIN_TOKEN),
        ],
    )
    .await?;
    wait_for_status(&http, &format!("{}/ready", projector.url), 200, 60).await?;

    let settings = [
        "--database-url",
        &stack.database_url,
        "--redis-url",
        &stack.redis_url,
        "--key-prefix",
        &stack.prefix,
        "--slot",
        &stack.slot,
        "--publication",
        &stack.publication,
    ];
    let run = |subcommand: &str| -> Result<Output> {
        let output = Command::new(binary("projector")?)
            .arg(subcommand)
            .args(settings)
            .env_clear()
            .stdin(Stdio::null())
            .output()?;
        ensure!(
            output.status.success(),
            "projector {subcommand} {settings:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        Ok(output)
    };
    let printed: serde_json::Value = serde_json::from_slice(&run("status")?.stdout)?;
    ensure!(printed["slot"] == stack.slot.as_str(), "{printed}");
    ensure!(printed["slot_exists"] == true, "{printed}");
    ensure!(printed["generation"].is_u64(), "{printed}");
    run("audit")?;

    let served: serde_json::Value = http
        .get(format!("{}/v1/ops/status", projector.url))
        .header("authorization", format!("Bearer {ADMIN_TOKEN}"))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    let keys = |v: &serde_json::Value| -> Vec<String> {
        v.as_object()
            .map(|o| o.keys().cloned().collect())
            .unwrap_or_default()
    };
    ensure!(keys(&served) == keys(&printed), "{served}\n{printed}");
    for same in ["slot", "generation", "active_instance", "schema"] {
        ensure!(
            served[same] == printed[same],
            "{same}: {served} vs {printed}"
        );
    }
    run("rebuild")?;
    drop(projector);
    // Dropped once the daemon is gone (the server notices within moments).
    let mut dropped = run("drop-slot");
    for _ in 0..50 {
        if dropped.is_ok() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        dropped = run("drop-slot");
    }
    let dropped = dropped?;
    ensure!(
        String::from_utf8_lossy(&dropped.stdout).contains(&format!("dropped slot {}", stack.slot)),
        "{dropped:?}"
    );
    stack.cleanup().await
}

/// Log lines as a collector reads them: `LOG_FORMAT=json` is one object per
/// line with the request's id as a field; text has no colour codes when
/// the output is not a terminal.
#[tokio::test]
async fn json_log_lines_carry_the_request_id_and_text_has_no_colour_off_a_terminal() -> Result<()> {
    use e2e::programs::Program;

    let http = reqwest::Client::new();
    for format in ["json", "text"] {
        let program = Program::start(
            "query-api",
            "QUERY_API_ADDR",
            &[
                ("REDIS_URL", &e2e::redis_url()),
                ("LOG_FORMAT", format),
                // The query API logs its answers at debug.
                ("RUST_LOG", "info,service::requests=debug"),
            ],
        )
        .await?;
        let id = e2e::unique_name("request");
        let answer = http
            .get(format!("{}/v1/courses/x", program.url))
            .header("x-request-id", &id)
            .send()
            .await?;
        ensure!(answer.status() == 400, "{}", answer.status());
        wait_for_log(&program, &id, 10).await?;
        let log = program.log()?;
        ensure!(
            !log.contains("\x1b["),
            "{format} log has colour codes:\n{log}"
        );
        if format == "text" {
            continue;
        }
        let mut request_lines = 0;
        for line in log.lines() {
            let entry: serde_json::Value =
                serde_json::from_str(line).with_context(|| format!("not a JSON line: {line:?}"))?;
            for field in ["timestamp", "level", "target", "message"] {
                ensure!(entry[field].is_string(), "no {field} in {line}");
            }
            ensure!(
                chrono::DateTime::parse_from_rfc3339(
                    entry["timestamp"].as_str().unwrap_or_default()
                )
                .is_ok(),
                "{line}"
            );
            if entry["request_id"] == id.as_str() {
                request_lines += 1;
                ensure!(entry["route"] == "/v1/courses/{id}", "{line}");
                ensure!(entry["status"] == 400, "{line}");
                ensure!(entry["method"] == "GET", "{line}");
                ensure!(entry["level"] == "DEBUG", "{line}");
            }
        }
        ensure!(
            request_lines == 1,
            "{request_lines} lines carry {id}:\n{log}"
        );
    }
    Ok(())
}
