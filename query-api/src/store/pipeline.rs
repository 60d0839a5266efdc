//! The commands of a read's pipeline, and its replies as stored values.

use std::collections::HashMap;

use bytes::{Buf, Bytes};
use fred::{
    clients::Pipeline,
    prelude::*,
    types::{Key, Value},
};

use crate::served::Corrupt;

/// One command of a pipeline.
pub(super) enum Op {
    Get(String),
    /// `ZRANGE key start stop [REV]`.
    Range {
        key: String,
        start: i64,
        stop: i64,
        rev: bool,
    },
    /// `ZCARD key`.
    Count(String),
}

impl Op {
    pub fn is_get(&self) -> bool {
        matches!(self, Op::Get(_))
    }

    pub fn into_get_key(self) -> Option<Key> {
        match self {
            Op::Get(key) => Some(key.into()),
            _ => None,
        }
    }
}

pub(super) async fn queue(pipe: &Pipeline<Client>, op: Op) -> Result<(), fred::error::Error> {
    match op {
        Op::Get(key) => pipe.get(key).await,
        Op::Count(key) => pipe.zcard(key).await,
        Op::Range {
            key,
            start,
            stop,
            rev,
        } => pipe.zrange(key, start, stop, None, rev, None, false).await,
    }
}

/// The distinct ids in first-seen order, and for each id asked the index of
/// its distinct id.
pub(super) fn distinct(ids: &[i64]) -> (Vec<i64>, Vec<usize>) {
    let mut index = HashMap::with_capacity(ids.len());
    let mut distinct = Vec::with_capacity(ids.len());
    let slots = ids
        .iter()
        .map(|id| {
            *index.entry(*id).or_insert_with(|| {
                distinct.push(*id);
                distinct.len() - 1
            })
        })
        .collect();
    (distinct, slots)
}

/// The values of the distinct ids put back in the order asked: moved when
/// no id repeats (the common case), shared where one does.
pub(super) fn in_slots(values: Vec<Option<Bytes>>, slots: &[usize]) -> Vec<Option<Bytes>> {
    if values.len() == slots.len() {
        return values;
    }
    slots.iter().map(|&i| values[i].clone()).collect()
}

pub(super) fn convert<T: FromValue>(
    value: Option<Value>,
    what: &'static str,
) -> Result<T, Corrupt> {
    value
        .unwrap_or(Value::Null)
        .convert()
        .map_err(|err| Corrupt::new(what, err))
}

pub(super) fn zcard(value: Value) -> Result<u64, Corrupt> {
    convert(Some(value), "list length")
}

/// Stored view values decoded to their JSON (`None`: no such key).
pub(super) fn views_of(
    values: Vec<Value>,
    what: &'static str,
) -> Result<Vec<Option<Bytes>>, Corrupt> {
    values
        .into_iter()
        .map(|value| {
            let Some(value) = convert::<Option<Bytes>>(Some(value), what)? else {
                return Ok(None);
            };
            let decoded = match views::decode(&value) {
                Ok(std::borrow::Cow::Borrowed(_)) => None,
                Ok(std::borrow::Cow::Owned(json)) => Some(Bytes::from(json)),
                Err(err) => return Err(Corrupt::new(what, err)),
            };
            // Raw JSON: the value itself past its format byte, neither copied
            // nor sliced (a slice is a shared count taken and dropped).
            Ok(Some(decoded.unwrap_or_else(|| {
                let mut json = value;
                json.advance(1);
                json
            })))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repeated_ids_are_read_once_and_put_back_where_asked() {
        let (ids, slots) = distinct(&[7, 3, 7, 9, 3]);
        assert_eq!(ids, vec![7, 3, 9]);
        assert_eq!(slots, vec![0, 1, 0, 2, 1]);
        let values = vec![Some(Bytes::from("a")), None, Some(Bytes::from("c"))];
        let back = in_slots(values, &slots);
        assert_eq!(
            back,
            vec![
                Some("a".into()),
                None,
                Some("a".into()),
                Some("c".into()),
                None
            ]
        );
    }

    #[test]
    fn a_stored_view_is_its_json_and_a_missing_one_is_none() {
        let small = br#"{"id":7}"#.to_vec();
        let large = format!(r#"{{"html":"{}"}}"#, "x".repeat(4096)).into_bytes();
        let stored = |json: &[u8]| Value::Bytes(Bytes::from(views::encode(json)));
        let values =
            views_of(vec![stored(&small), Value::Null, stored(&large)], "view").expect("reads");
        assert_eq!(values, vec![Some(small.into()), None, Some(large.into())]);
    }

    #[test]
    fn a_value_of_an_unknown_format_is_corrupt_not_a_panic() {
        let unknown_format = Value::Bytes(Bytes::from_static(b"\xff{}"));
        let err = views_of(vec![unknown_format], "view").expect_err("corrupt");
        assert_eq!(err.to_string(), "corrupt view in redis");
    }
}
