//! Ops flags: kill switches and release toggles, defined in flagd's
//! flag-definition format, read from `FLAGS_FILE` and evaluated in process
//! with the OpenFeature evaluation API's shape (a context with
//! `targetingKey`, typed `get_*_value` calls with a default, a reason).
//!
//! Hand-written rather than `open-feature` + `open-feature-flagd`: the
//! provider's file resolver comes only with its `in-process` feature, which
//! adds 55 crates this workspace does not build (tonic, prost, h2, rustls,
//! notify, datalogic-rs, mockall), and its build script needs `protoc`
//! installed: a scratch build of 0.3.0 failed there after 75 s on one core.
//! The file format and the `fractional` buckets are flagd's, so a fleet can
//! use flagd (or swap in the SDK) with the same flag file.
//!
//! Evaluation reads a snapshot behind an `ArcSwap`: it never waits on the
//! watcher, the disk, PostgreSQL or Redis.

mod definition;

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use metrics::Gauge;
use serde_json::Value;

use definition::{Definitions, Resolved};
pub use definition::{EvaluationContext, Reason};

/// How often the file is looked at: a change is seen within a second.
const POLL_EVERY: Duration = Duration::from_millis(250);

/// A flag a program reads, with the value it has when the file does not
/// say (every feature on).
#[derive(Debug, Clone, Copy)]
pub struct FlagSpec {
    pub key: &'static str,
    pub default: FlagDefault,
    /// What it protects, for `/v1/ops/flags`.
    pub about: &'static str,
}

/// A flag's type and its default value.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum FlagDefault {
    Bool(bool),
    Int(i64),
}

impl FlagDefault {
    fn as_value(self) -> Value {
        match self {
            FlagDefault::Bool(b) => Value::Bool(b),
            FlagDefault::Int(n) => Value::from(n),
        }
    }

    fn fits(self, value: &Value) -> bool {
        match self {
            FlagDefault::Bool(_) => value.is_boolean(),
            FlagDefault::Int(_) => value.is_i64(),
        }
    }
}

/// A resolved value with its variant and reason (OpenFeature's details).
#[derive(Debug, Clone, PartialEq)]
pub struct Details<T> {
    pub value: T,
    pub variant: Option<String>,
    pub reason: Reason,
}

/// The settings of the flag file, flattened into each program's settings.
#[derive(clap::Args, Clone, Debug, PartialEq, Eq, Default)]
pub struct FlagsArgs {
    /// flagd-format JSON flag file, re-read within 1 s of a change; unset: every flag at its default (every feature on).
    #[arg(long, env = "FLAGS_FILE")]
    pub flags_file: Option<PathBuf>,
}

/// The flags of one program: cheap to clone, read without locks.
#[derive(Clone)]
pub struct Flags(Arc<Inner>);

struct Inner {
    path: Option<PathBuf>,
    specs: &'static [FlagSpec],
    current: ArcSwap<Definitions>,
    /// What the file held when last looked at, and the problem last logged.
    seen: Mutex<Seen>,
    gauges: Option<FlagGauges>,
}

#[derive(Default)]
struct Seen {
    content: Option<Vec<u8>>,
    problem: Option<String>,
}

struct FlagGauges {
    values: Vec<Gauge>,
    targeted: Vec<Gauge>,
    file_ok: Gauge,
}

impl std::fmt::Debug for Flags {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Flags").field("path", &self.0.path).finish()
    }
}

impl Flags {
    /// The flags `specs` from `args`' file, read once now (a problem is
    /// logged and leaves the defaults), their state exported in `metrics`.
    pub fn load(
        args: &FlagsArgs,
        specs: &'static [FlagSpec],
        metrics: Option<&crate::Metrics>,
    ) -> Self {
        let gauges = metrics.map(|m| FlagGauges {
            values: specs
                .iter()
                .map(|s| {
                    m.labelled_gauge(
                        "flag_value",
                        "Each ops flag's value with no context: 1 or 0 for a switch, the number for a setting.",
                        &[("flag", s.key)],
                    )
                })
                .collect(),
            targeted: specs
                .iter()
                .map(|s| {
                    m.labelled_gauge(
                        "flag_targeting",
                        "1 while the flag file gives the flag targeting rules (a switch pulled for some events or users).",
                        &[("flag", s.key)],
                    )
                })
                .collect(),
            file_ok: m.gauge(
                "flags_file_ok",
                "1 when the flag file was read and valid at the last look, else 0 (the last good values stay).",
            ),
        });
        let flags = Flags(Arc::new(Inner {
            path: args.flags_file.clone(),
            specs,
            current: ArcSwap::from_pointee(Definitions::default()),
            seen: Mutex::new(Seen::default()),
            gauges,
        }));
        // The defaults first: a file refused at start must leave the gauge
        // saying so, not be covered by them.
        flags.export(true);
        flags.look();
        flags
    }

    /// Every flag at its default, with no file (tests and tools).
    pub fn defaults(specs: &'static [FlagSpec]) -> Self {
        Self::load(&FlagsArgs::default(), specs, None)
    }

    /// Looks at the file every 250 ms until the task is dropped; nothing
    /// to do without a file.
    pub async fn watch(self) {
        if self.0.path.is_none() {
            return;
        }
        let mut every = tokio::time::interval(POLL_EVERY);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            every.tick().await;
            let flags = self.clone();
            // A blocking read, off the request threads.
            if tokio::task::spawn_blocking(move || flags.look())
                .await
                .is_err()
            {
                tracing::error!("the flag file watcher panicked");
            }
        }
    }

    /// Reads the file; a change that parses replaces the flags (each change
    /// logged), one that does not keeps them and is logged once.
    fn look(&self) {
        let Some(path) = &self.0.path else {
            return;
        };
        let Ok(mut seen) = self.0.seen.lock() else {
            return;
        };
        let read = std::fs::read(path);
        let parsed = match &read {
            Ok(content) if seen.content.as_deref() == Some(content.as_slice()) => return,
            Ok(content) => Definitions::parse(content).and_then(|defs| self.check(defs)),
            Err(err) => Err(format!("cannot read it: {err}")),
        };
        seen.content = read.ok();
        match parsed {
            Ok(definitions) => {
                if seen.problem.take().is_some() {
                    tracing::info!(path = %path.display(), "flag file is valid again");
                }
                let old = self.0.current.swap(Arc::new(definitions));
                self.log_changes(&old);
                self.export(true);
            }
            Err(problem) => {
                if seen.problem.as_ref() != Some(&problem) {
                    tracing::error!(
                        path = %path.display(),
                        problem = %problem,
                        "flag file refused, the last good flags stay"
                    );
                    seen.problem = Some(problem);
                }
                self.export(false);
            }
        }
    }

    /// Refuses a file whose variants do not have the type a program reads.
    fn check(&self, definitions: Definitions) -> Result<Definitions, String> {
        for spec in self.0.specs {
            let Some(flag) = definitions.flags.get(spec.key) else {
                continue;
            };
            if let Some((name, _)) = flag.variants.iter().find(|(_, v)| !spec.default.fits(v)) {
                let wanted = match spec.default {
                    FlagDefault::Bool(_) => "a boolean",
                    FlagDefault::Int(_) => "an integer",
                };
                return Err(format!(
                    "flag `{}`: variant `{name}` must be {wanted}",
                    spec.key
                ));
            }
        }
        Ok(definitions)
    }

    fn log_changes(&self, old: &Definitions) {
        let new = self.0.current.load();
        let keys: std::collections::BTreeSet<&String> =
            old.flags.keys().chain(new.flags.keys()).collect();
        for key in keys {
            let (before, after) = (old.flags.get(key), new.flags.get(key));
            if before == after {
                continue;
            }
            tracing::warn!(
                flag = %key,
                old = %describe(old, key),
                new = %describe(&new, key),
                "flag changed"
            );
        }
    }

    /// Sets the gauges from the flags now.
    fn export(&self, file_ok: bool) {
        let Some(gauges) = &self.0.gauges else {
            return;
        };
        let current = self.0.current.load();
        for (i, spec) in self.0.specs.iter().enumerate() {
            let value = self.value(spec, &EvaluationContext::default()).value;
            let number = match value {
                Value::Bool(b) => f64::from(u8::from(b)),
                other => other.as_f64().unwrap_or(0.0),
            };
            gauges.values[i].set(number);
            let targeted = current
                .flags
                .get(spec.key)
                .is_some_and(|f| f.enabled && f.targeting.is_some());
            gauges.targeted[i].set(f64::from(u8::from(targeted)));
        }
        gauges.file_ok.set(f64::from(u8::from(file_ok)));
    }

    /// `key` for `context`, or `default` when the file does not give a value
    /// of the right type.
    fn resolve(&self, key: &str, context: &EvaluationContext, default: Value) -> Details<Value> {
        let Resolved {
            value,
            variant,
            reason,
        } = self.0.current.load().resolve(key, context);
        match value {
            Some(value) if std::mem::discriminant(&value) == std::mem::discriminant(&default) => {
                Details {
                    value,
                    variant,
                    reason,
                }
            }
            Some(_) => Details {
                value: default,
                variant: None,
                reason: Reason::Error,
            },
            None => Details {
                value: default,
                variant: None,
                reason,
            },
        }
    }

    fn value(&self, spec: &FlagSpec, context: &EvaluationContext) -> Details<Value> {
        self.resolve(spec.key, context, spec.default.as_value())
    }

    /// The boolean flag `key` for `context`, with its variant and reason.
    pub fn get_boolean_details(
        &self,
        key: &str,
        context: &EvaluationContext,
        default: bool,
    ) -> Details<bool> {
        let d = self.resolve(key, context, Value::Bool(default));
        Details {
            value: d.value.as_bool().unwrap_or(default),
            variant: d.variant,
            reason: d.reason,
        }
    }

    /// The boolean flag `key` for `context`; `default` unless the file says.
    pub fn get_boolean_value(&self, key: &str, context: &EvaluationContext, default: bool) -> bool {
        self.get_boolean_details(key, context, default).value
    }

    /// The integer flag `key` for `context`; `default` unless the file says.
    pub fn get_integer_value(&self, key: &str, context: &EvaluationContext, default: i64) -> i64 {
        let d = self.resolve(key, context, Value::from(default));
        d.value.as_i64().unwrap_or(default)
    }

    /// Every flag of the program evaluated with no context, for
    /// `GET /v1/ops/flags`.
    pub fn listing(&self) -> Value {
        let current = self.0.current.load();
        let flags: Vec<Value> = self
            .0
            .specs
            .iter()
            .map(|spec| {
                let details = self.value(spec, &EvaluationContext::default());
                let defined = current.flags.get(spec.key);
                serde_json::json!({
                    "flag": spec.key,
                    "value": details.value,
                    "variant": details.variant,
                    "reason": details.reason.as_str(),
                    "targeting": defined.and_then(|f| f.targeting.clone()),
                    "default": spec.default.as_value(),
                    "about": spec.about,
                })
            })
            .collect();
        let problem = self.0.seen.lock().ok().and_then(|s| s.problem.clone());
        serde_json::json!({
            "file": self.0.path.as_ref().map(|p| p.display().to_string()),
            "file_problem": problem,
            "flags": flags,
        })
    }

    /// Whether the file gives `key` targeting rules now.
    pub fn has_targeting(&self, key: &str) -> bool {
        self.0
            .current
            .load()
            .flags
            .get(key)
            .is_some_and(|f| f.enabled && f.targeting.is_some())
    }
}

/// `key` as a log line shows it: state, default value and targeting.
fn describe(definitions: &Definitions, key: &str) -> String {
    let Some(flag) = definitions.flags.get(key) else {
        return "absent (program default)".to_owned();
    };
    if !flag.enabled {
        return "DISABLED (program default)".to_owned();
    }
    let default = flag
        .default_variant
        .as_ref()
        .and_then(|v| flag.variants.get(v).map(|value| format!("{v}={value}")))
        .unwrap_or_else(|| "no default variant".to_owned());
    match &flag.targeting {
        Some(rule) => format!("{default}, targeting {}", crate::bounded(&rule.to_string())),
        None => default,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    static SPECS: &[FlagSpec] = &[
        FlagSpec {
            key: "orders",
            default: FlagDefault::Bool(true),
            about: "orders",
        },
        FlagSpec {
            key: "rate",
            default: FlagDefault::Int(0),
            about: "rate",
        },
    ];

    fn file(dir: &std::path::Path, text: &str) -> FlagsArgs {
        let path = dir.join("flags.json");
        std::fs::write(&path, text).expect("written");
        FlagsArgs {
            flags_file: Some(path),
        }
    }

    #[test]
    fn without_a_file_every_flag_has_its_default() {
        let flags = Flags::defaults(SPECS);
        let none = EvaluationContext::default();
        assert!(flags.get_boolean_value("orders", &none, true));
        assert_eq!(flags.get_integer_value("rate", &none, 0), 0);
    }

    #[test]
    fn a_bad_file_keeps_the_last_good_flags_and_a_good_one_replaces_them() {
        let dir = std::env::temp_dir().join(format!("flags-unit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let off = r#"{"flags": {"orders": {"state": "ENABLED", "variants": {"on": true, "off": false}, "defaultVariant": "off"}}}"#;
        let args = file(&dir, off);
        let flags = Flags::load(&args, SPECS, None);
        let none = EvaluationContext::default();
        assert!(!flags.get_boolean_value("orders", &none, true));
        file(&dir, "{ not json");
        flags.look();
        assert!(!flags.get_boolean_value("orders", &none, true));
        // The wrong type for a switch is refused too.
        file(&dir, &off.replace("false", "0"));
        flags.look();
        assert!(!flags.get_boolean_value("orders", &none, true));
        std::fs::remove_file(dir.join("flags.json")).expect("removed");
        flags.look();
        assert!(!flags.get_boolean_value("orders", &none, true));
        file(&dir, &off.replace("\"off\"}", "\"on\"}"));
        flags.look();
        assert!(flags.get_boolean_value("orders", &none, true));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_file_refused_at_start_shows_in_the_metrics_until_it_is_fixed() {
        let dir = std::env::temp_dir().join(format!("flags-start-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let args = file(&dir, "{ not json");
        let metrics = crate::Metrics::new(&[]);
        let flags = Flags::load(&args, SPECS, Some(&metrics));
        let ok = |metrics: &crate::Metrics| {
            metrics
                .render()
                .lines()
                .find_map(|l| l.strip_prefix("flags_file_ok "))
                .map(str::to_owned)
        };
        assert_eq!(ok(&metrics).as_deref(), Some("0"), "{}", metrics.render());
        // Unchanged, it is not read again, and the gauge stays.
        flags.look();
        assert_eq!(ok(&metrics).as_deref(), Some("0"));
        file(&dir, r#"{"flags": {}}"#);
        flags.look();
        assert_eq!(ok(&metrics).as_deref(), Some("1"));
        let _ = std::fs::remove_dir_all(&dir);
    }

    fn rollout(percent: u32) -> String {
        serde_json::json!({"flags": {"new-path": {
            "state": "ENABLED", "variants": {"on": true, "off": false}, "defaultVariant": "off",
            "targeting": {"fractional": [["on", percent], ["off", 100 - percent]]}
        }}})
        .to_string()
    }

    #[test]
    fn a_rollout_selects_its_share_of_users_and_widening_it_only_adds_users() {
        static ROLLOUT: &[FlagSpec] = &[FlagSpec {
            key: "new-path",
            default: FlagDefault::Bool(false),
            about: "a release toggle",
        }];
        let dir = std::env::temp_dir().join(format!("flags-rollout-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let flags = Flags::load(&file(&dir, &rollout(10)), ROLLOUT, None);
        let selected = |flags: &Flags| -> Vec<bool> {
            (1..=10_000)
                .map(|user: i64| {
                    let context = EvaluationContext::with_targeting_key(user.to_string());
                    flags.get_boolean_value("new-path", &context, false)
                })
                .collect()
        };
        let at_ten = selected(&flags);
        let share = at_ten.iter().filter(|s| **s).count();
        assert!(
            (850..=1150).contains(&share),
            "10 % rollout selected {share} of 10000"
        );
        // The same users again: sticky.
        assert_eq!(selected(&flags), at_ten);
        file(&dir, &rollout(50));
        flags.look();
        let at_fifty = selected(&flags);
        let share = at_fifty.iter().filter(|s| **s).count();
        assert!(
            (4850..=5150).contains(&share),
            "50 % rollout selected {share}"
        );
        let dropped = at_ten
            .iter()
            .zip(&at_fifty)
            .filter(|(ten, fifty)| **ten && !**fifty)
            .count();
        assert_eq!(dropped, 0, "widening the rollout dropped users");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
