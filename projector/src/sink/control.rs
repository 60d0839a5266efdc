//! Generations and progress in Redis: the live-generation marker (switched
//! in one step), each generation's watermark, rebuild requests, generation
//! numbers, clean-up of old generations, and the refusal of a Redis that
//! could evict views.

use fred::prelude::*;
use views::{GenerationMarker, Lsn};

use super::{Sink, SinkError};

/// Sets KEYS[1] to the LSN ARGV[1] (`%X/%X`) unless it holds a later one;
/// the halves are compared as numbers, as LSNs must be.
const RAISE_WATERMARK: &str = r#"
local function split(lsn)
  local hi, lo = string.match(lsn or '', '^(%x+)/(%x+)$')
  if not hi then return nil end
  return tonumber(hi, 16), tonumber(lo, 16)
end
local nh, nl = split(ARGV[1])
local ch, cl = split(redis.call('GET', KEYS[1]) or '')
if nh and ch and (ch > nh or (ch == nh and cl >= nl)) then return 0 end
redis.call('SET', KEYS[1], ARGV[1])
return 1
"#;

impl Sink {
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
        Ok(self.marker_as_stored().await?.map(|(_, marker)| marker))
    }

    /// The live generation marker and its stored JSON (what
    /// [`Sink::replace_marker`] compares), if any.
    pub async fn marker_as_stored(&self) -> Result<Option<(String, GenerationMarker)>, SinkError> {
        let raw: Option<String> = self.client.get(self.keys.generation_marker()).await?;
        Ok(raw.and_then(|r| {
            let marker = serde_json::from_str(&r).ok()?;
            Some((r, marker))
        }))
    }

    /// Writes the marker; returns the JSON written.
    pub async fn set_marker(&self, marker: &GenerationMarker) -> Result<String, SinkError> {
        let json = marker_json(marker)?;
        self.client
            .set::<(), _, _>(
                self.keys.generation_marker(),
                json.as_str(),
                None,
                None,
                false,
            )
            .await?;
        Ok(json)
    }

    /// Writes the marker only if it is still `expected` (its stored JSON;
    /// `None`: absent), in one step; `false` if it was not. A switch must
    /// not overwrite a marker it did not see (another instance's, or none
    /// after Redis lost its data along with the generation just built).
    pub async fn replace_marker(
        &self,
        expected: Option<&str>,
        marker: &GenerationMarker,
    ) -> Result<bool, SinkError> {
        // A marker's JSON is never empty, so "" stands for an absent one.
        const REPLACE: &str = "local now = redis.call('GET', KEYS[1]) or '' \
            if now == ARGV[1] then redis.call('SET', KEYS[1], ARGV[2]) return 1 end \
            return 0";
        let replaced: i64 = self
            .client
            .eval(
                REPLACE,
                vec![self.keys.generation_marker()],
                vec![expected.unwrap_or("").to_owned(), marker_json(marker)?],
            )
            .await?;
        Ok(replaced == 1)
    }

    /// Asks the running daemon for a rebuild.
    pub async fn request_rebuild(&self) -> Result<(), SinkError> {
        let now = chrono::Utc::now().to_rfc3339();
        self.client
            .set::<(), _, _>(self.keys.rebuild_request(), now, None, None, false)
            .await?;
        Ok(())
    }

    /// The pending rebuild request (its time of asking), if any. It stays
    /// until [`Sink::clear_rebuild_request`] after the rebuild went live, so
    /// a rebuild that fails half-way is still owed by whoever is active next.
    pub async fn rebuild_request(&self) -> Result<Option<String>, SinkError> {
        Ok(self.client.get(self.keys.rebuild_request()).await?)
    }

    /// Clears the request a finished rebuild carried out; a newer one (asked
    /// for while it was built) stays for the next rebuild.
    pub async fn clear_rebuild_request(&self, carried_out: &str) -> Result<(), SinkError> {
        const CLEAR: &str = "if redis.call('GET', KEYS[1]) == ARGV[1] then \
            return redis.call('DEL', KEYS[1]) end return 0";
        self.client
            .eval::<i64, _, _, _>(
                CLEAR,
                vec![self.keys.rebuild_request()],
                vec![carried_out.to_owned()],
            )
            .await?;
        Ok(())
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

    /// Records that every change up to `lsn` is applied in `generation`
    /// (a build's first watermark; the stream moves it with
    /// [`Sink::advance_watermark`]); never lowers it (a deposed instance
    /// that wakes up may still hold an older build).
    pub async fn set_watermark(&self, generation: u64, lsn: Lsn) -> Result<(), SinkError> {
        // EVAL, not a loaded script: Redis caches the compiled script by
        // its text.
        self.client
            .eval::<(), _, _, _>(
                RAISE_WATERMARK,
                vec![self.keys.watermark(generation)],
                vec![lsn.to_string()],
            )
            .await?;
        Ok(())
    }

    /// Deletes every view key and watermark of generations older than the
    /// marker's newest that no reader may read any more (the one switched
    /// from, a retired schema's, and whatever a writer left after Redis lost
    /// its marker), on every primary of a cluster. Newer generations are
    /// left alone: one may be building already (generation numbers only
    /// grow, see [`Sink::next_generation`]).
    pub async fn delete_unread_generations(
        &self,
        marker: &GenerationMarker,
    ) -> Result<u64, SinkError> {
        let read = marker.readable_generations();
        let mut deleted = 0;
        for pattern in [
            self.keys.all_generations_pattern(),
            self.keys.all_watermarks_pattern(),
        ] {
            deleted += views::delete_matching(&self.client, &pattern, |key| {
                self.keys
                    .generation_of(key)
                    .is_none_or(|g| g >= marker.generation || read.contains(&g))
            })
            .await?;
        }
        Ok(deleted)
    }

    /// [`Sink::delete_unread_generations`] in the background: at once on
    /// one Redis, where a reader's closing marker read proves its keys were
    /// read before the switch; in a cluster they sit on other nodes, so
    /// after a query API's Redis timeout has surely passed.
    pub fn delete_unread_generations_soon(&self, marker: GenerationMarker) {
        let sink = self.clone();
        tokio::spawn(async move {
            if sink.is_clustered() {
                tokio::time::sleep(CLUSTER_CLEANUP_GRACE).await;
            }
            match sink.delete_unread_generations(&marker).await {
                Ok(n) => {
                    tracing::info!(keys = n, "deleted the keys of generations no reader reads")
                }
                Err(err) => tracing::warn!(error = %err, "could not delete old generations"),
            }
        });
    }
}

/// How long an old generation outlives the switch in a cluster before it is
/// deleted: well past a query API's Redis timeout (500 ms by default).
const CLUSTER_CLEANUP_GRACE: std::time::Duration = std::time::Duration::from_secs(5);

fn marker_json(marker: &GenerationMarker) -> Result<String, SinkError> {
    serde_json::to_string(marker).map_err(|e| SinkError::Reply(e.to_string()))
}
