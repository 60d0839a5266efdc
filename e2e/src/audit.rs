//! `projector audit` run as an operator runs it: the binary, against a
//! stack's database and key prefix, its report and exit status collected.

use std::{process::Stdio, time::Duration};

use anyhow::{Context, Result};

use crate::Stack;

/// What one `projector audit` printed and exited with.
#[derive(Debug)]
pub struct AuditRun {
    /// The exit status (`None`: ended by a signal).
    pub status: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl AuditRun {
    /// Itself when it exited 0 (nothing differs); else an error showing
    /// what it printed.
    pub fn ensure_clean(self) -> Result<Self> {
        anyhow::ensure!(
            self.status == Some(0),
            "the audit exited {:?}:\n{}\n{}",
            self.status,
            self.stdout,
            self.stderr
        );
        Ok(self)
    }

    /// The audit's own findings (not those after a repair), as
    /// (entity, field) pairs: `("course 12", "view.title")`.
    pub fn mismatches(&self) -> Vec<(String, String)> {
        self.stdout
            .lines()
            .filter_map(|line| {
                let (place, _) = line.strip_prefix("mismatch ")?.split_once(": redis ")?;
                let (entity, field) = place.rsplit_once(' ')?;
                Some((entity.to_owned(), field.to_owned()))
            })
            .collect()
    }

    /// The whole `mismatch …` line of `entity` and `field`.
    pub fn line(&self, entity: &str, field: &str) -> Option<&str> {
        let lead = format!("mismatch {entity} {field}: ");
        self.stdout.lines().find(|line| line.starts_with(&lead))
    }

    /// How many entities of `kind` (`courses`, `events`, `orders`,
    /// `libraries`, `categories`) the `checked:` line counts.
    pub fn checked(&self, kind: &str) -> Option<u64> {
        let line = self
            .stdout
            .lines()
            .find_map(|line| line.strip_prefix("checked: "))?;
        line.split(", ").find_map(|part| {
            let (name, count) = part.split_once(' ')?;
            (name == kind).then(|| count.parse().ok())?
        })
    }
}

impl Stack {
    /// Runs `projector audit <args>` against this stack (as its projector
    /// connects) and waits for it, two minutes at most.
    pub async fn audit(&self, args: &[&str]) -> Result<AuditRun> {
        let child = self
            .projector_command()?
            .arg("audit")
            .args(args)
            .env("RUST_LOG", "warn")
            .env_remove("AUDIT_SAMPLE")
            .env_remove("AUDIT_REPAIR")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .context("starting projector audit")?;
        let output = tokio::time::timeout(Duration::from_secs(120), child.wait_with_output())
            .await
            .context("projector audit did not finish within two minutes")??;
        Ok(AuditRun {
            status: output.status.code(),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        })
    }
}
