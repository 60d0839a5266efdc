//! Changes → entries for each entity, stamped with their position in the
//! stream, and the batch they wait in for the next flush, cut by a count of
//! changes and by the bytes they hold.
//!
//! A stamp is `(commit LSN, index in the transaction)` as fixed-width hex, so
//! Lua compares stamps as strings and a transaction split across flushes
//! resumes where it stopped.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use views::{aggregate, Lsn};

use crate::decode::{Change, COURSE_FIELDS};

/// The stamp of entities built from the initial snapshot: older than any
/// streamed change.
pub const SNAPSHOT_STAMP: &str = "000000000000000000000000";

/// The stamp of change `index` of the transaction committed at `commit_lsn`.
/// The initial build uses commit LSN zero, below every streamed change.
pub fn stamp(commit_lsn: Lsn, index: u32) -> String {
    // By hand: every change gets one, and `format!` was a visible share of
    // the projector's time.
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    let digit = |value: u64, shift: u32| char::from(HEX[((value >> shift) & 0xf) as usize]);
    let mut out = String::with_capacity(24);
    out.extend((0..16).rev().map(|i| digit(commit_lsn.0, 4 * i)));
    out.extend((0..8).rev().map(|i| digit(u64::from(index), 4 * i)));
    out
}

/// The commit LSN a stamp carries.
pub fn stamp_lsn(stamp: &str) -> Lsn {
    stamp
        .get(..16)
        .and_then(|h| u64::from_str_radix(h, 16).ok())
        .map(Lsn)
        .unwrap_or_default()
}

/// An entity with an aggregate hash and views of its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Entity {
    Course(i64),
    Event(i64),
    Order(i64),
}

/// One change to apply to an entity's aggregate, at its stamp.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Entry {
    /// Set these hash fields.
    Fields {
        stamp: String,
        fields: Vec<(String, String)>,
    },
    /// Active enrollments of a course changed by `delta` (with its company
    /// tally and, for an event's seat, the event's claimed count).
    Enroll {
        stamp: String,
        delta: i64,
        company: Option<String>,
        event_id: Option<i64>,
    },
}

impl Entry {
    /// The change sets a column of the course row: the stored page shows
    /// them all, so it is rewritten; every other change (enrollments, seat
    /// limits) rewrites only the stats and the card.
    pub fn touches_page(&self) -> bool {
        match self {
            Entry::Fields { fields, .. } => fields
                .iter()
                .any(|(name, _)| COURSE_FIELDS.contains(&name.as_str())),
            Entry::Enroll { .. } => false,
        }
    }
}

/// The aggregate a fresh entity's entries make on their own: their fields in
/// order, and the stamp of the last one (enrollment counts are not kept).
pub fn aggregate_of(entries: &[Entry]) -> HashMap<String, String> {
    let mut agg = HashMap::new();
    for entry in entries {
        if let Entry::Fields { stamp, fields } = entry {
            for (k, v) in fields {
                agg.insert(k.clone(), v.clone());
            }
            agg.insert(aggregate::STAMP.to_owned(), stamp.clone());
        }
    }
    agg
}

/// What a user's library does with a course.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LibraryOp {
    /// Enrolled at this time (µs).
    Add(i64),
    Remove,
}

/// Changes waiting for the next flush, grouped by entity, in commit order.
#[derive(Debug, Default)]
pub struct Batch {
    /// Entity → its entries, oldest first.
    pub entities: BTreeMap<Entity, Vec<Entry>>,
    /// (user, course) → the last library operation. Library writes are set
    /// operations (add, remove), so replaying them in order converges.
    pub library: BTreeMap<(i64, i64), LibraryOp>,
    /// Entities whose first change in this batch inserted their row: their
    /// whole state is in the batch, so their views render from its entries
    /// alone (one script, no aggregate read back).
    pub fresh: BTreeSet<Entity>,
    /// Row changes buffered.
    pub changes: usize,
    /// About the bytes the buffered changes hold (their text and the
    /// bookkeeping around it): what bounds memory when rows are large.
    pub bytes: usize,
    /// End LSN of the last transaction whose changes are all in this batch
    /// (or in earlier flushes), or a later position the stream passed
    /// outside any transaction: what the flush lets us acknowledge.
    pub commit_end: Option<Lsn>,
    /// Transactions completed in this batch.
    pub transactions: u64,
    /// Commit time of the first transaction completed in this batch (µs
    /// since the Unix epoch, by the server's clock): how stale the batch's
    /// oldest change is when it lands.
    pub first_commit_unix_us: Option<i64>,
    /// When this batch received its first completed transaction.
    pub first_received: Option<std::time::Instant>,
    /// The consistent point of the snapshot an initial build's batch was
    /// read from: the `lsn` its views say (SPEC: never 0/0), while their
    /// stamps stay below every streamed change. Zero when streamed.
    pub snapshot_lsn: Lsn,
}

/// Bytes an entry holds beside its text: its stamp, the entry, its place
/// in the entity's list and the map (an estimate, on the high side).
const ENTRY_BYTES: usize = 128;
/// Bytes a field holds beside its name and value (two string headers).
const FIELD_BYTES: usize = 48;
/// Bytes a library operation holds (a map node).
const LIBRARY_BYTES: usize = 64;

/// About the bytes `change` holds once buffered.
fn change_bytes(change: &Change) -> usize {
    let fields = |fields: &[(String, String)]| -> usize {
        fields
            .iter()
            .map(|(k, v)| k.len() + v.len() + FIELD_BYTES)
            .sum()
    };
    ENTRY_BYTES
        + match change {
            Change::Course { fields: f, .. }
            | Change::Event { fields: f, .. }
            | Change::Order { fields: f, .. } => fields(f),
            Change::Enrollment { company, .. } => {
                company.as_ref().map_or(0, String::len) + LIBRARY_BYTES
            }
            // Two entries of one field each.
            Change::EventCourse { .. } => ENTRY_BYTES + 2 * (FIELD_BYTES + 32),
            Change::OrderItem { .. } => FIELD_BYTES + 32,
        }
}

impl Batch {
    /// Either bound is reached: flush now.
    pub fn is_full(&self, max_changes: usize, max_bytes: usize) -> bool {
        self.changes >= max_changes || self.bytes >= max_bytes
    }

    /// Adds an entry made without a [`Change`] (the snapshot's tallies).
    pub fn push_entry(&mut self, entity: Entity, entry: Entry) {
        self.changes += 1;
        self.bytes += ENTRY_BYTES
            + match &entry {
                Entry::Enroll { company, .. } => company.as_ref().map_or(0, String::len),
                Entry::Fields { fields, .. } => fields
                    .iter()
                    .map(|(k, v)| k.len() + v.len() + FIELD_BYTES)
                    .sum(),
            };
        self.entities.entry(entity).or_default().push(entry);
    }

    /// Adds a library operation made without a [`Change`] (the snapshot's).
    pub fn push_library(&mut self, user_id: i64, course_id: i64, op: LibraryOp) {
        self.changes += 1;
        self.bytes += LIBRARY_BYTES;
        self.library.insert((user_id, course_id), op);
    }

    /// Adds a decoded change at `stamp`.
    pub fn push(&mut self, stamp: String, change: Change) {
        self.changes += 1;
        self.bytes += change_bytes(&change);
        match change {
            Change::Course { id, fields } => self.fields(Entity::Course(id), stamp, fields),
            Change::Event { id, fields } => self.fields(Entity::Event(id), stamp, fields),
            Change::Order {
                id,
                fields,
                inserted,
            } => {
                if inserted && !self.entities.contains_key(&Entity::Order(id)) {
                    self.fresh.insert(Entity::Order(id));
                }
                self.fields(Entity::Order(id), stamp, fields)
            }
            Change::Enrollment {
                course_id,
                user_id,
                delta,
                company,
                event_id,
                created_us,
            } => {
                let op = if delta > 0 {
                    LibraryOp::Add(created_us)
                } else {
                    LibraryOp::Remove
                };
                self.library.insert((user_id, course_id), op);
                self.entities
                    .entry(Entity::Course(course_id))
                    .or_default()
                    .push(Entry::Enroll {
                        stamp,
                        delta,
                        company,
                        event_id,
                    });
            }
            Change::EventCourse {
                event_id,
                course_id,
                seat_limit,
            } => {
                let limit = seat_limit
                    .map(|l| l.to_string())
                    .unwrap_or_else(|| aggregate::UNLIMITED.into());
                self.fields(
                    Entity::Event(event_id),
                    stamp.clone(),
                    vec![(aggregate::event_course(course_id), limit.clone())],
                );
                self.fields(
                    Entity::Course(course_id),
                    stamp,
                    vec![(aggregate::seat_limit(event_id), limit)],
                );
            }
            Change::OrderItem {
                order_id,
                course_id,
                price_krw,
            } => self.fields(
                Entity::Order(order_id),
                stamp,
                vec![(aggregate::order_item(course_id), price_krw.to_string())],
            ),
        }
    }

    fn fields(&mut self, entity: Entity, stamp: String, fields: Vec<(String, String)>) {
        if !fields.is_empty() {
            self.entities
                .entry(entity)
                .or_default()
                .push(Entry::Fields { stamp, fields });
        }
    }

    /// Nothing to write and nothing to acknowledge.
    pub fn is_empty(&self) -> bool {
        self.entities.is_empty() && self.library.is_empty() && self.commit_end.is_none()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_of_large_rows_is_full_by_its_bytes_long_before_its_count() {
        let html = "<p>".repeat(50_000 / 3);
        let mut batch = Batch::default();
        let mut pushed = 0;
        while !batch.is_full(20_000, 1 << 20) {
            pushed += 1;
            batch.push(
                stamp(Lsn(1), pushed),
                Change::Course {
                    id: i64::from(pushed),
                    fields: vec![("description_html".into(), html.clone())],
                },
            );
        }
        // 1 MiB of 50 KB rows: 21 of them, not 20,000.
        assert_eq!(pushed, 21);
        assert!(batch.bytes >= 1 << 20 && batch.bytes < (1 << 20) + 60_000);
        let mut small = Batch::default();
        small.push_library(1, 2, LibraryOp::Add(0));
        small.push_entry(
            Entity::Course(2),
            Entry::Enroll {
                stamp: stamp(Lsn(0), 1),
                delta: 1,
                company: Some("Acme".into()),
                event_id: None,
            },
        );
        assert_eq!(small.changes, 2);
        assert!(small.is_full(2, usize::MAX) && !small.is_full(3, usize::MAX));
    }

    #[test]
    fn stamps_order_as_strings_like_their_positions() {
        let a = stamp(Lsn(0x0FFF_FFFF), 5);
        let b = stamp(Lsn(0x1000_0000), 0);
        let c = stamp(Lsn(0x1000_0000), 1);
        assert!(SNAPSHOT_STAMP < stamp(Lsn(0), 1).as_str());
        assert!(stamp(Lsn(0), u32::MAX) < a && a < b && b < c);
        assert_eq!(stamp_lsn(&b), Lsn(0x1000_0000));
        assert_eq!(a.len(), SNAPSHOT_STAMP.len());
        for (lsn, index) in [
            (0, 0),
            (0x16B_3748, 7),
            (u64::MAX, u32::MAX),
            (0xABC, 0xDEF0),
        ] {
            assert_eq!(stamp(Lsn(lsn), index), format!("{lsn:016X}{index:08X}"));
        }
    }
}
