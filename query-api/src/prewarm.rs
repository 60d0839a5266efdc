//! Pre-warming: ahead of each sale event, the event's view and every view of
//! its courses are held in process, ready to serve, until the event ends.
//!
//! Freshness by polling, not by invalidation messages: every refresh reads
//! the warm set again in one pipeline (a few hundred keys, one round trip per
//! Redis node) and swaps the new set in. A change is therefore visible within
//! one refresh interval plus the projection's own lag, and the cache stays
//! correct through what push invalidation gets wrong with fred (tracking lost
//! on reconnect, the FLUSHALL invalidation dropped, cluster BCAST reaching
//! one node): a set that could not be refreshed for a second is not served.
//! Entries hold the stored JSON (with every candidate sale), so the sale is
//! picked by the clock at each request and no entry outlives a sale boundary.

use std::{
    collections::HashMap,
    sync::{
        atomic::{AtomicU64, Ordering::Relaxed},
        Arc, RwLock,
    },
    time::{Duration, Instant},
};

use bytes::Bytes;
use chrono::{DateTime, Utc};
use fred::prelude::*;
use serde::Serialize;
use views::{EventView, GenerationMarker, Keys, Lsn};

/// A warm set older than this is not served (SPEC: changes visible within 1 s).
const MAX_AGE: Duration = Duration::from_millis(900);

/// One event being kept warm, as `/v1/ops/prewarm` lists it.
#[derive(Debug, Clone, Serialize)]
pub struct WarmEvent {
    pub event_id: i64,
    pub starts_at: DateTime<Utc>,
    pub ends_at: DateTime<Utc>,
    /// Views held for it: the event view, and the page, stats and card of each course.
    pub entries: usize,
}

#[derive(Default)]
struct WarmSet {
    generation: u64,
    lsn: Lsn,
    stale: bool,
    events: Vec<WarmEvent>,
    /// Key → stored JSON (decoded from the view format).
    entries: HashMap<String, Bytes>,
    /// Key → the raw Redis value, to skip decoding what did not change.
    raw: HashMap<String, Bytes>,
    refreshed: Option<Instant>,
}

/// Warm entries and the projection state they were read at.
pub struct Hit {
    /// The stored JSON of each key asked for, in order.
    pub json: Vec<Bytes>,
    pub generation: u64,
    pub lsn: Lsn,
    pub stale: bool,
}

/// The in-process cache of pre-warmed sale-event views.
pub struct Prewarm {
    client: Client,
    keys: Keys,
    window: Duration,
    set: RwLock<Arc<WarmSet>>,
    hits: AtomicU64,
    misses: AtomicU64,
}

impl Prewarm {
    /// A cache that warms each event `window` before it starts.
    pub fn new(client: Client, keys: Keys, window: Duration) -> Self {
        Self {
            client,
            keys,
            window,
            set: RwLock::new(Arc::new(WarmSet::default())),
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

    /// The warm entries for the keys `keys` names in the warm generation,
    /// if the set is fresh and holds every one of them; counts one hit or
    /// one miss.
    pub fn get_all(&self, keys: impl Fn(&Keys, u64) -> Vec<String>) -> Option<Hit> {
        let set = self.set.read().ok()?.clone();
        let fresh = set.refreshed.is_some_and(|t| t.elapsed() < MAX_AGE) && !set.entries.is_empty();
        let found: Option<Vec<Bytes>> = fresh
            .then(|| {
                keys(&self.keys, set.generation)
                    .iter()
                    .map(|k| set.entries.get(k).cloned())
                    .collect()
            })
            .flatten();
        match found {
            Some(json) => {
                self.hits.fetch_add(1, Relaxed);
                Some(Hit {
                    json,
                    generation: set.generation,
                    lsn: set.lsn,
                    stale: set.stale,
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
        self.set
            .read()
            .map(|s| s.events.clone())
            .unwrap_or_default()
    }

    /// (hits, misses) since start.
    pub fn counts(&self) -> (u64, u64) {
        (self.hits.load(Relaxed), self.misses.load(Relaxed))
    }

    /// Reads the marker, the events that end in the future, the views of
    /// those inside their warm window, and swaps the new set in.
    async fn refresh(&self) -> Result<(), fred::error::Error> {
        let previous = self.set.read().map(|s| s.clone()).unwrap_or_default();
        let now = Utc::now();
        let marker: Option<String> = self.client.get(self.keys.generation_marker()).await?;
        let Some(marker) = marker.and_then(|m| serde_json::from_str::<GenerationMarker>(&m).ok())
        else {
            // No live generation: nothing may be served.
            self.swap(WarmSet {
                refreshed: Some(Instant::now()),
                ..Default::default()
            });
            return Ok(());
        };
        let generation = marker.generation;

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
        let raw_events = self.read_all(&event_keys).await?;
        let window = chrono::Duration::from_std(self.window).unwrap_or_default();
        let mut keys = Vec::new();
        let mut events = Vec::new();
        for (key, raw) in event_keys.into_iter().zip(raw_events) {
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
            keys.push(key);
            for &course in &event.course_ids {
                keys.push(self.keys.course_view(generation, course));
                keys.push(self.keys.course_stats(generation, course));
                keys.push(self.keys.course_card(generation, course));
            }
            events.push(WarmEvent {
                event_id: event.id,
                starts_at: event.starts_at,
                ends_at: event.ends_at,
                entries: 1 + 3 * event.course_ids.len(),
            });
        }

        let values = self.read_all(&keys).await?;
        let mut set = WarmSet {
            generation,
            lsn: watermark.and_then(|w| w.parse().ok()).unwrap_or_default(),
            stale: marker.building.is_some(),
            events,
            refreshed: Some(Instant::now()),
            ..Default::default()
        };
        for (key, raw) in keys.into_iter().zip(values) {
            let Some(raw) = raw else { continue };
            let json = match (previous.raw.get(&key), previous.entries.get(&key)) {
                (Some(old_raw), Some(old_json))
                    if *old_raw == raw && previous.generation == generation =>
                {
                    old_json.clone()
                }
                _ => match views::decode(&raw) {
                    Ok(json) => Bytes::from(json.into_owned()),
                    Err(err) => {
                        tracing::error!(key, error = %err, "corrupt view in redis; not pre-warmed");
                        continue;
                    }
                },
            };
            set.entries.insert(key.clone(), json);
            set.raw.insert(key, raw);
        }
        self.swap(set);
        Ok(())
    }

    async fn read_all(&self, keys: &[String]) -> Result<Vec<Option<Bytes>>, fred::error::Error> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let pipe = self.client.pipeline();
        for key in keys {
            let _: () = pipe.get(key.as_str()).await?;
        }
        let values: Vec<Value> = pipe.all().await?;
        Ok(values
            .into_iter()
            .map(|v| match v {
                Value::Bytes(b) => Some(b),
                Value::String(s) => Some(Bytes::from(s.to_string())),
                _ => None,
            })
            .collect())
    }

    fn swap(&self, set: WarmSet) {
        if let Ok(mut slot) = self.set.write() {
            *slot = Arc::new(set);
        }
    }
}
