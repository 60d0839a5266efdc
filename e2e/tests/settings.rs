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
            Some(used_by) if cells[used_by].contains("all three") => PROGRAMS.to_vec(),
            Some(used_by) => PROGRAMS
                .into_iter()
                .filter(|p| cells[used_by].contains(p))
                .collect(),
            None => PROGRAMS.into_iter().filter(|p| *p == heading).collect(),
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
    for program in PROGRAMS {
        let mut listed = BTreeMap::new();
        for subcommand in subcommands(program) {
            let source = format!("{program} {subcommand} --help");
            for (env, setting) in parse_help(&help(program, subcommand, &[])?, &source)? {
                if let Some(other) = listed.insert(env.clone(), setting.clone()) {
                    ensure!(
                        other == setting,
                        "{source}: {env} differs between subcommands"
                    );
                }
            }
        }
        ensure!(
            listed.len() > 5,
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
    for program in PROGRAMS {
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
