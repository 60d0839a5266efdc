//! The ops subcommands: `status`, `rebuild` and `drop-slot`.

use views::{Keys, Lsn};

use crate::{config::Config, sink::Sink, source, standby, wal};

/// `projector status`: prints the slot, lag, retained WAL, WAL limit, the
/// active instance, generation (and the generation each view schema's
/// readers read) and watermark as JSON.
pub async fn status(config: &Config) -> anyhow::Result<serde_json::Value> {
    let pg = source::connect(&config.database.url).await?;
    let slot = source::slot_info(&pg, &config.slot).await?;
    let active = standby::holder(&pg, &config.slot).await?;
    let (keep_text, keep) = wal::keep_size(&pg).await?;
    let sink = Sink::connect(
        &config.redis.url,
        Keys::new(config.redis.key_prefix.clone()),
    )
    .await?;
    let marker = sink.marker().await?;
    let watermark = match &marker {
        Some(m) => sink.watermark(m.generation).await?,
        None => None,
    };
    Ok(serde_json::json!({
        "slot": config.slot,
        "slot_exists": slot.is_some(),
        "slot_active": slot.as_ref().map(|s| s.active),
        "wal_status": slot.as_ref().map(|s| s.wal_status.as_str()),
        "confirmed_flush_lsn": slot.as_ref().map(|s| s.confirmed_flush.to_string()),
        "current_wal_lsn": slot.as_ref().map(|s| s.current_wal.to_string()),
        "lag_bytes": slot.as_ref().map(|s| s.current_wal.0.saturating_sub(s.confirmed_flush.0)),
        "retained_wal_bytes": slot.as_ref().map(|s| s.retained_bytes),
        "max_slot_wal_keep_size": keep_text,
        "max_slot_wal_keep_size_bytes": keep.map(|k| k.as_metric() as i64),
        "active_instance": active.map(|h| serde_json::json!({"name": h.name, "pid": h.pid})),
        "generation": marker.as_ref().map(|m| m.generation),
        "schema": marker.as_ref().map(|m| m.schema),
        "readable_by_schema": marker.as_ref().map(|m| &m.live),
        "building": marker.as_ref().and_then(|m| m.building),
        "watermark": watermark.map(|w: Lsn| w.to_string()),
    }))
}

/// `projector rebuild`: asks the running daemon (or the next one to start)
/// to build a fresh generation and switch readers to it.
pub async fn request_rebuild(config: &Config) -> anyhow::Result<()> {
    let sink = Sink::connect(
        &config.redis.url,
        Keys::new(config.redis.key_prefix.clone()),
    )
    .await?;
    sink.request_rebuild().await?;
    Ok(())
}

/// `projector drop-slot`: drops the slot (the daemon must be stopped).
pub async fn drop_slot(config: &Config) -> anyhow::Result<bool> {
    let pg = source::connect(&config.database.url).await?;
    match source::slot_info(&pg, &config.slot).await? {
        None => Ok(false),
        Some(s) => {
            anyhow::ensure!(
                !s.active,
                "slot {} is in use: stop the projector first",
                config.slot
            );
            source::drop_slot(&pg, &config.slot).await?;
            Ok(true)
        }
    }
}
