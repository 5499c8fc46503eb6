//! The data directory's identity: which cluster and which node id its log belongs to.
//!
//! Invariants: a data directory serves one node id for its whole life, and once it has taken
//! part in a cluster (bootstrapped it, or accepted RPCs from its leader) it only ever serves that
//! cluster. Mixing either up would let a replica vote or append with another replica's log,
//! which silently breaks Raft's safety, so both are refused loudly instead.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};

use serde::{Deserialize, Serialize};

use super::types::NodeId;

const FILE: &str = "cluster.json";
const TEMP: &str = "cluster.json.tmp";

#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: io::Error },
    #[error("{} is not a valid identity file: {reason}", path.display())]
    Corrupt { path: PathBuf, reason: String },
    #[error("the data directory belongs to node {found}, not node {wanted}")]
    OtherNode { found: NodeId, wanted: NodeId },
    #[error("the data directory belongs to cluster {found}, not cluster {wanted}")]
    OtherCluster { found: String, wanted: String },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Recorded {
    node_id: NodeId,
    /// Absent until the node bootstraps a cluster or first hears from one.
    cluster_id: Option<String>,
}

/// The identity file of one data directory.
#[derive(Debug)]
pub struct Identity {
    path: PathBuf,
    recorded: Mutex<Recorded>,
}

impl Identity {
    /// Reads the identity of `dir`, recording `node_id` if the directory has none yet.
    pub fn open(dir: &Path, node_id: NodeId) -> Result<Self, IdentityError> {
        let path = dir.join(FILE);
        let recorded = match fs::read(&path) {
            Ok(bytes) => {
                serde_json::from_slice::<Recorded>(&bytes).map_err(|e| IdentityError::Corrupt {
                    path: path.clone(),
                    reason: e.to_string(),
                })?
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                let fresh = Recorded {
                    node_id,
                    cluster_id: None,
                };
                write(dir, &fresh).map_err(|source| IdentityError::Io {
                    path: path.clone(),
                    source,
                })?;
                fresh
            }
            Err(source) => return Err(IdentityError::Io { path, source }),
        };
        if recorded.node_id != node_id {
            return Err(IdentityError::OtherNode {
                found: recorded.node_id,
                wanted: node_id,
            });
        }
        Ok(Self {
            path,
            recorded: Mutex::new(recorded),
        })
    }

    pub fn cluster_id(&self) -> Option<String> {
        self.lock().cluster_id.clone()
    }

    /// Fails unless this directory is unbound or already belongs to `cluster_id`.
    pub fn check(&self, cluster_id: &str) -> Result<(), IdentityError> {
        match &self.lock().cluster_id {
            Some(found) if found != cluster_id => Err(IdentityError::OtherCluster {
                found: found.clone(),
                wanted: cluster_id.to_owned(),
            }),
            _ => Ok(()),
        }
    }

    /// Binds the directory to `cluster_id` (durably) unless it is bound to another cluster.
    pub fn adopt(&self, cluster_id: &str) -> Result<(), IdentityError> {
        let mut recorded = self.lock();
        match &recorded.cluster_id {
            Some(found) if found == cluster_id => Ok(()),
            Some(found) => Err(IdentityError::OtherCluster {
                found: found.clone(),
                wanted: cluster_id.to_owned(),
            }),
            None => {
                let bound = Recorded {
                    node_id: recorded.node_id,
                    cluster_id: Some(cluster_id.to_owned()),
                };
                let dir = self.path.parent().unwrap_or(Path::new("."));
                write(dir, &bound).map_err(|source| IdentityError::Io {
                    path: self.path.clone(),
                    source,
                })?;
                *recorded = bound;
                Ok(())
            }
        }
    }

    /// The cluster id, creating a fresh random one if the directory is still unbound.
    pub fn bind_new_cluster(&self) -> Result<String, IdentityError> {
        if let Some(id) = self.cluster_id() {
            return Ok(id);
        }
        let id = format!("{:032x}", rand::random::<u128>());
        self.adopt(&id)?;
        Ok(id)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Recorded> {
        self.recorded.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Replaces the file atomically and durably: a crash leaves the old identity or the new one.
fn write(dir: &Path, recorded: &Recorded) -> io::Result<()> {
    let bytes = serde_json::to_vec(recorded).map_err(io::Error::other)?;
    let temp = dir.join(TEMP);
    {
        let mut file = File::create(&temp)?;
        file.write_all(&bytes)?;
        file.sync_all()?;
    }
    fs::rename(&temp, dir.join(FILE))?;
    File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn node_and_cluster_are_fixed_once_recorded() {
        let dir = tempfile::tempdir().unwrap();
        let id = Identity::open(dir.path(), 2).unwrap();
        assert_eq!(id.cluster_id(), None);
        let cluster = id.bind_new_cluster().unwrap();
        drop(id);
        assert!(matches!(
            Identity::open(dir.path(), 3),
            Err(IdentityError::OtherNode {
                found: 2,
                wanted: 3
            })
        ));
        let id = Identity::open(dir.path(), 2).unwrap();
        assert_eq!(id.cluster_id(), Some(cluster.clone()));
        assert!(id.adopt(&cluster).is_ok());
        assert!(matches!(
            id.adopt("another"),
            Err(IdentityError::OtherCluster { .. })
        ));
    }
}
