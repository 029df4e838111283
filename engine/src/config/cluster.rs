//! `[cluster]`: baton nodes that share limits, suspensions and the
//! suppression list through Redis (`crate::cluster`).

use std::time::Duration;

use serde::Deserialize;

use super::de;

/// `[cluster]`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    /// The Redis (or Valkey) URL, `redis://host:port/db`; `None` (`""`):
    /// this node runs alone.
    #[serde(deserialize_with = "de::optional_string")]
    pub redis: Option<String>,
    /// This node's name in the cluster; `""`: `server.hostname`.
    pub node: String,
    /// How long a connection's lease lives unless renewed: a node that
    /// dies gives its connections back to the others after this.
    #[serde(deserialize_with = "de::duration")]
    pub lease_ttl: Duration,
    /// How often a node says it is alive; one silent three times as long
    /// is not counted among the live nodes.
    #[serde(deserialize_with = "de::duration")]
    pub heartbeat: Duration,
    /// The longest a Redis connect, read or write may take before the
    /// node falls back to its share of each limit.
    #[serde(deserialize_with = "de::duration")]
    pub timeout: Duration,
    /// Suppression changes the shared stream keeps for nodes that were
    /// away (older ones are trimmed).
    pub stream_entries_max: u64,
}

impl ClusterConfig {
    /// This node's name: `node`, else the server's hostname.
    pub fn node_name<'a>(&'a self, hostname: &'a str) -> &'a str {
        if self.node.is_empty() {
            hostname
        } else {
            &self.node
        }
    }
}
