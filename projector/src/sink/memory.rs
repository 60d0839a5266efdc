//! How full Redis is, for the metrics: views are never evicted, so a Redis
//! at `maxmemory` refuses the projector's writes; an alert must come first.

use fred::{prelude::*, types::InfoKind};

use super::{Sink, SinkError};

/// `used_memory` and `maxmemory` (0: no limit) of one Redis node, in bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Memory {
    pub used: u64,
    pub max: u64,
}

impl Memory {
    /// The two fields of an `INFO memory` answer.
    fn parse(info: &str) -> Option<Self> {
        let field = |name: &str| {
            info.lines()
                .find_map(|line| line.strip_prefix(name)?.strip_prefix(':'))
                .and_then(|v| v.trim().parse::<u64>().ok())
        };
        Some(Self {
            used: field("used_memory")?,
            max: field("maxmemory")?,
        })
    }

    /// Used over the limit; without a limit, 0.
    fn fill(self) -> f64 {
        if self.max == 0 {
            0.0
        } else {
            self.used as f64 / self.max as f64
        }
    }

    /// The fuller of two nodes (by share of the limit, then by bytes).
    fn fuller(self, other: Self) -> Self {
        if (other.fill(), other.used) > (self.fill(), self.used) {
            other
        } else {
            self
        }
    }
}

impl Sink {
    /// The memory of the fullest primary (every primary in a cluster).
    pub async fn memory(&self) -> Result<Memory, SinkError> {
        let bad = |node: &str| {
            SinkError::Reply(format!(
                "{node}: INFO memory has no used_memory or maxmemory"
            ))
        };
        if !self.client.is_clustered() {
            let info: String = self.client.info(Some(InfoKind::Memory)).await?;
            return Memory::parse(&info).ok_or_else(|| bad("redis"));
        }
        let mut fullest = Memory::default();
        for node in self.primaries() {
            let info: String = self
                .client
                .with_cluster_node(node.clone())
                .info(Some(InfoKind::Memory))
                .await?;
            let memory = Memory::parse(&info).ok_or_else(|| bad(&node.to_string()))?;
            fullest = fullest.fuller(memory);
        }
        Ok(fullest)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fields_are_read_from_info_and_the_fuller_node_by_share_wins() {
        let info = "# Memory\r\nused_memory:1048576\r\nused_memory_human:1.00M\r\nmaxmemory:4194304\r\nmaxmemory_human:4.00M\r\n";
        let one = Memory::parse(info).expect("both fields");
        assert_eq!(
            one,
            Memory {
                used: 1 << 20,
                max: 4 << 20
            }
        );
        let unlimited = Memory {
            used: 3 << 20,
            max: 0,
        };
        assert_eq!(one.fuller(unlimited), one, "a quarter full beats no limit");
        let half = Memory {
            used: 8 << 20,
            max: 16 << 20,
        };
        assert_eq!(one.fuller(half), half);
        assert_eq!(Memory::parse("used_memory:1\r\n"), None);
    }
}
