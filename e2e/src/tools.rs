//! The engines the checks of `deploy/` run (promtool, amtool, Alertmanager,
//! systemd-analyze): found on `PATH`, or installed from Debian's packages by
//! `deploy/local.sh install`, which starts none of their services.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

/// The repository's `deploy/` directory.
pub fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy")
}

/// Where `name` is on `PATH`, if it is.
fn on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
}

/// The executable `name`, installed first when missing: `tool` is the name
/// `deploy/local.sh install` knows its package by (`promtool`, `amtool`,
/// `systemd-analyze`).
pub fn ensure(tool: &str, name: &str) -> Result<PathBuf> {
    if let Some(found) = on_path(name) {
        return Ok(found);
    }
    let script = deploy_dir().join("local.sh");
    let out = Command::new("bash")
        .arg(&script)
        .args(["install", tool])
        .output()
        .with_context(|| format!("running {} install {tool}", script.display()))?;
    if !out.status.success() {
        bail!(
            "installing {tool} failed ({}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    on_path(name).with_context(|| format!("{name} is still not on PATH after installing {tool}"))
}

/// Runs `program` with `args`; its output, or an error carrying it when the
/// program fails.
pub fn run(program: &Path, args: &[&str]) -> Result<String> {
    let out = Command::new(program)
        .args(args)
        .output()
        .with_context(|| format!("running {}", program.display()))?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if !out.status.success() {
        bail!(
            "{} {} failed ({}):\n{text}",
            program.display(),
            args.join(" "),
            out.status
        );
    }
    Ok(text)
}
