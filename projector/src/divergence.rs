//! Divergence: Redis holding less than the projector wrote (a node restarted
//! from an older RDB/AOF or without persistence, or failed over to a lagging
//! replica); the decisions here, the Redis side in `sink::fence`.
//!
//! A node keeps across a restart a prefix of the commands it ran, and a flush
//! writes its views before its watermark. So on the node holding the
//! watermark, the stored watermark proves everything before it is there and
//! the slot replays what follows its confirmed position: the start-up check
//! (watermark against slot) is exact, and resumes when the slot can still
//! replay the gap. Any other node proves nothing: a new `run_id` there (each
//! server start makes one) means a rebuild.

use std::{collections::BTreeMap, fmt};

use serde::{Deserialize, Serialize};
use views::Lsn;

/// Each Redis primary's `run_id`, by address (one entry on one Redis).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Nodes(pub BTreeMap<String, String>);

/// What one poll found at a recorded primary.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Polled {
    /// It answered with this `run_id`.
    RunId(String),
    /// The cluster no longer lists it as a primary (failed over or removed).
    NotPrimary,
    /// It did not answer: down or restarting; the next poll tells.
    Unreachable,
}

/// A primary that is not the server the stream started with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeChange {
    pub node: String,
    pub recorded: String,
    /// Its `run_id` now; `None`: no longer a primary.
    pub found: Option<String>,
}

impl NodeChange {
    /// The `run_id` found, or what happened to the node, for logs.
    pub fn found_text(&self) -> &str {
        self.found
            .as_deref()
            .unwrap_or("none (no longer a primary)")
    }
}

/// The nodes a stream of a generation wrote to, as kept in Redis
/// (`Keys::nodes`) for the next start to compare with.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordedNodes {
    pub generation: u64,
    pub nodes: Nodes,
}

impl Nodes {
    /// The first node of `self` other than `except` that `now` does not
    /// list with the same `run_id`.
    pub fn changed_in(&self, now: &Nodes, except: &str) -> Option<NodeChange> {
        self.0
            .iter()
            .filter(|(node, _)| node.as_str() != except)
            .find_map(|(node, recorded)| {
                let found = now.0.get(node);
                (found != Some(recorded)).then(|| NodeChange {
                    node: node.clone(),
                    recorded: recorded.clone(),
                    found: found.cloned(),
                })
            })
    }
}

/// What Redis was when a stream started: the stream stops at the first sign
/// that a node is no longer that server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Baseline {
    pub nodes: Nodes,
    /// The node holding the generation's watermark.
    pub watermark_node: String,
}

impl Baseline {
    /// The `run_id` the watermark's node had (empty if it was not listed:
    /// then the first watermark write stops the stream for a check).
    pub fn watermark_run_id(&self) -> &str {
        self.nodes
            .0
            .get(&self.watermark_node)
            .map(String::as_str)
            .unwrap_or("")
    }

    /// The first recorded node a poll found changed; a node that did not
    /// answer is asked again at the next poll.
    pub fn changed(&self, polled: &[(String, Polled)]) -> Option<NodeChange> {
        polled.iter().find_map(|(node, now)| {
            let recorded = self.nodes.0.get(node)?;
            let found = match now {
                Polled::RunId(id) if id == recorded => return None,
                Polled::Unreachable => return None,
                Polled::RunId(id) => Some(id.clone()),
                Polled::NotPrimary => None,
            };
            Some(NodeChange {
                node: node.clone(),
                recorded: recorded.clone(),
                found,
            })
        })
    }

    /// What the stream does about `change`.
    pub fn verdict(&self, change: &NodeChange) -> Verdict {
        if change.node == self.watermark_node {
            Verdict::CheckAgainstSlot
        } else {
            Verdict::Rebuild
        }
    }
}

/// What a stream that noticed a change does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Stop; the start-up plan compares the watermark with the slot and
    /// resumes (the slot replays the gap) or rebuilds.
    CheckAgainstSlot,
    /// Ask for a rebuild (durably, before stopping), then stop.
    Rebuild,
}

/// The watermark's node refused to move the watermark: it is not the server
/// the stream started with, or the watermark is not the one this stream
/// wrote last. Nothing was written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub node: String,
    /// The node's `run_id` when the stream started, and now.
    pub run_id: (String, String),
    /// The watermark this stream wrote last, and the one it was writing.
    pub expected: Lsn,
    pub writing: Lsn,
    /// What the node holds (`None`: no watermark at all).
    pub stored: Option<Lsn>,
}

impl Refusal {
    /// Logs what was found, as one warning; the start-up check that follows
    /// logs whether it rebuilds.
    pub fn log(&self) {
        let (node, expected, writing) = (&self.node, self.expected, self.writing);
        let stored = self
            .stored
            .map_or_else(|| "none".to_owned(), |s| s.to_string());
        let (old_run_id, new_run_id) = (&self.run_id.0, &self.run_id.1);
        if old_run_id != new_run_id {
            tracing::warn!(
                node, old_run_id, new_run_id, %expected, stored, %writing,
                "the redis node holding the watermark restarted or failed over under the stream; stopping to check redis against the slot"
            );
        } else if self.stored.is_some_and(|s| s > expected) {
            tracing::warn!(
                node, %expected, stored, %writing,
                "another writer moved the watermark past this stream (another projector instance?); stopping"
            );
        } else {
            tracing::warn!(
                node, %expected, stored, %writing,
                "redis holds an older watermark than this stream wrote (data lost); stopping to check redis against the slot"
            );
        }
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: run_id {} (was {}), watermark {} (this stream wrote {})",
            self.node,
            self.run_id.1,
            self.run_id.0,
            self.stored
                .map_or_else(|| "none".to_owned(), |s| s.to_string()),
            self.expected
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nodes(list: &[(&str, &str)]) -> Nodes {
        Nodes(
            list.iter()
                .map(|(n, id)| (n.to_string(), id.to_string()))
                .collect(),
        )
    }

    fn baseline() -> Baseline {
        Baseline {
            nodes: nodes(&[("a:1", "r1"), ("b:2", "r2"), ("c:3", "r3")]),
            watermark_node: "b:2".into(),
        }
    }

    #[test]
    fn the_same_servers_answering_or_one_not_answering_is_no_change() {
        let base = baseline();
        let polled = [
            ("a:1".to_owned(), Polled::RunId("r1".into())),
            ("b:2".to_owned(), Polled::Unreachable),
            ("c:3".to_owned(), Polled::RunId("r3".into())),
        ];
        assert_eq!(base.changed(&polled), None);
        assert_eq!(base.watermark_run_id(), "r2");
    }

    #[test]
    fn a_new_run_id_or_a_lost_primary_is_a_change_and_only_the_watermarks_node_is_checked_against_the_slot(
    ) {
        let base = baseline();
        let restarted = base
            .changed(&[("c:3".to_owned(), Polled::RunId("r9".into()))])
            .expect("a new run_id is a change");
        assert_eq!(
            restarted,
            NodeChange {
                node: "c:3".into(),
                recorded: "r3".into(),
                found: Some("r9".into())
            }
        );
        assert_eq!(base.verdict(&restarted), Verdict::Rebuild);

        let failed_over = base
            .changed(&[("b:2".to_owned(), Polled::NotPrimary)])
            .expect("a primary gone is a change");
        assert_eq!(failed_over.found, None);
        assert_eq!(base.verdict(&failed_over), Verdict::CheckAgainstSlot);

        // A node the stream did not start with holds nothing of it.
        assert_eq!(
            base.changed(&[("d:4".to_owned(), Polled::RunId("r4".into()))]),
            None
        );
    }

    #[test]
    fn recorded_nodes_compare_without_the_watermarks_node() {
        let recorded = nodes(&[("a:1", "r1"), ("b:2", "r2")]);
        assert_eq!(recorded.changed_in(&recorded.clone(), "b:2"), None);
        let now = nodes(&[("a:1", "r1"), ("b:2", "r7")]);
        assert_eq!(recorded.changed_in(&now, "b:2"), None);
        let now = nodes(&[("b:2", "r2"), ("x:9", "r1")]);
        assert_eq!(
            recorded.changed_in(&now, "b:2"),
            Some(NodeChange {
                node: "a:1".into(),
                recorded: "r1".into(),
                found: None
            })
        );
    }

    #[test]
    fn recorded_nodes_read_back_as_written() {
        let record = RecordedNodes {
            generation: 7,
            nodes: nodes(&[("127.0.0.1:7000", "abc")]),
        };
        let json = serde_json::to_string(&record).expect("serializes");
        assert_eq!(json, r#"{"generation":7,"nodes":{"127.0.0.1:7000":"abc"}}"#);
        let back: RecordedNodes = serde_json::from_str(&json).expect("parses");
        assert_eq!(back, record);
    }
}
