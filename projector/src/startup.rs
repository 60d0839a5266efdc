//! Each start resumes the live generation or builds a fresh one: [`plan`]
//! decides from what Redis and PostgreSQL report, [`open`] carries it out.

use std::{sync::atomic::Ordering::Relaxed, time::Duration};

use anyhow::Context;
use pgwire_replication::ReplicationClient;
use views::{GenerationMarker, Lsn, VIEW_SCHEMA_VERSION};

use crate::{
    config::Config,
    metrics::Metrics,
    sink::Sink,
    source::{self, SlotInfo, SlotStatus},
};

/// How long an old generation outlives the switch in a cluster before it is
/// deleted: well past a query API's Redis timeout (500 ms by default).
const CLUSTER_CLEANUP_GRACE: Duration = Duration::from_secs(5);

/// What a start finds.
#[derive(Debug, Clone)]
pub struct Observed {
    /// The live generation marker in Redis.
    pub marker: Option<GenerationMarker>,
    /// The watermark stored for the marker's generation.
    pub watermark: Option<Lsn>,
    /// The replication slot, if it exists.
    pub slot: Option<SlotInfo>,
    /// A rebuild was asked for (the request is taken by observing it).
    pub rebuild_requested: bool,
}

/// What a start does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Plan {
    /// Stream into the live generation from its watermark.
    Resume { generation: u64, watermark: Lsn },
    /// Build a fresh generation from a new slot's snapshot.
    Rebuild(RebuildReason),
}

/// Why a start rebuilds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RebuildReason {
    /// `projector rebuild` asked for it.
    Requested,
    /// Redis holds no live generation.
    NoGeneration,
    /// The slot does not exist.
    SlotMissing,
    /// PostgreSQL removed WAL the slot needed.
    SlotLost { generation: u64 },
    /// The live generation's views have another schema.
    SchemaChanged { schema: u32 },
    /// Redis is behind what the slot confirmed (restored or failed over):
    /// the changes in between are gone from the slot.
    BehindSlot {
        generation: u64,
        watermark: Lsn,
        confirmed: Lsn,
    },
}

/// Reads what [`plan`] decides on: the marker, the slot, the rebuild request
/// (taking it) and the live generation's watermark.
pub async fn observe(
    sink: &Sink,
    pg: &tokio_postgres::Client,
    slot: &str,
) -> anyhow::Result<Observed> {
    let marker = sink.marker().await?;
    let slot = source::slot_info(pg, slot).await?;
    let rebuild_requested = sink.take_rebuild_request().await?;
    let watermark = match &marker {
        Some(m) => sink.watermark(m.generation).await?,
        None => None,
    };
    Ok(Observed {
        marker,
        watermark,
        slot,
        rebuild_requested,
    })
}

/// Resume only when the live generation has the current schema, its slot
/// still streams, and Redis holds at least what the slot confirmed.
pub fn plan(seen: &Observed) -> Plan {
    use RebuildReason::*;
    if seen.rebuild_requested {
        return Plan::Rebuild(Requested);
    }
    let Some(marker) = &seen.marker else {
        return Plan::Rebuild(NoGeneration);
    };
    let Some(slot) = &seen.slot else {
        return Plan::Rebuild(SlotMissing);
    };
    if slot.wal_status == SlotStatus::Lost {
        return Plan::Rebuild(SlotLost {
            generation: marker.generation,
        });
    }
    if marker.schema != VIEW_SCHEMA_VERSION {
        return Plan::Rebuild(SchemaChanged {
            schema: marker.schema,
        });
    }
    let watermark = seen.watermark.unwrap_or_default();
    if watermark < slot.confirmed_flush {
        return Plan::Rebuild(BehindSlot {
            generation: marker.generation,
            watermark,
            confirmed: slot.confirmed_flush,
        });
    }
    Plan::Resume {
        generation: marker.generation,
        watermark,
    }
}

impl RebuildReason {
    fn log(self, slot: &str) {
        match self {
            RebuildReason::Requested => tracing::info!(
                "a rebuild was requested; building a fresh generation while the live one keeps serving"
            ),
            RebuildReason::NoGeneration => {
                tracing::info!("no live view generation in redis; building one")
            }
            RebuildReason::SlotMissing => {
                tracing::warn!(slot, "replication slot is missing; creating it and rebuilding")
            }
            RebuildReason::SlotLost { generation } => tracing::error!(
                generation,
                slot,
                "the replication slot was invalidated (WAL removed); creating a new slot and rebuilding"
            ),
            RebuildReason::SchemaChanged { schema } => tracing::info!(
                schema,
                current = VIEW_SCHEMA_VERSION,
                "view schema changed; rebuilding"
            ),
            RebuildReason::BehindSlot {
                generation,
                watermark,
                confirmed,
            } => tracing::warn!(
                generation,
                %watermark,
                %confirmed,
                "redis holds less than the slot confirmed (restored or failed over?); rebuilding"
            ),
        }
    }
}

/// A replication session that has sent START_REPLICATION, and where it
/// streams to.
pub struct Opened {
    pub repl: ReplicationClient,
    pub generation: u64,
    /// The watermark the stream starts from.
    pub applied: Lsn,
}

/// Carries out `plan` on the gated replication session `repl` (the one
/// holding the instance's lock): starts it to resume, or drops the slot,
/// creates it anew on that session and builds.
pub async fn open(
    plan: Plan,
    mut repl: ReplicationClient,
    seen: &Observed,
    config: &Config,
    sink: &Sink,
    pg: &tokio_postgres::Client,
    metrics: &Metrics,
) -> anyhow::Result<Opened> {
    match plan {
        Plan::Resume {
            generation,
            watermark,
        } => {
            // The session was opened before the watermark was known, so it
            // starts at the slot's confirmed position (at or before the
            // watermark): what is replayed, the stamps skip.
            repl.start().await.context("starting replication")?;
            tracing::info!(generation, %watermark, slot = %config.slot, "resuming replication");
            Ok(Opened {
                repl,
                generation,
                applied: watermark,
            })
        }
        Plan::Rebuild(reason) => {
            reason.log(&config.slot);
            rebuild(repl, seen, config, sink, pg, metrics).await
        }
    }
}

/// Builds a fresh generation from a new slot and makes it live; readers keep
/// the old one, marked stale, meanwhile.
async fn rebuild(
    mut repl: ReplicationClient,
    seen: &Observed,
    config: &Config,
    sink: &Sink,
    pg: &tokio_postgres::Client,
    metrics: &Metrics,
) -> anyhow::Result<Opened> {
    if let Some(slot) = &seen.slot {
        anyhow::ensure!(
            !slot.active,
            "replication slot {} is in use by another process",
            config.slot
        );
        source::drop_slot(pg, &config.slot).await?;
    }
    let generation = sink.next_generation().await?;
    if let Some(marker) = &seen.marker {
        sink.set_marker(&GenerationMarker {
            building: Some(generation),
            ..marker.clone()
        })
        .await?;
    }
    let consistent_point =
        source::create_slot_and_build(&mut repl, config, sink, generation, metrics).await?;
    sink.set_watermark(generation, consistent_point).await?;
    sink.set_marker(&GenerationMarker {
        generation,
        schema: VIEW_SCHEMA_VERSION,
        building: None,
    })
    .await?;
    metrics.rebuilds.fetch_add(1, Relaxed);
    tracing::info!(generation, %consistent_point, "generation is live");
    delete_older_generations(sink.clone(), generation);
    // The build's session is gated: streaming starts here. (`start` only
    // fails on a session that is not gated; a worker that died meanwhile is
    // reported by `wait_started`.)
    repl.start()
        .await
        .context("starting replication at the consistent point")?;
    Ok(Opened {
        repl,
        generation,
        applied: consistent_point,
    })
}

/// Deletes the keys of generations before `live`, in the background.
fn delete_older_generations(sink: Sink, live: u64) {
    tokio::spawn(async move {
        if sink.is_clustered() {
            // On one Redis, a reader's closing marker read proves its keys
            // were read before the switch; in a cluster they sit on other
            // nodes, so wait out a query API's Redis timeout instead.
            tokio::time::sleep(CLUSTER_CLEANUP_GRACE).await;
        }
        match sink.delete_older_generations(live).await {
            Ok(n) => tracing::info!(keys = n, "deleted the keys of older generations"),
            Err(err) => tracing::warn!(error = %err, "could not delete older generations"),
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    const GENERATION: u64 = 4;

    fn slot(status: SlotStatus, confirmed: u64) -> SlotInfo {
        SlotInfo {
            confirmed_flush: Lsn(confirmed),
            wal_status: status,
            active: false,
            current_wal: Lsn(confirmed + 100),
            retained_bytes: 100,
        }
    }

    /// A live generation of the current schema at watermark 0x200, its slot
    /// reserved and confirmed at 0x100.
    fn healthy() -> Observed {
        Observed {
            marker: Some(GenerationMarker {
                generation: GENERATION,
                schema: VIEW_SCHEMA_VERSION,
                building: None,
            }),
            watermark: Some(Lsn(0x200)),
            slot: Some(slot(SlotStatus::Reserved, 0x100)),
            rebuild_requested: false,
        }
    }

    #[test]
    fn a_healthy_generation_resumes_from_its_watermark() {
        for status in [
            SlotStatus::Reserved,
            SlotStatus::Extended,
            SlotStatus::Unreserved,
            SlotStatus::Unreported,
        ] {
            let seen = Observed {
                slot: Some(slot(status, 0x100)),
                ..healthy()
            };
            assert_eq!(
                plan(&seen),
                Plan::Resume {
                    generation: GENERATION,
                    watermark: Lsn(0x200)
                },
                "{status:?}"
            );
        }
    }

    #[test]
    fn a_watermark_equal_to_the_confirmed_position_resumes() {
        let seen = Observed {
            watermark: Some(Lsn(0x100)),
            ..healthy()
        };
        assert_eq!(
            plan(&seen),
            Plan::Resume {
                generation: GENERATION,
                watermark: Lsn(0x100)
            }
        );
    }

    #[test]
    fn a_requested_rebuild_rebuilds_whatever_else_holds() {
        let seen = Observed {
            rebuild_requested: true,
            ..healthy()
        };
        assert_eq!(plan(&seen), Plan::Rebuild(RebuildReason::Requested));
    }

    #[test]
    fn no_live_generation_builds_one() {
        let seen = Observed {
            marker: None,
            watermark: None,
            ..healthy()
        };
        assert_eq!(plan(&seen), Plan::Rebuild(RebuildReason::NoGeneration));
    }

    #[test]
    fn a_missing_slot_rebuilds() {
        let seen = Observed {
            slot: None,
            ..healthy()
        };
        assert_eq!(plan(&seen), Plan::Rebuild(RebuildReason::SlotMissing));
    }

    #[test]
    fn a_lost_slot_rebuilds_even_when_the_schema_changed_too() {
        let mut seen = Observed {
            slot: Some(slot(SlotStatus::Lost, 0x100)),
            ..healthy()
        };
        let lost = Plan::Rebuild(RebuildReason::SlotLost {
            generation: GENERATION,
        });
        assert_eq!(plan(&seen), lost);
        if let Some(marker) = &mut seen.marker {
            marker.schema = VIEW_SCHEMA_VERSION + 1;
        }
        assert_eq!(plan(&seen), lost);
    }

    #[test]
    fn another_view_schema_rebuilds() {
        let mut seen = healthy();
        if let Some(marker) = &mut seen.marker {
            marker.schema = VIEW_SCHEMA_VERSION - 1;
        }
        assert_eq!(
            plan(&seen),
            Plan::Rebuild(RebuildReason::SchemaChanged {
                schema: VIEW_SCHEMA_VERSION - 1
            })
        );
    }

    #[test]
    fn redis_behind_the_slot_rebuilds() {
        for watermark in [Some(Lsn(0xFF)), None] {
            let seen = Observed {
                watermark,
                ..healthy()
            };
            assert_eq!(
                plan(&seen),
                Plan::Rebuild(RebuildReason::BehindSlot {
                    generation: GENERATION,
                    watermark: watermark.unwrap_or_default(),
                    confirmed: Lsn(0x100),
                }),
                "{watermark:?}"
            );
        }
    }
}
