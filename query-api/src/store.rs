//! Reads of the views in Redis, through the key layout of the `views` crate:
//! the query end of command → projector → query.
//!
//! Every read is one pipeline, so one round trip per Redis node whatever the
//! number of keys: the generation marker, that generation's watermark, the
//! keys asked for, and the marker again. The closing marker proves the
//! generation stayed live while its keys were read: the projector deletes a
//! generation only after switching the marker away from it, so an unchanged
//! marker means no key read was deleted in between. A list (a ranking, a
//! library, an event) takes a second pipeline for its cards, closed by the
//! marker the same way: two round trips whatever its length.
//!
//! On a single Redis a read made only of GETs is sent as one MGET of the
//! marker, the watermark and the keys: one command instead of one per key
//! (a client's per-command cost dominates a 125-card cart), and read at one
//! instant, so the marker read with the keys proves its generation was live
//! for all of them and no closing marker is needed. Reads that arrive while
//! such an MGET is on its way share the next one (`crate::gather`): each
//! still gets its keys read at one instant. In cluster mode the keys live on
//! several nodes, so they stay separate GETs that the client routes per node.
//!
//! A cluster runs the commands of one pipeline on several nodes in no set
//! order, which costs two of the guarantees above their proof. The closing
//! marker no longer proves the keys on other nodes were read before a
//! switch: the projector waits well past a read's timeout before deleting
//! an old generation from a cluster. And the watermark read beside the views
//! may be newer than they are: a read in cluster mode reports instead the
//! watermark of an earlier round trip that completed before it was sent
//! (the freshest one seen), never more than the views it read hold.

use std::{
    collections::HashMap,
    sync::{atomic::Ordering::Relaxed, Arc, Mutex, RwLock},
};

use arc_swap::ArcSwapOption;
use axum::http::HeaderValue;
use bytes::{Buf, Bytes};
use tokio::sync::OnceCell;

use chrono::{DateTime, Utc};
use fred::{
    clients::Pipeline,
    prelude::*,
    types::{Key, Value},
};
use views::{EventView, GenerationMarker, Keys, Lsn};

use crate::{
    error::ApiError,
    params::{Page, Sort},
    prewarm::Prewarm,
    served::{Card, CardList, Course, Event, EventPage},
};

/// Attempts before a read whose generation keeps moving gives up with 503.
const ATTEMPTS: usize = 3;

/// The state of the projection a read saw: what the response headers say.
#[derive(Debug, Clone)]
pub struct Projection {
    generation: u64,
    /// The watermark of the generation read: every change up to it is in
    /// what was read (it is read before the views, which only move forward).
    pub lsn: Lsn,
    /// `lsn` as a header value, when made ahead (pre-warmed reads, and
    /// Redis reads of a watermark seen before).
    pub lsn_header: Option<HeaderValue>,
    /// A replacement generation is being built; this one may lag.
    pub stale: bool,
}

/// A list of course ids kept as a sorted set.
#[derive(Debug, Clone, Copy)]
pub enum List<'a> {
    /// A category's courses in the given order.
    Category(&'a str, Sort),
    /// A user's library, newest enrollment first.
    Library(i64),
}

/// A page of a list: the stored cards of its ids, in list order (ids whose
/// card is missing are skipped), and the length of the whole list.
pub struct ListPage {
    pub cards: Vec<Bytes>,
    pub total: u64,
}

/// One command of a pipeline.
enum Op {
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
}

/// A watermark known to be applied before any read sent after it was seen.
#[derive(Debug)]
struct Floor {
    generation: u64,
    lsn: Lsn,
    header: Option<HeaderValue>,
}

/// The generation marker and watermark last read, with their parse: every
/// read gets both back (the marker twice), and they change only when the
/// projector flushes, so a read whose bytes are the same ones skips the JSON
/// parse of the marker and the parse and formatting of the LSN.
#[derive(Default)]
struct Parsed {
    marker: ArcSwapOption<(Bytes, Marker)>,
    watermark: ArcSwapOption<(Bytes, Lsn, Option<HeaderValue>)>,
}

/// What a read needs of a [`GenerationMarker`].
#[derive(Debug, Clone, Copy)]
struct Marker {
    generation: u64,
    /// A replacement generation is being built.
    building: bool,
}

/// A course's page as Redis holds it, and its stats' JSON.
type CourseParts = (Bytes, Bytes);

/// The shared outcome of one course read (`Err(true)`: no live generation).
type CourseRead = OnceCell<Result<(Projection, Option<CourseParts>), bool>>;

impl Store {
    /// Connects to Redis: one Redis, or a cluster (see [`views::RedisUrl`]).
    /// `timeout` bounds each command and connection attempt.
    pub async fn connect(
        url: &views::RedisUrl,
        keys: Keys,
        prewarm_window: std::time::Duration,
        timeout: std::time::Duration,
        metrics: Arc<crate::metrics::Metrics>,
    ) -> Result<Self, fred::error::Error> {
        let mut config = url.config();
        // A first connection that fails goes through the reconnect policy
        // like any other; fred's default gives up on it for good, so a query
        // API started before Redis would never serve.
        config.fail_fast = false;
        let client = Builder::from_config(config)
            .with_connection_config(|c| {
                c.connection_timeout = timeout;
            })
            .with_performance_config(|p| {
                p.default_command_timeout = timeout;
            })
            .set_policy(ReconnectPolicy::new_exponential(0, 100, 2_000, 2))
            .build()?;
        // Connect in the background: the API serves 503 until Redis answers
        // instead of refusing to start. The first attempt is awaited (at most
        // `timeout`) so that reads right after start do not find it pending.
        // Reads answer 503 without sending while Redis is away (see
        // `connected`), so no read logs the outage: it is logged here, once
        // per lost connection or failed reconnection attempt.
        client.on_error(|(error, server)| async move {
            let server = server.as_ref().map(tracing::field::display);
            tracing::warn!(error = %error, server, "redis connection failed: reads answer 503 until it is back");
            Ok(())
        });
        client.on_reconnect(|server| async move {
            tracing::info!(%server, "redis connected");
            Ok(())
        });
        client.connect();
        let _ = tokio::time::timeout(timeout, client.wait_for_connect()).await;
        Ok(Self {
            warm: Arc::new(Prewarm::new(client.clone(), keys.clone(), prewarm_window)),
            gather: crate::gather::Gather::new(client.clone()),
            client,
            marker_key: Key::from(keys.generation_marker()),
            keys,
            generation: Arc::new(RwLock::new(None)),
            inflight: Arc::new(Mutex::new(HashMap::new())),
            parsed: Arc::default(),
            floor: Arc::default(),
            metrics,
        })
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
            lsn: hit.lsn,
            lsn_header: hit.lsn_header.clone(),
            stale: hit.stale,
        }
    }

    /// `Unavailable` at once while the client is not connected: a command
    /// sent then would wait in fred's queue for a reconnection or the whole
    /// command timeout, and the caller would get the same 503 only later.
    /// Reads the pre-warmed set answers never come here.
    fn connected(&self) -> Result<(), ApiError> {
        if self.client.is_connected() {
            Ok(())
        } else {
            Err(ApiError::Unavailable)
        }
    }

    /// Redis answers a PING.
    pub async fn ping(&self) -> bool {
        self.connected().is_ok() && self.client.ping::<()>(None).await.is_ok()
    }

    /// The live generation marker.
    pub async fn marker(&self) -> Result<Option<GenerationMarker>, ApiError> {
        self.connected()?;
        let raw: Option<String> = self.client.get(self.marker_key.clone()).await?;
        Ok(raw.and_then(|r| serde_json::from_str(&r).ok()))
    }

    /// The last watermark this process read, of whichever generation: a
    /// hint of how far the projection is, never a proof.
    pub fn last_seen_lsn(&self) -> Option<Lsn> {
        self.parsed.watermark.load().as_ref().map(|w| w.1)
    }

    /// The watermark of the live generation (503 `rebuilding` if none is live).
    pub async fn projection_lsn(&self) -> Result<Lsn, ApiError> {
        let marker = self.marker().await?.ok_or(ApiError::Rebuilding)?;
        Ok(self.read_floor(marker.generation).await?.lsn)
    }

    /// Reads the watermark of `generation` on its own and raises the floor
    /// to it: every read sent after this returns may report it.
    async fn read_floor(&self, generation: u64) -> Result<Arc<Floor>, ApiError> {
        self.connected()?;
        let raw: Option<Value> = self.client.get(self.keys.watermark(generation)).await?;
        let (lsn, header) = self.parsed.watermark(raw)?;
        Ok(self.raise_floor(generation, lsn, header))
    }

    /// The floor after a completed read of `generation`'s watermark: the
    /// freshest seen of the newest generation (generations only grow).
    fn raise_floor(&self, generation: u64, lsn: Lsn, header: Option<HeaderValue>) -> Arc<Floor> {
        let seen = Arc::new(Floor {
            generation,
            lsn,
            header,
        });
        let previous = self.floor.rcu(|current| match current {
            Some(f) if (f.generation, f.lsn) >= (generation, lsn) => Some(f.clone()),
            _ => Some(seen.clone()),
        });
        match previous {
            Some(f) if f.generation == generation && f.lsn > lsn => f,
            _ => seen,
        }
    }

    /// What a read of `generation` sent now may report in cluster mode: the
    /// floor, read first if it is of another generation (once per switch).
    async fn floor_for(&self, generation: u64) -> Result<Arc<Floor>, ApiError> {
        match self.floor.load_full() {
            Some(floor) if floor.generation == generation => Ok(floor),
            _ => self.read_floor(generation).await,
        }
    }

    /// The course page of `id`: served already when pre-warmed (and right
    /// at `now`), else its stored page and stats, read together in one
    /// round trip. `cached`: a pre-warmed copy may answer, and concurrent
    /// reads of one course share one Redis read; a caller that waited for
    /// its `X-Min-Lsn` passes `false` and reads Redis itself.
    pub async fn course(
        &self,
        id: i64,
        cached: bool,
        now: DateTime<Utc>,
    ) -> Result<(Projection, Option<Course>), ApiError> {
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
            let mut inflight = self.inflight.lock().map_err(|_| ApiError::Unavailable)?;
            inflight.entry(id).or_default().clone()
        };
        let result = cell
            .get_or_init(|| async {
                Box::pin(self.course_parts(id))
                    .await
                    .map_err(|err| matches!(err, ApiError::Rebuilding))
            })
            .await
            .clone();
        if let Ok(mut inflight) = self.inflight.lock() {
            if inflight.get(&id).is_some_and(|c| Arc::ptr_eq(c, &cell)) {
                inflight.remove(&id);
            }
        }
        match result {
            Ok((projection, parts)) => Ok((projection, parts.map(stored))),
            Err(true) => Err(ApiError::Rebuilding),
            Err(false) => Err(ApiError::Unavailable),
        }
    }

    /// A course's page as stored (still encoded: it is decoded straight
    /// into the served body) and its stats, in one round trip; `None` unless
    /// both are there (the projector writes them together).
    async fn course_parts(&self, id: i64) -> Result<(Projection, Option<CourseParts>), ApiError> {
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
    pub async fn order(&self, id: i64) -> Result<(Projection, Option<Bytes>), ApiError> {
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
    ) -> Result<(Projection, Vec<i64>), ApiError> {
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
    ) -> Result<(Projection, ListPage), ApiError> {
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
                    .map(|m| {
                        m.parse::<i64>()
                            .map_err(|_| ApiError::corrupt("list member", m))
                    })
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
    ) -> Result<(Projection, Option<Event>), ApiError> {
        if cached {
            if let Some(hit) = self.warm.event(id, now) {
                return Ok((Self::warm_projection(&hit), Some(hit.value)));
            }
        }
        let (projection, (event, cards)) = self
            .then_cards(
                |keys, g| vec![Op::Get(keys.event_view(g, id))],
                |values| {
                    let Some(json) = views_of(values, "event view")?.pop().flatten() else {
                        return Ok((None, Vec::new()));
                    };
                    let event: EventView = serde_json::from_slice(&json)
                        .map_err(|err| ApiError::corrupt("event view", err))?;
                    let ids = event.course_ids.clone();
                    Ok((Some(event), ids))
                },
            )
            .await?;
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
    ) -> Result<(Projection, Option<Bytes>), ApiError> {
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
        ids_of: impl Fn(Vec<Value>) -> Result<(T, Vec<i64>), ApiError>,
    ) -> Result<(Projection, (T, Vec<Option<Bytes>>)), ApiError> {
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
        Err(ApiError::Rebuilding)
    }

    /// One pipeline of `ops` in the live generation, starting from the one
    /// last seen; a moved marker costs another round trip.
    async fn read(
        &self,
        ops: impl Fn(&Keys, u64) -> Vec<Op>,
    ) -> Result<(Projection, Vec<Value>), ApiError> {
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
        Err(ApiError::Rebuilding)
    }

    fn remember(&self, generation: u64) {
        if let Ok(mut g) = self.generation.write() {
            *g = Some(generation);
        }
    }

    /// Marker, watermark of `generation`, `ops` (and the marker again unless
    /// sent as one MGET): one round trip.
    async fn attempt(&self, generation: u64, ops: Vec<Op>) -> Result<Attempt, ApiError> {
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
            return Err(ApiError::Rebuilding);
        };
        if opening.generation != generation || closing.generation != generation {
            return Ok(Attempt::Moved(closing.generation));
        }
        let (mut lsn, mut lsn_header) = self.parsed.watermark(values.next())?;
        if let Some(floor) = floor {
            // This watermark's read is complete now: later reads may report it.
            self.raise_floor(generation, lsn, lsn_header);
            (lsn, lsn_header) = (floor.lsn, floor.header.clone());
        }
        let projection = Projection {
            generation,
            lsn,
            lsn_header,
            stale: closing.building,
        };
        Ok(Attempt::Read(projection, values.collect()))
    }
}

impl Parsed {
    /// The marker in `value` (`None`: no live generation), parsed unless
    /// it is the bytes parsed last.
    fn marker(&self, value: Option<Value>) -> Result<Option<Marker>, ApiError> {
        let Some(raw) = convert::<Option<Bytes>>(value, "generation marker")? else {
            return Ok(None);
        };
        if let Some(last) = &*self.marker.load() {
            if last.0 == raw {
                return Ok(Some(last.1));
            }
        }
        let parsed: GenerationMarker = serde_json::from_slice(&raw)
            .map_err(|err| ApiError::corrupt("generation marker", err))?;
        let marker = Marker {
            generation: parsed.generation,
            building: parsed.building.is_some(),
        };
        self.marker.store(Some(Arc::new((raw, marker))));
        Ok(Some(marker))
    }

    /// The watermark in `value` and its header value, parsed and formatted
    /// unless it is the bytes seen last (absent or unreadable: 0/0, as
    /// before a generation's first flush).
    fn watermark(&self, value: Option<Value>) -> Result<(Lsn, Option<HeaderValue>), ApiError> {
        let Some(raw) = convert::<Option<Bytes>>(value, "watermark")? else {
            return Ok((Lsn::default(), None));
        };
        if let Some(last) = &*self.watermark.load() {
            if last.0 == raw {
                return Ok((last.1, last.2.clone()));
            }
        }
        let lsn: Lsn = std::str::from_utf8(&raw)
            .ok()
            .and_then(|w| w.parse().ok())
            .unwrap_or_default();
        let header = HeaderValue::try_from(lsn.to_string()).ok();
        self.watermark
            .store(Some(Arc::new((raw, lsn, header.clone()))));
        Ok((lsn, header))
    }
}

impl Op {
    fn is_get(&self) -> bool {
        matches!(self, Op::Get(_))
    }

    fn into_get_key(self) -> Option<Key> {
        match self {
            Op::Get(key) => Some(key.into()),
            _ => None,
        }
    }
}

async fn queue(pipe: &Pipeline<Client>, op: Op) -> Result<(), fred::error::Error> {
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
fn distinct(ids: &[i64]) -> (Vec<i64>, Vec<usize>) {
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
fn in_slots(values: Vec<Option<Bytes>>, slots: &[usize]) -> Vec<Option<Bytes>> {
    if values.len() == slots.len() {
        return values;
    }
    slots.iter().map(|&i| values[i].clone()).collect()
}

fn convert<T: FromValue>(value: Option<Value>, what: &str) -> Result<T, ApiError> {
    value
        .unwrap_or(Value::Null)
        .convert()
        .map_err(|err| ApiError::corrupt(what, err))
}

fn zcard(value: Value) -> Result<u64, ApiError> {
    convert(Some(value), "list length")
}

/// Stored view values decoded to their JSON (`None`: no such key).
fn views_of(values: Vec<Value>, what: &str) -> Result<Vec<Option<Bytes>>, ApiError> {
    values
        .into_iter()
        .map(|value| {
            let Some(value) = convert::<Option<Bytes>>(Some(value), what)? else {
                return Ok(None);
            };
            let decoded = match views::decode(&value) {
                Ok(std::borrow::Cow::Borrowed(_)) => None,
                Ok(std::borrow::Cow::Owned(json)) => Some(Bytes::from(json)),
                Err(err) => return Err(ApiError::corrupt(what, err)),
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
