//! Reads of the views in Redis, through the key layout of the `views` crate.
//!
//! Each read is one pipeline: the generation marker, that generation's
//! watermark and the view, so a response always knows which generation and
//! which LSN it reflects.

use std::sync::{Arc, RwLock};

use bytes::Bytes;
use fred::prelude::*;
use views::{GenerationMarker, Keys, Lsn};

use crate::error::ApiError;

/// A view as read, with what the response headers need.
pub struct Read {
    /// The view JSON, or `None` when there is no view for the id.
    pub json: Option<Bytes>,
    /// The watermark of the generation read.
    pub projection_lsn: Lsn,
    /// A replacement generation is being built; this one may lag.
    pub stale: bool,
}

/// The Redis side of the query API.
#[derive(Clone)]
pub struct Store {
    client: Client,
    keys: Keys,
    /// The generation last seen, so the view key can go in the same pipeline
    /// as the marker; a changed marker costs one more round trip.
    generation: Arc<RwLock<Option<u64>>>,
}

impl Store {
    /// Connects to Redis (`redis://` or `redis-cluster://`).
    pub async fn connect(url: &str, keys: Keys) -> Result<Self, fred::error::Error> {
        let config = fred::prelude::Config::from_url(url)?;
        let client = Builder::from_config(config)
            .with_connection_config(|c| {
                c.connection_timeout = std::time::Duration::from_secs(2);
            })
            .with_performance_config(|p| {
                p.default_command_timeout = std::time::Duration::from_secs(2);
            })
            .set_policy(ReconnectPolicy::new_exponential(0, 100, 2_000, 2))
            .build()?;
        // Start connecting in the background: the API serves 503 until Redis
        // answers instead of refusing to start.
        client.connect();
        Ok(Self {
            client,
            keys,
            generation: Arc::new(RwLock::new(None)),
        })
    }

    /// Redis answers a PING.
    pub async fn ping(&self) -> bool {
        self.client.ping::<()>(None).await.is_ok()
    }

    /// The live generation marker.
    pub async fn marker(&self) -> Result<Option<GenerationMarker>, ApiError> {
        let raw: Option<String> = self.client.get(self.keys.generation_marker()).await?;
        Ok(raw.and_then(|r| serde_json::from_str(&r).ok()))
    }

    /// The watermark of the live generation (503 `rebuilding` if none is live).
    pub async fn projection_lsn(&self) -> Result<Lsn, ApiError> {
        let marker = self.marker().await?.ok_or(ApiError::Rebuilding)?;
        let raw: Option<String> = self
            .client
            .get(self.keys.watermark(marker.generation))
            .await?;
        Ok(raw.and_then(|r| r.parse().ok()).unwrap_or_default())
    }

    /// Reads the course detail view of `id` from the live generation.
    pub async fn course(&self, id: i64) -> Result<Read, ApiError> {
        self.read(|keys, generation| keys.course_view(generation, id))
            .await
    }

    async fn read(&self, key: impl Fn(&Keys, u64) -> String) -> Result<Read, ApiError> {
        let cached = self.generation.read().map(|g| *g).unwrap_or(None);
        let mut generation = cached.unwrap_or(0);
        for _ in 0..3 {
            let pipe = self.client.pipeline();
            let _: () = pipe.get(self.keys.generation_marker()).await?;
            let _: () = pipe.get(self.keys.watermark(generation)).await?;
            let _: () = pipe.get(key(&self.keys, generation)).await?;
            let (marker, watermark, view): (Option<String>, Option<String>, Option<Bytes>) =
                pipe.all().await?;
            let marker: GenerationMarker = marker
                .and_then(|m| serde_json::from_str(&m).ok())
                .ok_or(ApiError::Rebuilding)?;
            if marker.generation != generation {
                generation = marker.generation;
                if let Ok(mut g) = self.generation.write() {
                    *g = Some(generation);
                }
                continue;
            }
            let json = match view {
                None => None,
                Some(value) => Some(match views::decode(&value) {
                    Ok(std::borrow::Cow::Borrowed(_)) => value.slice(1..),
                    Ok(std::borrow::Cow::Owned(json)) => Bytes::from(json),
                    Err(err) => {
                        tracing::error!(error = %err, "corrupt view value in redis");
                        return Err(ApiError::Unavailable);
                    }
                }),
            };
            return Ok(Read {
                json,
                projection_lsn: watermark.and_then(|w| w.parse().ok()).unwrap_or_default(),
                stale: marker.building.is_some(),
            });
        }
        Err(ApiError::Rebuilding)
    }
}
