//! Errors returned at the coordinator crate's boundary.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum CoordinatorError {
    #[error("cannot open the data directory {path}: {reason}")]
    DataDir { path: PathBuf, reason: String },
    #[error("the registry is not available: {0}")]
    Unavailable(String),
    #[error("the coordinator is shutting down")]
    ShuttingDown,
    #[error("storage error: {0}")]
    Storage(String),
    #[error("invalid raft configuration: {0}")]
    Config(String),
    /// This replica does not lead; writes go to the leader's edge-facing API, when known.
    #[error("this replica is not the leader")]
    NotLeader { leader_api: Option<String> },
}
