//! Opening a replica: its data directory, Raft with the timing of its role, and the tasks
//! that run beside it (batcher, sweeper, metrics mirror).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use openraft::SnapshotPolicy;
use tokio::sync::{Mutex, broadcast, mpsc};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::background;
use super::batcher::{self, QUEUE_COMMANDS};
use super::config::{
    DEFAULT_SNAPSHOT_AFTER_ENTRIES, EmbeddedConfig, ReplicaConfig, ReplicaOptions,
};
use super::handle::{EVENT_BUFFER, Inner, Replica};
use crate::error::{ConfigError, CoordinatorError};
use crate::raft::identity::Identity;
use crate::raft::log_store::LogStore;
use crate::raft::network::GrpcNetwork;
use crate::raft::state_machine::StateMachineStore;
use crate::raft::{NodeId, NodeInfo, Raft};
use crate::transport::ClusterSecret;

/// The single replica's id.
const EMBEDDED_NODE_ID: NodeId = 1;
/// How long `open` waits for the single replica to lead and catch up with its log.
const LEADER_DEADLINE: Duration = Duration::from_secs(10);

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
/// Log entries (each a batch of commands) sent in one AppendEntries. openraft gives that RPC
/// one heartbeat interval to answer (60 ms here), and the follower writes and syncs the whole
/// payload before it does: a replica that restarted or thawed far behind, sent thousands of
/// entries at once, could never answer in time and stayed cut off, campaigning at ever higher
/// terms. Small payloads catch it up in steps that each fit; a follower that keeps up needs
/// few entries per round anyway.
const MAX_PAYLOAD_ENTRIES: u64 = 64;
const LOGS_KEPT_AFTER_SNAPSHOT: u64 = 1_000;
/// How long a snapshot chunk's InstallSnapshot may take to answer. The last chunk is answered
/// once the receiver has decoded and installed the whole snapshot (about 5 s for a million
/// members); with openraft's 200 ms the leader gave up on every large transfer at that point
/// and sent the snapshot again from the start, so a new replica installed it twice.
const INSTALL_SNAPSHOT_TIMEOUT_MS: u64 = 60_000;
const PURGE_BATCH_ENTRIES: u64 = 256;

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

impl Replica {
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
            options: ReplicaOptions {
                snapshot_after_entries: config.snapshot_after_entries,
                ..ReplicaOptions::default()
            },
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
    /// the Raft service (`server::serve` does) on `config.raft_addr`. A fresh replica waits
    /// to be bootstrapped or added; a restarted one rejoins its cluster.
    pub async fn open_replica(config: ReplicaConfig) -> Result<Self, CoordinatorError> {
        Self::open_replica_with(config, ReplicaOptions::default()).await
    }

    pub async fn open_replica_with(
        config: ReplicaConfig,
        options: ReplicaOptions,
    ) -> Result<Self, CoordinatorError> {
        if config.node_id == 0 {
            return Err(ConfigError::NodeIdZero.into());
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
        std::fs::create_dir_all(&dir).map_err(|e| CoordinatorError::data_dir(&dir, e))?;
        let identity = Arc::new(
            Identity::open(&dir, setup.node_id).map_err(|e| CoordinatorError::data_dir(&dir, e))?,
        );
        if let Some(expected) = &setup.options.expected_cluster_id {
            identity
                .check(expected)
                .map_err(|e| CoordinatorError::data_dir(&dir, e))?;
        }
        let (log_store, closed) =
            LogStore::open(&dir).map_err(|e| CoordinatorError::data_dir(&dir, e))?;
        let committed = log_store.committed_index();
        let (events, _) = broadcast::channel(EVENT_BUFFER);
        let state_machine = StateMachineStore::open(&dir, events.clone())
            .map_err(|e| CoordinatorError::data_dir(&dir, e))?;
        let state = state_machine.state();
        let installed_snapshots = state_machine.installed_snapshots();
        let snapshot_after = setup
            .options
            .snapshot_after_entries
            .unwrap_or(DEFAULT_SNAPSHOT_AFTER_ENTRIES);
        let network = GrpcNetwork::new(
            setup.secret,
            Arc::clone(&identity),
            setup.node.region.clone(),
        );
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
}

fn raft_config(timing: Timing, snapshot_after: u64) -> Result<openraft::Config, CoordinatorError> {
    openraft::Config {
        cluster_name: "heliograph".into(),
        election_timeout_min: timing.election_min_ms,
        election_timeout_max: timing.election_max_ms,
        heartbeat_interval: timing.heartbeat_ms,
        max_payload_entries: MAX_PAYLOAD_ENTRIES,
        snapshot_policy: SnapshotPolicy::LogsSinceLast(snapshot_after),
        install_snapshot_timeout: INSTALL_SNAPSHOT_TIMEOUT_MS,
        // Entries kept behind a snapshot let a briefly lagging follower catch up from the log;
        // kept in proportion so that a small test threshold still forces a snapshot transfer.
        max_in_snapshot_log_to_keep: LOGS_KEPT_AFTER_SNAPSHOT.min(snapshot_after / 10),
        // openraft purges only once this many entries can go; scaled for the same reason.
        purge_batch_size: PURGE_BATCH_ENTRIES.min(snapshot_after / 10).max(1),
        ..Default::default()
    }
    .validate()
    .map_err(|e| ConfigError::Raft(Box::new(e)).into())
}
