//! Message-size limits of the cluster's gRPC calls.

/// Largest Raft message sent or accepted. Snapshots are sent whole, so this bounds the registry
/// size a snapshot can carry.
pub const MAX_RAFT_MESSAGE_BYTES: usize = 256 * 1024 * 1024;
