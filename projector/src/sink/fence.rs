//! How a stream notices Redis going back in time (see `divergence`): each
//! primary's `run_id`, the record of them kept in Redis, and the watermark
//! moved only by compare-and-set on the server the stream started with
//! ([`views::watermark`]).

use fred::{
    prelude::*,
    types::{
        cluster::ClusterRouting,
        config::{Server, ServerConfig},
        InfoKind,
    },
};
use views::{
    watermark::{advance_args, Advanced, ADVANCE},
    Lsn,
};

use super::{Sink, SinkError};
use crate::divergence::{Nodes, Polled, RecordedNodes, Refusal};

/// The `run_id` line of `INFO server`.
fn run_id_of(info: &str) -> Option<String> {
    info.lines()
        .find_map(|line| line.strip_prefix("run_id:"))
        .map(|id| id.trim().to_owned())
}

impl Sink {
    /// Each primary's `run_id` now (in a cluster every primary is asked).
    pub async fn nodes(&self) -> Result<Nodes, SinkError> {
        let mut nodes = Nodes::default();
        if self.client.is_clustered() {
            for node in self.primaries() {
                let info: String = self
                    .client
                    .with_cluster_node(node.clone())
                    .info(Some(InfoKind::Server))
                    .await?;
                let id = run_id_of(&info).ok_or_else(|| no_run_id(&node.to_string()))?;
                nodes.0.insert(node.to_string(), id);
            }
        } else {
            let info: String = self.client.info(Some(InfoKind::Server)).await?;
            let node = self.single_node();
            let id = run_id_of(&info).ok_or_else(|| no_run_id(&node))?;
            nodes.0.insert(node, id);
        }
        Ok(nodes)
    }

    /// Asks each of `recorded`'s nodes for its `run_id`.
    pub async fn poll_nodes(&self, recorded: &Nodes) -> Vec<(String, Polled)> {
        let mut polled = Vec::with_capacity(recorded.0.len());
        if !self.client.is_clustered() {
            let now = match self.client.info::<String>(Some(InfoKind::Server)).await {
                Ok(info) => run_id_of(&info).map_or(Polled::Unreachable, Polled::RunId),
                Err(_) => Polled::Unreachable,
            };
            for node in recorded.0.keys() {
                polled.push((node.clone(), now.clone()));
            }
            return polled;
        }
        // Known from fred's view of the cluster, refreshed on redirections
        // and reconnections.
        let primaries: Vec<String> = self.primaries().iter().map(|s| s.to_string()).collect();
        for node in recorded.0.keys() {
            let now = if !primaries.is_empty() && !primaries.contains(node) {
                Polled::NotPrimary
            } else {
                match Server::try_from(node.as_str()) {
                    Ok(server) => match self
                        .client
                        .with_cluster_node(server)
                        .info::<String>(Some(InfoKind::Server))
                        .await
                    {
                        Ok(info) => run_id_of(&info).map_or(Polled::Unreachable, Polled::RunId),
                        Err(_) => Polled::Unreachable,
                    },
                    Err(_) => Polled::Unreachable,
                }
            };
            polled.push((node.clone(), now));
        }
        polled
    }

    /// The node holding `generation`'s watermark.
    pub fn watermark_node(&self, generation: u64) -> String {
        if !self.client.is_clustered() {
            return self.single_node();
        }
        let slot = ClusterRouting::hash_key(self.keys.watermark(generation).as_bytes());
        self.client
            .cached_cluster_state()
            .and_then(|state| state.get_server(slot).map(|s| s.to_string()))
            .unwrap_or_default()
    }

    /// The nodes last recorded for a stream, if any.
    pub async fn recorded_nodes(&self) -> Result<Option<RecordedNodes>, SinkError> {
        let raw: Option<String> = self.client.get(self.keys.nodes()).await?;
        Ok(raw.and_then(|r| serde_json::from_str(&r).ok()))
    }

    /// Records the nodes a stream of `generation` writes to.
    pub async fn record_nodes(&self, generation: u64, nodes: &Nodes) -> Result<(), SinkError> {
        let record = RecordedNodes {
            generation,
            nodes: nodes.clone(),
        };
        let json = serde_json::to_string(&record).map_err(|e| SinkError::Reply(e.to_string()))?;
        self.client
            .set::<(), _, _>(self.keys.nodes(), json, None, None, false)
            .await?;
        Ok(())
    }

    /// Moves `generation`'s watermark from `from` (what this stream wrote
    /// last) to `to`, only on the server whose `run_id` is `run_id`; else
    /// writes nothing and answers [`SinkError::WatermarkRefused`].
    pub async fn advance_watermark(
        &self,
        generation: u64,
        from: Lsn,
        to: Lsn,
        run_id: &str,
    ) -> Result<(), SinkError> {
        // EVAL, not a loaded script: one call per flush, and a restarted
        // Redis (the very case checked here) has no script cache.
        let reply: Vec<Value> = self
            .client
            .eval(
                ADVANCE,
                vec![self.keys.watermark(generation)],
                advance_args(from, to, run_id),
            )
            .await?;
        match Advanced::from_reply(reply) {
            Advanced::Moved => Ok(()),
            Advanced::Refused {
                run_id: found,
                stored,
            } => Err(SinkError::WatermarkRefused(Box::new(Refusal {
                node: self.watermark_node(generation),
                run_id: (run_id.to_owned(), found),
                expected: from,
                writing: to,
                stored,
            }))),
        }
    }

    pub(super) fn primaries(&self) -> Vec<Server> {
        self.client
            .cached_cluster_state()
            .map(|state| state.unique_primary_nodes())
            .unwrap_or_default()
    }

    /// The one Redis's address, as configured.
    fn single_node(&self) -> String {
        match self.client.client_config().server {
            ServerConfig::Centralized { server } => server.to_string(),
            _ => "redis".to_owned(),
        }
    }
}

fn no_run_id(node: &str) -> SinkError {
    SinkError::Reply(format!("{node}: INFO server has no run_id"))
}

#[cfg(test)]
mod tests {
    use super::run_id_of;

    #[test]
    fn the_run_id_is_read_from_info_server() {
        let info =
            "# Server\r\nredis_version:7.0.15\r\nrun_id:cc84e652440f1c78\r\ntcp_port:6379\r\n";
        assert_eq!(run_id_of(info).as_deref(), Some("cc84e652440f1c78"));
        assert_eq!(run_id_of("# Server\r\n"), None);
    }
}
