//! The edges whose `Link` stream ends on this replica, and how a message is pushed to one.
//!
//! Each link has a bounded queue. A full queue means the edge reads slower than it is sent
//! to: its link is dropped (counted), and the edge reconnects and re-reads its rooms. A
//! sender never waits on a slow edge.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tonic::Status;

use super::proto::ReplicaToEdge;
use crate::metrics;
use crate::registry::EdgeId;

/// Messages queued for one edge before its link counts as too slow and is dropped.
pub const LINK_BUFFER: usize = 8 * 1024;

pub type LinkItem = Result<ReplicaToEdge, Status>;

struct Entry {
    id: u64,
    tx: mpsc::Sender<LinkItem>,
    /// Cancelled when the link is dropped from this table (replaced or too slow).
    closed: CancellationToken,
}

/// What became of a message pushed to an edge.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Push {
    Queued,
    /// The edge has no link on this replica.
    NotLinked,
    /// The link's queue was full: it has been dropped.
    Dropped,
}

#[derive(Default)]
pub struct Links {
    edges: Mutex<HashMap<EdgeId, Entry>>,
    next_id: AtomicU64,
}

/// A registered link; `closed` fires when it is dropped from the table.
pub struct Registered {
    pub id: u64,
    pub closed: CancellationToken,
}

impl Links {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<EdgeId, Entry>> {
        self.edges.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Adds the edge's link, replacing (and closing) an older one of the same edge.
    pub fn register(&self, edge: EdgeId, tx: mpsc::Sender<LinkItem>) -> Registered {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let closed = CancellationToken::new();
        let old = self.lock().insert(
            edge,
            Entry {
                id,
                tx,
                closed: closed.clone(),
            },
        );
        if let Some(old) = old {
            old.closed.cancel();
        } else {
            metrics::links_open(1.0);
        }
        Registered { id, closed }
    }

    /// Removes the link `id` of `edge`, unless a newer one replaced it.
    pub fn unregister(&self, edge: &EdgeId, id: u64) {
        let mut edges = self.lock();
        if edges.get(edge).is_some_and(|e| e.id == id)
            && let Some(e) = edges.remove(edge)
        {
            e.closed.cancel();
            metrics::links_open(-1.0);
        }
    }

    pub fn is_linked(&self, edge: &EdgeId) -> bool {
        self.lock().contains_key(edge)
    }

    pub fn push(&self, edge: &EdgeId, msg: ReplicaToEdge) -> Push {
        let mut edges = self.lock();
        let Some(entry) = edges.get(edge) else {
            return Push::NotLinked;
        };
        match entry.tx.try_send(Ok(msg)) {
            Ok(()) => Push::Queued,
            Err(mpsc::error::TrySendError::Full(_)) => {
                if let Some(e) = edges.remove(edge) {
                    e.closed.cancel();
                    metrics::links_open(-1.0);
                }
                metrics::link_dropped();
                tracing::warn!(%edge, "edge link too slow: dropped; the edge will resync");
                Push::Dropped
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {
                if let Some(e) = edges.remove(edge) {
                    e.closed.cancel();
                    metrics::links_open(-1.0);
                }
                Push::NotLinked
            }
        }
    }

    /// Every linked edge, e.g. to tell them all to resync.
    pub fn edges(&self) -> Vec<EdgeId> {
        self.lock().keys().cloned().collect()
    }
}
