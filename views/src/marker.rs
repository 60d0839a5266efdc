//! The generation marker: which generation the readers of each view schema
//! read. The projector rewrites it whole (one `SET`) at every switch, so
//! readers never see half a switch; each reader picks its own schema's entry.
//!
//! A rolling upgrade that changes a view's shape runs two releases side by
//! side for a while: the new projector builds its schema's generation beside
//! the old one, and the old query APIs keep reading the old generation
//! (stale: nobody streams into it any more, but it has the shape they were
//! built for) until a grace after the switch. A reader never reads another
//! schema's generation.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

/// The value of the generation marker (`{P}:meta:generation`).
///
/// `generation` and `schema` name the newest live generation, the one the
/// projector streams into. `live` names, per view schema version, the
/// generation the readers of that version read: the newest one and, for a
/// grace after a schema change, the previous schema's. A marker written
/// before `live` existed holds only `generation` and `schema`, which
/// [`GenerationMarker::readable`] reads as its one entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GenerationMarker {
    /// The newest live generation.
    pub generation: u64,
    /// [`crate::VIEW_SCHEMA_VERSION`] of the views in it.
    pub schema: u32,
    /// A rebuild in progress into this generation, if any (readers keep
    /// serving theirs, marked stale).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub building: Option<u64>,
    /// Per view schema version, the generation its readers read.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub live: BTreeMap<u32, u64>,
    /// When `schema` went live, in ms since the Unix epoch: the other
    /// schemas' entries are retired a grace after it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schema_since_ms: Option<u64>,
}

/// What a reader of one view schema may read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Readable {
    pub generation: u64,
    /// It is not kept current: a replacement is being built, or a newer
    /// schema's generation went live and nothing streams into this one.
    pub stale: bool,
}

impl GenerationMarker {
    /// The generation a reader built for view schema `schema` reads, or
    /// `None` when no generation of that schema is live (it answers
    /// `rebuilding`).
    pub fn readable(&self, schema: u32) -> Option<Readable> {
        if self.schema == schema {
            return Some(Readable {
                generation: self.generation,
                stale: self.building.is_some(),
            });
        }
        self.live.get(&schema).map(|&generation| Readable {
            generation,
            stale: true,
        })
    }

    /// Every generation a reader may read now: a clean-up keeps these.
    pub fn readable_generations(&self) -> BTreeSet<u64> {
        let mut all: BTreeSet<u64> = self.live.values().copied().collect();
        all.insert(self.generation);
        all
    }

    /// The marker once `generation`, of view schema `schema`, went live at
    /// `now_ms` in place of `previous`. A schema change keeps the previous
    /// schema's generation readable (and starts its grace); a rebuild of the
    /// same schema keeps whatever older schema is still in its grace. At most
    /// one other schema stays: the one live just before.
    pub fn switched(previous: Option<&Self>, generation: u64, schema: u32, now_ms: u64) -> Self {
        let mut live = BTreeMap::new();
        let mut since = now_ms;
        match previous {
            Some(p) if p.schema != schema => {
                live.insert(p.schema, p.generation);
            }
            Some(p) => {
                live.extend(p.live.iter().filter(|(s, _)| **s != schema));
                since = p.schema_since_ms.unwrap_or(now_ms);
            }
            None => {}
        }
        live.insert(schema, generation);
        GenerationMarker {
            generation,
            schema,
            building: None,
            live,
            schema_since_ms: Some(since),
        }
    }

    /// This marker without the other schemas' generations, once `grace_ms`
    /// has passed since `schema` went live; `None` while there is nothing to
    /// retire yet.
    pub fn retired(&self, now_ms: u64, grace_ms: u64) -> Option<Self> {
        if self.live.keys().all(|s| *s == self.schema) {
            return None;
        }
        let since = self.schema_since_ms.unwrap_or(0);
        if now_ms < since.saturating_add(grace_ms) {
            return None;
        }
        let mut kept = self.clone();
        kept.live.retain(|s, _| *s == self.schema);
        Some(kept)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const V: u32 = 3;

    fn first(generation: u64) -> GenerationMarker {
        GenerationMarker::switched(None, generation, V, 1_000)
    }

    #[test]
    fn a_reader_reads_only_the_generation_of_its_own_schema() {
        let m = GenerationMarker::switched(Some(&first(10)), 20, V + 1, 5_000);
        assert_eq!(
            m.readable(V + 1),
            Some(Readable {
                generation: 20,
                stale: false
            })
        );
        assert_eq!(
            m.readable(V),
            Some(Readable {
                generation: 10,
                stale: true
            }),
            "the previous schema's generation, stale"
        );
        assert_eq!(m.readable(V + 2), None, "a newer reader finds nothing");
        assert_eq!(m.readable(V - 1), None);
        assert_eq!(m.readable_generations(), BTreeSet::from([10, 20]));
    }

    #[test]
    fn a_marker_of_the_previous_release_reads_as_its_one_generation() {
        let old: GenerationMarker =
            serde_json::from_str(r#"{"generation":7,"schema":3}"#).expect("parses");
        assert_eq!(
            old.readable(3),
            Some(Readable {
                generation: 7,
                stale: false
            })
        );
        assert_eq!(old.readable(4), None, "no entry for a newer schema");
        let building: GenerationMarker =
            serde_json::from_str(r#"{"generation":7,"schema":3,"building":8}"#).expect("parses");
        assert_eq!(building.readable(3).map(|r| r.stale), Some(true));
        assert_eq!(building.readable(4), None);
    }

    #[test]
    fn a_build_of_a_new_schema_marks_the_old_generation_stale_and_offers_nothing_new() {
        let building = GenerationMarker {
            building: Some(20),
            ..first(10)
        };
        assert_eq!(
            building.readable(V).map(|r| (r.generation, r.stale)),
            Some((10, true))
        );
        assert_eq!(building.readable(V + 1), None);
    }

    #[test]
    fn the_previous_schema_is_retired_only_after_the_grace() {
        let m = GenerationMarker::switched(Some(&first(10)), 20, V + 1, 5_000);
        assert_eq!(m.retired(5_000 + 999, 1_000), None, "within the grace");
        let retired = m.retired(6_000, 1_000).expect("past the grace");
        assert_eq!(retired.readable(V), None);
        assert_eq!(retired.readable(V + 1).map(|r| r.generation), Some(20));
        assert_eq!(retired.readable_generations(), BTreeSet::from([20]));
        assert_eq!(retired.retired(u64::MAX, 0), None, "nothing left to retire");
        assert_eq!(first(10).retired(u64::MAX, 0), None);
    }

    #[test]
    fn a_rebuild_of_the_same_schema_keeps_the_older_schema_and_its_grace() {
        let upgraded = GenerationMarker::switched(Some(&first(10)), 20, V + 1, 5_000);
        let rebuilt = GenerationMarker::switched(Some(&upgraded), 30, V + 1, 9_000);
        assert_eq!(rebuilt.readable(V).map(|r| r.generation), Some(10));
        assert_eq!(rebuilt.readable(V + 1).map(|r| r.generation), Some(30));
        assert_eq!(rebuilt.schema_since_ms, Some(5_000), "the grace runs on");
        assert!(rebuilt.retired(6_000, 1_000).is_some());
    }

    #[test]
    fn the_next_schema_replaces_the_one_before_the_previous() {
        let v4 = GenerationMarker::switched(Some(&first(10)), 20, V + 1, 5_000);
        let v5 = GenerationMarker::switched(Some(&v4), 30, V + 2, 6_000);
        assert_eq!(v5.readable(V), None, "two schemas back: gone at once");
        assert_eq!(
            v5.readable(V + 1).map(|r| (r.generation, r.stale)),
            Some((20, true))
        );
        assert_eq!(
            v5.readable(V + 2).map(|r| (r.generation, r.stale)),
            Some((30, false))
        );
        assert_eq!(v5.readable_generations(), BTreeSet::from([20, 30]));
    }

    #[test]
    fn a_marker_round_trips_through_json_with_schemas_as_keys() {
        let m = GenerationMarker::switched(Some(&first(10)), 20, V + 1, 5_000);
        let json = serde_json::to_string(&m).expect("json");
        assert!(json.contains(r#""live":{"3":10,"4":20}"#), "{json}");
        assert_eq!(
            serde_json::from_str::<GenerationMarker>(&json).expect("parses"),
            m
        );
    }
}
