//! What the cluster knows about a replica: where its peers and its edges reach it.

use std::fmt;

use serde::{Deserialize, Serialize};

/// A member of the Raft cluster, as stored in the membership config.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeInfo {
    /// Address other replicas send Raft RPCs to (`host:port`).
    pub raft_addr: String,
    /// Address edges and admin clients use (`host:port`).
    pub api_addr: String,
    pub region: String,
}

impl fmt::Display for NodeInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "raft={} api={} region={}",
            self.raft_addr, self.api_addr, self.region
        )
    }
}
