//! Redis: the destination of the views.
//!
//! Guarantee: applying the same changes twice is a no-op. Delivery from the
//! slot is at-least-once (a restart replays everything after the confirmed
//! position), so every entity carries the stamp of the last change applied
//! to it, checked and set by the script that applies the change.
//!
//! Lua cannot decompress LZ4, so aggregates are kept uncompressed (a
//! course's heavy HTML in a hash of its own, so counting an enrollment never
//! copies it). A flush applies the entries newer than the stamp, which
//! returns the aggregates even when it skips; the projector renders the
//! views; then writes them only if their own stamp (`vstamp`) is older. A
//! crash between the two steps is healed by the replay. A course's page is
//! rewritten only by a flush that changed its row.

mod calls;
mod control;
mod fence;
mod flush;
mod known;
mod memory;
mod script;
mod sorted_sets;

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Instant,
};

use fred::{prelude::*, types::scripts::Script};
use views::Keys;

use crate::projection::{Batch, Entity, EventTerms, KnownCourse};

/// How many courses' aggregates the projector keeps in memory at most
/// (a few hundred bytes each, more for a course with many companies).
pub(crate) const KNOWN_COURSES: usize = 50_000;

/// A Redis failure while writing views.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error("redis: {0}")]
    Redis(#[from] fred::error::Error),
    #[error("unexpected reply from a view script: {0}")]
    Reply(String),
    /// Redis is not the server the stream started with, or holds another
    /// watermark than the stream wrote last (see `divergence`).
    #[error("redis refused to move the watermark: {0}")]
    WatermarkRefused(Box<crate::divergence::Refusal>),
    /// A node answered with a certificate that fails the check (a wrong CA
    /// or host name): a setting to fix, never retried.
    #[error(transparent)]
    Tls(#[from] service::tls::StartRefused),
}

impl From<script::BadReply> for SinkError {
    fn from(script::BadReply(what): script::BadReply) -> Self {
        SinkError::Reply(what.to_owned())
    }
}

/// An entity with its aggregate hash and top company tallies, as the apply
/// call returned them, and whether its page is rewritten.
type EntityAggregates = (Entity, HashMap<String, String>, Vec<(String, i64)>, bool);

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
        // fred reports a failed handshake as a bare I/O error: checked
        // first, a wrong CA or host name is one clear line.
        if let Some(tls) = url.tls_client() {
            let timeout = std::time::Duration::from_secs(5);
            service::tls::check_at_start("Redis", &url.nodes(), &tls, timeout).await?;
        }
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
            views: Script::from_lua(script::VIEWS),
            events: Arc::new(Mutex::new(HashMap::new())),
            known: Arc::new(Mutex::new(HashMap::new())),
        };
        sink.load_scripts().await?;
        Ok(sink)
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
            self.forget_all_known();
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
}

/// Queues the read of a whole sorted set with its scores (`ZRANGE key 0 -1
/// WITHSCORES`): a course's company tallies, a user's library.
pub(crate) async fn queue_scored_members(
    pipe: &fred::clients::Pipeline<Client>,
    key: String,
) -> Result<(), fred::error::Error> {
    pipe.zrange::<(), _, _, _>(key, 0, -1, None, false, None, true)
        .await
}
