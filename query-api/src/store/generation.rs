//! What a read knows of the live generation: the marker and watermark last
//! parsed (reused while their bytes repeat), and in cluster mode the floor.
//! A read follows only the generation of its own view schema (see
//! [`views::GenerationMarker`]).

use std::sync::Arc;

use arc_swap::ArcSwapOption;
use bytes::Bytes;
use fred::types::Value;
use views::{GenerationMarker, Lsn, Readable};

use super::pipeline::convert;
use crate::{headers::Watermark, served::Corrupt};

/// A watermark known to be applied before any read sent after it was seen.
#[derive(Debug)]
pub(super) struct Floor {
    pub generation: u64,
    pub watermark: Watermark,
}

/// The marker and watermark last read, with their parse: every read gets
/// both back and they change only when the projector flushes, so the same
/// bytes skip the marker's JSON parse and the LSN's parse and formatting.
pub(super) struct Parsed {
    /// The view schema version this query API serves.
    schema: u32,
    marker: ArcSwapOption<(Bytes, Option<Readable>)>,
    watermark: ArcSwapOption<(Bytes, Watermark)>,
}

impl Parsed {
    /// Nothing parsed yet, for readers of view schema `schema`.
    pub fn new(schema: u32) -> Self {
        Self {
            schema,
            marker: ArcSwapOption::empty(),
            watermark: ArcSwapOption::empty(),
        }
    }

    /// The view schema version read.
    pub fn schema(&self) -> u32 {
        self.schema
    }

    /// The generation of this reader's schema the marker in `value` names
    /// (`None`: no marker, or none of this schema: nothing may be served).
    pub fn marker(&self, value: Option<Value>) -> Result<Option<Readable>, Corrupt> {
        let Some(raw) = convert::<Option<Bytes>>(value, "generation marker")? else {
            return Ok(None);
        };
        if let Some(last) = &*self.marker.load() {
            if last.0 == raw {
                return Ok(last.1);
            }
        }
        let parsed: GenerationMarker =
            serde_json::from_slice(&raw).map_err(|err| Corrupt::new("generation marker", err))?;
        let readable = parsed.readable(self.schema);
        self.marker.store(Some(Arc::new((raw, readable))));
        Ok(readable)
    }

    /// The watermark in `value` (absent or unreadable: 0/0, as before a
    /// generation's first flush).
    pub fn watermark(&self, value: Option<Value>) -> Result<Watermark, Corrupt> {
        let Some(raw) = convert::<Option<Bytes>>(value, "watermark")? else {
            return Ok(Watermark::default());
        };
        if let Some(last) = &*self.watermark.load() {
            if last.0 == raw {
                return Ok(last.1.clone());
            }
        }
        let lsn: Lsn = std::str::from_utf8(&raw)
            .ok()
            .and_then(|w| w.parse().ok())
            .unwrap_or_default();
        let watermark = Watermark::new(lsn);
        self.watermark
            .store(Some(Arc::new((raw, watermark.clone()))));
        Ok(watermark)
    }

    /// The LSN of the watermark last parsed, of whichever generation.
    pub fn last_lsn(&self) -> Option<Lsn> {
        self.watermark.load().as_ref().map(|w| w.1.lsn)
    }
}

/// The floor after a completed read of `generation`'s watermark: the
/// freshest seen of the newest generation (generations only grow).
pub(super) fn raise(
    floor: &ArcSwapOption<Floor>,
    generation: u64,
    watermark: Watermark,
) -> Arc<Floor> {
    let lsn = watermark.lsn;
    let seen = Arc::new(Floor {
        generation,
        watermark,
    });
    let previous = floor.rcu(|current| match current {
        Some(f) if (f.generation, f.watermark.lsn) >= (generation, lsn) => Some(f.clone()),
        _ => Some(seen.clone()),
    });
    match previous {
        Some(f) if f.generation == generation && f.watermark.lsn > lsn => f,
        _ => seen,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lsn(text: &str) -> Lsn {
        text.parse().expect("an lsn")
    }

    const V: u32 = views::VIEW_SCHEMA_VERSION;

    fn bytes(marker: &GenerationMarker) -> Option<Value> {
        Some(Value::Bytes(
            serde_json::to_vec(marker).expect("json").into(),
        ))
    }

    #[test]
    fn a_watermark_is_parsed_once_per_distinct_bytes_and_absent_is_zero() {
        let parsed = Parsed::new(V);
        assert_eq!(parsed.last_lsn(), None);
        let value = || Some(Value::Bytes(Bytes::from_static(b"0/10")));
        assert_eq!(parsed.watermark(value()).expect("reads").lsn, lsn("0/10"));
        assert_eq!(parsed.watermark(value()).expect("reads").lsn, lsn("0/10"));
        assert_eq!(parsed.last_lsn(), Some(lsn("0/10")));
        assert_eq!(parsed.watermark(None).expect("reads").lsn, Lsn::default());
    }

    #[test]
    fn a_marker_says_its_generation_and_whether_one_is_building() {
        let parsed = Parsed::new(V);
        assert!(parsed.marker(None).expect("reads").is_none());
        let read = |building| {
            let marker = GenerationMarker {
                building,
                ..GenerationMarker::switched(None, 4, V, 0)
            };
            let marker = parsed.marker(bytes(&marker));
            let marker = marker.expect("reads").expect("a marker");
            (marker.generation, marker.stale)
        };
        assert_eq!(read(None), (4, false));
        assert_eq!(read(Some(5)), (4, true));
        let garbage = Some(Value::Bytes(Bytes::from_static(b"{")));
        assert!(parsed.marker(garbage).is_err());
    }

    #[test]
    fn a_reader_follows_only_its_own_schema_through_an_upgrade() {
        let (old, new) = (Parsed::new(V), Parsed::new(V + 1));
        let before = GenerationMarker::switched(None, 4, V, 0);
        let read = |parsed: &Parsed, marker: &GenerationMarker| {
            let found = parsed.marker(bytes(marker)).expect("reads");
            found.map(|r| (r.generation, r.stale))
        };
        assert_eq!(read(&old, &before), Some((4, false)));
        assert_eq!(read(&new, &before), None, "nothing of its schema yet");
        let building = GenerationMarker {
            building: Some(5),
            ..before.clone()
        };
        assert_eq!(read(&old, &building), Some((4, true)));
        assert_eq!(read(&new, &building), None);
        let after = GenerationMarker::switched(Some(&before), 5, V + 1, 10);
        assert_eq!(read(&old, &after), Some((4, true)), "never 5");
        assert_eq!(read(&new, &after), Some((5, false)));
        let retired = after.retired(u64::MAX, 0).expect("retires");
        assert_eq!(read(&old, &retired), None, "then rebuilding, never 5");
        assert_eq!(read(&new, &retired), Some((5, false)));
        let previous_release = Some(Value::Bytes(Bytes::from_static(
            br#"{"generation":9,"schema":3}"#,
        )));
        let (three, four) = (Parsed::new(3), Parsed::new(4));
        let three = three.marker(previous_release.clone()).expect("reads");
        assert_eq!(three.map(|r| r.generation), Some(9));
        assert_eq!(four.marker(previous_release).expect("reads"), None);
    }

    #[test]
    fn the_floor_keeps_the_freshest_watermark_of_the_newest_generation() {
        let floor = ArcSwapOption::empty();
        let at = |g, l| raise(&floor, g, Watermark::new(lsn(l))).watermark.lsn;
        assert_eq!(at(1, "0/20"), lsn("0/20"));
        assert_eq!(
            at(1, "0/10"),
            lsn("0/20"),
            "an older read of the same generation"
        );
        assert_eq!(at(2, "0/5"), lsn("0/5"), "a newer generation starts over");
        at(1, "0/30");
        let kept = floor.load_full().expect("a floor");
        assert_eq!((kept.generation, kept.watermark.lsn), (2, lsn("0/5")));
    }
}
