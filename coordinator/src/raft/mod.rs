//! The registry as an openraft replica: type configuration, durable log store, state machine,
//! the gRPC network between replicas and the data directory's cluster identity.
//!
//! Invariant: every replica applies the same [`Stamped`] commands in log order, so the registry
//! state and the room events it emits are identical everywhere.
//!
//! A log entry carries a [`Batch`] of commands rather than one: openraft 0.9 appends (and so
//! fsyncs) each client write on its own, so one write per command caps throughput at the disk's
//! sync rate. The leader's batcher packs every queued command into one entry.

use std::io::Cursor;

use serde::{Deserialize, Serialize};

use crate::registry::{Outcome, Stamped};

pub mod identity;
pub mod log_store;
pub mod network;
mod node;
mod snapshot_file;
pub mod state_machine;

pub use node::NodeInfo;

/// Commands committed together in one log entry, applied in order.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Batch(pub Vec<Stamped>);

/// The outcome of each command of a [`Batch`], in the same order.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BatchOutcome(pub Vec<Outcome>);

#[cfg(test)]
mod suite_tests;

openraft::declare_raft_types!(
    /// Raft types of the room registry.
    pub TypeConfig:
        D = Batch,
        R = BatchOutcome,
        NodeId = NodeId,
        Node = NodeInfo,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = Cursor<Vec<u8>>,
        AsyncRuntime = openraft::TokioRuntime,
);

pub type NodeId = u64;
pub type Raft = openraft::Raft<TypeConfig>;
pub type LogId = openraft::LogId<NodeId>;
pub type StoredMembership = openraft::StoredMembership<NodeId, NodeInfo>;
pub type SnapshotMeta = openraft::SnapshotMeta<NodeId, NodeInfo>;
pub type StorageError = openraft::StorageError<NodeId>;
