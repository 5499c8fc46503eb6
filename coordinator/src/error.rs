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
}
