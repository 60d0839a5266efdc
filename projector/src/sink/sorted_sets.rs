//! A flush's sorted-set writes: category rankings, user libraries and the
//! event index, grouped by key so that a key costs one command however many
//! of its members move.

use std::collections::HashMap;

use fred::{clients::Pipeline, prelude::*};
use views::aggregate;

use super::{Sink, SinkError};
use crate::{decode::parse_pg_timestamp, projection::EventTerms};

/// The sorted-set writes of one flush step. A flush ranks hundreds of
/// courses in a handful of categories, and a command costs the client and
/// Redis more than a member does. Per member, the last write wins, as if
/// sent one by one.
#[derive(Default)]
pub(super) struct SortedSetWrites {
    /// Key → member → `Some(score)` to add (or move), `None` to remove.
    keys: HashMap<String, HashMap<String, Option<f64>>>,
    /// Hash fields recording what the writes above did (a course's ranked
    /// category): sent after them, so that a flush cut short in between is
    /// replayed with the record still saying what to undo.
    after: Vec<(String, &'static str, String)>,
}

impl SortedSetWrites {
    pub(super) fn add(&mut self, key: String, score: f64, member: String) {
        self.keys
            .entry(key)
            .or_default()
            .insert(member, Some(score));
    }

    pub(super) fn remove(&mut self, key: String, member: String) {
        self.keys.entry(key).or_default().insert(member, None);
    }

    fn then_hset(&mut self, key: String, field: &'static str, value: String) {
        self.after.push((key, field, value));
    }

    /// Queues one `ZADD` and one `ZREM` at most per key.
    pub(super) async fn queue(self, pipe: &Pipeline<Client>) -> Result<(), SinkError> {
        for (key, members) in self.keys {
            let mut add: Vec<(f64, String)> = Vec::new();
            let mut remove: Vec<String> = Vec::new();
            for (member, score) in members {
                match score {
                    Some(score) => add.push((score, member)),
                    None => remove.push(member),
                }
            }
            if !add.is_empty() {
                pipe.zadd::<(), _, _>(key.as_str(), None, None, false, false, add)
                    .await?;
            }
            if !remove.is_empty() {
                pipe.zrem::<(), _, _>(key, remove).await?;
            }
        }
        for (key, field, value) in self.after {
            pipe.hset::<(), _, _>(key, (field, value)).await?;
        }
        Ok(())
    }
}

impl Sink {
    /// Keeps the event in the index readers pre-warm from (absolute write).
    pub(super) fn index_event(
        &self,
        sorted: &mut SortedSetWrites,
        generation: u64,
        id: i64,
        agg: &HashMap<String, String>,
    ) {
        if let Some(terms) = EventTerms::from_agg(agg) {
            sorted.add(
                self.keys.events_by_end(generation),
                terms.ends_at.timestamp_micros() as f64,
                id.to_string(),
            );
        }
    }

    /// Queues the course's place in its category's rankings. Absolute
    /// writes (scores set, not added), so replays converge. The newest
    /// ranking and the category move only with the row (`row_changed`).
    pub(super) fn rank(
        &self,
        sorted: &mut SortedSetWrites,
        generation: u64,
        id: i64,
        agg: &HashMap<String, String>,
        row_changed: bool,
    ) {
        let (Some(category), true) = (agg.get("category"), agg.contains_key("created_at")) else {
            return;
        };
        // Parsed only when the row changed: an enrollment moves the popular
        // ranking alone, and this runs for every course of every flush.
        let created = if row_changed {
            match agg.get("created_at").and_then(|c| parse_pg_timestamp(c)) {
                Some(created) => Some(created),
                None => return,
            }
        } else {
            None
        };
        let n: f64 = agg
            .get(aggregate::STUDENTS)
            .and_then(|n| n.parse().ok())
            .unwrap_or(0.0);
        let member = views::ranking_member(id);
        let keys = &self.keys;
        sorted.add(
            keys.category_popular(generation, category),
            -n,
            member.clone(),
        );
        let Some(created) = created else {
            return;
        };
        sorted.add(
            keys.category_newest(generation, category),
            created.timestamp_micros() as f64,
            member.clone(),
        );
        let ranked = agg.get(aggregate::RANKED_CATEGORY);
        if let Some(old) = ranked.filter(|old| *old != category) {
            sorted.remove(keys.category_popular(generation, old), member.clone());
            sorted.remove(keys.category_newest(generation, old), member);
        }
        if ranked != Some(category) {
            sorted.then_hset(
                keys.course_agg(generation, id),
                aggregate::RANKED_CATEGORY,
                category.clone(),
            );
        }
    }
}
