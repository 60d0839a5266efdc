//! What an audit found, as `projector audit` prints it and its exit status.

use std::{collections::BTreeMap, fmt};

use views::Lsn;

use super::{Difference, Kind, Options, Repaired, Subject};

/// The exit status of an audit that found no difference.
pub const EXIT_CLEAN: u8 = 0;
/// The exit status of an audit that found differences (and, with
/// `--repair`, could not make every one clean).
pub const EXIT_MISMATCHES: u8 = 1;
/// The exit status of an audit that could not run.
pub const EXIT_FAILED: u8 = 2;

/// An entity whose Redis state differs from the tables.
#[derive(Debug, Clone)]
pub struct Mismatch {
    pub subject: Subject,
    pub differences: Vec<Difference>,
}

/// What the audit of a set of entities found.
#[derive(Debug, Default)]
pub struct Findings {
    pub mismatches: Vec<Mismatch>,
    /// Entities that changed in every pass: not compared.
    pub unsettled: Vec<Subject>,
    /// Entities the first pass found different and later passes read again.
    pub rechecked: usize,
}

/// What `projector audit` found (and repaired).
#[derive(Debug)]
pub struct Report {
    pub generation: u64,
    /// The first pass's snapshot position.
    pub lsn: Lsn,
    pub options: Options,
    /// Entities compared by the first pass, per kind.
    pub checked: BTreeMap<Kind, u64>,
    pub found: Findings,
    /// With `--repair`: each mismatch's repair, and the audit of them after.
    pub repair: Option<(Vec<(Subject, Repaired)>, Findings)>,
}

impl Report {
    /// The differences left: after the repair when there was one.
    pub fn remaining(&self) -> &[Mismatch] {
        match &self.repair {
            Some((_, after)) => &after.mismatches,
            None => &self.found.mismatches,
        }
    }

    /// 0 when nothing differs (any more), 1 otherwise.
    pub fn exit_status(&self) -> u8 {
        if self.remaining().is_empty() {
            EXIT_CLEAN
        } else {
            EXIT_MISMATCHES
        }
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scope = match self.options.sample {
            Some(n) => format!("a random sample of at most {n} per kind"),
            None => "every entity".to_owned(),
        };
        writeln!(
            f,
            "audit of generation {} at {} ({scope})",
            self.generation, self.lsn
        )?;
        write_findings(f, "", &self.found)?;
        let checked: Vec<String> = Kind::ALL
            .iter()
            .map(|k| format!("{} {}", k.plural(), self.checked.get(k).unwrap_or(&0)))
            .collect();
        writeln!(f, "checked: {}", checked.join(", "))?;
        if self.found.rechecked > 0 {
            writeln!(
                f,
                "re-read: {} entities that differed in the first pass, by later passes",
                self.found.rechecked
            )?;
        }
        writeln!(f, "result: {}", summary(&self.found.mismatches))?;
        if let Some((repairs, after)) = &self.repair {
            for (subject, outcome) in repairs {
                match outcome {
                    Repaired::Done => writeln!(f, "repaired {subject}")?,
                    Repaired::GaveUp => writeln!(
                        f,
                        "not repaired {subject}: it kept changing; try again later"
                    )?,
                    Repaired::Failed(err) => writeln!(f, "not repaired {subject}: {err}")?,
                }
            }
            write_findings(f, "after repair: ", after)?;
            writeln!(f, "after repair: {}", summary(&after.mismatches))?;
        }
        Ok(())
    }
}

fn write_findings(f: &mut fmt::Formatter<'_>, lead: &str, found: &Findings) -> fmt::Result {
    for m in &found.mismatches {
        for d in &m.differences {
            writeln!(
                f,
                "{lead}mismatch {} {}: redis {} postgres {}",
                m.subject, d.field, d.redis, d.postgres
            )?;
        }
    }
    for subject in &found.unsettled {
        writeln!(
            f,
            "{lead}unsettled {subject}: it changed in every pass, not compared"
        )?;
    }
    Ok(())
}

fn summary(mismatches: &[Mismatch]) -> String {
    if mismatches.is_empty() {
        return "clean".to_owned();
    }
    let fields: usize = mismatches.iter().map(|m| m.differences.len()).sum();
    format!("{} mismatching entities, {fields} fields", mismatches.len())
}
