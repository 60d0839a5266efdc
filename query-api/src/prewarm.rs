//! Pre-warming: ahead of each sale event, the event's view and every view of
//! its courses are held in process, ready to serve, until the event ends.
//!
//! Kept fresh by polling, not invalidation: each refresh reads the whole set
//! in one round trip per node and swaps it in, so a change shows within one
//! interval plus the projection's lag, and nothing push invalidation loses
//! with fred (tracking after a reconnect, FLUSHALL, cluster BCAST) can leave
//! it stale; a set not refreshed for a second is not served.
//!
//! Entries hold the stored JSON and, made at refresh, the served bytes and
//! `ETag` of each page, card and event page with the span of the clock they
//! are right for (until a sale they contain starts or ends). Inside it a hit
//! is a map lookup; outside it the entry is served from its JSON by the
//! clock, so no served entry outlives a sale boundary.

use std::{
    collections::HashMap,
    sync::{
        atomic::{AtomicU64, Ordering::Relaxed},
        Arc,
    },
    time::{Duration, Instant},
};

use arc_swap::ArcSwap;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use fred::{prelude::*, types::Key};
use serde::Serialize;
use views::{EventView, GenerationMarker, Keys, Lsn};

use crate::{
    headers::Watermark,
    served::{self, Card, CardList, Corrupt, Course, Event, EventPage, Ready, Served, Validity},
};

/// A warm set older than this is not served (SPEC: changes visible within 1 s).
const MAX_AGE: Duration = Duration::from_millis(900);

/// One event being kept warm, as `/v1/ops/prewarm` lists it.
#[derive(Debug, Clone, Serialize)]
pub struct WarmEvent {
    pub event_id: i64,
    pub starts_at: DateTime<Utc>,
    pub ends_at: DateTime<Utc>,
    /// Views held for it: the event view, and the page, stats and card of
    /// each course.
    pub entries: usize,
}

/// Which view of an entity a stored entry is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Kind {
    Page,
    Stats,
    Card,
    Event,
}

/// A view as Redis holds it and as decoded.
struct Stored {
    /// The raw Redis value, to skip decoding (and serving) what did not change.
    raw: Bytes,
    json: Bytes,
}

/// A map by id (or kind and id), hashed for speed: the keys are ids.
type ById<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

#[derive(Default)]
struct WarmSet {
    generation: u64,
    /// Its header value made once per refresh.
    watermark: Watermark,
    stale: bool,
    events: Vec<WarmEvent>,
    /// Every view read, by kind and id (no key string built per request).
    stored: ById<(Kind, i64), Stored>,
    /// Warm events' views, parsed.
    event_views: ById<i64, EventView>,
    pages: ById<i64, Ready<Served>>,
    cards: ById<i64, Ready<Bytes>>,
    event_pages: ById<i64, Ready<Served>>,
    /// When the refresh that read it began: no data in it is older.
    refreshed: Option<Instant>,
    /// When the watermark was last seen to move (the readiness check).
    watermark_moved: Option<Instant>,
}

impl WarmSet {
    fn json(&self, kind: Kind, id: i64) -> Option<&Bytes> {
        self.stored.get(&(kind, id)).map(|s| &s.json)
    }

    fn raw(&self, kind: Kind, id: i64) -> Option<&Bytes> {
        self.stored.get(&(kind, id)).map(|s| &s.raw)
    }
}

/// How warm one event is in this process, for the readiness check.
#[derive(Debug, Clone, Copy)]
pub struct Warmth {
    /// Views of the event held (the event view; each course's page, stats, card).
    pub held: usize,
    /// Views it has.
    pub expected: usize,
    /// Since the refresh that read the warm set began.
    pub refreshed: Option<Duration>,
    /// Since the projection's watermark last moved.
    pub watermark_moved: Option<Duration>,
    /// The generation read is not kept current (a rebuild is under way).
    pub stale: bool,
}

/// A warm answer and the projection state it was read at.
pub struct Hit<T> {
    pub value: T,
    pub generation: u64,
    pub watermark: Watermark,
    pub stale: bool,
}

/// The in-process cache of pre-warmed sale-event views.
pub struct Prewarm {
    client: Client,
    keys: Keys,
    window: Duration,
    /// The view schema version whose generation is read.
    schema: u32,
    set: ArcSwap<WarmSet>,
    hits: AtomicU64,
    misses: AtomicU64,
}

impl Prewarm {
    /// A cache that warms each event `window` before it starts, from the
    /// generation of view schema `schema`.
    pub fn new(client: Client, keys: Keys, window: Duration, schema: u32) -> Self {
        Self {
            client,
            keys,
            window,
            schema,
            set: ArcSwap::from_pointee(WarmSet::default()),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
        }
    }

    /// Pre-warming is turned off (a zero window).
    pub fn is_off(&self) -> bool {
        self.window.is_zero()
    }

    /// Refreshes the warm set every `every` until the task is dropped.
    pub async fn run(self: Arc<Self>, every: Duration) {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut failing = false;
        loop {
            tick.tick().await;
            match self.refresh().await {
                Ok(()) if failing => {
                    failing = false;
                    tracing::info!("pre-warmed views refresh again");
                }
                Ok(()) => {}
                Err(err) if !failing => {
                    failing = true;
                    tracing::warn!(error = %err, "could not refresh pre-warmed views; serving from redis meanwhile");
                }
                Err(_) => {}
            }
        }
    }

    /// The course page of `id` if warm: served already while `now` is in
    /// its span, else its stored page and stats. Counts a hit or a miss.
    pub fn course(&self, id: i64, now: DateTime<Utc>) -> Option<Hit<Course>> {
        self.lookup(|set| match set.pages.get(&id) {
            Some(ready) if ready.valid.contains(now) => Some(Course::Served(ready.value.clone())),
            _ => Some(Course::Stored {
                page: set.raw(Kind::Page, id)?.clone(),
                stats: set.json(Kind::Stats, id)?.clone(),
            }),
        })
    }

    /// The cards of `ids`, in order, appended to `list` if every one is
    /// warm (else `list` is left as it was). Counts a hit or a miss.
    ///
    /// Copied straight into the body: a shared copy per card had concurrent
    /// carts bounce the cache lines of the same 125 reference counts.
    pub fn cards(
        &self,
        ids: &[i64],
        now: DateTime<Utc>,
        list: &mut CardList,
    ) -> Option<Hit<Result<(), Corrupt>>> {
        self.lookup(|set| {
            // Every id is looked up before anything is appended.
            let found = ids
                .iter()
                .map(|id| match set.cards.get(id) {
                    Some(ready) if ready.valid.contains(now) => Some(Card::Served(&ready.value)),
                    _ => set.json(Kind::Card, *id).map(|json| Card::Stored(json)),
                })
                .collect::<Option<Vec<Card<'_>>>>()?;
            Some(
                found
                    .into_iter()
                    .try_for_each(|card| card.serve_into(list, now)),
            )
        })
    }

    /// The event page of `id` if warm: served already while `now` is in
    /// its span, else the stored event view and cards. Counts a hit or a miss.
    pub fn event(&self, id: i64, now: DateTime<Utc>) -> Option<Hit<Event>> {
        self.lookup(|set| match set.event_pages.get(&id) {
            Some(ready) if ready.valid.contains(now) => Some(Event::Served(ready.value.clone())),
            _ => Some(Event::Stored(stored_event_page(set, id)?)),
        })
    }

    /// The course page of `id` if warm, however old the warm set: what is
    /// served, marked stale, while Redis is unreachable.
    pub fn course_any_age(&self, id: i64, now: DateTime<Utc>) -> Option<Hit<Course>> {
        self.lookup_aged(None, |set| match set.pages.get(&id) {
            Some(ready) if ready.valid.contains(now) => Some(Course::Served(ready.value.clone())),
            _ => Some(Course::Stored {
                page: set.raw(Kind::Page, id)?.clone(),
                stats: set.json(Kind::Stats, id)?.clone(),
            }),
        })
    }

    /// The event page of `id` if warm, however old the warm set (see
    /// [`Prewarm::course_any_age`]).
    pub fn event_any_age(&self, id: i64, now: DateTime<Utc>) -> Option<Hit<Event>> {
        self.lookup_aged(None, |set| match set.event_pages.get(&id) {
            Some(ready) if ready.valid.contains(now) => Some(Event::Served(ready.value.clone())),
            _ => Some(Event::Stored(stored_event_page(set, id)?)),
        })
    }

    /// How warm the event with `course_ids` is now.
    pub fn warmth(&self, event_id: i64, course_ids: &[i64]) -> Warmth {
        let set = self.set.load();
        let mut wanted = vec![(Kind::Event, event_id)];
        for &course in course_ids {
            wanted.extend([
                (Kind::Page, course),
                (Kind::Stats, course),
                (Kind::Card, course),
            ]);
        }
        let warm = set.events.iter().any(|e| e.event_id == event_id);
        let held = if warm {
            wanted
                .iter()
                .filter(|entry| set.stored.contains_key(entry))
                .count()
        } else {
            0
        };
        Warmth {
            held,
            expected: wanted.len(),
            refreshed: set.refreshed.map(|t| t.elapsed()),
            watermark_moved: set.watermark_moved.map(|t| t.elapsed()),
            stale: set.stale,
        }
    }

    /// The age past which the warm set is not served.
    pub fn max_age() -> Duration {
        MAX_AGE
    }

    /// `find` in the warm set if it is fresh; counts one hit or one miss.
    fn lookup<T>(&self, find: impl FnOnce(&WarmSet) -> Option<T>) -> Option<Hit<T>> {
        self.lookup_aged(Some(MAX_AGE), find)
    }

    /// `find` in the warm set if refreshed within `max_age` (any age: the
    /// answer is marked stale); counts one hit or one miss.
    fn lookup_aged<T>(
        &self,
        max_age: Option<Duration>,
        find: impl FnOnce(&WarmSet) -> Option<T>,
    ) -> Option<Hit<T>> {
        let set = self.set.load();
        let fresh = set
            .refreshed
            .is_some_and(|t| max_age.is_none_or(|max| t.elapsed() < max))
            && !set.stored.is_empty();
        match fresh.then(|| find(&set)).flatten() {
            Some(value) => {
                self.hits.fetch_add(1, Relaxed);
                Some(Hit {
                    value,
                    generation: set.generation,
                    watermark: set.watermark.clone(),
                    stale: set.stale || max_age.is_none(),
                })
            }
            None => {
                self.misses.fetch_add(1, Relaxed);
                None
            }
        }
    }

    /// The events kept warm now.
    pub fn events(&self) -> Vec<WarmEvent> {
        self.set.load().events.clone()
    }

    /// (hits, misses) since start.
    pub fn counts(&self) -> (u64, u64) {
        (self.hits.load(Relaxed), self.misses.load(Relaxed))
    }

    /// Reads the marker, the events that end in the future, the views of
    /// those inside their warm window, serves them, and swaps the new set in.
    async fn refresh(&self) -> Result<(), fred::error::Error> {
        // The set is as old as its first read: dated from its end, a slow
        // refresh would be served for longer than MAX_AGE after it read.
        let started = Instant::now();
        let previous = self.set.load_full();
        let now = Utc::now();
        let marker: Option<String> = self.client.get(self.keys.generation_marker()).await?;
        let Some(live) = marker
            .and_then(|m| serde_json::from_str::<GenerationMarker>(&m).ok())
            .and_then(|m| m.readable(self.schema))
        else {
            // No live generation of this schema: nothing may be served.
            self.set.store(Arc::new(WarmSet {
                refreshed: Some(started),
                ..Default::default()
            }));
            return Ok(());
        };
        let generation = live.generation;

        // Events that have not ended; those whose window has opened are warm.
        let pipe = self.client.pipeline();
        let _: () = pipe.get(self.keys.watermark(generation)).await?;
        let _: () = pipe
            .zrangebyscore(
                self.keys.events_by_end(generation),
                now.timestamp_micros() as f64,
                "+inf",
                false,
                None,
            )
            .await?;
        let (watermark, ids): (Option<String>, Vec<String>) = pipe.all().await?;
        let ids: Vec<i64> = ids.iter().filter_map(|i| i.parse().ok()).collect();
        let event_keys: Vec<String> = ids
            .iter()
            .map(|&id| self.keys.event_view(generation, id))
            .collect();
        let raw_events = self.read_all(event_keys).await?;
        let window = chrono::Duration::from_std(self.window).unwrap_or_default();
        let mut wanted: Vec<(Kind, i64)> = Vec::new();
        let mut events = Vec::new();
        let mut event_views = ById::default();
        for raw in raw_events {
            let Some(event) = raw
                .as_deref()
                .and_then(|r| views::decode(r).ok())
                .and_then(|j| serde_json::from_slice::<EventView>(&j).ok())
            else {
                continue;
            };
            if !(event.starts_at - window <= now && now < event.ends_at) {
                continue;
            }
            wanted.push((Kind::Event, event.id));
            for &course in &event.course_ids {
                wanted.extend([
                    (Kind::Page, course),
                    (Kind::Stats, course),
                    (Kind::Card, course),
                ]);
            }
            events.push(WarmEvent {
                event_id: event.id,
                starts_at: event.starts_at,
                ends_at: event.ends_at,
                entries: 1 + 3 * event.course_ids.len(),
            });
            event_views.insert(event.id, event);
        }

        let keys = wanted
            .iter()
            .map(|&(kind, id)| match kind {
                Kind::Page => self.keys.course_view(generation, id),
                Kind::Stats => self.keys.course_stats(generation, id),
                Kind::Card => self.keys.course_card(generation, id),
                Kind::Event => self.keys.event_view(generation, id),
            })
            .collect();
        let values = self.read_all(keys).await?;
        let same_generation = previous.generation == generation;
        let lsn: Lsn = watermark.and_then(|w| w.parse().ok()).unwrap_or_default();
        let watermark_moved = if same_generation && previous.watermark.lsn == lsn {
            previous.watermark_moved
        } else {
            Some(Instant::now())
        };
        let mut set = WarmSet {
            watermark_moved,
            generation,
            watermark: Watermark::new(lsn),
            stale: live.stale,
            events,
            event_views,
            ..Default::default()
        };
        for (entry, raw) in wanted.into_iter().zip(values) {
            let Some(raw) = raw else { continue };
            let json = match previous.stored.get(&entry) {
                Some(old) if same_generation && old.raw == raw => old.json.clone(),
                _ => match views::decode(&raw) {
                    Ok(json) => Bytes::from(json.into_owned()),
                    Err(err) => {
                        tracing::error!(?entry, error = %err, "corrupt view in redis; not pre-warmed");
                        continue;
                    }
                },
            };
            set.stored.insert(entry, Stored { raw, json });
        }
        serve_all(&mut set, &previous, same_generation, now);
        set.refreshed = Some(started);
        self.set.store(Arc::new(set));
        Ok(())
    }

    /// The raw values of `keys`, in one round trip per node: one MGET on a
    /// single Redis, per-key GETs that the client routes in cluster mode.
    async fn read_all(&self, keys: Vec<String>) -> Result<Vec<Option<Bytes>>, fred::error::Error> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let values: Vec<Value> = if self.client.is_clustered() {
            let pipe = self.client.pipeline();
            for key in keys {
                let _: () = pipe.get(key).await?;
            }
            pipe.all().await?
        } else {
            let keys: Vec<Key> = keys.into_iter().map(Key::from).collect();
            self.client.mget::<Value, _>(keys).await?.into_array()
        };
        Ok(values
            .into_iter()
            .map(|v| v.convert::<Option<Bytes>>().ok().flatten())
            .collect())
    }
}

/// The event page of `id` from the stored views of `set`, if all are there.
fn stored_event_page(set: &WarmSet, id: i64) -> Option<EventPage> {
    let event = set.event_views.get(&id)?;
    let cards = event
        .course_ids
        .iter()
        .map(|c| set.json(Kind::Card, *c).cloned())
        .collect::<Option<Vec<Bytes>>>()?;
    Some(EventPage {
        event: event.clone(),
        cards,
    })
}

/// Serves every course page, card and event page of `set` by the clock
/// `now`, reusing what `previous` served when its views are the same bytes
/// and `now` is still in its span. A view that cannot be served is left
/// to the request path, which answers it as it would from Redis.
fn serve_all(set: &mut WarmSet, previous: &WarmSet, same_generation: bool, now: DateTime<Utc>) {
    let unchanged = |set: &WarmSet, kinds: &[Kind], id: i64| {
        same_generation
            && kinds.iter().all(|&kind| {
                matches!((set.raw(kind, id), previous.raw(kind, id)), (Some(a), Some(b)) if a == b)
            })
    };
    let courses: Vec<i64> = set
        .event_views
        .values()
        .flat_map(|e| e.course_ids.iter().copied())
        .collect();
    for id in courses {
        if !set.pages.contains_key(&id) {
            let reused = previous
                .pages
                .get(&id)
                .filter(|r| r.valid.contains(now) && unchanged(set, &[Kind::Page, Kind::Stats], id))
                .cloned();
            let ready = reused.or_else(|| {
                let (page, stats) = (set.json(Kind::Page, id)?, set.json(Kind::Stats, id)?);
                Some(Ready {
                    value: served::course_page(id, page, stats, now).ok()?,
                    valid: Validity::of_stored(stats, now).ok()?,
                })
            });
            if let Some(ready) = ready {
                set.pages.insert(id, ready);
            }
        }
        if !set.cards.contains_key(&id) {
            let reused = previous
                .cards
                .get(&id)
                .filter(|r| r.valid.contains(now) && unchanged(set, &[Kind::Card], id))
                .cloned();
            let ready = reused.or_else(|| {
                let card = set.json(Kind::Card, id)?;
                Some(Ready {
                    value: served::card(card, now, None).ok()?,
                    valid: Validity::of_stored(card, now).ok()?,
                })
            });
            if let Some(ready) = ready {
                set.cards.insert(id, ready);
            }
        }
    }
    let event_ids: Vec<i64> = set.event_views.keys().copied().collect();
    for id in event_ids {
        let Some(page) = stored_event_page(set, id) else {
            continue;
        };
        let unchanged_event = unchanged(set, &[Kind::Event], id)
            && page
                .event
                .course_ids
                .iter()
                .all(|c| unchanged(set, &[Kind::Card], *c));
        let reused = previous
            .event_pages
            .get(&id)
            .filter(|r| unchanged_event && r.valid.contains(now))
            .cloned();
        let ready = reused.or_else(|| {
            Some(Ready {
                value: served::event_page(&page, now).ok()?,
                valid: served::event_validity(&page, now).ok()?,
            })
        });
        if let Some(ready) = ready {
            set.event_pages.insert(id, ready);
        }
    }
}

// The integration tests' Redis of a test's own: pausing it stalls nobody else.
#[cfg(test)]
#[path = "../tests/common/mod.rs"]
mod common;

#[cfg(test)]
mod tests {
    use super::{common, *};

    #[tokio::test]
    async fn a_warm_set_is_as_old_as_the_first_read_of_its_refresh() -> anyhow::Result<()> {
        let (_redis, url) = common::OwnRedis::start()?;
        let client = common::client(&url).await?;
        let warm = Prewarm::new(
            client.clone(),
            Keys::new("t"),
            Duration::from_secs(3600),
            views::VIEW_SCHEMA_VERSION,
        );

        // Every command after this one waits half a second for its answer.
        let _: () = client
            .custom(fred::cmd!("CLIENT"), vec!["PAUSE", "500", "ALL"])
            .await?;
        let began = Instant::now();
        warm.refresh().await?;
        assert!(
            began.elapsed() >= Duration::from_millis(400),
            "the pause held the refresh"
        );

        let refreshed = warm
            .set
            .load()
            .refreshed
            .expect("the refresh dated the set");
        assert!(
            refreshed < began + Duration::from_millis(250),
            "dated {:?} after the refresh began, not from its first read",
            refreshed - began
        );
        Ok(())
    }
}
