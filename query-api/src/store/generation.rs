//! What a read knows of the live generation: the marker and watermark last
//! parsed (reused while their bytes repeat), and in cluster mode the floor.

use std::sync::Arc;

use arc_swap::ArcSwapOption;
use bytes::Bytes;
use fred::types::Value;
use views::{GenerationMarker, Lsn};

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
#[derive(Default)]
pub(super) struct Parsed {
    marker: ArcSwapOption<(Bytes, Marker)>,
    watermark: ArcSwapOption<(Bytes, Watermark)>,
}

/// What a read needs of a [`GenerationMarker`].
#[derive(Debug, Clone, Copy)]
pub(super) struct Marker {
    pub generation: u64,
    /// A replacement generation is being built.
    pub building: bool,
}

impl Parsed {
    /// The marker in `value` (`None`: no live generation).
    pub fn marker(&self, value: Option<Value>) -> Result<Option<Marker>, Corrupt> {
        let Some(raw) = convert::<Option<Bytes>>(value, "generation marker")? else {
            return Ok(None);
        };
        if let Some(last) = &*self.marker.load() {
            if last.0 == raw {
                return Ok(Some(last.1));
            }
        }
        let parsed: GenerationMarker =
            serde_json::from_slice(&raw).map_err(|err| Corrupt::new("generation marker", err))?;
        let marker = Marker {
            generation: parsed.generation,
            building: parsed.building.is_some(),
        };
        self.marker.store(Some(Arc::new((raw, marker))));
        Ok(Some(marker))
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

    #[test]
    fn a_watermark_is_parsed_once_per_distinct_bytes_and_absent_is_zero() {
        let parsed = Parsed::default();
        assert_eq!(parsed.last_lsn(), None);
        let value = || Some(Value::Bytes(Bytes::from_static(b"0/10")));
        assert_eq!(parsed.watermark(value()).expect("reads").lsn, lsn("0/10"));
        assert_eq!(parsed.watermark(value()).expect("reads").lsn, lsn("0/10"));
        assert_eq!(parsed.last_lsn(), Some(lsn("0/10")));
        assert_eq!(parsed.watermark(None).expect("reads").lsn, Lsn::default());
    }

    #[test]
    fn a_marker_says_its_generation_and_whether_one_is_building() {
        let parsed = Parsed::default();
        assert!(parsed.marker(None).expect("reads").is_none());
        let read = |building| {
            let raw = serde_json::to_vec(&GenerationMarker {
                generation: 4,
                schema: views::VIEW_SCHEMA_VERSION,
                building,
            })
            .expect("json");
            let marker = parsed.marker(Some(Value::Bytes(raw.into())));
            let marker = marker.expect("reads").expect("a marker");
            (marker.generation, marker.building)
        };
        assert_eq!(read(None), (4, false));
        assert_eq!(read(Some(5)), (4, true));
        let garbage = Some(Value::Bytes(Bytes::from_static(b"{")));
        assert!(parsed.marker(garbage).is_err());
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
