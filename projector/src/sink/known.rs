//! What the projector remembers of Redis: course aggregates (so a flush of
//! enrollments renders a course without reading it back) and event terms.
//! Only ever a shortcut: the script checks a remembered stamp before use.

use std::{
    collections::{BTreeSet, HashMap},
    sync::MutexGuard,
};

use fred::prelude::*;
use futures_util::future::try_join_all;
use views::aggregate;

use super::{
    queue_scored_members, script::parse_apply_reply, EntityAggregates, Sink, SinkError,
    KNOWN_COURSES,
};
use crate::projection::{course_event_ids, Entity, EventTerms, KnownCourse};

fn poisoned<T>(_: T) -> SinkError {
    SinkError::Reply("poisoned".into())
}

impl Sink {
    /// Remembers the aggregates of the courses `ids` of `generation` as
    /// Redis holds them, so that the first enrollment of each after a start
    /// is applied and written in one step instead of being read back first.
    /// Safe whatever happens meanwhile: a remembered stamp is checked before
    /// use, and a course a flush remembered first is left alone. Stops at
    /// the memory's bound.
    pub async fn preload_known(&self, generation: u64, ids: &[i64]) -> Result<usize, SinkError> {
        let mut loaded = 0;
        for chunk in ids.chunks(256) {
            let pipe = self.client.pipeline();
            for &id in chunk {
                pipe.hgetall::<(), _>(self.keys.course_agg(generation, id))
                    .await?;
                queue_scored_members(&pipe, self.keys.course_companies(generation, id)).await?;
            }
            let replies: Vec<Value> = pipe.all().await?;
            let mut known = self.known.lock().map_err(poisoned)?;
            for (&id, pair) in chunk.iter().zip(replies.chunks_exact(2)) {
                if known.len() >= KNOWN_COURSES {
                    return Ok(loaded);
                }
                let reply = Value::Array(pair.to_vec());
                let Ok((agg, top)) = parse_apply_reply(reply) else {
                    continue;
                };
                if !agg.contains_key(aggregate::STAMP) || known.contains_key(&(generation, id)) {
                    continue;
                }
                known.insert((generation, id), KnownCourse::new(agg, &top));
                loaded += 1;
            }
        }
        Ok(loaded)
    }

    /// How many courses' aggregates are remembered.
    pub fn remembered_courses(&self) -> usize {
        self.known.lock().map(|known| known.len()).unwrap_or(0)
    }

    /// Takes a course's state out of the memory: a flush moves it in place
    /// and puts it back only once Redis confirmed it.
    pub(super) fn take_known(
        &self,
        generation: u64,
        id: i64,
    ) -> Result<Option<KnownCourse>, SinkError> {
        Ok(self
            .known
            .lock()
            .map_err(poisoned)?
            .remove(&(generation, id)))
    }

    /// Forgets every course (a flush failed: Redis may be elsewhere).
    pub(super) fn forget_all_known(&self) {
        if let Ok(mut known) = self.known.lock() {
            known.clear();
        }
    }

    /// Keeps what Redis now holds of a course, within a bound: when full,
    /// the memory starts over (a forgotten course costs one read back).
    pub(super) fn remember(
        &self,
        generation: u64,
        entity: &Entity,
        course: KnownCourse,
    ) -> Result<(), SinkError> {
        let Entity::Course(id) = *entity else {
            return Ok(());
        };
        let mut known = self.known.lock().map_err(poisoned)?;
        if known.len() >= KNOWN_COURSES {
            known.clear();
        }
        known.insert((generation, id), course);
        Ok(())
    }

    pub(super) fn forget(&self, generation: u64, entity: &Entity) -> Result<(), SinkError> {
        if let Entity::Course(id) = *entity {
            self.known
                .lock()
                .map_err(poisoned)?
                .remove(&(generation, id));
        }
        Ok(())
    }

    pub(super) fn lock_events(
        &self,
    ) -> Result<MutexGuard<'_, HashMap<i64, EventTerms>>, SinkError> {
        self.events.lock().map_err(poisoned)
    }

    /// Terms of every event the courses in `aggs` are sold by: from memory,
    /// else from the event aggregates in Redis (after a restart).
    pub(super) async fn event_terms(
        &self,
        generation: u64,
        aggs: &[EntityAggregates],
    ) -> Result<HashMap<i64, EventTerms>, SinkError> {
        let wanted: BTreeSet<i64> = aggs
            .iter()
            .filter(|(e, ..)| matches!(e, Entity::Course(_)))
            .flat_map(|(_, agg, ..)| course_event_ids(agg))
            .collect();
        let missing: Vec<i64> = {
            let cache = self.lock_events()?;
            wanted
                .iter()
                .copied()
                .filter(|id| !cache.contains_key(id))
                .collect()
        };
        let fetched = try_join_all(missing.iter().map(|&id| {
            self.client
                .hgetall::<HashMap<String, String>, _>(self.keys.event_agg(generation, id))
        }))
        .await?;
        let mut cache = self.lock_events()?;
        for (id, agg) in missing.into_iter().zip(fetched) {
            if let Some(terms) = EventTerms::from_agg(&agg) {
                cache.insert(id, terms);
            }
        }
        Ok(wanted
            .into_iter()
            .filter_map(|id| Some((id, cache.get(&id)?.clone())))
            .collect())
    }
}
