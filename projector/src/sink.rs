//! Redis: the destination of the views.
//!
//! Guarantee: applying the same changes twice is a no-op. Delivery from the
//! slot is at-least-once (a restart replays everything after the confirmed
//! position), so every entity carries the stamp of the last change applied to
//! it, checked and set by the same Lua script that applies the change.
//!
//! Lua cannot decompress LZ4, so a course keeps its aggregates uncompressed
//! (hash: row fields, active students `n`, `stamp`; sorted set: company
//! tallies). Script one applies the entries newer than the stamp and always
//! returns the aggregates; the projector renders the view; script two writes
//! the encoded view only if its own stamp (`vstamp`) is older. A crash between
//! the two is healed by the replay, because script one still returns the
//! aggregates when it skips.

use std::{collections::HashMap, time::Instant};

use fred::{prelude::*, types::scripts::Script};
use futures_util::future::try_join_all;
use views::{GenerationMarker, Keys, Lsn};

use crate::projection::{render_course, top_five, Batch, CourseAggregate, Entry};

/// Applies course entries newer than the stored stamp; returns the aggregate
/// hash (flat) and the top five company tallies (flat, with scores).
const APPLY_COURSE: &str = r#"
local agg, companies = KEYS[1], KEYS[2]
local last = redis.call('HGET', agg, 'stamp') or ''
local stored = last
local i = 1
while i <= #ARGV do
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
      last = stamp
    end
    i = i + 4
  else
    local n = tonumber(ARGV[i + 2])
    if stamp > last then
      for j = 0, n - 1 do
        redis.call('HSET', agg, ARGV[i + 3 + 2 * j], ARGV[i + 4 + 2 * j])
      end
      redis.call('HSET', agg, 'exists', '1')
      last = stamp
    end
    i = i + 3 + 2 * n
  end
end
if last ~= stored then redis.call('HSET', agg, 'stamp', last) end
return {redis.call('HGETALL', agg), redis.call('ZRANGE', companies, 0, 4, 'WITHSCORES')}
"#;

/// Writes a rendered view only if it is newer than the one stored.
const WRITE_VIEW: &str = r#"
local v = redis.call('HGET', KEYS[2], 'vstamp') or ''
if ARGV[1] > v then
  redis.call('SET', KEYS[1], ARGV[2])
  redis.call('HSET', KEYS[2], 'vstamp', ARGV[1])
  return 1
end
return 0
"#;

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
    apply: Script,
    write_view: Script,
}

impl Sink {
    /// Connects to Redis (`redis://` or `redis-cluster://`).
    pub async fn connect(url: &str, keys: Keys) -> Result<Self, SinkError> {
        let config = Config::from_url(url)?;
        let client = Builder::from_config(config)
            .with_connection_config(|c| {
                c.connection_timeout = std::time::Duration::from_secs(5);
            })
            .set_policy(ReconnectPolicy::new_exponential(0, 100, 5_000, 2))
            .build()?;
        client.init().await?;
        let sink = Self {
            client,
            keys,
            apply: Script::from_lua(APPLY_COURSE),
            write_view: Script::from_lua(WRITE_VIEW),
        };
        sink.load_scripts().await?;
        Ok(sink)
    }

    /// The Redis client (for marker and watermark reads).
    pub fn client(&self) -> &Client {
        &self.client
    }

    async fn load_scripts(&self) -> Result<(), SinkError> {
        for script in [&self.apply, &self.write_view] {
            let lua = script.lua().map(|s| s.to_string()).unwrap_or_default();
            if self.client.is_clustered() {
                self.client.script_load_cluster::<(), _>(lua).await?;
            } else {
                self.client.script_load::<(), _>(lua).await?;
            }
        }
        Ok(())
    }

    /// Refuses a Redis that could evict views (SPEC: `noeviction` only).
    pub async fn check_no_eviction(&self) -> anyhow::Result<()> {
        let reply: Vec<String> = self.client.config_get("maxmemory-policy").await?;
        let policy = reply.get(1).cloned().unwrap_or_default();
        anyhow::ensure!(
            policy == "noeviction",
            "redis maxmemory-policy is {policy:?}: views must never be evicted, set it to noeviction"
        );
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

    /// A fresh generation number.
    pub async fn next_generation(&self) -> Result<u64, SinkError> {
        Ok(self.client.incr(self.keys.generation_counter()).await?)
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

    /// Deletes every key of a generation that is no longer live.
    pub async fn delete_generation(&self, generation: u64) -> Result<u64, SinkError> {
        let pattern = self.keys.generation_pattern(generation);
        let mut deleted = 0;
        let mut cursor = "0".to_owned();
        // Hand-written SCAN loop: fred's scan streams need an extra futures
        // dependency for one loop (cluster deployments scan each primary).
        loop {
            let (next, keys): (String, Vec<String>) = self
                .client
                .custom(
                    fred::cmd!("SCAN"),
                    vec![
                        cursor.clone(),
                        "MATCH".into(),
                        pattern.clone(),
                        "COUNT".into(),
                        "1000".into(),
                    ],
                )
                .await?;
            for key in keys {
                deleted += self.client.unlink::<u64, _>(key).await?;
            }
            if next == "0" {
                break;
            }
            cursor = next;
        }
        self.client
            .del::<(), _>(self.keys.watermark(generation))
            .await?;
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
        match self.apply_once(generation, batch).await {
            Err(SinkError::Redis(e)) if e.details().contains("NOSCRIPT") => {
                // Redis restarted and lost its script cache: load and redo
                // (safe: the whole apply is idempotent).
                self.load_scripts().await?;
                self.apply_once(generation, batch).await?;
            }
            other => other?,
        }
        Ok(started.elapsed())
    }

    async fn apply_once(&self, generation: u64, batch: &Batch) -> Result<(), SinkError> {
        if batch.courses.is_empty() {
            return Ok(());
        }
        // fred pipelines concurrent commands on one connection (and routes
        // each to its cluster node), so issuing every script call at once
        // costs about one round trip per node.
        let replies = try_join_all(batch.courses.iter().map(|(&id, entries)| {
            let keys = vec![
                self.keys.course_agg(generation, id),
                self.keys.course_companies(generation, id),
            ];
            self.apply
                .evalsha::<Value, _, _, _>(&self.client, keys, entry_args(entries))
        }))
        .await?;

        let mut writes = Vec::new();
        for ((&id, _), reply) in batch.courses.iter().zip(replies) {
            let (agg, top) = parse_apply_reply(reply)?;
            let stamp = agg.get("stamp").cloned().unwrap_or_default();
            if agg.get("vstamp").is_some_and(|v| *v >= stamp) {
                continue;
            }
            let Some(json) = render_course(id, &agg, top_five(top)) else {
                continue;
            };
            let keys = vec![
                self.keys.course_view(generation, id),
                self.keys.course_agg(generation, id),
            ];
            let args: Vec<Value> = vec![stamp.into(), Value::Bytes(views::encode(&json).into())];
            writes.push(
                self.write_view
                    .evalsha::<Value, _, _, _>(&self.client, keys, args),
            );
        }
        try_join_all(writes).await?;
        Ok(())
    }

    /// Writes a course built from the snapshot (a fresh generation: no stamps yet).
    pub async fn write_snapshot_courses(
        &self,
        generation: u64,
        courses: &[CourseAggregate],
    ) -> Result<(), SinkError> {
        let pipe = self.client.pipeline();
        for CourseAggregate { id, fields: agg, tallies } in courses {
            let agg_key = self.keys.course_agg(generation, *id);
            let companies_key = self.keys.course_companies(generation, *id);
            let mut fields: Vec<(String, String)> =
                agg.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
            fields.push(("exists".into(), "1".into()));
            fields.push((
                "vstamp".into(),
                agg.get("stamp").cloned().unwrap_or_default(),
            ));
            let _: () = pipe.hset(&agg_key, fields).await?;
            let members: Vec<(f64, String)> = tallies
                .iter()
                .filter(|(_, n)| *n > 0)
                .map(|(c, n)| (-(*n as f64), c.clone()))
                .collect();
            if !members.is_empty() {
                let _: () = pipe
                    .zadd(&companies_key, None, None, false, false, members)
                    .await?;
            }
            if let Some(json) = render_course(*id, agg, top_five(tallies.clone())) {
                let _: () = pipe
                    .set(
                        self.keys.course_view(generation, *id),
                        Value::Bytes(views::encode(&json).into()),
                        None,
                        None,
                        false,
                    )
                    .await?;
            }
        }
        let _: Vec<Value> = pipe.all().await?;
        Ok(())
    }
}

/// Flattens entries into the script's arguments:
/// `stamp 'e' delta company` or `stamp 'r' n (field value)*n`.
fn entry_args(entries: &[Entry]) -> Vec<String> {
    let mut args = Vec::with_capacity(entries.len() * 4);
    for entry in entries {
        match entry {
            Entry::Enroll {
                stamp,
                delta,
                company,
            } => {
                args.push(stamp.clone());
                args.push("e".into());
                args.push(delta.to_string());
                args.push(company.clone().unwrap_or_default());
            }
            Entry::Row { stamp, fields } => {
                args.push(stamp.clone());
                args.push("r".into());
                args.push(fields.len().to_string());
                for (k, v) in fields {
                    args.push(k.clone());
                    args.push(v.clone());
                }
            }
        }
    }
    args
}

type AggReply = (HashMap<String, String>, Vec<(String, i64)>);

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
