//! WAL safety: how much WAL the server may keep for the slot
//! (`max_slot_wal_keep_size`) and whether the slot's WAL is still there, as
//! metrics and one warning when nothing bounds it.

use std::sync::Mutex;

use crate::source::SlotStatus;

/// `max_slot_wal_keep_size`: how much WAL a slot may hold back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeepSize {
    /// -1: a slot keeps WAL until the disk is full.
    Unlimited,
    /// A slot past this many bytes is invalidated at the next checkpoint.
    Bytes(u64),
}

impl KeepSize {
    /// Reads the setting as `SHOW` prints it (`-1`, `0`, `512MB`, `4GB`; a
    /// bare number is in the setting's unit, MB).
    pub fn parse(text: &str) -> Option<Self> {
        let text = text.trim();
        if text == "-1" {
            return Some(KeepSize::Unlimited);
        }
        let digits = text.bytes().take_while(u8::is_ascii_digit).count();
        let (number, unit) = text.split_at(digits);
        let number: u64 = number.parse().ok()?;
        let scale: u64 = match unit.trim() {
            "B" => 1,
            "kB" => 1 << 10,
            "" | "MB" => 1 << 20,
            "GB" => 1 << 30,
            "TB" => 1 << 40,
            _ => return None,
        };
        number.checked_mul(scale).map(KeepSize::Bytes)
    }

    /// The metric's value: bytes, -1 when unlimited.
    pub fn as_metric(self) -> f64 {
        match self {
            KeepSize::Unlimited => -1.0,
            KeepSize::Bytes(n) => n as f64,
        }
    }
}

/// The last values read, for `/metrics` (`None` until read).
#[derive(Debug, Default)]
pub struct WalGauges {
    keep: Mutex<Option<KeepSize>>,
    slot: Mutex<Option<SlotStatus>>,
}

impl WalGauges {
    /// `max_slot_wal_keep_size` in bytes, -1 when unlimited, NaN before it was read.
    pub fn keep_bytes(&self) -> f64 {
        self.keep
            .lock()
            .ok()
            .and_then(|k| *k)
            .map_or(f64::NAN, KeepSize::as_metric)
    }

    /// 1 when the slot's `wal_status` is `status`, else 0.
    pub fn slot_is(&self, status: SlotStatus) -> f64 {
        let now = self.slot.lock().ok().and_then(|s| *s);
        f64::from(u8::from(now == Some(status)))
    }

    pub fn set_slot(&self, status: SlotStatus) {
        if let Ok(mut slot) = self.slot.lock() {
            *slot = Some(status);
        }
    }

    /// Records the setting; `true` when it just became unlimited (at start,
    /// or changed since), so the warning is logged once, not at every read.
    fn set_keep(&self, keep: KeepSize) -> bool {
        let Ok(mut now) = self.keep.lock() else {
            return false;
        };
        let before = now.replace(keep);
        keep == KeepSize::Unlimited && before != Some(KeepSize::Unlimited)
    }
}

/// The slot statuses exported as `projector_slot_wal_status{status}`.
pub const EXPORTED_STATUSES: [SlotStatus; 4] = [
    SlotStatus::Reserved,
    SlotStatus::Extended,
    SlotStatus::Unreserved,
    SlotStatus::Lost,
];

/// Reads `max_slot_wal_keep_size` as `SHOW` prints it.
pub async fn keep_size(pg: &tokio_postgres::Client) -> anyhow::Result<(String, Option<KeepSize>)> {
    let text: String = pg
        .query_one("SELECT current_setting('max_slot_wal_keep_size')", &[])
        .await?
        .get(0);
    let parsed = KeepSize::parse(&text);
    Ok((text, parsed))
}

/// Reads the setting into the metrics, warning when nothing bounds the WAL
/// the slot keeps. Best effort: a failed read only leaves the metric as it was.
pub async fn check(pg: &tokio_postgres::Client, gauges: &WalGauges) {
    match keep_size(pg).await {
        Ok((_, Some(keep))) => {
            if gauges.set_keep(keep) {
                tracing::warn!(
                    "max_slot_wal_keep_size is -1 (unlimited): while the projector is stopped \
                     or behind, its slot keeps every WAL segment and can fill the server's disk; \
                     set max_slot_wal_keep_size (for example 4GB) so PostgreSQL invalidates the \
                     slot instead (the projector then rebuilds)"
                );
            }
        }
        Ok((text, None)) => {
            tracing::warn!(value = %text, "could not read max_slot_wal_keep_size")
        }
        Err(err) => tracing::warn!(error = %err, "could not read max_slot_wal_keep_size"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_setting_reads_as_show_prints_it() {
        assert_eq!(KeepSize::parse("-1"), Some(KeepSize::Unlimited));
        assert_eq!(KeepSize::parse("0"), Some(KeepSize::Bytes(0)));
        assert_eq!(KeepSize::parse("4GB"), Some(KeepSize::Bytes(4 << 30)));
        assert_eq!(KeepSize::parse("1500MB"), Some(KeepSize::Bytes(1500 << 20)));
        assert_eq!(KeepSize::parse("64kB"), Some(KeepSize::Bytes(64 << 10)));
        assert_eq!(KeepSize::parse("2TB"), Some(KeepSize::Bytes(2 << 40)));
        assert_eq!(KeepSize::parse("100"), Some(KeepSize::Bytes(100 << 20)));
        for bad in ["", "GB", "4 parsecs", "-2", "1.5GB"] {
            assert_eq!(KeepSize::parse(bad), None, "{bad:?}");
        }
        assert_eq!(KeepSize::Unlimited.as_metric(), -1.0);
        assert_eq!(KeepSize::Bytes(4 << 30).as_metric(), 4294967296.0);
    }

    #[test]
    fn an_unlimited_setting_is_reported_once_until_it_changes() {
        let gauges = WalGauges::default();
        assert!(gauges.keep_bytes().is_nan());
        assert!(gauges.set_keep(KeepSize::Unlimited));
        assert!(!gauges.set_keep(KeepSize::Unlimited));
        assert_eq!(gauges.keep_bytes(), -1.0);
        assert!(!gauges.set_keep(KeepSize::Bytes(1 << 30)));
        assert!(gauges.set_keep(KeepSize::Unlimited));
    }

    #[test]
    fn exactly_the_slots_status_is_one() {
        let gauges = WalGauges::default();
        assert!(EXPORTED_STATUSES.iter().all(|s| gauges.slot_is(*s) == 0.0));
        gauges.set_slot(SlotStatus::Extended);
        for status in EXPORTED_STATUSES {
            let expected = if status == SlotStatus::Extended {
                1.0
            } else {
                0.0
            };
            assert_eq!(gauges.slot_is(status), expected, "{status:?}");
        }
    }
}
