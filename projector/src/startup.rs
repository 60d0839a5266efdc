//! Each start resumes the live generation or builds a fresh one: [`plan`]
//! decides from what Redis and PostgreSQL report, [`open`] carries it out.

use std::sync::atomic::Ordering::Relaxed;

use anyhow::Context;
use pgwire_replication::ReplicationClient;
use views::{GenerationMarker, Lsn};

use crate::{
    config::Config,
    divergence::{Baseline, NodeChange, Nodes, RecordedNodes},
    metrics::Metrics,
    sink::Sink,
    source::{self, SlotInfo, SlotStatus},
};

/// What a start finds.
#[derive(Debug, Clone)]
pub struct Observed {
    /// The live generation marker in Redis.
    pub marker: Option<GenerationMarker>,
    /// The watermark stored for the marker's generation.
    pub watermark: Option<Lsn>,
    /// The replication slot, if it exists.
    pub slot: Option<SlotInfo>,
    /// A pending rebuild request (when it was asked for); cleared only once
    /// a rebuild went live.
    pub rebuild_request: Option<String>,
    /// Each Redis primary's `run_id`, read first.
    pub nodes: Nodes,
    /// The nodes the last stream recorded (in a cluster), and which node
    /// holds the marker's watermark (checked against the slot, not by
    /// `run_id`).
    pub recorded_nodes: Option<RecordedNodes>,
    pub watermark_node: String,
}

/// What a start does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    /// Stream into the live generation from its watermark.
    Resume { generation: u64, watermark: Lsn },
    /// Build a fresh generation from a new slot's snapshot.
    Rebuild(RebuildReason),
    /// Leave the views alone: the live ones have a newer view schema than
    /// this release's (an old instance still running during a rolling
    /// upgrade must not undo it; `projector rebuild` rolls back).
    Refuse { live_schema: u32 },
}

/// Why a start rebuilds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RebuildReason {
    /// `projector rebuild` asked for it.
    Requested,
    /// Redis holds no live generation.
    NoGeneration,
    /// The slot does not exist.
    SlotMissing,
    /// PostgreSQL removed WAL the slot needed.
    SlotLost { generation: u64 },
    /// The live generation's views have an older schema: built beside it,
    /// which stays readable for the older query APIs.
    SchemaChanged { schema: u32 },
    /// Redis is behind what the slot confirmed (restored or failed over):
    /// the changes in between are gone from the slot.
    BehindSlot {
        generation: u64,
        watermark: Lsn,
        confirmed: Lsn,
    },
    /// A Redis node other than the watermark's is not the server the last
    /// stream wrote to: its views may have gone back in time.
    NodeRestarted { generation: u64, change: NodeChange },
}

/// Reads what [`plan`] decides on: the marker, the slot, the rebuild request
/// (taking it) and the live generation's watermark.
pub async fn observe(
    sink: &Sink,
    pg: &tokio_postgres::Client,
    slot: &str,
) -> anyhow::Result<Observed> {
    // First: a node that restarts after this is the stream's to notice.
    let nodes = sink.nodes().await?;
    let marker = sink.marker().await?;
    let slot = source::slot_info(pg, slot).await?;
    let rebuild_request = sink.rebuild_request().await?;
    let watermark = match &marker {
        Some(m) => sink.watermark(m.generation).await?,
        None => None,
    };
    let watermark_node = sink.watermark_node(marker.as_ref().map_or(0, |m| m.generation));
    // One Redis is the watermark's node itself: its record would say nothing.
    let recorded_nodes = if sink.is_clustered() {
        sink.recorded_nodes().await?
    } else {
        None
    };
    Ok(Observed {
        marker,
        watermark,
        slot,
        rebuild_request,
        nodes,
        recorded_nodes,
        watermark_node,
    })
}

/// Resume only when the live generation has this release's view `schema`,
/// its slot still streams, and Redis holds at least what the slot confirmed.
pub fn plan(seen: &Observed, schema: u32) -> Plan {
    use RebuildReason::*;
    if seen.rebuild_request.is_some() {
        return Plan::Rebuild(Requested);
    }
    let Some(marker) = &seen.marker else {
        return Plan::Rebuild(NoGeneration);
    };
    if marker.schema > schema {
        return Plan::Refuse {
            live_schema: marker.schema,
        };
    }
    let Some(slot) = &seen.slot else {
        return Plan::Rebuild(SlotMissing);
    };
    if slot.wal_status == SlotStatus::Lost {
        return Plan::Rebuild(SlotLost {
            generation: marker.generation,
        });
    }
    if marker.schema != schema {
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
    let restarted = seen
        .recorded_nodes
        .as_ref()
        .filter(|r| r.generation == marker.generation)
        .and_then(|r| r.nodes.changed_in(&seen.nodes, &seen.watermark_node));
    if let Some(change) = restarted {
        return Plan::Rebuild(NodeRestarted {
            generation: marker.generation,
            change,
        });
    }
    Plan::Resume {
        generation: marker.generation,
        watermark,
    }
}

impl RebuildReason {
    /// Redis was found holding less than the projector wrote.
    fn is_divergence(&self) -> bool {
        matches!(
            self,
            RebuildReason::BehindSlot { .. } | RebuildReason::NodeRestarted { .. }
        )
    }

    fn log(&self, slot: &str, current: u32) {
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
                current,
                "view schema changed; building a generation of the new schema beside the live one, which stays readable for the previous release"
            ),
            RebuildReason::BehindSlot {
                generation,
                watermark,
                confirmed,
            } => tracing::error!(
                generation,
                %watermark,
                %confirmed,
                "redis holds less than the slot confirmed (restored or failed over?); rebuilding while the live generation serves, marked stale"
            ),
            RebuildReason::NodeRestarted { generation, change } => tracing::error!(
                generation,
                node = change.node,
                old_run_id = change.recorded,
                new_run_id = change.found_text(),
                "a redis node restarted or failed over since this generation was streamed: its views may have gone back in time; rebuilding while the live generation serves, marked stale"
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
            reason.log(&config.slot, config.view_schema_version);
            if reason.is_divergence() {
                metrics.divergences.fetch_add(1, Relaxed);
            }
            rebuild(repl, seen, config, sink, pg, metrics).await
        }
        Plan::Refuse { live_schema } => anyhow::bail!(
            "the live views have view schema {live_schema}, newer than this release's {}: \
             leaving them to the newer projector (to roll back, run `projector rebuild` \
             with this release)",
            config.view_schema_version
        ),
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
    let building = match &seen.marker {
        Some(marker) => Some(
            sink.set_marker(&GenerationMarker {
                building: Some(generation),
                ..marker.clone()
            })
            .await?,
        ),
        None => None,
    };
    let consistent_point =
        source::create_slot_and_build(&mut repl, config, sink, generation, &metrics.snapshot_rows)
            .await?;
    sink.set_watermark(generation, consistent_point).await?;
    let schema = config.view_schema_version;
    let now = unix_ms();
    let mut live = GenerationMarker::switched(seen.marker.as_ref(), generation, schema, now);
    let grace = config.previous_schema_grace().as_millis() as u64;
    if let Some(retired) = live.retired(now, grace) {
        live = retired;
    }
    anyhow::ensure!(
        sink.replace_marker(building.as_deref(), &live).await?,
        "the generation marker changed while generation {generation} was built \
         (another projector, or Redis lost its data); starting over"
    );
    if let Some(request) = &seen.rebuild_request {
        // Left in place, it would only cost one more rebuild.
        if let Err(err) = sink.clear_rebuild_request(request).await {
            tracing::warn!(error = %err, "could not clear the rebuild request this rebuild carried out");
        }
    }
    metrics.rebuilds.fetch_add(1, Relaxed);
    tracing::info!(generation, schema, %consistent_point, readable = ?live.live, "generation is live");
    sink.delete_unread_generations_soon(live);
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

/// What Redis was when the stream of `generation` started (the nodes read
/// by [`observe`], before anything was written), for the stream to check;
/// in a cluster also recorded for the next start to compare with.
pub async fn baseline(sink: &Sink, seen: &Observed, generation: u64) -> anyhow::Result<Baseline> {
    if sink.is_clustered() {
        sink.record_nodes(generation, &seen.nodes)
            .await
            .context("recording the redis nodes")?;
    }
    let watermark_node = sink.watermark_node(generation);
    // Else every watermark write would be refused and the stream restart
    // at once, again and again: a failure, retried after a backoff.
    anyhow::ensure!(
        seen.nodes.0.contains_key(&watermark_node),
        "the redis node holding the watermark ({watermark_node:?}) is not among the primaries {:?}",
        seen.nodes.0.keys().collect::<Vec<_>>()
    );
    Ok(Baseline {
        nodes: seen.nodes.clone(),
        watermark_node,
    })
}

/// Milliseconds since the Unix epoch (the marker's clock).
pub(crate) fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use views::VIEW_SCHEMA_VERSION;

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
            marker: Some(GenerationMarker::switched(
                None,
                GENERATION,
                VIEW_SCHEMA_VERSION,
                0,
            )),
            watermark: Some(Lsn(0x200)),
            slot: Some(slot(SlotStatus::Reserved, 0x100)),
            rebuild_request: None,
            nodes: nodes(&[("a:1", "r1"), ("b:2", "r2")]),
            recorded_nodes: Some(RecordedNodes {
                generation: GENERATION,
                nodes: nodes(&[("a:1", "r1"), ("b:2", "r2")]),
            }),
            watermark_node: "b:2".into(),
        }
    }

    fn nodes(list: &[(&str, &str)]) -> Nodes {
        Nodes(
            list.iter()
                .map(|(n, id)| (n.to_string(), id.to_string()))
                .collect(),
        )
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
                plan(&seen, VIEW_SCHEMA_VERSION),
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
            plan(&seen, VIEW_SCHEMA_VERSION),
            Plan::Resume {
                generation: GENERATION,
                watermark: Lsn(0x100)
            }
        );
    }

    #[test]
    fn a_requested_rebuild_rebuilds_whatever_else_holds() {
        let seen = Observed {
            rebuild_request: Some("2026-12-03T21:00:00Z".into()),
            ..healthy()
        };
        assert_eq!(
            plan(&seen, VIEW_SCHEMA_VERSION),
            Plan::Rebuild(RebuildReason::Requested)
        );
    }

    #[test]
    fn no_live_generation_builds_one() {
        let seen = Observed {
            marker: None,
            watermark: None,
            ..healthy()
        };
        assert_eq!(
            plan(&seen, VIEW_SCHEMA_VERSION),
            Plan::Rebuild(RebuildReason::NoGeneration)
        );
    }

    #[test]
    fn a_missing_slot_rebuilds() {
        let seen = Observed {
            slot: None,
            ..healthy()
        };
        assert_eq!(
            plan(&seen, VIEW_SCHEMA_VERSION),
            Plan::Rebuild(RebuildReason::SlotMissing)
        );
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
        assert_eq!(plan(&seen, VIEW_SCHEMA_VERSION), lost.clone());
        if let Some(marker) = &mut seen.marker {
            marker.schema = VIEW_SCHEMA_VERSION - 1;
        }
        assert_eq!(plan(&seen, VIEW_SCHEMA_VERSION), lost);
    }

    #[test]
    fn another_view_schema_rebuilds() {
        let mut seen = healthy();
        if let Some(marker) = &mut seen.marker {
            marker.schema = VIEW_SCHEMA_VERSION - 1;
        }
        assert_eq!(
            plan(&seen, VIEW_SCHEMA_VERSION),
            Plan::Rebuild(RebuildReason::SchemaChanged {
                schema: VIEW_SCHEMA_VERSION - 1
            })
        );
    }

    #[test]
    fn a_newer_view_schema_is_left_alone_unless_a_rebuild_is_requested() {
        let mut seen = Observed {
            slot: Some(slot(SlotStatus::Lost, 0x100)),
            watermark: None,
            ..healthy()
        };
        if let Some(marker) = &mut seen.marker {
            marker.schema = VIEW_SCHEMA_VERSION + 1;
        }
        assert_eq!(
            plan(&seen, VIEW_SCHEMA_VERSION),
            Plan::Refuse {
                live_schema: VIEW_SCHEMA_VERSION + 1
            }
        );
        seen.rebuild_request = Some("2026-12-03T21:00:00Z".into());
        assert_eq!(
            plan(&seen, VIEW_SCHEMA_VERSION),
            Plan::Rebuild(RebuildReason::Requested),
            "a rollback"
        );
    }

    #[test]
    fn the_schema_compared_is_the_one_this_release_writes() {
        let seen = healthy();
        assert_eq!(
            plan(&seen, VIEW_SCHEMA_VERSION + 1),
            Plan::Rebuild(RebuildReason::SchemaChanged {
                schema: VIEW_SCHEMA_VERSION
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
                plan(&seen, VIEW_SCHEMA_VERSION),
                Plan::Rebuild(RebuildReason::BehindSlot {
                    generation: GENERATION,
                    watermark: watermark.unwrap_or_default(),
                    confirmed: Lsn(0x100),
                }),
                "{watermark:?}"
            );
        }
    }

    #[test]
    fn a_node_restarted_since_the_generation_was_streamed_rebuilds_unless_it_holds_the_watermark() {
        // Another node: nothing proves what it kept.
        let seen = Observed {
            nodes: nodes(&[("a:1", "r9"), ("b:2", "r2")]),
            ..healthy()
        };
        assert_eq!(
            plan(&seen, VIEW_SCHEMA_VERSION),
            Plan::Rebuild(RebuildReason::NodeRestarted {
                generation: GENERATION,
                change: NodeChange {
                    node: "a:1".into(),
                    recorded: "r1".into(),
                    found: Some("r9".into()),
                },
            })
        );
        // The watermark's node: its watermark against the slot decides.
        let seen = Observed {
            nodes: nodes(&[("a:1", "r1"), ("b:2", "r7")]),
            ..healthy()
        };
        assert!(matches!(
            plan(&seen, VIEW_SCHEMA_VERSION),
            Plan::Resume { .. }
        ));
        // Nodes recorded for another generation say nothing of this one.
        let mut seen = Observed {
            nodes: nodes(&[("a:1", "r9"), ("b:2", "r2")]),
            ..healthy()
        };
        if let Some(recorded) = &mut seen.recorded_nodes {
            recorded.generation = GENERATION - 1;
        }
        assert!(matches!(
            plan(&seen, VIEW_SCHEMA_VERSION),
            Plan::Resume { .. }
        ));
    }
}
