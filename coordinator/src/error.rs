//! Errors returned at the coordinator crate's boundary.

use std::fmt::Display;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum CoordinatorError {
    #[error("cannot open the data directory {path}: {reason}")]
    DataDir { path: PathBuf, reason: String },
    #[error("the registry is not available: {0}")]
    Unavailable(String),
    #[error("the coordinator is shutting down")]
    ShuttingDown,
    #[error("invalid raft configuration: {0}")]
    Config(#[from] ConfigError),
    /// Writes and membership changes go to the leader; `leader_api` is its edge-facing address
    /// when one is known.
    #[error("this replica is not the leader (leader: {})", leader_api.as_deref().unwrap_or("unknown"))]
    NotLeader { leader_api: Option<String> },
    /// A membership change (bootstrap, add, remove) was refused.
    #[error("membership change refused: {0}")]
    Membership(String),
}

/// Why a replica's Raft configuration is refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("node ids start at 1")]
    NodeIdZero,
    /// Boxed: openraft's error is large, and every result of the crate would carry its size.
    #[error(transparent)]
    Raft(Box<openraft::ConfigError>),
}

impl CoordinatorError {
    /// The data directory at `path` cannot be used, for `reason`.
    pub(crate) fn data_dir(path: &Path, reason: impl Display) -> Self {
        Self::DataDir {
            path: path.to_path_buf(),
            reason: reason.to_string(),
        }
    }
}
