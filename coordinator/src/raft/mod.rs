//! The registry as an openraft replica: type configuration, durable log store, state machine,
//! the gRPC network between replicas and the data directory's cluster identity.
//!
//! Invariant: every replica applies the same [`Stamped`] commands in log order, so the registry
//! state and the room events it emits are identical everywhere.
//!
//! A log entry carries a [`Batch`] of commands rather than one: openraft 0.9 appends (and so
//! fsyncs) each client write on its own, so one write per command caps throughput at the disk's
//! sync rate. The leader's batcher packs every queued command into one entry.
//!
//! - `types`: the openraft type configuration ([`TypeConfig`]) and the [`Batch`] a log entry
//!   carries.
//! - `node`: what a member advertises ([`NodeInfo`]).
//! - `identity`: the data directory's node and cluster ids.
//! - `log_store`, `state_machine`, `snapshot_file`: durable storage.
//! - `network`: Raft RPCs to peers, one cached channel per peer.
//! - `background_build`: snapshot encoding on a thread of its own, at the lowest priority.
//!
//! Imports `registry`, `transport`, `clock` and `metrics`; never `grpc` or the replica.

mod background_build;
pub(crate) mod identity;
pub(crate) mod log_store;
pub(crate) mod network;
mod node;
mod snapshot_file;
pub(crate) mod state_machine;
mod types;

pub use node::NodeInfo;
pub use types::{
    Batch, BatchOutcome, LogId, NodeId, Raft, SnapshotMeta, StorageError, StoredMembership,
    TypeConfig,
};

/// The size of the snapshot stored in data directory `dir` (0 without one).
pub fn snapshot_bytes(dir: &std::path::Path) -> std::io::Result<u64> {
    snapshot_file::SnapshotFile::new(dir).len()
}

#[cfg(test)]
mod suite_tests;
