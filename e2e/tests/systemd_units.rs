//! The systemd units of `deploy/systemd/` as systemd reads them: `systemd-
//! analyze verify` on copies whose `ExecStart` names the built binaries
//! (verify checks that the command exists), and their example environment
//! files against the settings each program has.

use std::collections::BTreeSet;
use std::path::PathBuf;

use anyhow::{ensure, Context, Result};
use e2e::programs::binary;
use e2e::tools::{deploy_dir, ensure as ensure_tool};

/// The three programs, and the one process that runs them together.
const PROGRAMS: [&str; 4] = ["command-api", "query-api", "projector", "all-in-one"];

/// A directory removed on drop.
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn unit(program: &str) -> Result<String> {
    let path = deploy_dir().join(format!("systemd/{program}.service"));
    std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))
}

#[test]
fn the_units_pass_systemd_analyze_verify_with_nothing_to_say() -> Result<()> {
    let analyze = ensure_tool("systemd-analyze", "systemd-analyze")?;
    let dir = TempDir(std::env::temp_dir().join(e2e::unique_name("units")));
    std::fs::create_dir_all(&dir.0)?;
    let mut files = Vec::new();
    for program in PROGRAMS {
        let text = unit(program)?;
        let installed = format!("ExecStart=/usr/local/bin/{program}\n");
        ensure!(
            text.contains(&installed),
            "{program}.service should say {installed}"
        );
        let built = binary(program)?;
        let copy = text.replace(&installed, &format!("ExecStart={}\n", built.display()));
        let path = dir.0.join(format!("{program}.service"));
        std::fs::write(&path, copy)?;
        files.push(path);
    }
    let out = std::process::Command::new(analyze)
        .args(["verify", "--man=no"])
        .args(&files)
        .output()
        .context("running systemd-analyze verify")?;
    // Unknown keys and bad values are warnings on stderr with status 0:
    // anything said at all is a failure.
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    ensure!(
        out.status.success() && said.trim().is_empty(),
        "systemd-analyze verify ({}):\n{said}",
        out.status
    );
    Ok(())
}

#[test]
fn the_units_keep_to_the_hardening_and_credential_rules() -> Result<()> {
    for program in PROGRAMS {
        let text = unit(program)?;
        for line in [
            "Restart=on-failure",
            "DynamicUser=yes",
            "NoNewPrivileges=yes",
            "ProtectSystem=strict",
            "ProtectHome=yes",
            "PrivateTmp=yes",
            "PrivateDevices=yes",
            "CapabilityBoundingSet=",
            "RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX",
            "MemoryDenyWriteExecute=yes",
            "SystemCallFilter=@system-service",
            "Environment=LOG_FORMAT=json",
            "TimeoutStopSec=30s",
            "Environment=DATABASE_URL_FILE=%d/database-url",
            "Environment=PROJECTOR_DATABASE_URL_FILE=%d/projector-database-url",
            "Environment=REDIS_URL_FILE=%d/redis-url",
            "Environment=ADMIN_TOKEN_FILE=%d/admin-token",
        ] {
            // Each program gets the secrets it has settings for.
            let setting = line
                .strip_prefix("Environment=")
                .and_then(|l| l.split_once("_FILE="))
                .map(|(name, _)| name);
            let needed = match setting {
                Some(name) => program_settings(program)?.contains(name),
                None => true,
            };
            ensure!(
                text.lines().any(|l| l == line) == needed,
                "{program}.service: `{line}` {}",
                if needed {
                    "missing"
                } else {
                    "present, for a setting it does not have"
                }
            );
        }
        ensure!(
            text.contains(&format!("EnvironmentFile=/etc/course-sales/{program}.env")),
            "{program}.service reads no environment file"
        );
    }
    Ok(())
}

/// The environment twins of `program`'s settings, from its `--help`.
fn program_settings(program: &'static str) -> Result<BTreeSet<String>> {
    let out = std::process::Command::new(binary(program)?)
        .arg("--help")
        .output()?;
    let help = String::from_utf8(out.stdout)?;
    Ok(help
        .split("[env: ")
        .skip(1)
        .filter_map(|rest| rest.split(['=', ']']).next())
        .map(str::to_owned)
        .collect())
}

#[test]
fn every_setting_of_the_example_environment_files_is_one_the_program_has() -> Result<()> {
    for program in PROGRAMS {
        let settings = program_settings(program)?;
        ensure!(settings.len() > 5, "{program} --help lists {settings:?}");
        let path = deploy_dir().join(format!("systemd/{program}.env.example"));
        let text = std::fs::read_to_string(&path)?;
        let mut set = 0;
        for line in text.lines().map(str::trim) {
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (name, _) = line
                .split_once('=')
                .with_context(|| format!("{}: `{line}` is not NAME=value", path.display()))?;
            // RUST_LOG is read by the log filter, not by clap.
            ensure!(
                name == "RUST_LOG" || settings.contains(name),
                "{program}.env.example sets {name}, which {program} does not have"
            );
            ensure!(
                ![
                    "DATABASE_URL",
                    "PROJECTOR_DATABASE_URL",
                    "REDIS_URL",
                    "ADMIN_TOKEN"
                ]
                .contains(&name),
                "{program}.env.example holds the secret {name}: it belongs in a credential"
            );
            set += 1;
        }
        ensure!(set > 5, "{program}.env.example sets only {set} settings");
    }
    Ok(())
}

/// `NAME=value` of every setting line of `program`'s example file.
fn example_settings(program: &str) -> Result<Vec<(String, String)>> {
    let path = deploy_dir().join(format!("systemd/{program}.env.example"));
    let text = std::fs::read_to_string(&path)?;
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| {
            l.split_once('=')
                .map(|(n, v)| (n.to_owned(), v.to_owned()))
                .with_context(|| format!("{}: `{l}` is not NAME=value", path.display()))
        })
        .collect()
}

#[test]
fn every_value_of_the_example_environment_files_parses() -> Result<()> {
    for program in PROGRAMS {
        let port = e2e::programs::free_port()?;
        // Dependencies on closed ports: nothing is reached; only the
        // settings are parsed (clap exits with status 2 on a bad value, before
        // anything starts).
        let mut child = std::process::Command::new(binary(program)?)
            .envs(example_settings(program)?)
            .env("DATABASE_URL", "postgres://127.0.0.1:1/none")
            .env("REDIS_URL", "redis://127.0.0.1:1")
            .env("COMMAND_API_ADDR", format!("127.0.0.1:{port}"))
            .env("QUERY_API_ADDR", format!("127.0.0.1:{port}"))
            .env("PROJECTOR_ADDR", format!("127.0.0.1:{port}"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()?;
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(3);
        let status = loop {
            if let Some(status) = child.try_wait()? {
                break Some(status);
            }
            if std::time::Instant::now() > deadline {
                break None;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        };
        let _ = child.kill();
        let _ = child.wait();
        let mut said = String::new();
        if let Some(mut stderr) = child.stderr.take() {
            std::io::Read::read_to_string(&mut stderr, &mut said)?;
        }
        ensure!(
            status.and_then(|s| s.code()) != Some(2) && !said.contains("invalid value"),
            "{program} refuses its example settings:\n{said}"
        );
    }
    Ok(())
}
