//! flagd's flag-definition format (`{"flags": {...}, "$evaluators": {...}}`)
//! and its evaluation: JsonLogic targeting with flagd's `fractional`, the
//! same buckets a flagd server or in-process provider would pick.

use std::collections::BTreeMap;

use serde_json::{Map, Value};

/// Why a flag resolved to its value, as OpenFeature names the reasons.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// No targeting: the default variant.
    Static,
    /// Targeting chose no variant, or the flag is not in the file: the default.
    Default,
    /// Targeting chose the variant.
    TargetingMatch,
    /// The flag's `state` is `DISABLED`: the program's default.
    Disabled,
    /// The targeting or the value's type was wrong: the program's default.
    Error,
}

impl Reason {
    /// The OpenFeature name (`STATIC`, `TARGETING_MATCH`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Static => "STATIC",
            Reason::Default => "DEFAULT",
            Reason::TargetingMatch => "TARGETING_MATCH",
            Reason::Disabled => "DISABLED",
            Reason::Error => "ERROR",
        }
    }
}

/// What targeting sees besides the flag: `targetingKey` and attributes.
#[derive(Debug, Clone, Default)]
pub struct EvaluationContext {
    pub targeting_key: Option<String>,
    pub attributes: Map<String, Value>,
}

impl EvaluationContext {
    /// A context whose targeting key is `key` (a user id, for rollouts).
    pub fn with_targeting_key(key: impl Into<String>) -> Self {
        Self {
            targeting_key: Some(key.into()),
            attributes: Map::new(),
        }
    }

    /// Adds the attribute `name`.
    pub fn with(mut self, name: &str, value: impl Into<Value>) -> Self {
        self.attributes.insert(name.to_owned(), value.into());
        self
    }
}

/// One flag as the file defines it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Flag {
    pub(crate) enabled: bool,
    pub(crate) variants: BTreeMap<String, Value>,
    pub(crate) default_variant: Option<String>,
    /// With every `$ref` replaced by its evaluator.
    pub(crate) targeting: Option<Value>,
}

/// A parsed flag file.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Definitions {
    pub(crate) flags: BTreeMap<String, Flag>,
}

/// A flag's value resolved, with the variant and the reason.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Resolved {
    pub(crate) value: Option<Value>,
    pub(crate) variant: Option<String>,
    pub(crate) reason: Reason,
}

impl Definitions {
    /// Parses and checks a flag file: every flag's state, variants and
    /// default variant, and every `$ref` names an evaluator.
    pub(crate) fn parse(text: &[u8]) -> Result<Self, String> {
        let root: Value = serde_json::from_slice(text).map_err(|err| format!("not JSON: {err}"))?;
        let root = root.as_object().ok_or("the file is not a JSON object")?;
        let evaluators = match root.get("$evaluators") {
            None => Map::new(),
            Some(Value::Object(map)) => map.clone(),
            Some(_) => return Err("`$evaluators` is not an object".to_owned()),
        };
        let flags = root
            .get("flags")
            .and_then(Value::as_object)
            .ok_or("no `flags` object")?;
        let mut parsed = BTreeMap::new();
        for (key, flag) in flags {
            let flag =
                parse_flag(flag, &evaluators).map_err(|err| format!("flag `{key}`: {err}"))?;
            parsed.insert(key.clone(), flag);
        }
        Ok(Self { flags: parsed })
    }

    /// Resolves `key` for `context`; `value` is `None` when the program's
    /// default applies (not in the file, disabled, or a targeting error).
    pub(crate) fn resolve(&self, key: &str, context: &EvaluationContext) -> Resolved {
        let fallback = |reason| Resolved {
            value: None,
            variant: None,
            reason,
        };
        let Some(flag) = self.flags.get(key) else {
            return fallback(Reason::Default);
        };
        if !flag.enabled {
            return fallback(Reason::Disabled);
        }
        let by_default = |reason| match &flag.default_variant {
            Some(variant) => Resolved {
                value: flag.variants.get(variant).cloned(),
                variant: Some(variant.clone()),
                reason,
            },
            None => fallback(Reason::Default),
        };
        let Some(targeting) = &flag.targeting else {
            return by_default(Reason::Static);
        };
        let data = context_data(key, context);
        let chosen = match evaluate(targeting, &data) {
            Ok(Value::String(variant)) => Some(variant),
            Ok(Value::Bool(b)) => Some(b.to_string()),
            Ok(Value::Null) => None,
            Ok(_) | Err(_) => return fallback(Reason::Error),
        };
        match chosen {
            None => by_default(Reason::Default),
            Some(variant) => match flag.variants.get(&variant) {
                Some(value) => Resolved {
                    value: Some(value.clone()),
                    variant: Some(variant),
                    reason: Reason::TargetingMatch,
                },
                None => fallback(Reason::Error),
            },
        }
    }
}

fn parse_flag(flag: &Value, evaluators: &Map<String, Value>) -> Result<Flag, String> {
    let flag = flag.as_object().ok_or("not an object")?;
    let enabled = match flag.get("state").and_then(Value::as_str) {
        Some("ENABLED") => true,
        Some("DISABLED") => false,
        _ => return Err("`state` must be \"ENABLED\" or \"DISABLED\"".to_owned()),
    };
    let variants: BTreeMap<String, Value> = flag
        .get("variants")
        .and_then(Value::as_object)
        .filter(|v| !v.is_empty())
        .ok_or("`variants` must be a non-empty object")?
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let default_variant = match flag.get("defaultVariant") {
        None | Some(Value::Null) => None,
        Some(Value::String(name)) if variants.contains_key(name) => Some(name.clone()),
        Some(other) => {
            return Err(format!(
                "`defaultVariant` {other} is not one of the variants"
            ))
        }
    };
    let targeting = match flag.get("targeting") {
        None | Some(Value::Null) => None,
        Some(Value::Object(rule)) if rule.is_empty() => None,
        Some(rule @ Value::Object(_)) => Some(resolve_refs(rule, evaluators, 0)?),
        Some(_) => return Err("`targeting` must be an object".to_owned()),
    };
    Ok(Flag {
        enabled,
        variants,
        default_variant,
        targeting,
    })
}

/// Replaces every `{"$ref": name}` by its evaluator (nested up to a depth,
/// so a cycle is an error, not a hang).
fn resolve_refs(rule: &Value, evaluators: &Map<String, Value>, depth: u8) -> Result<Value, String> {
    if depth > 16 {
        return Err("`$ref`s nest too deep (a cycle?)".to_owned());
    }
    match rule {
        Value::Object(map) => {
            if let Some(name) = map.get("$ref") {
                let name = name.as_str().ok_or("`$ref` must name an evaluator")?;
                let evaluator = evaluators
                    .get(name)
                    .ok_or_else(|| format!("`$ref` to unknown evaluator `{name}`"))?;
                return resolve_refs(evaluator, evaluators, depth + 1);
            }
            map.iter()
                .map(|(k, v)| Ok((k.clone(), resolve_refs(v, evaluators, depth)?)))
                .collect::<Result<Map<_, _>, String>>()
                .map(Value::Object)
        }
        Value::Array(items) => items
            .iter()
            .map(|v| resolve_refs(v, evaluators, depth))
            .collect::<Result<Vec<_>, _>>()
            .map(Value::Array),
        other => Ok(other.clone()),
    }
}

/// The data targeting reads: the attributes, `targetingKey`, and flagd's
/// `$flagd.flagKey` and `$flagd.timestamp`.
fn context_data(key: &str, context: &EvaluationContext) -> Value {
    let mut data = context.attributes.clone();
    if let Some(targeting_key) = &context.targeting_key {
        data.insert(
            "targetingKey".to_owned(),
            Value::from(targeting_key.clone()),
        );
    }
    let timestamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    data.insert(
        "$flagd".to_owned(),
        serde_json::json!({ "flagKey": key, "timestamp": timestamp }),
    );
    Value::Object(data)
}

/// A targeting rule the evaluator cannot apply.
#[derive(Debug)]
struct Unsupported;

/// Applies a JsonLogic rule to `data`: the operations flag rules use
/// (`var`, `if`, comparisons, `and`/`or`/`!`, `in`, `cat`, `starts_with`,
/// `ends_with`) and flagd's `fractional`.
fn evaluate(rule: &Value, data: &Value) -> Result<Value, Unsupported> {
    let Value::Object(map) = rule else {
        return match rule {
            Value::Array(items) => items
                .iter()
                .map(|item| evaluate(item, data))
                .collect::<Result<Vec<_>, _>>()
                .map(Value::Array),
            other => Ok(other.clone()),
        };
    };
    let mut ops = map.iter();
    let (Some((op, args)), None) = (ops.next(), ops.next()) else {
        return Err(Unsupported);
    };
    let raw: Vec<Value> = match args {
        Value::Array(items) => items.clone(),
        single => vec![single.clone()],
    };
    let arg = |i: usize| -> Result<Value, Unsupported> {
        raw.get(i).map_or(Ok(Value::Null), |a| evaluate(a, data))
    };
    Ok(match op.as_str() {
        "var" => {
            let path = arg(0)?;
            let found = match &path {
                Value::String(p) if p.is_empty() => Some(data.clone()),
                Value::String(p) => lookup(data, p),
                Value::Number(n) => lookup(data, &n.to_string()),
                _ => None,
            };
            match found {
                Some(Value::Null) | None => arg(1)?,
                Some(value) => value,
            }
        }
        "if" | "?:" => {
            let mut i = 0;
            loop {
                if i + 1 >= raw.len() {
                    break arg(i)?;
                }
                if truthy(&arg(i)?) {
                    break arg(i + 1)?;
                }
                i += 2;
            }
        }
        "==" => Value::Bool(loose_eq(&arg(0)?, &arg(1)?)),
        "!=" => Value::Bool(!loose_eq(&arg(0)?, &arg(1)?)),
        "===" => Value::Bool(arg(0)? == arg(1)?),
        "!==" => Value::Bool(arg(0)? != arg(1)?),
        "!" => Value::Bool(!truthy(&arg(0)?)),
        "!!" => Value::Bool(truthy(&arg(0)?)),
        "and" => {
            let mut last = Value::Bool(true);
            for i in 0..raw.len() {
                last = arg(i)?;
                if !truthy(&last) {
                    break;
                }
            }
            last
        }
        "or" => {
            let mut last = Value::Bool(false);
            for i in 0..raw.len() {
                last = arg(i)?;
                if truthy(&last) {
                    break;
                }
            }
            last
        }
        "<" | "<=" | ">" | ">=" => {
            let values = (0..raw.len()).map(arg).collect::<Result<Vec<_>, _>>()?;
            let numbers: Option<Vec<f64>> = values.iter().map(number).collect();
            let Some(numbers) = numbers.filter(|n| n.len() >= 2) else {
                return Ok(Value::Bool(false));
            };
            let holds = |a: f64, b: f64| match op.as_str() {
                "<" => a < b,
                "<=" => a <= b,
                ">" => a > b,
                _ => a >= b,
            };
            Value::Bool(numbers.windows(2).all(|w| holds(w[0], w[1])))
        }
        "in" => {
            let (needle, haystack) = (arg(0)?, arg(1)?);
            Value::Bool(match (&needle, &haystack) {
                (_, Value::Array(items)) => items.iter().any(|item| loose_eq(item, &needle)),
                (Value::String(n), Value::String(h)) => h.contains(n.as_str()),
                _ => false,
            })
        }
        "cat" => {
            let mut joined = String::new();
            for i in 0..raw.len() {
                joined.push_str(&text(&arg(i)?));
            }
            Value::String(joined)
        }
        "starts_with" | "ends_with" => {
            let (subject, affix) = (arg(0)?, arg(1)?);
            let (Value::String(subject), Value::String(affix)) = (subject, affix) else {
                return Ok(Value::Bool(false));
            };
            Value::Bool(if op == "starts_with" {
                subject.starts_with(&affix)
            } else {
                subject.ends_with(&affix)
            })
        }
        "fractional" => fractional(&raw, data)?,
        _ => return Err(Unsupported),
    })
}

/// flagd's `fractional`: `[bucketBy?, [variant, weight]...]`. Without a
/// `bucketBy` expression the key is `$flagd.flagKey` followed by
/// `targetingKey`. Weights are whole numbers (1 when left out); the key's
/// murmur3 (32-bit, seed 0) times the weights' total, shifted right by 32,
/// falls in the first variant whose running total of weights passes it, as
/// flagd's evaluator computes it. With the total kept, raising the first
/// variant's weight only adds keys to it.
fn fractional(raw: &[Value], data: &Value) -> Result<Value, Unsupported> {
    let (bucket_by, buckets) = match raw.first() {
        Some(Value::Array(_)) | None => {
            let flag_key = lookup(data, "$flagd.flagKey").map(|v| text(&v));
            let Some(targeting_key) = lookup(data, "targetingKey") else {
                // No key to hash: no variant, so the default applies.
                return Ok(Value::Null);
            };
            (
                format!("{}{}", flag_key.unwrap_or_default(), text(&targeting_key)),
                raw,
            )
        }
        Some(expression) => (text(&evaluate(expression, data)?), &raw[1..]),
    };
    let mut weighted = Vec::with_capacity(buckets.len());
    for bucket in buckets {
        let Value::Array(pair) = evaluate(bucket, data)? else {
            return Err(Unsupported);
        };
        let variant = match pair.first() {
            Some(Value::String(name)) => name.clone(),
            Some(Value::Bool(b)) => b.to_string(),
            _ => return Err(Unsupported),
        };
        let weight = match pair.get(1) {
            None => 1,
            Some(w) => w
                .as_u64()
                .filter(|w| *w <= i32::MAX as u64)
                .ok_or(Unsupported)?,
        };
        weighted.push((variant, weight));
    }
    let total: u64 = weighted.iter().map(|(_, w)| w).sum();
    if total == 0 || total > i32::MAX as u64 {
        return Ok(Value::Null);
    }
    let bucket = bucket_of(&bucket_by, total);
    let mut end = 0;
    for (variant, weight) in weighted {
        end += weight;
        if bucket < end {
            return Ok(Value::String(variant));
        }
    }
    Ok(Value::Null)
}

/// Where `key` falls in `[0, total)`, as flagd computes it.
pub(crate) fn bucket_of(key: &str, total: u64) -> u64 {
    (u64::from(murmur3_32(key.as_bytes(), 0)) * total) >> 32
}

/// MurmurHash3, x86 32-bit variant.
pub(crate) fn murmur3_32(bytes: &[u8], seed: u32) -> u32 {
    const C1: u32 = 0xcc9e_2d51;
    const C2: u32 = 0x1b87_3593;
    let mix = |mut k: u32| {
        k = k.wrapping_mul(C1);
        k = k.rotate_left(15);
        k.wrapping_mul(C2)
    };
    let mut h = seed;
    let mut blocks = bytes.chunks_exact(4);
    for block in &mut blocks {
        let k = u32::from_le_bytes([block[0], block[1], block[2], block[3]]);
        h ^= mix(k);
        h = h.rotate_left(13);
        h = h.wrapping_mul(5).wrapping_add(0xe654_6b64);
    }
    let tail = blocks.remainder();
    if !tail.is_empty() {
        let mut k = 0u32;
        for (i, byte) in tail.iter().enumerate() {
            k |= u32::from(*byte) << (8 * i);
        }
        h ^= mix(k);
    }
    h ^= bytes.len() as u32;
    h ^= h >> 16;
    h = h.wrapping_mul(0x85eb_ca6b);
    h ^= h >> 13;
    h = h.wrapping_mul(0xc2b2_ae35);
    h ^ (h >> 16)
}

/// `a.b.c` in `data`.
fn lookup(data: &Value, path: &str) -> Option<Value> {
    let mut at = data;
    for part in path.split('.') {
        at = match at {
            Value::Object(map) => map.get(part)?,
            Value::Array(items) => items.get(part.parse::<usize>().ok()?)?,
            _ => return None,
        };
    }
    Some(at.clone())
}

fn truthy(value: &Value) -> bool {
    match value {
        Value::Null => false,
        Value::Bool(b) => *b,
        Value::Number(n) => n.as_f64().is_some_and(|n| n != 0.0),
        Value::String(s) => !s.is_empty(),
        Value::Array(items) => !items.is_empty(),
        Value::Object(_) => true,
    }
}

fn number(value: &Value) -> Option<f64> {
    match value {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

fn text(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

/// JsonLogic's `==`: numbers and numeric strings compare as numbers.
fn loose_eq(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(_), Value::String(_)) | (Value::String(_), Value::Number(_)) => {
            number(a).is_some() && number(a) == number(b)
        }
        (Value::Number(x), Value::Number(y)) => x.as_f64() == y.as_f64(),
        _ => a == b,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn definitions(flags: Value) -> Definitions {
        Definitions::parse(json!({ "flags": flags }).to_string().as_bytes()).expect("parses")
    }

    #[test]
    fn murmur3_matches_the_reference_vectors() {
        assert_eq!(murmur3_32(b"", 0), 0);
        assert_eq!(murmur3_32(b"", 1), 0x514e_28b7);
        assert_eq!(murmur3_32(b"hello", 0), 0x248b_fa47);
        assert_eq!(murmur3_32(b"hello, world", 0), 0x149b_bb7f);
        assert_eq!(
            murmur3_32(b"The quick brown fox jumps over the lazy dog", 0),
            0x2e4f_f723
        );
    }

    #[test]
    fn a_flag_without_targeting_is_its_default_variant() {
        let defs = definitions(json!({
            "f": {"state": "ENABLED", "variants": {"on": true, "off": false}, "defaultVariant": "off"}
        }));
        let got = defs.resolve("f", &EvaluationContext::default());
        assert_eq!(
            (got.value, got.reason),
            (Some(json!(false)), Reason::Static)
        );
        assert_eq!(defs.resolve("g", &EvaluationContext::default()).value, None);
    }

    #[test]
    fn a_disabled_flag_leaves_the_program_default() {
        let defs = definitions(json!({
            "f": {"state": "DISABLED", "variants": {"off": false}, "defaultVariant": "off"}
        }));
        let got = defs.resolve("f", &EvaluationContext::default());
        assert_eq!((got.value, got.reason), (None, Reason::Disabled));
    }

    #[test]
    fn targeting_reads_the_context_and_falls_back_to_the_default_variant() {
        let defs = definitions(json!({
            "f": {"state": "ENABLED", "variants": {"on": true, "off": false}, "defaultVariant": "on",
                  "targeting": {"if": [{"in": [{"var": "eventId"}, [7, 9]]}, "off", null]}}
        }));
        let on = |id: i64| {
            defs.resolve("f", &EvaluationContext::default().with("eventId", id))
                .value
        };
        assert_eq!(on(7), Some(json!(false)));
        assert_eq!(on(8), Some(json!(true)));
    }

    #[test]
    fn refs_are_replaced_by_their_evaluators_and_unknown_ones_refused() {
        let text = json!({
            "$evaluators": {"paused": {"in": [{"var": "eventId"}, [3]]}},
            "flags": {"f": {"state": "ENABLED", "variants": {"on": true, "off": false},
                "defaultVariant": "on", "targeting": {"if": [{"$ref": "paused"}, "off"]}}}
        });
        let defs = Definitions::parse(text.to_string().as_bytes()).expect("parses");
        let got = defs.resolve("f", &EvaluationContext::default().with("eventId", 3));
        assert_eq!(got.value, Some(json!(false)));
        let broken = text.to_string().replace("\"paused\"}", "\"nope\"}");
        assert!(Definitions::parse(broken.as_bytes()).is_err());
    }

    #[test]
    fn malformed_files_are_refused_with_a_reason() {
        for bad in [
            "{",
            "[]",
            r#"{"flags": {"f": {"state": "ON", "variants": {"a": 1}}}}"#,
            r#"{"flags": {"f": {"state": "ENABLED", "variants": {}}}}"#,
            r#"{"flags": {"f": {"state": "ENABLED", "variants": {"a": 1}, "defaultVariant": "b"}}}"#,
        ] {
            assert!(Definitions::parse(bad.as_bytes()).is_err(), "{bad}");
        }
    }

    #[test]
    fn fractional_buckets_by_flag_key_and_targeting_key() {
        // The same key in the same bucket, whatever flag names it: the
        // bucket is of `flagKey + targetingKey`.
        assert!(bucket_of("rolloutuser-1", 100) < 100);
        let defs = definitions(json!({
            "r": {"state": "ENABLED", "variants": {"new": true, "old": false}, "defaultVariant": "old",
                  "targeting": {"fractional": [["new", 30], ["old", 70]]}}
        }));
        for user in ["1", "2", "42", "7000"] {
            let got = defs.resolve("r", &EvaluationContext::with_targeting_key(user));
            let expected = bucket_of(&format!("r{user}"), 100) < 30;
            assert_eq!(got.value, Some(json!(expected)), "{user}");
            assert_eq!(got.reason, Reason::TargetingMatch);
        }
        // No targeting key: nothing to hash, the default variant.
        let got = defs.resolve("r", &EvaluationContext::default());
        assert_eq!(
            (got.value, got.reason),
            (Some(json!(false)), Reason::Default)
        );
    }

    /// The buckets flagd's own evaluator tests expect, so a fleet moving to
    /// flagd keeps every user's variant.
    #[test]
    fn fractional_picks_the_variants_flagds_tests_expect() {
        let colors = |by: Option<Value>| {
            let mut split = vec![
                json!(["red", 25]),
                json!(["blue", 25]),
                json!(["green", 25]),
                json!(["yellow", 25]),
            ];
            if let Some(by) = by {
                split.insert(0, by);
            }
            let flag = json!({"state": "ENABLED", "defaultVariant": "red",
                "variants": {"red": "#FF0000", "blue": "#0000FF", "green": "#00FF00", "yellow": "#FFFF00"},
                "targeting": {"fractional": split}});
            definitions(json!({ "headerColor": flag, "footerColor": flag }))
        };
        let by_email = colors(Some(
            json!({"cat": [{"var": "$flagd.flagKey"}, {"var": "email"}]}),
        ));
        let by_targeting_key = colors(None);
        for (flag, email, expected) in [
            ("headerColor", "rachel@faas.com", "blue"),
            ("headerColor", "monica@faas.com", "yellow"),
            ("headerColor", "joey@faas.com", "red"),
            ("headerColor", "ross@faas.com", "blue"),
            ("footerColor", "ross@faas.com", "yellow"),
        ] {
            let context = EvaluationContext::with_targeting_key(email).with("email", email);
            for defs in [&by_email, &by_targeting_key] {
                let got = defs.resolve(flag, &context).variant.unwrap_or_default();
                assert_eq!(got, expected, "{flag} {email}");
            }
        }
    }

    #[test]
    fn fractional_weights_are_whole_numbers() {
        let defs = definitions(json!({
            "r": {"state": "ENABLED", "variants": {"on": true, "off": false}, "defaultVariant": "off",
                  "targeting": {"fractional": [["on", 0.5], ["off", 99.5]]}}
        }));
        let got = defs.resolve("r", &EvaluationContext::with_targeting_key("1"));
        assert_eq!((got.value, got.reason), (None, Reason::Error));
    }
}
