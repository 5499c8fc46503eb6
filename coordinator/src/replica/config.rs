//! What the caller chooses when opening a replica.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::transport::ClusterSecret;

/// How long a detached peer stays a member unless configured otherwise.
pub const DEFAULT_GRACE: Duration = Duration::from_secs(10);
/// Log entries between snapshots unless configured otherwise.
pub const DEFAULT_SNAPSHOT_AFTER_ENTRIES: u64 = 10_000;

#[derive(Debug, Clone)]
pub struct EmbeddedConfig {
    /// Where the Raft log, vote and snapshots are kept.
    pub data_dir: PathBuf,
    /// How long a detached peer stays a member before it is removed.
    pub grace: Duration,
    /// Log entries between snapshots (`None`: [`DEFAULT_SNAPSHOT_AFTER_ENTRIES`]).
    pub snapshot_after_entries: Option<u64>,
}

impl EmbeddedConfig {
    /// A configuration with the default grace period.
    pub fn new(data_dir: PathBuf) -> Self {
        Self {
            data_dir,
            grace: DEFAULT_GRACE,
            snapshot_after_entries: None,
        }
    }
}

/// One member of a multi-replica cluster.
#[derive(Debug, Clone)]
pub struct ReplicaConfig {
    pub node_id: u64,
    pub data_dir: PathBuf,
    /// The address other replicas reach this one's Raft service at.
    pub raft_addr: SocketAddr,
    /// The edge-facing (and admin) address advertised to edges and clients.
    pub api_addr: String,
    pub region: String,
    pub grace: Duration,
    pub secret: ClusterSecret,
}

/// Settings operators rarely touch, kept out of [`ReplicaConfig`].
#[derive(Debug, Clone, Default)]
pub struct ReplicaOptions {
    /// Refuse to start unless the data directory is unbound or belongs to this cluster.
    pub expected_cluster_id: Option<String>,
    /// Log entries between snapshots (default [`DEFAULT_SNAPSHOT_AFTER_ENTRIES`]); small in
    /// tests that need a snapshot to be sent.
    pub snapshot_after_entries: Option<u64>,
    /// Raft heartbeat interval (default 60 ms); elections wait 5–10 heartbeats. Replicas
    /// across regions need it above the longest round trip between them, since openraft
    /// gives each append-entries call one heartbeat interval.
    pub heartbeat_ms: Option<u64>,
}
