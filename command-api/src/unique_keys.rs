//! Refuses JSON with a key twice in one object: serde_json keeps the last
//! value silently, so `{"user_id":1,"user_id":2}` would mean whatever the
//! parser happened to keep.

use std::collections::HashSet;
use std::fmt;

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};

/// Whether `body` is JSON whose objects, at every depth, name each key once.
/// `Err` carries the first repeated key, or the parser's message when the
/// body is not JSON at all (the caller's own parse reports that better).
///
/// Hand-written because serde_json has no option for it and a visitor that
/// discards values is a few lines; it walks the body once without building it.
pub(crate) fn check(body: &[u8]) -> Result<(), String> {
    let mut de = serde_json::Deserializer::from_slice(body);
    match UniqueKeys::deserialize(&mut de) {
        Ok(UniqueKeys) => Ok(()),
        Err(err) => Err(err.to_string()),
    }
}

/// Whether the error `check` returned is about a repeated key (else the body
/// is simply not JSON, which the typed parse reports in its own words).
pub(crate) fn is_repeat(message: &str) -> bool {
    message.starts_with(REPEATED)
}

const REPEATED: &str = "the key `";

/// Any JSON value, kept as nothing but the fact that its keys were unique.
struct UniqueKeys;

impl<'de> Deserialize<'de> for UniqueKeys {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(UniqueKeysVisitor)
    }
}

struct UniqueKeysVisitor;

impl<'de> Visitor<'de> for UniqueKeysVisitor {
    type Value = UniqueKeys;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E>(self, _: bool) -> Result<UniqueKeys, E> {
        Ok(UniqueKeys)
    }
    fn visit_i64<E>(self, _: i64) -> Result<UniqueKeys, E> {
        Ok(UniqueKeys)
    }
    fn visit_u64<E>(self, _: u64) -> Result<UniqueKeys, E> {
        Ok(UniqueKeys)
    }
    fn visit_f64<E>(self, _: f64) -> Result<UniqueKeys, E> {
        Ok(UniqueKeys)
    }
    fn visit_str<E>(self, _: &str) -> Result<UniqueKeys, E> {
        Ok(UniqueKeys)
    }
    fn visit_unit<E>(self) -> Result<UniqueKeys, E> {
        Ok(UniqueKeys)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<UniqueKeys, A::Error> {
        while seq.next_element::<UniqueKeys>()?.is_some() {}
        Ok(UniqueKeys)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<UniqueKeys, A::Error> {
        let mut seen = HashSet::new();
        while let Some(key) = map.next_key::<String>()? {
            if !seen.insert(key.clone()) {
                return Err(de::Error::custom(format_args!(
                    "{REPEATED}{key}` appears twice in one object"
                )));
            }
            map.next_value::<UniqueKeys>()?;
        }
        Ok(UniqueKeys)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_repeated_at_any_depth_is_refused_and_distinct_keys_pass() {
        assert!(check(br#"{"a":1,"b":[{"a":1,"b":2}],"c":{"d":null}}"#).is_ok());
        for repeated in [
            r#"{"a":1,"a":2}"#,
            r#"{"a":{"x":1,"x":1}}"#,
            r#"{"a":[{"x":1},{"y":1,"y":2}]}"#,
        ] {
            let err = check(repeated.as_bytes()).expect_err(repeated);
            assert!(is_repeat(&err), "{repeated}: {err}");
        }
        let err = check(b"{\"a\":").expect_err("truncated");
        assert!(!is_repeat(&err), "{err}");
    }
}
