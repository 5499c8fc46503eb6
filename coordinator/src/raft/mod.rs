//! The registry as an openraft replica: type configuration, durable log store, state machine
//! and (for now peerless) network.
//!
//! Invariant: every replica applies the same [`Stamped`] commands in log order, so the registry
//! state and the room events it emits are identical everywhere.

use std::io::Cursor;

use crate::registry::{Outcome, Stamped};

pub mod log_store;
pub mod network;
mod snapshot_file;
pub mod state_machine;

#[cfg(test)]
mod suite_tests;

openraft::declare_raft_types!(
    /// Raft types of the room registry.
    pub TypeConfig:
        D = Stamped,
        R = Outcome,
        NodeId = NodeId,
        Node = openraft::BasicNode,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = Cursor<Vec<u8>>,
        AsyncRuntime = openraft::TokioRuntime,
);

pub type NodeId = u64;
pub type Raft = openraft::Raft<TypeConfig>;
pub type LogId = openraft::LogId<NodeId>;
pub type StoredMembership = openraft::StoredMembership<NodeId, openraft::BasicNode>;
pub type SnapshotMeta = openraft::SnapshotMeta<NodeId, openraft::BasicNode>;
pub type StorageError = openraft::StorageError<NodeId>;
