//! The replica handle: commits commands through the batcher, reads the applied state, hands
//! out room events, and shuts everything down.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, PoisonError};
use std::time::{Duration, Instant};

use tokio::sync::{Mutex, broadcast, mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::batcher;
use crate::error::CoordinatorError;
use crate::metrics;
use crate::raft::identity::Identity;
use crate::raft::log_store::{Closed, CommittedIndex};
use crate::raft::state_machine::SharedState;
use crate::raft::{NodeId, NodeInfo, Raft};
use crate::registry::{
    Command, EdgeId, EdgeRecord, Listing, ListingPage, ListingQuery, Outcome, PeerId, Region,
    RegistryState, RoomEvent, RoomId, RoomSummary, RoomView, WebhookOutbox,
};

/// Room events buffered per subscriber before it must resynchronise.
pub const EVENT_BUFFER: usize = 16 * 1024;
/// How long `shutdown` waits for the log store to close its file.
const CLOSE_DEADLINE: Duration = Duration::from_secs(10);

/// Handle to a replica. Cheap to clone.
#[derive(Clone)]
pub struct Replica {
    pub(super) inner: Arc<Inner>,
}

/// What every clone of a [`Replica`] shares; built by `open`, extended by `cluster` and
/// `background`.
pub(super) struct Inner {
    pub(super) node_id: NodeId,
    pub(super) data_dir: PathBuf,
    pub(super) node: NodeInfo,
    pub(super) raft: Raft,
    pub(super) identity: Arc<Identity>,
    pub(super) state: SharedState,
    pub(super) committed: CommittedIndex,
    pub(super) installed_snapshots: Arc<AtomicU64>,
    pub(super) events: broadcast::Sender<RoomEvent>,
    pub(super) proposals: mpsc::Sender<batcher::Proposal>,
    pub(super) grace_ms: u64,
    pub(super) cancel: CancellationToken,
    pub(super) tasks: TaskTracker,
    /// Taken by the first `shutdown`, which holds the lock until the store has closed.
    pub(super) store_closed: Mutex<Option<Closed>>,
}

impl Replica {
    /// Commits `command` (stamped with the leader's clock) and returns its outcome once it is
    /// applied on this replica. On a follower: [`CoordinatorError::NotLeader`].
    pub async fn execute(&self, command: Command) -> Result<Outcome, CoordinatorError> {
        let inner = &self.inner;
        if inner.cancel.is_cancelled() {
            return Err(CoordinatorError::ShuttingDown);
        }
        // Fails fast where the answer is known; the leader can still lose its role while the
        // command is queued, and then openraft refuses the write with the same error.
        if !self.is_leader() {
            return Err(CoordinatorError::NotLeader {
                leader_api: self.leader_api_addr(),
            });
        }
        let name = command.name();
        let started = Instant::now();
        let (reply, answer) = oneshot::channel();
        inner
            .proposals
            .send(batcher::Proposal { command, reply })
            .await
            .map_err(|_| CoordinatorError::ShuttingDown)?;
        let result = answer
            .await
            .map_err(|_| CoordinatorError::ShuttingDown)
            .and_then(|r| r);
        metrics::command_duration(name, started.elapsed());
        result
    }

    /// Snapshots this replica installed from a leader since it started: each replaced the
    /// applied state without room events.
    pub fn snapshots_installed(&self) -> u64 {
        self.inner
            .installed_snapshots
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Room events in apply order. A receiver that falls more than [`EVENT_BUFFER`] events
    /// behind gets `Lagged` and must re-read the rooms it cares about.
    pub fn subscribe(&self) -> broadcast::Receiver<RoomEvent> {
        self.inner.events.subscribe()
    }

    /// The room as this replica has applied it.
    /// The epoch of the latest change this replica has applied (see
    /// [`crate::registry::RegistryState::epoch`]).
    pub fn applied_epoch(&self) -> u64 {
        self.read(|s| s.epoch())
    }

    pub fn room(&self, room: &RoomId) -> Option<RoomView> {
        self.read(|s| s.room(room))
    }

    pub fn rooms(&self) -> Vec<RoomSummary> {
        self.read(|s| s.rooms())
    }

    /// The public rooms of this replica's group that match `query`, from its applied state.
    pub fn public_rooms(&self, query: &ListingQuery) -> ListingPage {
        self.read(|s| s.public_rooms(query))
    }

    /// How `room` is listed to discovery (private when it is not here).
    pub fn listing(&self, room: &RoomId) -> Listing {
        self.read(|s| s.listing(room))
    }

    /// Up to `limit` rooms after `after` (in id order) with their members, and whether more
    /// follow; read from this replica's applied state in one pass.
    pub fn rooms_page(&self, after: Option<&RoomId>, limit: usize) -> (Vec<RoomView>, bool) {
        self.read(|s| {
            // The system's own rooms (contact discovery) are not the application's to list.
            let mut ids = s.room_ids_after(after).filter(|room| !room.is_hidden());
            let page: Vec<RoomView> = ids
                .by_ref()
                .take(limit)
                .filter_map(|room| s.room(room))
                .collect();
            let more = ids.next().is_some();
            (page, more)
        })
    }

    /// The room with each member's join time (ms since the epoch, when known).
    pub fn room_with_join_times(&self, room: &RoomId) -> Option<(RoomView, Vec<Option<u64>>)> {
        self.read(|s| {
            let view = s.room(room)?;
            let times = view
                .members
                .iter()
                .map(|m| s.joined_at_ms(room, &m.peer))
                .collect();
            Some((view, times))
        })
    }

    /// Reads the webhook outbox as this replica has applied it.
    pub fn webhook_outbox<T>(&self, f: impl FnOnce(&WebhookOutbox) -> T) -> T {
        self.read(|s| f(s.webhooks()))
    }

    /// A copy of the registry as this replica has applied it.
    pub fn state_snapshot(&self) -> RegistryState {
        self.read(Clone::clone)
    }

    /// Whether a leader is known.
    pub fn is_ready(&self) -> bool {
        !self.inner.cancel.is_cancelled()
            && self.inner.raft.metrics().borrow().current_leader.is_some()
    }

    /// Whether this replica is the leader as far as it knows.
    pub fn is_leader(&self) -> bool {
        !self.inner.cancel.is_cancelled()
            && self.inner.raft.metrics().borrow().current_leader == Some(self.inner.node_id)
    }

    /// The edge-facing address of the current leader, if one is known and advertises one.
    pub fn leader_api_addr(&self) -> Option<String> {
        let leader = self.inner.raft.metrics().borrow().current_leader?;
        batcher::node_api_addr(&self.inner.raft, leader)
    }

    pub fn node_id(&self) -> u64 {
        self.inner.node_id
    }

    pub fn region(&self) -> &str {
        &self.inner.node.region
    }

    /// The underlying openraft handle, for the peer-facing service and tests.
    pub fn raft(&self) -> &Raft {
        &self.inner.raft
    }

    pub(crate) fn identity(&self) -> &Arc<Identity> {
        &self.inner.identity
    }

    /// The edge-facing API address of a member replica, from the cluster membership.
    pub fn replica_api_addr(&self, node_id: u64) -> Option<String> {
        batcher::node_api_addr(&self.inner.raft, node_id)
    }

    /// An edge as this replica has applied it.
    pub fn edge(&self, edge: &EdgeId) -> Option<EdgeRecord> {
        self.read(|s| s.edge(edge).cloned())
    }

    /// Other regions' gateways as this replica has applied them (region-homed rooms).
    pub fn regions(&self) -> BTreeMap<Region, Vec<String>> {
        self.read(|s| s.regions().clone())
    }

    /// One other region's gateways, if this group knows the region (reads that one entry only:
    /// the relay asks for every signal to an edge of another region's group).
    pub fn region_gateways(&self, region: &Region) -> Option<Vec<String>> {
        self.read(|s| s.regions().get(region).cloned())
    }

    /// When `room` was created in this group, if it is homed here now.
    pub fn created_at_ms(&self, room: &RoomId) -> Option<u64> {
        self.read(|s| s.created_at_ms(room))
    }

    /// Every room homed in this group with its creation time.
    pub fn homes(&self) -> Vec<(RoomId, u64)> {
        self.read(RegistryState::homes)
    }

    /// Edges of other regions' groups with members here (see
    /// [`RegistryState::remote_edges`]).
    pub fn remote_edges(&self) -> BTreeMap<Region, BTreeMap<EdgeId, (bool, bool)>> {
        self.read(RegistryState::remote_edges)
    }

    /// Whether `peer` is a member of any room of this group.
    pub fn knows_peer(&self, peer: &PeerId) -> bool {
        self.read(|s| s.is_detached(peer).is_some())
    }

    /// Stops the background tasks and the replica, and closes the data directory. Idempotent;
    /// every call returns once the replica has stopped.
    pub async fn shutdown(&self) {
        let inner = &self.inner;
        inner.cancel.cancel();
        inner.tasks.close();
        inner.tasks.wait().await;
        let mut closed = inner.store_closed.lock().await;
        if let Some(store_closed) = closed.take() {
            if let Err(e) = inner.raft.shutdown().await {
                tracing::warn!(error = %e, "raft did not stop cleanly");
            }
            if tokio::time::timeout(CLOSE_DEADLINE, store_closed.wait())
                .await
                .is_err()
            {
                tracing::warn!("the raft log store did not close in time");
            }
        }
    }

    pub(super) fn read<T>(&self, f: impl FnOnce(&RegistryState) -> T) -> T {
        let applied = self
            .inner
            .state
            .read()
            .unwrap_or_else(PoisonError::into_inner);
        f(&applied.registry)
    }

    pub(super) fn data_dir_error(&self, e: impl std::fmt::Display) -> CoordinatorError {
        CoordinatorError::data_dir(&self.inner.data_dir, e)
    }
}
