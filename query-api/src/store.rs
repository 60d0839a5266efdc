//! Reads of the views in Redis through the `views` key layout: stored
//! values, and the state of the projection they were read at.
//!
//! A read is one pipeline (one round trip per node): the generation marker,
//! its watermark, the keys, and the marker again. The projector deletes a
//! generation only after switching the marker away from it, so an unchanged
//! closing marker proves no key read was deleted meanwhile. A list takes a
//! second pipeline for its cards, closed the same way.
//!
//! On a single Redis a read of GETs alone is one MGET of marker, watermark
//! and keys, read at one instant (so no closing marker) and shared with the
//! reads that arrive meanwhile (`crate::gather`): one command, not one per
//! key. A cluster runs a pipeline's commands on several nodes in no set
//! order, so the projector waits past a read's timeout before deleting an
//! old generation, and a read reports the watermark of an earlier completed
//! round trip (the floor), never more than the views it read hold.
//!
//! Two reads hand over response bytes, for measured per-read cost: a warm
//! hit is the body made at refresh, and cards are copied straight into the
//! body being built (no shared count per card).

use std::{
    collections::HashMap,
    sync::{atomic::Ordering::Relaxed, Arc, Mutex, RwLock},
};

use arc_swap::ArcSwapOption;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use fred::{
    prelude::*,
    types::{Key, Value},
};
use tokio::sync::OnceCell;
use views::{EventView, Keys, Lsn, Readable};

use crate::{
    headers::Watermark,
    prewarm::Prewarm,
    served::{Card, CardList, Corrupt, Course, Event, EventPage},
};

mod generation;
mod list;
mod pipeline;
mod poll;

pub use list::{List, ListPage, Page, Sort};

use generation::{Floor, Parsed};
use pipeline::{convert, distinct, in_slots, queue, views_of, zcard, Op};

/// Attempts before a read whose generation keeps moving gives up.
const ATTEMPTS: usize = 3;

/// What can go wrong reading the views.
#[derive(Debug, Clone, Copy, thiserror::Error)]
pub enum StoreError {
    /// Redis is unreachable or failed (logged where it happened).
    #[error("redis is unavailable")]
    Unavailable,
    /// No view generation is live, or it kept moving during the read.
    #[error("no view generation is live")]
    Rebuilding,
    /// The projection did not reach a read's minimum LSN in time; it had
    /// reached this one.
    #[error("the projection has not reached the requested lsn; it is at {0}")]
    NotYetProjected(Lsn),
    /// A stored value cannot be read.
    #[error(transparent)]
    Corrupt(#[from] Corrupt),
}

impl From<fred::error::Error> for StoreError {
    fn from(err: fred::error::Error) -> Self {
        // Per request at debug only: the connection's tracker logs an
        // outage once, with its address and cause.
        tracing::debug!(error = %err, "redis error");
        StoreError::Unavailable
    }
}

/// The state of the projection a read saw: what the response headers say.
#[derive(Debug, Clone)]
pub struct Projection {
    /// The generation read (always one of this query API's view schema).
    pub generation: u64,
    /// The watermark of the generation read: every change up to it is in
    /// what was read (it is read before the views, which only move forward).
    pub watermark: Watermark,
    /// A replacement generation is being built, or a newer view schema's
    /// went live: this one may lag.
    pub stale: bool,
}

/// What one pipeline found.
enum Attempt {
    /// The generation asked for was live throughout: the results of the ops.
    Read(Projection, Vec<Value>),
    /// The live generation is another one (or changed meanwhile).
    Moved(u64),
}

/// The Redis side of the query API.
#[derive(Clone)]
pub struct Store {
    client: Client,
    /// Concurrent single-Redis reads gathered into one MGET.
    gather: crate::gather::Gather,
    keys: Keys,
    /// The generation marker's key, built once.
    marker_key: Key,
    /// The generation last seen, so the keys can go in the same pipeline as
    /// the marker; a changed marker costs one more round trip.
    generation: Arc<RwLock<Option<u64>>>,
    /// Pre-warmed sale-event views.
    warm: Arc<Prewarm>,
    /// Where Redis round trips are timed.
    metrics: Arc<crate::metrics::Metrics>,
    /// Course reads under way, so concurrent misses share one Redis read.
    inflight: Arc<Mutex<HashMap<i64, Arc<CourseRead>>>>,
    /// The marker and watermark last parsed, by their raw bytes.
    parsed: Arc<Parsed>,
    /// In cluster mode, the freshest watermark read by a completed round
    /// trip: what a read reports (see the module's documentation).
    floor: Arc<ArcSwapOption<Floor>>,
    /// The watermark poll shared by reads waiting for a token.
    poll: Arc<poll::WatermarkPoll>,
    /// Ops flags: whether warm pages stand in for an unreachable Redis.
    flags: Option<service::Flags>,
}

/// A course's page as Redis holds it, and its stats' JSON.
type CourseParts = (Bytes, Bytes);

/// The shared outcome of one course read.
type CourseRead = OnceCell<Result<(Projection, Option<CourseParts>), StoreError>>;

impl Store {
    /// Connects to Redis: one Redis, or a cluster (see [`views::RedisUrl`]).
    /// `timeout` bounds each command and connection attempt; only
    /// generations of view schema `schema` are read.
    pub async fn connect(
        url: &views::RedisUrl,
        keys: Keys,
        prewarm_window: std::time::Duration,
        timeout: std::time::Duration,
        schema: u32,
        metrics: Arc<crate::metrics::Metrics>,
    ) -> Result<Self, fred::error::Error> {
        let client = views::read_client(url, timeout)?;
        // Connect in the background (reads fail `Unavailable` until Redis
        // answers), awaiting the first attempt so reads right after start do
        // not find it pending. Reads do not send while Redis is away (see
        // `connected`), so the outage is logged here, once per attempt.
        // One line when Redis goes away (reads answer 503 until it is back),
        // one when it is back: not one per reconnection attempt.
        let redis = Arc::new(service::Dependency::new("Redis", redis_address(url)));
        let down = redis.clone();
        client.on_error(move |(error, _server)| {
            let down = down.clone();
            async move {
                down.failed(&service::plain_cause(error.details()));
                Ok(())
            }
        });
        let up = redis.clone();
        client.on_reconnect(move |server| {
            let up = up.clone();
            async move {
                tracing::debug!(%server, "redis connected");
                up.answered();
                Ok(())
            }
        });
        client.connect();
        let _ = tokio::time::timeout(timeout, client.wait_for_connect()).await;
        Ok(Self {
            warm: Arc::new(Prewarm::new(
                client.clone(),
                keys.clone(),
                prewarm_window,
                schema,
            )),
            gather: crate::gather::Gather::new(client.clone()),
            client,
            marker_key: Key::from(keys.generation_marker()),
            keys,
            generation: Arc::new(RwLock::new(None)),
            inflight: Arc::new(Mutex::new(HashMap::new())),
            parsed: Arc::new(Parsed::new(schema)),
            floor: Arc::default(),
            poll: Arc::default(),
            flags: None,
            metrics,
        })
    }

    /// Reads the ops flags from `flags` (else every flag at its default).
    pub fn with_flags(mut self, flags: service::Flags) -> Self {
        self.flags = Some(flags);
        self
    }

    /// Whether a warm page may stand in, marked stale, for a read that
    /// failed with `err` (Redis unreachable and the switch on).
    fn stale_allowed(&self, err: &StoreError) -> bool {
        matches!(err, StoreError::Unavailable)
            && self
                .flags
                .as_ref()
                .is_none_or(|flags| crate::switches::on(flags, crate::switches::STALE_ON_OUTAGE))
    }

    /// The event view of `id` as stored, read from Redis (the readiness check).
    pub async fn event_view(&self, id: i64) -> Result<(Projection, Option<EventView>), StoreError> {
        let (projection, json) = self.one_view(|keys, g| keys.event_view(g, id)).await?;
        let event = json
            .map(|json| serde_json::from_slice::<EventView>(&json))
            .transpose()
            .map_err(|err| Corrupt::new("event view", err))?;
        Ok((projection, event))
    }

    /// The pre-warmed views of running and imminent sale events.
    pub fn warm(&self) -> &Arc<Prewarm> {
        &self.warm
    }

    /// (MGETs sent, reads they carried) since start.
    pub fn gathered(&self) -> (u64, u64) {
        let counts = self.gather.counts();
        (counts.sent.load(Relaxed), counts.reads.load(Relaxed))
    }

    /// The projection state of a warm hit.
    fn warm_projection<T>(hit: &crate::prewarm::Hit<T>) -> Projection {
        Projection {
            generation: hit.generation,
            watermark: hit.watermark.clone(),
            stale: hit.stale,
        }
    }

    /// `Unavailable` at once while the client is not connected: a command
    /// sent then would wait in fred's queue for a reconnection or the whole
    /// command timeout, only to fail the same way later.
    fn connected(&self) -> Result<(), StoreError> {
        if self.client.is_connected() {
            Ok(())
        } else {
            Err(StoreError::Unavailable)
        }
    }

    /// Redis answers a PING.
    pub async fn ping(&self) -> bool {
        self.connected().is_ok() && self.client.ping::<()>(None).await.is_ok()
    }

    /// The live generation of this query API's view schema, if any.
    pub async fn live(&self) -> Result<Option<Readable>, StoreError> {
        self.connected()?;
        let raw: Option<Value> = self.client.get(self.marker_key.clone()).await?;
        Ok(self.parsed.marker(raw)?)
    }

    /// The view schema version this query API reads.
    pub fn schema(&self) -> u32 {
        self.parsed.schema()
    }

    /// The last watermark this process read, of whichever generation: a
    /// hint of how far the projection is, never a proof.
    pub fn last_seen_lsn(&self) -> Option<Lsn> {
        self.parsed.last_lsn()
    }

    /// The watermark of the live generation (`Rebuilding` if none is live).
    pub async fn projection_lsn(&self) -> Result<Lsn, StoreError> {
        let live = self.live().await?.ok_or(StoreError::Rebuilding)?;
        Ok(self.read_floor(live.generation).await?.watermark.lsn)
    }

    /// The live generation's watermark as the process-wide poller reads it
    /// (see [`poll`]), polled for as long as the receiver is held.
    pub(crate) fn watch_watermark(
        &self,
    ) -> Result<tokio::sync::watch::Receiver<poll::Polled>, StoreError> {
        self.poll.subscribe(self)
    }

    /// Reads the watermark of `generation` on its own and raises the floor
    /// to it: every read sent after this returns may report it.
    async fn read_floor(&self, generation: u64) -> Result<Arc<Floor>, StoreError> {
        self.connected()?;
        let raw: Option<Value> = self.client.get(self.keys.watermark(generation)).await?;
        let watermark = self.parsed.watermark(raw)?;
        Ok(generation::raise(&self.floor, generation, watermark))
    }

    /// What a read of `generation` sent now may report in cluster mode: the
    /// floor, read first if it is of another generation (once per switch).
    async fn floor_for(&self, generation: u64) -> Result<Arc<Floor>, StoreError> {
        match self.floor.load_full() {
            Some(floor) if floor.generation == generation => Ok(floor),
            _ => self.read_floor(generation).await,
        }
    }

    /// The course page of `id`: served already when pre-warmed (and right
    /// at `now`), else its stored page and stats in one round trip. With
    /// `cached` false (read-your-writes) neither a pre-warmed copy nor a
    /// concurrent read of the same course may answer.
    pub async fn course(
        &self,
        id: i64,
        cached: bool,
        now: DateTime<Utc>,
    ) -> Result<(Projection, Option<Course>), StoreError> {
        let stored = |(page, stats)| Course::Stored { page, stats };
        // The Redis reads below are boxed: their futures are large, and
        // inline they would make every read's future as large, a copy of
        // kilobytes each time it is moved, pre-warmed hits included.
        if !cached {
            let (projection, parts) = Box::pin(self.course_parts(id)).await?;
            return Ok((projection, parts.map(stored)));
        }
        if let Some(hit) = self.warm.course(id, now) {
            return Ok((Self::warm_projection(&hit), Some(hit.value)));
        }
        // Coalesce concurrent misses: the first reader reads, the others
        // await its answer.
        let cell = {
            let mut inflight = self.inflight.lock().map_err(|_| StoreError::Unavailable)?;
            inflight.entry(id).or_default().clone()
        };
        let result = cell
            .get_or_init(|| async { Box::pin(self.course_parts(id)).await })
            .await
            .clone();
        if let Ok(mut inflight) = self.inflight.lock() {
            if inflight.get(&id).is_some_and(|c| Arc::ptr_eq(c, &cell)) {
                inflight.remove(&id);
            }
        }
        let (projection, parts) = match result {
            Err(err) if self.stale_allowed(&err) => {
                return match self.warm.course_any_age(id, now) {
                    Some(hit) => Ok((Self::warm_projection(&hit), Some(hit.value))),
                    None => Err(err),
                };
            }
            other => other?,
        };
        Ok((projection, parts.map(stored)))
    }

    /// A course's page as stored (still encoded: it is decoded straight
    /// into the served body) and its stats, in one round trip; `None` unless
    /// both are there (the projector writes them together).
    async fn course_parts(&self, id: i64) -> Result<(Projection, Option<CourseParts>), StoreError> {
        let (projection, mut values) = self
            .read(|keys, g| {
                vec![
                    Op::Get(keys.course_view(g, id)),
                    Op::Get(keys.course_stats(g, id)),
                ]
            })
            .await?;
        let stats = views_of(values.split_off(1), "course stats")?
            .pop()
            .flatten();
        let page = convert::<Option<Bytes>>(values.pop(), "course page")?;
        let parts = match (page, stats) {
            (Some(page), Some(stats)) => Some((page, stats)),
            _ => None,
        };
        Ok((projection, parts))
    }

    /// The order view of `id` (JSON, stored as served).
    pub async fn order(&self, id: i64) -> Result<(Projection, Option<Bytes>), StoreError> {
        self.one_view(|keys, g| keys.order_view(g, id)).await
    }

    /// The cards of `ids` appended to `list` in the order asked, served by
    /// the clock `now`, in one round trip (each distinct id read once), or
    /// from the pre-warmed copies when every one is warm (and `cached`).
    /// Returns the ids without a card, in order of first appearance.
    pub async fn cards(
        &self,
        ids: &[i64],
        cached: bool,
        now: DateTime<Utc>,
        list: &mut CardList,
    ) -> Result<(Projection, Vec<i64>), StoreError> {
        if cached {
            if let Some(hit) = self.warm.cards(ids, now, list) {
                let projection = Self::warm_projection(&hit);
                hit.value?;
                return Ok((projection, Vec::new()));
            }
        }
        let (distinct, slots) = distinct(ids);
        let (projection, values) = self
            .read(|keys, g| {
                distinct
                    .iter()
                    .map(|id| Op::Get(keys.course_card(g, *id)))
                    .collect()
            })
            .await?;
        let cards = in_slots(views_of(values, "course card")?, &slots);
        let mut absent: Vec<i64> = Vec::new();
        for (id, card) in ids.iter().zip(cards) {
            match card {
                Some(stored) => Card::Stored(&stored).serve_into(list, now)?,
                None if !absent.contains(id) => absent.push(*id),
                None => {}
            }
        }
        Ok((projection, absent))
    }

    /// A page of a list and its total length: ids and length in one round
    /// trip, their cards in a second.
    pub async fn list(
        &self,
        list: List<'_>,
        page: Page,
    ) -> Result<(Projection, ListPage), StoreError> {
        let (start, stop) = page.ranks();
        let first = |keys: &Keys, g: u64| {
            let (key, rev) = match list {
                List::Category(category, Sort::Popular) => {
                    (keys.category_popular(g, category), false)
                }
                List::Category(category, Sort::Newest) => (keys.category_newest(g, category), true),
                List::Library(user) => (keys.user_library(g, user), true),
            };
            vec![
                Op::Range {
                    key: key.clone(),
                    start,
                    stop,
                    rev,
                },
                Op::Count(key),
            ]
        };
        let (projection, (total, cards)) = self
            .then_cards(first, |values| {
                let mut values = values.into_iter();
                let members: Vec<String> = convert(values.next(), "list")?;
                let total = values.next().map(zcard).transpose()?.unwrap_or(0);
                let ids = members
                    .iter()
                    .map(|m| m.parse::<i64>().map_err(|_| Corrupt::new("list member", m)))
                    .collect::<Result<Vec<_>, _>>()?;
                Ok((total, ids))
            })
            .await?;
        Ok((
            projection,
            ListPage {
                cards: cards.into_iter().flatten().collect(),
                total,
            },
        ))
    }

    /// An event view and its courses' cards: two round trips, or none when
    /// the event is pre-warmed (and `cached`).
    pub async fn event(
        &self,
        id: i64,
        cached: bool,
        now: DateTime<Utc>,
    ) -> Result<(Projection, Option<Event>), StoreError> {
        if cached {
            if let Some(hit) = self.warm.event(id, now) {
                return Ok((Self::warm_projection(&hit), Some(hit.value)));
            }
        }
        let read = self
            .then_cards(
                |keys, g| vec![Op::Get(keys.event_view(g, id))],
                |values| {
                    let Some(json) = views_of(values, "event view")?.pop().flatten() else {
                        return Ok((None, Vec::new()));
                    };
                    let event: EventView = serde_json::from_slice(&json)
                        .map_err(|err| Corrupt::new("event view", err))?;
                    let ids = event.course_ids.clone();
                    Ok((Some(event), ids))
                },
            )
            .await;
        let (projection, (event, cards)) = match read {
            Err(err) if cached && self.stale_allowed(&err) => {
                return match self.warm.event_any_age(id, now) {
                    Some(hit) => Ok((Self::warm_projection(&hit), Some(hit.value))),
                    None => Err(err),
                };
            }
            other => other?,
        };
        let page = event.map(|event| {
            Event::Stored(EventPage {
                event,
                cards: cards.into_iter().flatten().collect(),
            })
        });
        Ok((projection, page))
    }

    /// One view, decoded: one round trip.
    async fn one_view(
        &self,
        key: impl Fn(&Keys, u64) -> String,
    ) -> Result<(Projection, Option<Bytes>), StoreError> {
        let (projection, values) = self.read(|keys, g| vec![Op::Get(key(keys, g))]).await?;
        let view = views_of(values, "view")?.pop().flatten();
        Ok((projection, view))
    }

    /// A first pipeline whose results name course ids (`ids_of` also returns
    /// whatever else the caller needs from them), then one pipeline for those
    /// courses' cards in the same generation. Starts over if the generation
    /// moved in between.
    async fn then_cards<T>(
        &self,
        first: impl Fn(&Keys, u64) -> Vec<Op>,
        ids_of: impl Fn(Vec<Value>) -> Result<(T, Vec<i64>), StoreError>,
    ) -> Result<(Projection, (T, Vec<Option<Bytes>>)), StoreError> {
        for _ in 0..ATTEMPTS {
            let (projection, values) = self.read(&first).await?;
            let (found, ids) = ids_of(values)?;
            if ids.is_empty() {
                return Ok((projection, (found, Vec::new())));
            }
            let (distinct, slots) = distinct(&ids);
            let cards = distinct
                .iter()
                .map(|id| Op::Get(self.keys.course_card(projection.generation, *id)))
                .collect();
            match self.attempt(projection.generation, cards).await? {
                Attempt::Read(_, values) => {
                    let cards = in_slots(views_of(values, "course card")?, &slots);
                    return Ok((projection, (found, cards)));
                }
                Attempt::Moved(generation) => self.remember(generation),
            }
        }
        Err(StoreError::Rebuilding)
    }

    /// One pipeline of `ops` in the live generation, starting from the one
    /// last seen; a moved marker costs another round trip.
    async fn read(
        &self,
        ops: impl Fn(&Keys, u64) -> Vec<Op>,
    ) -> Result<(Projection, Vec<Value>), StoreError> {
        let mut generation = self
            .generation
            .read()
            .map(|g| *g)
            .unwrap_or(None)
            .unwrap_or(0);
        for _ in 0..ATTEMPTS {
            match self
                .attempt(generation, ops(&self.keys, generation))
                .await?
            {
                Attempt::Read(projection, values) => return Ok((projection, values)),
                Attempt::Moved(live) => {
                    generation = live;
                    self.remember(live);
                }
            }
        }
        Err(StoreError::Rebuilding)
    }

    fn remember(&self, generation: u64) {
        if let Ok(mut g) = self.generation.write() {
            *g = Some(generation);
        }
    }

    /// Marker, watermark of `generation`, `ops` (and the marker again unless
    /// sent as one MGET): one round trip.
    async fn attempt(&self, generation: u64, ops: Vec<Op>) -> Result<Attempt, StoreError> {
        self.connected()?;
        let clustered = self.client.is_clustered();
        let floor = if clustered {
            Some(self.floor_for(generation).await?)
        } else {
            None
        };
        let sent = std::time::Instant::now();
        let atomic = !clustered && ops.iter().all(Op::is_get);
        let mut values = if atomic {
            let mut keys: Vec<Key> = Vec::with_capacity(ops.len() + 2);
            keys.push(self.marker_key.clone());
            keys.push(self.keys.watermark(generation).into());
            keys.extend(ops.into_iter().filter_map(Op::into_get_key));
            self.gather.mget(keys).await?
        } else {
            let pipe = self.client.pipeline();
            let _: () = pipe.get(self.marker_key.clone()).await?;
            let _: () = pipe.get(self.keys.watermark(generation)).await?;
            for op in ops {
                queue(&pipe, op).await?;
            }
            let _: () = pipe.get(self.marker_key.clone()).await?;
            pipe.all::<Vec<Value>>().await?
        };
        self.metrics.record_redis(sent.elapsed());

        // An MGET's keys are read at one instant: its marker closes it too.
        let closing = if atomic {
            None
        } else {
            Some(self.parsed.marker(values.pop())?)
        };
        let mut values = values.into_iter();
        let opening = self.parsed.marker(values.next())?;
        let closing = closing.unwrap_or(opening);
        let (Some(opening), Some(closing)) = (opening, closing) else {
            return Err(StoreError::Rebuilding);
        };
        if opening.generation != generation || closing.generation != generation {
            return Ok(Attempt::Moved(closing.generation));
        }
        let mut watermark = self.parsed.watermark(values.next())?;
        if let Some(floor) = floor {
            // This watermark's read is complete now: later reads may report it.
            generation::raise(&self.floor, generation, watermark);
            watermark = floor.watermark.clone();
        }
        let projection = Projection {
            generation,
            watermark,
            stale: closing.stale,
        };
        Ok(Attempt::Read(projection, values.collect()))
    }
}

/// Where Redis is, as the logs name it: `host:port`, or the cluster's
/// nodes joined by commas; never the URL's credentials.
fn redis_address(url: &views::RedisUrl) -> String {
    url.nodes()
        .iter()
        .map(|(host, port)| format!("{host}:{port}"))
        .collect::<Vec<_>>()
        .join(",")
}
