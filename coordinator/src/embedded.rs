//! A coordinator replica embedded in the edge process: the single-node default.
//!
//! Invariants: every change goes through the Raft log (durable before it is applied); reads
//! come from the applied state without a Raft round trip; this replica stamps the time into
//! commands because it is the leader; every background task stops in [`shutdown`], after
//! which the data directory is released.
//!
//! [`shutdown`]: EmbeddedCoordinator::shutdown

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use openraft::error::{Fatal, RaftError};
use openraft::{BasicNode, SnapshotPolicy};
use tokio::sync::{Mutex, broadcast};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::error::CoordinatorError;
use crate::metrics;
use crate::raft::log_store::{Closed, LogStore};
use crate::raft::network::NoPeers;
use crate::raft::state_machine::{SharedState, StateMachineStore};
use crate::raft::{NodeId, Raft};
use crate::registry::{
    Command, EdgeId, EdgeRecord, Outcome, RoomEvent, RoomId, RoomSummary, RoomView, Stamped,
};

/// Room events buffered per subscriber before it must resynchronise.
pub const EVENT_BUFFER: usize = 16 * 1024;
pub const DEFAULT_GRACE: Duration = Duration::from_secs(10);

/// The single replica's id; multi-replica clusters will configure theirs.
const NODE_ID: NodeId = 1;
/// How long `open` waits for this replica to lead and catch up with its log.
const LEADER_DEADLINE: Duration = Duration::from_secs(10);
/// How long `shutdown` waits for the log store to close its file.
const CLOSE_DEADLINE: Duration = Duration::from_secs(10);
/// The sweeper re-checks at least this often (the registry can change under it).
const SWEEP_POLL: Duration = Duration::from_millis(250);
const ELECTION_TIMEOUT_MIN_MS: u64 = 150;
const ELECTION_TIMEOUT_MAX_MS: u64 = 300;
const HEARTBEAT_INTERVAL_MS: u64 = 50;
const MAX_PAYLOAD_ENTRIES: u64 = 4_096;
const SNAPSHOT_AFTER_ENTRIES: u64 = 10_000;
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

/// Handle to the embedded replica. Cheap to clone.
#[derive(Clone)]
pub struct EmbeddedCoordinator {
    inner: Arc<Inner>,
}

struct Inner {
    raft: Raft,
    state: SharedState,
    events: broadcast::Sender<RoomEvent>,
    grace_ms: u64,
    cancel: CancellationToken,
    tasks: TaskTracker,
    /// Taken by the first `shutdown`, which holds the lock until the store has closed.
    store_closed: Mutex<Option<Closed>>,
}

impl EmbeddedCoordinator {
    /// Opens (or creates) the replica in `config.data_dir` and returns once it leads and has
    /// applied its log.
    pub async fn open(config: EmbeddedConfig) -> Result<Self, CoordinatorError> {
        let dir = config.data_dir;
        std::fs::create_dir_all(&dir).map_err(|e| data_dir_error(&dir, e))?;
        let (log_store, closed) = LogStore::open(&dir).map_err(|e| data_dir_error(&dir, e))?;
        let (events, _) = broadcast::channel(EVENT_BUFFER);
        let state_machine =
            StateMachineStore::open(&dir, events.clone()).map_err(|e| data_dir_error(&dir, e))?;
        let state = state_machine.state();
        let raft = Raft::new(
            NODE_ID,
            Arc::new(raft_config()?),
            NoPeers,
            log_store,
            state_machine,
        )
        .await
        .map_err(|e| CoordinatorError::Unavailable(e.to_string()))?;
        let coordinator = Self {
            inner: Arc::new(Inner {
                raft,
                state,
                events,
                grace_ms: u64::try_from(config.grace.as_millis()).unwrap_or(u64::MAX),
                cancel: CancellationToken::new(),
                tasks: TaskTracker::new(),
                store_closed: Mutex::new(Some(closed)),
            }),
        };
        if let Err(e) = coordinator.start().await {
            // Releases the data directory, so that the caller can retry.
            coordinator.shutdown().await;
            return Err(e);
        }
        Ok(coordinator)
    }

    async fn start(&self) -> Result<(), CoordinatorError> {
        let raft = &self.inner.raft;
        let unavailable = |e: &dyn std::fmt::Display| CoordinatorError::Unavailable(e.to_string());
        if !raft.is_initialized().await.map_err(|e| unavailable(&e))? {
            let members = BTreeMap::from([(NODE_ID, BasicNode::default())]);
            raft.initialize(members)
                .await
                .map_err(|e| unavailable(&e))?;
        }
        raft.wait(Some(LEADER_DEADLINE))
            .metrics(
                |m| {
                    m.current_leader == Some(NODE_ID)
                        && m.last_applied.map(|id| id.index) >= m.last_log_index
                },
                "this replica leads and has applied its log",
            )
            .await
            .map_err(|e| unavailable(&e))?;
        let inner = &self.inner;
        inner
            .tasks
            .spawn(watch_raft_metrics(raft.clone(), inner.cancel.clone()));
        inner.tasks.spawn(sweep(self.clone()));
        Ok(())
    }

    /// Commits `command` (stamped with the leader's clock) and returns its outcome once it is
    /// applied on this replica.
    pub async fn execute(&self, command: Command) -> Result<Outcome, CoordinatorError> {
        if self.inner.cancel.is_cancelled() {
            return Err(CoordinatorError::ShuttingDown);
        }
        let name = command.name();
        let started = Instant::now();
        let stamped = Stamped {
            at_ms: now_ms(),
            command,
        };
        let result = self.inner.raft.client_write(stamped).await;
        metrics::command_duration(name, started.elapsed());
        match result {
            Ok(response) => Ok(response.data),
            Err(RaftError::Fatal(Fatal::Stopped)) => Err(CoordinatorError::ShuttingDown),
            Err(e) => Err(CoordinatorError::Unavailable(e.to_string())),
        }
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

    /// Whether a leader is known (this replica, as it is the only one).
    pub fn is_ready(&self) -> bool {
        !self.inner.cancel.is_cancelled()
            && self.inner.raft.metrics().borrow().current_leader == Some(NODE_ID)
    }

    /// This replica's Raft node id.
    pub fn node_id(&self) -> u64 {
        NODE_ID
    }

    /// The edge-facing API address of the leader. A single replica leads itself and has no
    /// separate API to forward to, so there is none.
    pub fn leader_api_addr(&self) -> Option<String> {
        None
    }

    /// The edge-facing API address of another replica; a single replica knows no others.
    pub fn replica_api_addr(&self, _node_id: u64) -> Option<String> {
        None
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

    fn read<T>(&self, f: impl FnOnce(&crate::registry::RegistryState) -> T) -> T {
        let applied = self
            .inner
            .state
            .read()
            .unwrap_or_else(PoisonError::into_inner);
        f(&applied.registry)
    }

    /// Proposes a sweep when one is due; returns how long to wait before looking again.
    async fn sweep_once(&self, last_swept_at: &mut Option<u64>) -> Duration {
        let grace_ms = self.inner.grace_ms;
        if !self.is_ready() {
            return SWEEP_POLL;
        }
        let Some(due) = self.read(|s| s.next_sweep_due_ms(grace_ms)) else {
            return SWEEP_POLL;
        };
        let now = now_ms();
        if now < due {
            return Duration::from_millis(due - now).min(SWEEP_POLL);
        }
        if last_swept_at.is_some_and(|at| due <= at) {
            // A sweep stamped after `due` left it due: do not spin on it.
            return SWEEP_POLL;
        }
        match self.execute(Command::Sweep { grace_ms }).await {
            Ok(_) => {
                *last_swept_at = Some(now);
                Duration::ZERO
            }
            Err(e) => {
                tracing::warn!(error = %e, "sweep failed");
                SWEEP_POLL
            }
        }
    }
}

/// Ends leases that ran out and removes peers detached for longer than the grace period, by
/// proposing [`Command::Sweep`] whenever the registry says one is due.
async fn sweep(coordinator: EmbeddedCoordinator) {
    let cancel = coordinator.inner.cancel.clone();
    let mut last_swept_at = None;
    loop {
        let wait = coordinator.sweep_once(&mut last_swept_at).await;
        tokio::select! {
            () = cancel.cancelled() => return,
            () = tokio::time::sleep(wait) => {}
        }
    }
}

/// Mirrors openraft's metrics into the process's metrics.
async fn watch_raft_metrics(raft: Raft, cancel: CancellationToken) {
    let mut rx = raft.metrics();
    let mut leader = None;
    loop {
        {
            let m = rx.borrow_and_update();
            metrics::raft_term(m.current_term);
            if let Some(applied) = m.last_applied {
                metrics::raft_last_applied_index(applied.index);
            }
            if m.current_leader != leader {
                if m.current_leader.is_some() {
                    metrics::raft_leader_changed();
                }
                leader = m.current_leader;
            }
        }
        tokio::select! {
            () = cancel.cancelled() => return,
            changed = rx.changed() => if changed.is_err() { return },
        }
    }
}

fn raft_config() -> Result<openraft::Config, CoordinatorError> {
    openraft::Config {
        cluster_name: "heliograph".into(),
        election_timeout_min: ELECTION_TIMEOUT_MIN_MS,
        election_timeout_max: ELECTION_TIMEOUT_MAX_MS,
        heartbeat_interval: HEARTBEAT_INTERVAL_MS,
        max_payload_entries: MAX_PAYLOAD_ENTRIES,
        snapshot_policy: SnapshotPolicy::LogsSinceLast(SNAPSHOT_AFTER_ENTRIES),
        max_in_snapshot_log_to_keep: LOGS_KEPT_AFTER_SNAPSHOT,
        purge_batch_size: PURGE_BATCH_ENTRIES,
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

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests;
