//! Redis: the destination of the views.
//!
//! Guarantee: applying the same changes twice is a no-op. Delivery from the
//! slot is at-least-once (a restart replays everything after the confirmed
//! position), so every entity carries the stamp of the last change applied to
//! it, checked and set by the same Lua script that applies the change.
//!
//! Lua cannot decompress LZ4, so a course keeps its aggregates uncompressed
//! (hash: row fields, active students `n`, `stamp`; sorted set: company
//! tallies; the heavy HTML in a hash of its own, so counting an enrollment
//! never copies it); events and orders keep theirs likewise. Step one
//! applies the entries newer than the stamp and always returns the
//! aggregates; the projector renders the views; step two writes the encoded
//! views only if their own stamp (`vstamp`) is older. A crash between the
//! two is healed by the replay, because step one still returns the
//! aggregates when it skips. Both steps are functions of one script
//! ([`VIEWS`]), which runs a batch of them per command.
//!
//! A course's page (its row's fields) is rendered and written only in a
//! flush that changed one of them; every other change rewrites its small
//! stats and card. On a replay the same entries ask for the page again.

use std::{
    collections::{BTreeSet, HashMap},
    sync::{Arc, Mutex},
    time::Instant,
};

use bytes::{Bytes, BytesMut};
use fred::{
    clients::Pipeline,
    prelude::*,
    types::{scripts::Script, ClusterHash, CustomCommand},
};
use futures_util::future::try_join_all;
use views::{GenerationMarker, Keys, Lsn};

use crate::projection::{
    aggregate_of, course_event_ids, parse_pg_timestamp, render_course, render_event, render_order,
    top_five, Batch, Entity, Entry, EventTerms, KnownCourse, LibraryOp,
};

/// The loop both apply functions share: applies the entries in
/// ARGV[first..stop] that are newer than `last`, moving `last` to each one
/// applied. Entries: `stamp 'f' n (field value)*n` or
/// `stamp 'e' delta company event`.
macro_rules! apply_entries {
    () => {
        r#"
  local i = first
  while i <= stop do
    local stamp, kind = ARGV[i], ARGV[i + 1]
    if kind == 'e' then
      if stamp > last then
        local delta = tonumber(ARGV[i + 2])
        redis.call('HINCRBY', agg, 'n', delta)
        local company = ARGV[i + 3]
        if company ~= '' then
          local score = tonumber(redis.call('ZINCRBY', companies, -delta, company))
          if score >= 0 then redis.call('ZREM', companies, company) end
        end
        if ARGV[i + 4] ~= '' then
          redis.call('HINCRBY', agg, 'cl:' .. ARGV[i + 4], delta)
        end
        last = stamp
      end
      i = i + 5
    else
      local n = tonumber(ARGV[i + 2])
      if stamp > last then
        local pairs = {}
        for j = 0, n - 1 do
          local field, value = ARGV[i + 3 + 2 * j], ARGV[i + 4 + 2 * j]
          if field == 'description_html' then
            redis.call('HSET', text, field, value)
          else
            pairs[#pairs + 1] = field
            pairs[#pairs + 1] = value
          end
        end
        if #pairs > 0 then redis.call('HSET', agg, unpack(pairs)) end
        last = stamp
      end
      i = i + 3 + 2 * n
    end
  end
"#
    };
}

/// The one script that writes views: a batch of calls, each applying one
/// entity's changes with one of the three functions below (all keys of a
/// call share the entity's hash tag). A batch costs Redis and the client one
/// command however many calls it holds: fred flushes its socket after every
/// script command, so one command per entity was one system call per
/// entity. A call in ARGV is `kind nkeys nargs arg*` (`kind`: `a` apply,
/// `k` apply a known course, `w` write views), its keys next in KEYS.
/// Returns each call's result, in order.
///
/// `apply(k, a, stop)`: applies the entries (from ARGV[a+3]) newer than the
/// stored stamp; returns the aggregate hash (flat; `description_html` too
/// when the flags ARGV[a] hold `p`) and the company tallies (flat, with
/// scores: the top five, or all when the flags hold `t`). With a view stamp
/// in ARGV[a+1], the caller rendered the view (ARGV[a+2]) from the entries
/// alone: it is written to the fourth key if newer than the stored one,
/// and 0 is returned.
///
/// `apply_known(k, a, stop)`: applies a known course's entries and writes
/// the stats and card the projector rendered from them (ARGV[a+1],
/// ARGV[a+2]), but only if Redis is at the stamp that state was derived
/// from (ARGV[a]): returns 1, else 0 and changes nothing.
///
/// `write_views(k, nk, a)`: writes rendered views (the keys after the
/// aggregate's, with the values after ARGV[a]) only if they are newer
/// (ARGV[a]) than the ones stored, whose stamp is `vstamp` in the
/// aggregate (the first key); returns 1 if it wrote.
const VIEWS: &str = concat!(
    r#"
local function apply(k, a, stop)
  local agg, companies, text, view = KEYS[k], KEYS[k + 1], KEYS[k + 2], KEYS[k + 3]
  local flags, vstamp, value = ARGV[a], ARGV[a + 1], ARGV[a + 2]
  local last = redis.call('HGET', agg, 'stamp') or ''
  local stored = last
  local first = a + 3
"#,
    apply_entries!(),
    r#"
  if last ~= stored then redis.call('HSET', agg, 'stamp', last) end
  if vstamp ~= '' then
    if vstamp > (redis.call('HGET', agg, 'vstamp') or '') then
      redis.call('SET', view, value)
      redis.call('HSET', agg, 'vstamp', vstamp)
    end
    return 0
  end
  local out = redis.call('HGETALL', agg)
  if string.find(flags, 'p', 1, true) then
    local html = redis.call('HGET', text, 'description_html')
    if html then
      out[#out + 1] = 'description_html'
      out[#out + 1] = html
    end
  end
  local top = 4
  if string.find(flags, 't', 1, true) then top = -1 end
  return {out, redis.call('ZRANGE', companies, 0, top, 'WITHSCORES')}
end

local function apply_known(k, a, stop)
  local agg, companies, text, stats, card = KEYS[k], KEYS[k + 1], KEYS[k + 2], KEYS[k + 3], KEYS[k + 4]
  local last = redis.call('HGET', agg, 'stamp') or ''
  if last ~= ARGV[a] then return 0 end
  local first = a + 3
"#,
    apply_entries!(),
    r#"
  redis.call('HSET', agg, 'stamp', last, 'vstamp', last)
  redis.call('MSET', stats, ARGV[a + 1], card, ARGV[a + 2])
  return 1
end

local function write_views(k, nk, a)
  if ARGV[a] > (redis.call('HGET', KEYS[k], 'vstamp') or '') then
    local pairs = {}
    for j = 1, nk - 1 do
      pairs[#pairs + 1] = KEYS[k + j]
      pairs[#pairs + 1] = ARGV[a + j]
    end
    redis.call('MSET', unpack(pairs))
    redis.call('HSET', KEYS[k], 'vstamp', ARGV[a])
    return 1
  end
  return 0
end

local out, k, a = {}, 1, 1
while a <= #ARGV do
  local kind, nk, na = ARGV[a], tonumber(ARGV[a + 1]), tonumber(ARGV[a + 2])
  a = a + 3
  if kind == 'a' then
    out[#out + 1] = apply(k, a, a + na - 1)
  elseif kind == 'k' then
    out[#out + 1] = apply_known(k, a, a + na - 1)
  else
    out[#out + 1] = write_views(k, nk, a)
  end
  k = k + nk
  a = a + na
end
return out
"#
);

/// How many courses' aggregates the projector keeps in memory at most
/// (a few hundred bytes each, more for a course with many companies).
pub(crate) const KNOWN_COURSES: usize = 50_000;

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

/// A Redis failure while writing views.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error("redis: {0}")]
    Redis(#[from] fred::error::Error),
    #[error("unexpected reply from a view script: {0}")]
    Reply(String),
}

/// Writes one generation's views.
#[derive(Clone)]
pub struct Sink {
    client: Client,
    keys: Keys,
    views: Script,
    /// Terms of the events seen so far (events never change once created).
    events: Arc<Mutex<HashMap<i64, EventTerms>>>,
    /// Courses whose aggregate this process knows, by (generation, id).
    known: Arc<Mutex<HashMap<(u64, i64), KnownCourse>>>,
}

impl Sink {
    /// Connects to Redis: one Redis, or a cluster (see [`views::RedisUrl`]).
    pub async fn connect(url: &views::RedisUrl, keys: Keys) -> Result<Self, SinkError> {
        let client = Builder::from_config(url.config())
            .with_connection_config(|c| {
                c.connection_timeout = std::time::Duration::from_secs(5);
            })
            .set_policy(ReconnectPolicy::new_exponential(0, 100, 5_000, 2))
            .build()?;
        client.init().await?;
        let sink = Self {
            client,
            keys,
            views: Script::from_lua(VIEWS),
            events: Arc::new(Mutex::new(HashMap::new())),
            known: Arc::new(Mutex::new(HashMap::new())),
        };
        sink.load_scripts().await?;
        Ok(sink)
    }

    /// Remembers the aggregates of the courses `ids` of `generation` as
    /// Redis holds them, so that the first enrollment of each after a
    /// start is applied and written in one step instead of being read back
    /// first. Safe whatever happens meanwhile: what is remembered is only
    /// used if Redis still holds its stamp, and a course a flush remembered
    /// first is left alone. Stops at the memory's bound.
    pub async fn preload_known(&self, generation: u64, ids: &[i64]) -> Result<usize, SinkError> {
        let mut loaded = 0;
        for chunk in ids.chunks(256) {
            let pipe = self.client.pipeline();
            for &id in chunk {
                pipe.hgetall::<(), _>(self.keys.course_agg(generation, id))
                    .await?;
                pipe.zrange::<(), _, _, _>(
                    self.keys.course_companies(generation, id),
                    0,
                    -1,
                    None,
                    false,
                    None,
                    true,
                )
                .await?;
            }
            let replies: Vec<Value> = pipe.all().await?;
            let mut known = self
                .known
                .lock()
                .map_err(|_| SinkError::Reply("poisoned".into()))?;
            for (&id, pair) in chunk.iter().zip(replies.chunks_exact(2)) {
                if known.len() >= KNOWN_COURSES {
                    return Ok(loaded);
                }
                let reply = Value::Array(pair.to_vec());
                let Ok((agg, top)) = parse_apply_reply(reply) else {
                    continue;
                };
                if !agg.contains_key("stamp") || known.contains_key(&(generation, id)) {
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

    /// Writes to a Redis Cluster, not one Redis.
    pub fn is_clustered(&self) -> bool {
        self.client.is_clustered()
    }

    /// The Redis client (for marker and watermark reads).
    pub fn client(&self) -> &Client {
        &self.client
    }

    async fn load_scripts(&self) -> Result<(), SinkError> {
        let lua = self.views.lua().map(|s| s.to_string()).unwrap_or_default();
        if self.client.is_clustered() {
            self.client.script_load_cluster::<(), _>(lua).await?;
        } else {
            self.client.script_load::<(), _>(lua).await?;
        }
        Ok(())
    }

    /// Refuses a Redis that could evict views (SPEC: `noeviction` only); in
    /// a cluster, every primary holds views, so every primary is asked.
    pub async fn check_no_eviction(&self) -> anyhow::Result<()> {
        let policy = |reply: Vec<String>| reply.get(1).cloned().unwrap_or_default();
        let policies = if self.client.is_clustered() {
            let primaries = self
                .client
                .cached_cluster_state()
                .map(|state| state.unique_primary_nodes())
                .unwrap_or_default();
            anyhow::ensure!(!primaries.is_empty(), "the redis cluster lists no primary");
            let mut policies = Vec::with_capacity(primaries.len());
            for node in primaries {
                let reply: Vec<String> = self
                    .client
                    .with_cluster_node(node.clone())
                    .config_get("maxmemory-policy")
                    .await?;
                policies.push((node.to_string(), policy(reply)));
            }
            policies
        } else {
            let reply: Vec<String> = self.client.config_get("maxmemory-policy").await?;
            vec![("redis".to_owned(), policy(reply))]
        };
        for (node, policy) in policies {
            anyhow::ensure!(
                policy == "noeviction",
                "{node}: maxmemory-policy is {policy:?}: views must never be evicted, set it to noeviction"
            );
        }
        Ok(())
    }

    /// The live generation marker, if any.
    pub async fn marker(&self) -> Result<Option<GenerationMarker>, SinkError> {
        let raw: Option<String> = self.client.get(self.keys.generation_marker()).await?;
        Ok(raw.and_then(|r| serde_json::from_str(&r).ok()))
    }

    /// Makes `generation` the one readers use.
    pub async fn set_marker(&self, marker: &GenerationMarker) -> Result<(), SinkError> {
        let json = serde_json::to_string(marker).map_err(|e| SinkError::Reply(e.to_string()))?;
        self.client
            .set::<(), _, _>(self.keys.generation_marker(), json, None, None, false)
            .await?;
        Ok(())
    }

    /// Asks the running daemon for a rebuild.
    pub async fn request_rebuild(&self) -> Result<(), SinkError> {
        let now = chrono::Utc::now().to_rfc3339();
        self.client
            .set::<(), _, _>(self.keys.rebuild_request(), now, None, None, false)
            .await?;
        Ok(())
    }

    /// Takes a pending rebuild request, if any.
    pub async fn take_rebuild_request(&self) -> Result<bool, SinkError> {
        Ok(self
            .client
            .del::<u64, _>(self.keys.rebuild_request())
            .await?
            > 0)
    }

    /// A rebuild was asked for and not yet taken.
    pub async fn rebuild_requested(&self) -> Result<bool, SinkError> {
        Ok(self
            .client
            .exists::<u64, _>(self.keys.rebuild_request())
            .await?
            > 0)
    }

    /// A fresh generation number, never used before: at least the time in
    /// milliseconds, so that even after Redis lost the counter a new
    /// generation cannot collide with keys a stale writer left behind.
    pub async fn next_generation(&self) -> Result<u64, SinkError> {
        let counter: Option<u64> = self.client.get(self.keys.generation_counter()).await?;
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        let generation = now_ms.max(counter.unwrap_or(0) + 1);
        self.client
            .set::<(), _, _>(
                self.keys.generation_counter(),
                generation,
                None,
                None,
                false,
            )
            .await?;
        Ok(generation)
    }

    /// The watermark of `generation`: every change up to it is applied.
    pub async fn watermark(&self, generation: u64) -> Result<Option<Lsn>, SinkError> {
        let raw: Option<String> = self.client.get(self.keys.watermark(generation)).await?;
        Ok(raw.and_then(|r| r.parse().ok()))
    }

    /// Records that every change up to `lsn` is applied in `generation`.
    pub async fn set_watermark(&self, generation: u64, lsn: Lsn) -> Result<(), SinkError> {
        self.client
            .set::<(), _, _>(
                self.keys.watermark(generation),
                lsn.to_string(),
                None,
                None,
                false,
            )
            .await?;
        Ok(())
    }

    /// Deletes every view key and watermark of generations older than
    /// `live` (the one switched from, and whatever a writer left after Redis
    /// lost its marker), on every primary of a cluster. Newer generations
    /// are left alone: one may be building already (generation numbers only
    /// grow, see [`Sink::next_generation`]).
    pub async fn delete_older_generations(&self, live: u64) -> Result<u64, SinkError> {
        let mut deleted = 0;
        for pattern in [
            self.keys.all_generations_pattern(),
            self.keys.all_watermarks_pattern(),
        ] {
            deleted += views::delete_matching(&self.client, &pattern, |key| {
                self.keys.generation_of(key).is_none_or(|g| g >= live)
            })
            .await?;
        }
        Ok(deleted)
    }

    /// Applies a batch to `generation`: aggregates first, then the views
    /// rendered from them. Idempotent; returns the time Redis took.
    pub async fn apply(
        &self,
        generation: u64,
        batch: &Batch,
    ) -> Result<std::time::Duration, SinkError> {
        let started = Instant::now();
        let outcome = self.apply_once(generation, batch).await;
        if outcome.is_err() {
            // What this process believes of Redis may be off after a failed
            // flush: forget it, the stamps will be read back.
            if let Ok(mut known) = self.known.lock() {
                known.clear();
            }
        }
        match outcome {
            Err(SinkError::Redis(e)) if e.details().contains("NOSCRIPT") => {
                // Redis restarted and lost its script cache: load and redo
                // (safe: the whole apply is idempotent).
                tracing::warn!(
                    "redis had lost the view script: loaded it again, applying the flush anew"
                );
                self.load_scripts().await?;
                self.apply_once(generation, batch).await?;
            }
            other => other?,
        }
        Ok(started.elapsed())
    }

    async fn apply_once(&self, generation: u64, batch: &Batch) -> Result<(), SinkError> {
        let keys = &self.keys;
        // Each step goes as explicit pipelines of batched script calls: far
        // less client work per entity than a command, let alone a future,
        // each. The first step is sent in chunks as it is planned, so Redis
        // runs one chunk while the next is planned. Library writes need
        // nothing from the aggregates, so they go in the first step.
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
            let mut again = Calls::new(&self.client, &self.views);
            for (entity, entries) in &stale {
                let flags = apply_flags(entity, entries);
                again
                    .call(
                        &mut buf,
                        Call::Apply,
                        &self.apply_keys(generation, entity, false),
                        |buf, all| apply_args(buf, all, &flags, None, entries),
                    )
                    .await?;
            }
            again.end_batch(&mut buf).await?;
            let replies = again.send().await?;
            if replies.len() != stale.len() {
                return Err(SinkError::Reply("fewer replies than scripts".into()));
            }
            for ((entity, entries), reply) in stale.into_iter().zip(replies) {
                aggs.push(self.applied(generation, entity, entries, reply)?);
            }
        }
        let events = self.event_terms(generation, &aggs).await?;

        for (entity, course) in known {
            self.remember(generation, &entity, course)?;
        }
        if aggs.is_empty() {
            // Every entity was written by its apply script: no second step.
            return Ok(());
        }
        let mut second = Calls::new(&self.client, &self.views);
        let mut sorted = SortedSetWrites::default();
        for (entity, agg, top, with_page) in &aggs {
            match entity {
                Entity::Course(id) => self.rank(&mut sorted, generation, *id, agg, *with_page),
                Entity::Event(id) => self.index_event(&mut sorted, generation, *id, agg),
                Entity::Order(_) => {}
            }
            let stamp = agg.get("stamp").cloned().unwrap_or_default();
            if agg.get("vstamp").is_some_and(|v| *v >= stamp) {
                continue;
            }
            let (view_keys, values): (Vec<String>, Vec<Vec<u8>>) = match *entity {
                Entity::Course(id) => {
                    let Some(course) = render_course(id, agg, top_five(top), &events, *with_page)
                    else {
                        continue;
                    };
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
                Entity::Event(id) => match render_event(id, agg) {
                    Some(view) => (
                        vec![
                            keys.event_agg(generation, id),
                            keys.event_view(generation, id),
                        ],
                        vec![view],
                    ),
                    None => continue,
                },
                Entity::Order(id) => match render_order(id, agg) {
                    Some(view) => (
                        vec![
                            keys.order_agg(generation, id),
                            keys.order_view(generation, id),
                        ],
                        vec![view],
                    ),
                    None => continue,
                },
            };
            second
                .call(&mut buf, Call::WriteViews, &view_keys, |buf, all| {
                    all.push(buf.text(&stamp));
                    for json in &values {
                        all.push(buf.view(json));
                    }
                })
                .await?;
        }
        second.end_batch(&mut buf).await?;
        sorted.queue(&second.pipe).await?;
        second.send().await?;
        Ok(())
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
                    first
                        .call(buf, Call::ApplyKnown, &script_keys, |buf, all| {
                            all.push(buf.text(&next.0));
                            all.push(buf.view(stats));
                            all.push(buf.view(card));
                            entry_args(buf, all, entries);
                        })
                        .await?;
                }
                Plan::AtOnce { stamp, view } => {
                    first
                        .call(
                            buf,
                            Call::Apply,
                            &self.apply_keys(generation, entity, true),
                            |buf, all| apply_args(buf, all, "", Some((stamp, view)), entries),
                        )
                        .await?;
                }
                Plan::Apply => {
                    let flags = apply_flags(entity, entries);
                    first
                        .call(
                            buf,
                            Call::Apply,
                            &self.apply_keys(generation, entity, false),
                            |buf, all| apply_args(buf, all, &flags, None, entries),
                        )
                        .await?;
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
                Ok(match render_order(id, &agg) {
                    Some(view) => Plan::AtOnce {
                        stamp: agg.get("stamp").cloned().unwrap_or_default(),
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
                let taken = self
                    .known
                    .lock()
                    .map_err(|_| SinkError::Reply("poisoned".into()))?
                    .remove(&(generation, id));
                let Some(mut next) = taken else {
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
                let Some(course) = render_course(id, &next.agg, next.top_companies(), terms, false)
                else {
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
    fn apply_keys(&self, generation: u64, entity: &Entity, with_view: bool) -> Vec<String> {
        let keys = &self.keys;
        match *entity {
            Entity::Course(id) => vec![
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
                vec![agg, none.clone(), none.clone(), none]
            }
            Entity::Order(id) => {
                let agg = keys.order_agg(generation, id);
                let none = agg.clone() + ":none";
                let view = if with_view {
                    keys.order_view(generation, id)
                } else {
                    none.clone()
                };
                vec![agg, none.clone(), none, view]
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

    /// Keeps what Redis now holds of a course, within a bound: when full,
    /// the memory starts over (a forgotten course costs one read back).
    fn remember(
        &self,
        generation: u64,
        entity: &Entity,
        course: KnownCourse,
    ) -> Result<(), SinkError> {
        let Entity::Course(id) = *entity else {
            return Ok(());
        };
        let mut known = self
            .known
            .lock()
            .map_err(|_| SinkError::Reply("poisoned".into()))?;
        if known.len() >= KNOWN_COURSES {
            known.clear();
        }
        known.insert((generation, id), course);
        Ok(())
    }

    fn forget(&self, generation: u64, entity: &Entity) -> Result<(), SinkError> {
        if let Entity::Course(id) = *entity {
            self.known
                .lock()
                .map_err(|_| SinkError::Reply("poisoned".into()))?
                .remove(&(generation, id));
        }
        Ok(())
    }

    fn lock_events(
        &self,
    ) -> Result<std::sync::MutexGuard<'_, HashMap<i64, EventTerms>>, SinkError> {
        self.events
            .lock()
            .map_err(|_| SinkError::Reply("poisoned".into()))
    }

    /// Terms of every event the courses in `aggs` are sold by: from memory,
    /// else from the event aggregates in Redis (after a restart).
    async fn event_terms(
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
            let cache = self
                .events
                .lock()
                .map_err(|_| SinkError::Reply("poisoned".into()))?;
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
        let mut cache = self
            .events
            .lock()
            .map_err(|_| SinkError::Reply("poisoned".into()))?;
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

    /// Keeps the event in the index readers pre-warm from (absolute write).
    fn index_event(
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
    fn rank(
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
        let n: f64 = agg.get("n").and_then(|n| n.parse().ok()).unwrap_or(0.0);
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
        if let Some(old) = agg.get("rankcat").filter(|old| *old != category) {
            sorted.remove(keys.category_popular(generation, old), member.clone());
            sorted.remove(keys.category_newest(generation, old), member);
        }
        if agg.get("rankcat") != Some(category) {
            sorted.then_hset(keys.course_agg(generation, id), "rankcat", category.clone());
        }
    }
}

/// Entities (script calls) per chunk of a flush's first step: small enough
/// that Redis starts on a flush soon after it begins, large enough that a
/// chunk's own costs (a task, a round trip) stay small beside its commands.
const CHUNK_ENTITIES: usize = 256;

/// A flush step sent in chunks while it is queued: each full chunk goes to
/// Redis at once on a task of its own, so the projector plans the next chunk
/// meanwhile (and drops the sent commands off the flush's path). The chunks
/// may run in any order: an entity is in one chunk only, and the sorted-set
/// writes are absolute.
struct ChunkedStep {
    client: Client,
    script: Script,
    calls: Calls,
    queued: usize,
    sent: Vec<tokio::task::JoinHandle<Result<Vec<Value>, SinkError>>>,
}

impl ChunkedStep {
    fn new(client: &Client, script: &Script) -> Self {
        Self {
            client: client.clone(),
            script: script.clone(),
            calls: Calls::new(client, script),
            queued: 0,
            sent: Vec::new(),
        }
    }

    /// The calls to queue the next entity on; sends the chunk before if it
    /// is full.
    async fn next_entity(&mut self, buf: &mut ArgBuf) -> Result<&mut Calls, SinkError> {
        if self.queued == CHUNK_ENTITIES {
            self.send(buf).await?;
        }
        self.queued += 1;
        Ok(&mut self.calls)
    }

    async fn send(&mut self, buf: &mut ArgBuf) -> Result<(), SinkError> {
        let mut full = std::mem::replace(&mut self.calls, Calls::new(&self.client, &self.script));
        full.end_batch(buf).await?;
        self.queued = 0;
        self.sent.push(tokio::spawn(full.send()));
        Ok(())
    }

    /// The last chunk's pipeline, for commands that follow every call.
    async fn last_pipe(&mut self, buf: &mut ArgBuf) -> Result<&Pipeline<Client>, SinkError> {
        self.calls.end_batch(buf).await?;
        Ok(&self.calls.pipe)
    }

    /// Sends nothing more and waits for the chunks already sent (queueing
    /// failed: the flush fails, but none of its chunks may reach Redis after
    /// whatever follows).
    async fn abandon(self) {
        for chunk in self.sent {
            let _ = chunk.await;
        }
    }

    /// Sends the rest and returns every call's result, in the order queued.
    /// Every chunk is waited for, even after one failed, so that no chunk
    /// of this flush can reach Redis after whatever follows its failure (a
    /// retry, or the next stream's flushes).
    async fn replies(mut self, buf: &mut ArgBuf) -> Result<Vec<Value>, SinkError> {
        let last = self.calls.end_batch(buf).await;
        if last.is_ok() {
            self.sent.push(tokio::spawn(self.calls.send()));
        }
        let mut replies = Vec::new();
        let mut failed = last.err();
        for chunk in self.sent {
            match chunk.await {
                Ok(Ok(chunk)) => replies.extend(chunk),
                Ok(Err(e)) => {
                    failed.get_or_insert(e);
                }
                Err(e) => {
                    failed.get_or_insert(SinkError::Reply(format!(
                        "a flush chunk's task failed: {e}"
                    )));
                }
            }
        }
        match failed {
            Some(e) => Err(e),
            None => Ok(replies),
        }
    }
}

/// What a call of the views script does (its `kind` in [`VIEWS`]).
#[derive(Clone, Copy)]
enum Call {
    Apply,
    ApplyKnown,
    WriteViews,
}

impl Call {
    fn kind(self) -> Value {
        Value::Bytes(Bytes::from_static(match self {
            Call::Apply => b"a",
            Call::ApplyKnown => b"k",
            Call::WriteViews => b"w",
        }))
    }
}

/// Calls per batch of the views script on one Redis: the script runs them
/// all at once, so a batch stays short for the readers waiting behind it.
const CALLS_PER_BATCH: usize = 32;

/// Arguments after which a batch is closed early, so a call with thousands
/// of entries (a bulk enrollment) makes a batch of its own.
const ARGS_PER_BATCH: usize = 2048;

/// Script calls gathered into batches of the views script (one command
/// each) and queued on a pipeline, whose first replies are the batches'.
/// In a cluster a batch holds one call, since a script's keys must share a
/// slot; a call's keys share its entity's hash tag.
struct Calls {
    pipe: Pipeline<Client>,
    sha: Value,
    per_batch: usize,
    keys: Vec<Value>,
    args: Vec<Value>,
    in_batch: usize,
    /// Batches queued on the pipeline so far.
    batches: usize,
}

impl Calls {
    fn new(client: &Client, script: &Script) -> Self {
        Self {
            pipe: client.pipeline(),
            sha: script.sha1().clone().into(),
            per_batch: if client.is_clustered() {
                1
            } else {
                CALLS_PER_BATCH
            },
            keys: Vec::new(),
            args: Vec::new(),
            in_batch: 0,
            batches: 0,
        }
    }

    /// Gathers one call: `keys`, then the arguments `args` appends.
    async fn call(
        &mut self,
        buf: &mut ArgBuf,
        call: Call,
        keys: &[String],
        args: impl FnOnce(&mut ArgBuf, &mut Vec<Value>),
    ) -> Result<(), SinkError> {
        self.args.push(call.kind());
        self.args.push(buf.int(keys.len() as i64));
        let count_at = self.args.len();
        self.args.push(ArgBuf::EMPTY);
        self.keys.extend(keys.iter().map(|key| buf.text(key)));
        args(buf, &mut self.args);
        self.args[count_at] = buf.int((self.args.len() - count_at - 1) as i64);
        self.in_batch += 1;
        if self.in_batch >= self.per_batch || self.args.len() >= ARGS_PER_BATCH {
            self.end_batch(buf).await?;
        }
        Ok(())
    }

    /// Queues the calls gathered so far as one `EVALSHA` (fred 10's
    /// pipelines have no script interface), routed in a cluster by its
    /// first key.
    async fn end_batch(&mut self, buf: &mut ArgBuf) -> Result<(), SinkError> {
        if self.in_batch == 0 {
            return Ok(());
        }
        let mut all = Vec::with_capacity(2 + self.keys.len() + self.args.len());
        all.push(self.sha.clone());
        all.push(buf.int(self.keys.len() as i64));
        all.append(&mut self.keys);
        all.append(&mut self.args);
        let evalsha = CustomCommand::new("EVALSHA", ClusterHash::Offset(2), false);
        self.pipe.custom::<(), _>(evalsha, all).await?;
        self.in_batch = 0;
        self.batches += 1;
        Ok(())
    }

    /// Sends the pipeline (every batch ended before) and returns each
    /// call's result, in the order gathered.
    async fn send(self) -> Result<Vec<Value>, SinkError> {
        debug_assert_eq!(self.in_batch, 0, "a batch was left open");
        let replies: Vec<Value> = self.pipe.all().await?;
        let mut results = Vec::new();
        for reply in replies.into_iter().take(self.batches) {
            match reply {
                Value::Array(calls) => results.extend(calls),
                other => {
                    return Err(SinkError::Reply(format!(
                        "a batch of view scripts answered {other:?}"
                    )))
                }
            }
        }
        Ok(results)
    }
}

/// The sorted-set writes of one flush step (rankings, libraries, the event
/// index), grouped by key so that a key costs one command however many of
/// its members move: a flush ranks hundreds of courses in a handful of
/// categories, and each command costs the client and Redis more than a
/// member does. Per member, the last write wins, as sent one by one.
#[derive(Default)]
struct SortedSetWrites {
    /// Key → member → `Some(score)` to add (or move), `None` to remove.
    keys: HashMap<String, HashMap<String, Option<f64>>>,
    /// Hash fields that record what the writes above did (a course's
    /// `rankcat`): sent after them, so that a flush cut short in between
    /// is replayed with the record still saying what to undo.
    after: Vec<(String, &'static str, String)>,
}

impl SortedSetWrites {
    fn add(&mut self, key: String, score: f64, member: String) {
        self.keys
            .entry(key)
            .or_default()
            .insert(member, Some(score));
    }

    fn remove(&mut self, key: String, member: String) {
        self.keys.entry(key).or_default().insert(member, None);
    }

    fn then_hset(&mut self, key: String, field: &'static str, value: String) {
        self.after.push((key, field, value));
    }

    /// Queues one `ZADD` and one `ZREM` at most per key.
    async fn queue(self, pipe: &Pipeline<Client>) -> Result<(), SinkError> {
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

/// The batch changes a course's row, so its page is rendered and written.
fn rewrites_page(entity: &Entity, entries: &[Entry]) -> bool {
    matches!(entity, Entity::Course(_)) && entries.iter().any(Entry::touches_page)
}

/// The apply script's flags: `p` returns the page's HTML (the row changed),
/// `t` every company tally (a course, to be remembered).
fn apply_flags(entity: &Entity, entries: &[Entry]) -> String {
    let mut flags = String::new();
    if rewrites_page(entity, entries) {
        flags.push('p');
    }
    if matches!(entity, Entity::Course(_)) {
        flags.push('t');
    }
    flags
}

/// Appends the apply script's arguments: flags, the view written at once
/// (its stamp and JSON), then the entries.
fn apply_args(
    buf: &mut ArgBuf,
    all: &mut Vec<Value>,
    flags: &str,
    view: Option<(&str, &[u8])>,
    entries: &[Entry],
) {
    all.push(buf.text(flags));
    match view {
        Some((stamp, json)) => {
            all.push(buf.text(stamp));
            all.push(buf.view(json));
        }
        None => {
            all.push(ArgBuf::EMPTY);
            all.push(ArgBuf::EMPTY);
        }
    }
    entry_args(buf, all, entries);
}

/// Appends entries as the script's arguments:
/// `stamp 'e' delta company event` or `stamp 'f' n (field value)*n` each.
fn entry_args(buf: &mut ArgBuf, all: &mut Vec<Value>, entries: &[Entry]) {
    for entry in entries {
        match entry {
            Entry::Enroll {
                stamp,
                delta,
                company,
                event_id,
            } => {
                all.push(buf.text(stamp));
                all.push(Value::Bytes(Bytes::from_static(b"e")));
                all.push(buf.int(*delta));
                all.push(buf.text(company.as_deref().unwrap_or_default()));
                all.push(match event_id {
                    Some(event) => buf.int(*event),
                    None => ArgBuf::EMPTY,
                });
            }
            Entry::Fields { stamp, fields } => {
                all.push(buf.text(stamp));
                all.push(Value::Bytes(Bytes::from_static(b"f")));
                all.push(buf.int(fields.len() as i64));
                for (k, v) in fields {
                    all.push(buf.text(k));
                    all.push(buf.text(v));
                }
            }
        }
    }
}

/// The arguments of a flush's commands, written into shared blocks and
/// handed to fred as slices of them. fred's pipeline clones every command it
/// sends (`Pipeline::all`), and the first clone of a value made from a
/// `String` or `Vec` of its own allocates; a slice of a shared block clones
/// and drops with an atomic count, and needs no allocation of its own.
struct ArgBuf(BytesMut);

impl ArgBuf {
    /// Bytes per block: one allocation for hundreds of arguments.
    const BLOCK: usize = 64 * 1024;
    const EMPTY: Value = Value::Bytes(Bytes::new());

    fn new() -> Self {
        Self(BytesMut::with_capacity(Self::BLOCK))
    }

    /// What was written since the last argument, as one argument.
    fn take(&mut self) -> Value {
        Value::Bytes(self.0.split().freeze())
    }

    fn bytes(&mut self, bytes: &[u8]) -> Value {
        if bytes.is_empty() {
            return Self::EMPTY;
        }
        self.0.extend_from_slice(bytes);
        self.take()
    }

    fn text(&mut self, text: &str) -> Value {
        self.bytes(text.as_bytes())
    }

    fn int(&mut self, n: i64) -> Value {
        self.bytes(itoa::Buffer::new().format(n).as_bytes())
    }

    /// A view's JSON, encoded as Redis stores it.
    fn view(&mut self, json: &[u8]) -> Value {
        views::encode_with(json, |part| self.0.extend_from_slice(part));
        self.take()
    }
}

type AggReply = (HashMap<String, String>, Vec<(String, i64)>);

/// An entity with its aggregate hash and top company tallies, as script one
/// returned them, and whether its page is rewritten.
type EntityAggregates = (Entity, HashMap<String, String>, Vec<(String, i64)>, bool);

fn parse_apply_reply(reply: Value) -> Result<AggReply, SinkError> {
    let bad = |what: &str| SinkError::Reply(what.to_owned());
    let Value::Array(mut parts) = reply else {
        return Err(bad("apply reply is not an array"));
    };
    if parts.len() != 2 {
        return Err(bad("apply reply has not two parts"));
    }
    let top = parts.pop().and_then(|v| {
        v.into_array()
            .into_iter()
            .map(|v| v.as_string())
            .collect::<Option<Vec<_>>>()
    });
    let agg = parts.pop().and_then(|v| {
        v.into_array()
            .into_iter()
            .map(|v| v.as_string())
            .collect::<Option<Vec<_>>>()
    });
    let (Some(agg), Some(top)) = (agg, top) else {
        return Err(bad("apply reply holds a non-string"));
    };
    let agg = agg
        .chunks_exact(2)
        .map(|kv| (kv[0].clone(), kv[1].clone()))
        .collect();
    let top = top
        .chunks_exact(2)
        .map(|kv| {
            let score: f64 = kv[1].parse().unwrap_or(0.0);
            (kv[0].clone(), (-score) as i64)
        })
        .collect();
    Ok((agg, top))
}
