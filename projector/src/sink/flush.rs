//! One flush: plan each entity's call, apply the entries (first step), then
//! write the views rendered from the aggregates Redis returned (second step).

use std::collections::HashMap;

use fred::prelude::*;
use views::{aggregate, Lsn};

use super::{
    calls::{Calls, ChunkedStep},
    script::{parse_apply_reply, ArgBuf, Call, Flags},
    sorted_sets::SortedSetWrites,
    EntityAggregates, Sink, SinkError,
};
use crate::projection::{
    aggregate_of, course_event_ids, render_course, render_event, render_order, top_five, Batch,
    Entity, Entry, EventTerms, KnownCourse, LibraryOp,
};

/// How one entity's entries are applied in a flush.
enum Plan {
    /// The apply script returns the aggregate; views are written after.
    Apply,
    /// A new order: its view (JSON), rendered from the entries, is written
    /// by the apply script itself.
    AtOnce { stamp: String, view: Vec<u8> },
    /// A known course: the stamp Redis must be at and the state after the
    /// entries, with the stats and card rendered from it.
    Known {
        next: (String, KnownCourse),
        stats: Vec<u8>,
        card: Vec<u8>,
    },
}

impl Sink {
    /// Applies `batch` once (see [`Sink::apply`]).
    pub(super) async fn apply_once(&self, generation: u64, batch: &Batch) -> Result<(), SinkError> {
        // Batched script calls on pipelines: far less client work per entity
        // than a command each. Library writes need no aggregate, so they go
        // in the first step, which is sent in chunks while it is planned.
        let mut buf = ArgBuf::new();
        let mut first = ChunkedStep::new(&self.client, &self.views);
        let terms = self.lock_events()?.clone();
        // Whatever happens while queueing, every chunk already sent is
        // waited for before this flush ends (see `ChunkedStep::replies`).
        let queued = self
            .queue_first_step(generation, batch, &terms, &mut first, &mut buf)
            .await;
        let plans = match queued {
            Ok(plans) => plans,
            Err(e) => {
                first.abandon().await;
                return Err(e);
            }
        };
        let replies = first.replies(&mut buf).await?;
        if replies.len() != batch.entities.len() {
            return Err(SinkError::Reply("fewer replies than scripts".into()));
        }

        let mut aggs = Vec::with_capacity(replies.len());
        let mut known = Vec::new();
        let mut stale = Vec::new();
        for (((entity, entries), reply), plan) in batch.entities.iter().zip(replies).zip(plans) {
            match plan {
                Plan::AtOnce { .. } => {}
                Plan::Known { next, .. } => {
                    if reply.as_i64() == Some(1) {
                        known.push((*entity, next.1));
                    } else {
                        // Redis is not where this process thought: read the
                        // aggregate back like any other entity.
                        self.forget(generation, entity)?;
                        stale.push((entity, entries));
                    }
                }
                Plan::Apply => aggs.push(self.applied(generation, entity, entries, reply)?),
            }
        }
        if !stale.is_empty() {
            aggs.extend(self.read_back(generation, stale, &mut buf).await?);
        }
        let events = self.event_terms(generation, &aggs).await?;

        for (entity, course) in known {
            self.remember(generation, &entity, course)?;
        }
        if aggs.is_empty() {
            // Every entity was written by its apply script: no second step.
            return Ok(());
        }
        self.write_views(generation, &aggs, &events, batch.snapshot_lsn, &mut buf)
            .await
    }

    /// Applies the entities whose known state Redis refused, reading their
    /// aggregates back.
    async fn read_back(
        &self,
        generation: u64,
        stale: Vec<(&Entity, &Vec<Entry>)>,
        buf: &mut ArgBuf,
    ) -> Result<Vec<EntityAggregates>, SinkError> {
        let mut again = Calls::new(&self.client, &self.views);
        for (entity, entries) in &stale {
            let call = Call::Apply {
                keys: &self.apply_keys(generation, entity, false),
                flags: apply_flags(entity, entries),
                view: None,
                entries,
            };
            again.call(buf, call).await?;
        }
        again.end_batch(buf).await?;
        let replies = again.send().await?;
        if replies.len() != stale.len() {
            return Err(SinkError::Reply("fewer replies than scripts".into()));
        }
        stale
            .into_iter()
            .zip(replies)
            .map(|((entity, entries), reply)| self.applied(generation, entity, entries, reply))
            .collect()
    }

    /// The second step: the views rendered from the aggregates, written if
    /// newer than the stored ones, and the rankings and event index.
    async fn write_views(
        &self,
        generation: u64,
        aggs: &[EntityAggregates],
        events: &HashMap<i64, EventTerms>,
        snapshot_lsn: Lsn,
        buf: &mut ArgBuf,
    ) -> Result<(), SinkError> {
        let mut second = Calls::new(&self.client, &self.views);
        let mut sorted = SortedSetWrites::default();
        for aggregates in aggs {
            let (entity, agg, _, with_page) = aggregates;
            match entity {
                Entity::Course(id) => self.rank(&mut sorted, generation, *id, agg, *with_page),
                Entity::Event(id) => self.index_event(&mut sorted, generation, *id, agg),
                Entity::Order(_) => {}
            }
            let stamp = agg.get(aggregate::STAMP).cloned().unwrap_or_default();
            if agg.get(aggregate::VIEW_STAMP).is_some_and(|v| *v >= stamp) {
                continue;
            }
            let Some((view_keys, values)) =
                self.render(generation, aggregates, events, snapshot_lsn)
            else {
                continue;
            };
            let call = Call::WriteViews {
                keys: &view_keys,
                stamp: &stamp,
                views: &values,
            };
            second.call(buf, call).await?;
        }
        second.end_batch(buf).await?;
        sorted.queue(&second.pipe).await?;
        second.send().await?;
        Ok(())
    }

    /// An entity's views and the keys they go to, after its aggregate's
    /// key; `None` while its row has not been seen.
    fn render(
        &self,
        generation: u64,
        (entity, agg, top, with_page): &EntityAggregates,
        events: &HashMap<i64, EventTerms>,
        snapshot_lsn: Lsn,
    ) -> Option<(Vec<String>, Vec<Vec<u8>>)> {
        let (keys, with_page) = (&self.keys, *with_page);
        Some(match *entity {
            Entity::Course(id) => {
                let course =
                    render_course(id, agg, top_five(top), events, with_page, snapshot_lsn)?;
                let mut view_keys = vec![
                    keys.course_agg(generation, id),
                    keys.course_stats(generation, id),
                    keys.course_card(generation, id),
                ];
                let mut values = vec![course.stats, course.card];
                if let Some(page) = course.page {
                    view_keys.push(keys.course_view(generation, id));
                    values.push(page);
                }
                (view_keys, values)
            }
            Entity::Event(id) => {
                let view = render_event(id, agg, snapshot_lsn)?;
                (
                    vec![
                        keys.event_agg(generation, id),
                        keys.event_view(generation, id),
                    ],
                    vec![view],
                )
            }
            Entity::Order(id) => {
                let view = render_order(id, agg, snapshot_lsn)?;
                (
                    vec![
                        keys.order_agg(generation, id),
                        keys.order_view(generation, id),
                    ],
                    vec![view],
                )
            }
        })
    }

    /// Plans every entity of the batch and queues its call on the chunked
    /// first step, then the step's sorted-set writes; returns the plans.
    async fn queue_first_step(
        &self,
        generation: u64,
        batch: &Batch,
        terms: &HashMap<i64, EventTerms>,
        first: &mut ChunkedStep,
        buf: &mut ArgBuf,
    ) -> Result<Vec<Plan>, SinkError> {
        let keys = &self.keys;
        let mut plans = Vec::with_capacity(batch.entities.len());
        for (entity, entries) in &batch.entities {
            let first = first.next_entity(buf).await?;
            let plan = self.plan(generation, batch, entity, entries, terms)?;
            match &plan {
                Plan::Known { next, stats, card } => {
                    let Entity::Course(id) = *entity else {
                        return Err(SinkError::Reply("a known entity that is no course".into()));
                    };
                    let script_keys = [
                        keys.course_agg(generation, id),
                        keys.course_companies(generation, id),
                        keys.course_text(generation, id),
                        keys.course_stats(generation, id),
                        keys.course_card(generation, id),
                    ];
                    let call = Call::ApplyKnown {
                        keys: &script_keys,
                        stamp: &next.0,
                        stats,
                        card,
                        entries,
                    };
                    first.call(buf, call).await?;
                }
                Plan::AtOnce { stamp, view } => {
                    let call = Call::Apply {
                        keys: &self.apply_keys(generation, entity, true),
                        flags: Flags::default(),
                        view: Some((stamp, view)),
                        entries,
                    };
                    first.call(buf, call).await?;
                }
                Plan::Apply => {
                    let call = Call::Apply {
                        keys: &self.apply_keys(generation, entity, false),
                        flags: apply_flags(entity, entries),
                        view: None,
                        entries,
                    };
                    first.call(buf, call).await?;
                }
            }
            plans.push(plan);
        }
        // A known course's place in the popular ranking follows from the
        // count it is expected to reach, so it goes in this step too. If the
        // script finds Redis elsewhere (returns 0), the read-back below
        // ranks the course again from what Redis holds, in this same flush.
        let mut sorted = SortedSetWrites::default();
        for (entity, plan) in batch.entities.keys().zip(&plans) {
            if let (Entity::Course(id), Plan::Known { next, .. }) = (entity, plan) {
                self.rank(&mut sorted, generation, *id, &next.1.agg, false);
            }
        }
        for (&(user, course), op) in &batch.library {
            let key = keys.user_library(generation, user);
            let member = views::ranking_member(course);
            match op {
                LibraryOp::Add(at) => sorted.add(key, *at as f64, member),
                LibraryOp::Remove => sorted.remove(key, member),
            }
        }
        sorted.queue(first.last_pipe(buf).await?).await?;
        Ok(plans)
    }

    /// How an entity's entries are applied in this flush.
    fn plan(
        &self,
        generation: u64,
        batch: &Batch,
        entity: &Entity,
        entries: &[Entry],
        terms: &HashMap<i64, EventTerms>,
    ) -> Result<Plan, SinkError> {
        match *entity {
            // A new order's whole state is in the batch: its view renders
            // from the entries alone and is written by the apply script.
            Entity::Order(id) if batch.fresh.contains(entity) => {
                let agg = aggregate_of(entries);
                Ok(match render_order(id, &agg, batch.snapshot_lsn) {
                    Some(view) => Plan::AtOnce {
                        stamp: agg.get(aggregate::STAMP).cloned().unwrap_or_default(),
                        view,
                    },
                    None => Plan::Apply,
                })
            }
            // A course whose aggregate this process knows, changed by
            // enrollments or seat limits only: rendered here, applied and
            // written by one script if Redis is still where it was.
            Entity::Course(id) if !rewrites_page(entity, entries) => {
                // Taken out of the memory and moved in place: the script's
                // answer puts it back (applied) or leaves it out (Redis was
                // elsewhere, or a replay: read back like any other course).
                let Some(mut next) = self.take_known(generation, id)? else {
                    return Ok(Plan::Apply);
                };
                let stamp = next.stamp().to_owned();
                if !next.advance(entries) {
                    return Ok(Plan::Apply);
                }
                if course_event_ids(&next.agg)
                    .iter()
                    .any(|e| !terms.contains_key(e))
                {
                    return Ok(Plan::Apply);
                }
                let Some(course) = render_course(
                    id,
                    &next.agg,
                    next.top_companies(),
                    terms,
                    false,
                    batch.snapshot_lsn,
                ) else {
                    return Ok(Plan::Apply);
                };
                Ok(Plan::Known {
                    next: (stamp, next),
                    stats: course.stats,
                    card: course.card,
                })
            }
            _ => Ok(Plan::Apply),
        }
    }

    /// The keys of the apply script for `entity`; `with_view`: its view key
    /// (a new order's) is written by the script.
    fn apply_keys(&self, generation: u64, entity: &Entity, with_view: bool) -> [String; 4] {
        let keys = &self.keys;
        match *entity {
            Entity::Course(id) => [
                keys.course_agg(generation, id),
                keys.course_companies(generation, id),
                keys.course_text(generation, id),
                keys.course_view(generation, id),
            ],
            // Only courses tally companies and keep heavy text; unused keys
            // just keep the script's signature (same hash tag, never written).
            Entity::Event(id) => {
                let agg = keys.event_agg(generation, id);
                let none = agg.clone() + ":none";
                [agg, none.clone(), none.clone(), none]
            }
            Entity::Order(id) => {
                let agg = keys.order_agg(generation, id);
                let none = agg.clone() + ":none";
                let view = if with_view {
                    keys.order_view(generation, id)
                } else {
                    none.clone()
                };
                [agg, none.clone(), none, view]
            }
        }
    }

    /// An entity's aggregate as the apply script returned it; a course's is
    /// remembered when every tally came with it.
    fn applied(
        &self,
        generation: u64,
        entity: &Entity,
        entries: &[Entry],
        reply: Value,
    ) -> Result<EntityAggregates, SinkError> {
        let (agg, top) = parse_apply_reply(reply)?;
        match entity {
            Entity::Event(id) => {
                if let Some(terms) = EventTerms::from_agg(&agg) {
                    self.lock_events()?.insert(*id, terms);
                }
            }
            Entity::Course(_) => {
                self.remember(generation, entity, KnownCourse::new(agg.clone(), &top))?;
            }
            Entity::Order(_) => {}
        }
        Ok((*entity, agg, top, rewrites_page(entity, entries)))
    }
}

/// The batch changes a course's row, so its page is rendered and written.
fn rewrites_page(entity: &Entity, entries: &[Entry]) -> bool {
    matches!(entity, Entity::Course(_)) && entries.iter().any(Entry::touches_page)
}

/// What the apply call returns of `entity`: a course's page HTML when the
/// row changed, and all its tallies (to be remembered).
fn apply_flags(entity: &Entity, entries: &[Entry]) -> Flags {
    Flags {
        page: rewrites_page(entity, entries),
        tallies: matches!(entity, Entity::Course(_)),
    }
}
