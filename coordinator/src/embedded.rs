//! A coordinator replica: the single-node default embedded in the edge process, or one member
//! of a multi-replica cluster ([`EmbeddedCoordinator::open_replica`]).
//!
//! Invariants: every change goes through the Raft log (durable before it is applied) and is
//! proposed by the leader's batcher, which stamps the time; reads come from the applied state
//! without a Raft round trip; every background task stops in [`shutdown`], after which the data
//! directory is released.
//!
//! [`shutdown`]: EmbeddedCoordinator::shutdown

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, PoisonError};
use std::time::{Duration, Instant};

use openraft::SnapshotPolicy;
use tokio::sync::{Mutex, broadcast, mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::error::CoordinatorError;
use crate::metrics;
use crate::raft::identity::Identity;
use crate::raft::log_store::{Closed, CommittedIndex, LogStore};
use crate::raft::network::GrpcNetwork;
use crate::raft::state_machine::{SharedState, StateMachineStore};
use crate::raft::{NodeId, NodeInfo, Raft};
use crate::transport::ClusterSecret;
use crate::registry::{
    Command, EdgeId, EdgeRecord, Outcome, RegistryState, RoomEvent, RoomId, RoomSummary, RoomView,
};

mod background;
mod batcher;
mod cluster;

pub use batcher::{MAX_BATCH_COMMANDS, QUEUE_COMMANDS};
pub use cluster::{ClusterStatus, MemberStatus};

/// Room events buffered per subscriber before it must resynchronise.
pub const EVENT_BUFFER: usize = 16 * 1024;
pub const DEFAULT_GRACE: Duration = Duration::from_secs(10);
/// Log entries between snapshots unless configured otherwise.
pub const DEFAULT_SNAPSHOT_AFTER_ENTRIES: u64 = 10_000;

/// The single replica's id.
const EMBEDDED_NODE_ID: NodeId = 1;
/// How long `open` waits for the single replica to lead and catch up with its log.
const LEADER_DEADLINE: Duration = Duration::from_secs(10);
/// How long `shutdown` waits for the log store to close its file.
const CLOSE_DEADLINE: Duration = Duration::from_secs(10);

/// Raft timing. A single replica never waits for anyone, so it elects itself fast; replicas
/// of a cluster leave room for scheduling hiccups on loaded machines before they call an
/// election, while still failing over well within 3 s.
#[derive(Debug, Clone, Copy)]
struct Timing {
    election_min_ms: u64,
    election_max_ms: u64,
    heartbeat_ms: u64,
}

const EMBEDDED_TIMING: Timing = Timing {
    election_min_ms: 150,
    election_max_ms: 300,
    heartbeat_ms: 50,
};
/// Replicas in one region (sub-millisecond round trips): a dead leader is replaced within
/// about a second. Replicas spread over regions set `--heartbeat-ms` above their longest round
/// trip instead.
const REPLICA_TIMING: Timing = Timing {
    election_min_ms: 300,
    election_max_ms: 600,
    heartbeat_ms: 60,
};
const MAX_PAYLOAD_ENTRIES: u64 = 4_096;
const LOGS_KEPT_AFTER_SNAPSHOT: u64 = 1_000;
const PURGE_BATCH_ENTRIES: u64 = 256;

#[derive(Debug, Clone)]
pub struct EmbeddedConfig {
    /// Where the Raft log, vote and snapshots are kept.
    pub data_dir: PathBuf,
    /// How long a detached peer stays a member before it is removed.
    pub grace: Duration,
}

impl EmbeddedConfig {
    /// A configuration with the default grace period.
    pub fn new(data_dir: PathBuf) -> Self {
        Self {
            data_dir,
            grace: DEFAULT_GRACE,
        }
    }
}

/// One member of a multi-replica cluster.
#[derive(Debug, Clone)]
pub struct ReplicaConfig {
    pub node_id: u64,
    pub data_dir: PathBuf,
    /// The address other replicas reach this one's Raft service at.
    pub raft_addr: SocketAddr,
    /// The edge-facing (and admin) address advertised to edges and clients.
    pub api_addr: String,
    pub region: String,
    pub grace: Duration,
    pub secret: ClusterSecret,
}

/// Settings operators rarely touch, kept out of [`ReplicaConfig`].
#[derive(Debug, Clone, Default)]
pub struct ReplicaOptions {
    /// Refuse to start unless the data directory is unbound or belongs to this cluster.
    pub expected_cluster_id: Option<String>,
    /// Log entries between snapshots (default [`DEFAULT_SNAPSHOT_AFTER_ENTRIES`]); small in
    /// tests that need a snapshot to be sent.
    pub snapshot_after_entries: Option<u64>,
    /// Raft heartbeat interval (default 100 ms); elections wait 5–10 heartbeats. Replicas
    /// across regions need it above the longest round trip between them, since openraft
    /// gives each append-entries call one heartbeat interval.
    pub heartbeat_ms: Option<u64>,
}

/// The handle's name where it serves as a cluster member.
pub type Replica = EmbeddedCoordinator;

/// Handle to a replica. Cheap to clone.
#[derive(Clone)]
pub struct EmbeddedCoordinator {
    inner: Arc<Inner>,
}

struct Inner {
    node_id: NodeId,
    data_dir: PathBuf,
    node: NodeInfo,
    raft: Raft,
    identity: Arc<Identity>,
    state: SharedState,
    committed: CommittedIndex,
    installed_snapshots: Arc<AtomicU64>,
    events: broadcast::Sender<RoomEvent>,
    proposals: mpsc::Sender<batcher::Proposal>,
    grace_ms: u64,
    cancel: CancellationToken,
    tasks: TaskTracker,
    /// Taken by the first `shutdown`, which holds the lock until the store has closed.
    store_closed: Mutex<Option<Closed>>,
}

/// What differs between the embedded single replica and a cluster member.
struct Setup {
    node_id: NodeId,
    node: NodeInfo,
    data_dir: PathBuf,
    grace: Duration,
    secret: Option<ClusterSecret>,
    timing: Timing,
    options: ReplicaOptions,
}

impl EmbeddedCoordinator {
    /// Opens (or creates) the single replica in `config.data_dir` and returns once it leads
    /// and has applied its log.
    pub async fn open(config: EmbeddedConfig) -> Result<Self, CoordinatorError> {
        let coordinator = Self::start(Setup {
            node_id: EMBEDDED_NODE_ID,
            node: NodeInfo::default(),
            data_dir: config.data_dir,
            grace: config.grace,
            secret: None,
            timing: EMBEDDED_TIMING,
            options: ReplicaOptions::default(),
        })
        .await?;
        if let Err(e) = coordinator.lead_alone().await {
            // Releases the data directory, so that the caller can retry.
            coordinator.shutdown().await;
            return Err(e);
        }
        Ok(coordinator)
    }

    /// Opens a cluster member. It serves nothing by itself: mount
    /// [`crate::grpc::raft_service::raft_server`] on `config.raft_addr`. A fresh replica waits
    /// to be bootstrapped or added; a restarted one rejoins its cluster.
    pub async fn open_replica(config: ReplicaConfig) -> Result<Self, CoordinatorError> {
        Self::open_replica_with(config, ReplicaOptions::default()).await
    }

    pub async fn open_replica_with(
        config: ReplicaConfig,
        options: ReplicaOptions,
    ) -> Result<Self, CoordinatorError> {
        if config.node_id == 0 {
            return Err(CoordinatorError::Config("node ids start at 1".into()));
        }
        Self::start(Setup {
            node_id: config.node_id,
            node: NodeInfo {
                raft_addr: config.raft_addr.to_string(),
                api_addr: config.api_addr,
                region: config.region,
            },
            data_dir: config.data_dir,
            grace: config.grace,
            secret: Some(config.secret),
            timing: match options.heartbeat_ms {
                Some(h) => Timing {
                    election_min_ms: h * 5,
                    election_max_ms: h * 10,
                    heartbeat_ms: h,
                },
                None => REPLICA_TIMING,
            },
            options,
        })
        .await
    }

    async fn start(setup: Setup) -> Result<Self, CoordinatorError> {
        let dir = setup.data_dir;
        std::fs::create_dir_all(&dir).map_err(|e| data_dir_error(&dir, e))?;
        let identity =
            Arc::new(Identity::open(&dir, setup.node_id).map_err(|e| data_dir_error(&dir, e))?);
        if let Some(expected) = &setup.options.expected_cluster_id {
            identity
                .check(expected)
                .map_err(|e| data_dir_error(&dir, e))?;
        }
        let (log_store, closed) = LogStore::open(&dir).map_err(|e| data_dir_error(&dir, e))?;
        let committed = log_store.committed_index();
        let (events, _) = broadcast::channel(EVENT_BUFFER);
        let state_machine =
            StateMachineStore::open(&dir, events.clone()).map_err(|e| data_dir_error(&dir, e))?;
        let state = state_machine.state();
        let installed_snapshots = state_machine.installed_snapshots();
        let snapshot_after = setup
            .options
            .snapshot_after_entries
            .unwrap_or(DEFAULT_SNAPSHOT_AFTER_ENTRIES);
        let network = GrpcNetwork::new(setup.secret, Arc::clone(&identity));
        let raft = Raft::new(
            setup.node_id,
            Arc::new(raft_config(setup.timing, snapshot_after)?),
            network,
            log_store,
            state_machine,
        )
        .await
        .map_err(|e| CoordinatorError::Unavailable(e.to_string()))?;
        let (proposals, queue) = mpsc::channel(QUEUE_COMMANDS);
        let coordinator = Self {
            inner: Arc::new(Inner {
                node_id: setup.node_id,
                data_dir: dir.clone(),
                node: setup.node,
                raft,
                identity,
                state,
                committed: committed.clone(),
                installed_snapshots,
                events,
                proposals,
                grace_ms: u64::try_from(setup.grace.as_millis()).unwrap_or(u64::MAX),
                cancel: CancellationToken::new(),
                tasks: TaskTracker::new(),
                store_closed: Mutex::new(Some(closed)),
            }),
        };
        let inner = &coordinator.inner;
        inner.tasks.spawn(batcher::run(
            inner.raft.clone(),
            queue,
            inner.cancel.clone(),
        ));
        inner.tasks.spawn(background::watch_raft_metrics(
            inner.raft.clone(),
            committed,
            inner.cancel.clone(),
        ));
        inner.tasks.spawn(background::sweep(coordinator.clone()));
        Ok(coordinator)
    }

    /// Bootstraps the single replica if needed and waits until it leads with its log applied.
    async fn lead_alone(&self) -> Result<(), CoordinatorError> {
        let raft = &self.inner.raft;
        let unavailable = |e: &dyn std::fmt::Display| CoordinatorError::Unavailable(e.to_string());
        if !raft.is_initialized().await.map_err(|e| unavailable(&e))? {
            self.bootstrap().await?;
        }
        raft.wait(Some(LEADER_DEADLINE))
            .metrics(
                |m| {
                    m.current_leader == Some(EMBEDDED_NODE_ID)
                        && m.last_applied.map(|id| id.index) >= m.last_log_index
                },
                "this replica leads and has applied its log",
            )
            .await
            .map_err(|e| unavailable(&e))?;
        Ok(())
    }

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

    /// Room events in apply order. A receiver that falls more than [`EVENT_BUFFER`] events
    /// behind gets `Lagged` and must re-read the rooms it cares about.
    pub fn subscribe(&self) -> broadcast::Receiver<RoomEvent> {
        self.inner.events.subscribe()
    }

    /// The room as this replica has applied it.
    pub fn room(&self, room: &RoomId) -> Option<RoomView> {
        self.read(|s| s.room(room))
    }

    pub fn rooms(&self) -> Vec<RoomSummary> {
        self.read(|s| s.rooms())
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

    fn read<T>(&self, f: impl FnOnce(&RegistryState) -> T) -> T {
        let applied = self
            .inner
            .state
            .read()
            .unwrap_or_else(PoisonError::into_inner);
        f(&applied.registry)
    }

    fn data_dir_error(&self, e: impl std::fmt::Display) -> CoordinatorError {
        data_dir_error(&self.inner.data_dir, e)
    }
}

fn raft_config(timing: Timing, snapshot_after: u64) -> Result<openraft::Config, CoordinatorError> {
    openraft::Config {
        cluster_name: "heliograph".into(),
        election_timeout_min: timing.election_min_ms,
        election_timeout_max: timing.election_max_ms,
        heartbeat_interval: timing.heartbeat_ms,
        max_payload_entries: MAX_PAYLOAD_ENTRIES,
        snapshot_policy: SnapshotPolicy::LogsSinceLast(snapshot_after),
        // Entries kept behind a snapshot let a briefly lagging follower catch up from the log;
        // kept in proportion so that a small test threshold still forces a snapshot transfer.
        max_in_snapshot_log_to_keep: LOGS_KEPT_AFTER_SNAPSHOT.min(snapshot_after / 10),
        // openraft purges only once this many entries can go; scaled for the same reason.
        purge_batch_size: PURGE_BATCH_ENTRIES.min(snapshot_after / 10).max(1),
        ..Default::default()
    }
    .validate()
    .map_err(|e| CoordinatorError::Config(e.to_string()))
}

fn data_dir_error(path: &Path, reason: impl std::fmt::Display) -> CoordinatorError {
    CoordinatorError::DataDir {
        path: path.to_path_buf(),
        reason: reason.to_string(),
    }
}

#[cfg(test)]
mod tests;
