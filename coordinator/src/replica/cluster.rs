//! Membership of the Raft cluster: bootstrap, add and remove replicas, and status.
//!
//! Changes go through the leader; on another replica they fail with `NotLeader` carrying the
//! leader's API address, so that admin clients can retry there.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use openraft::ChangeMembers;
use openraft::error::{ChangeMembershipError, ClientWriteError, InitializeError, RaftError};
use openraft::raft::ClientWriteResponse;
use serde::Serialize;

use super::batcher::write_error;
use super::handle::Replica;
use crate::error::CoordinatorError;
use crate::raft::{NodeId, NodeInfo, Raft, TypeConfig};

/// How long a learner may take to catch up before `add_member` gives up on promoting it.
pub const CATCH_UP_DEADLINE: Duration = Duration::from_secs(60);

/// How long `snapshot` waits for the build to be on disk.
pub const SNAPSHOT_DEADLINE: Duration = Duration::from_secs(300);

/// How long `snapshot` waits before asking again (a build already running when it asked
/// may cover less than the applied state).
const SNAPSHOT_RETRIGGER: Duration = Duration::from_secs(1);

/// How long a freshly bootstrapped replica may take to elect itself.
const LEAD_DEADLINE: Duration = Duration::from_secs(10);

/// One member of the cluster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MemberStatus {
    pub id: NodeId,
    pub voter: bool,
    #[serde(flatten)]
    pub node: NodeInfo,
}

/// This replica's view of the cluster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ClusterStatus {
    pub node_id: NodeId,
    pub cluster_id: Option<String>,
    /// "Leader", "Follower", "Candidate", "Learner" or "Shutdown".
    pub state: String,
    pub leader: Option<NodeId>,
    pub leader_api: Option<String>,
    pub term: u64,
    pub last_log_index: Option<u64>,
    pub commit_index: Option<u64>,
    pub applied_index: Option<u64>,
    pub snapshot_index: Option<u64>,
    /// Snapshots received from a leader since this process started.
    pub snapshots_installed: u64,
    pub members: Vec<MemberStatus>,
}

/// A snapshot built on request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SnapshotReport {
    /// The last log index it covers.
    pub index: u64,
    /// The snapshot file's size.
    pub bytes: u64,
    /// From the request to the snapshot being on disk.
    pub build: Duration,
}

/// How long a membership change waits for an earlier one to commit before it gives up.
const CHANGE_IN_FLIGHT_DEADLINE: Duration = Duration::from_secs(10);

/// Runs a membership change, waiting (with backoff, up to a deadline) while an earlier change
/// is still being committed: Raft allows one at a time, and admin commands issued back to back
/// — by scripts or the Helm bootstrap — should simply take turns.
async fn when_no_change_in_flight<F, Fut>(
    raft: &Raft,
    mut change: F,
) -> Result<(), CoordinatorError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<ClientWriteResponse<TypeConfig>, ClientWriteFailure>>,
{
    let deadline = Instant::now() + CHANGE_IN_FLIGHT_DEADLINE;
    let mut backoff = Duration::from_millis(20);
    loop {
        match change().await {
            Ok(_) => return Ok(()),
            Err(RaftError::APIError(ClientWriteError::ChangeMembershipError(
                ChangeMembershipError::InProgress(_),
            ))) if Instant::now() < deadline => {
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_millis(500));
            }
            Err(e) => return Err(write_error(raft, e)),
        }
    }
}

type ClientWriteFailure = RaftError<NodeId, ClientWriteError<NodeId, NodeInfo>>;

impl Replica {
    /// Starts a new cluster with this replica as its only voter, under a fresh cluster id.
    pub async fn bootstrap(&self) -> Result<(), CoordinatorError> {
        let inner = &self.inner;
        inner
            .identity
            .bind_new_cluster()
            .map_err(|e| self.data_dir_error(e))?;
        let members = BTreeMap::from([(inner.node_id, inner.node.clone())]);
        match inner.raft.initialize(members).await {
            Ok(()) => {
                let id = inner.node_id;
                inner
                    .raft
                    .wait(Some(LEAD_DEADLINE))
                    .metrics(
                        |m| m.current_leader == Some(id),
                        "the bootstrapped node leads",
                    )
                    .await
                    .map_err(|e| CoordinatorError::Unavailable(e.to_string()))?;
                Ok(())
            }
            Err(RaftError::APIError(InitializeError::NotAllowed(e))) => Err(
                CoordinatorError::Membership(format!("the cluster is already initialized: {e}")),
            ),
            Err(e) => Err(CoordinatorError::Membership(e.to_string())),
        }
    }

    /// Adds replica `id` as a learner, waits until it has caught up, then (unless
    /// `learner_only`) promotes it to voter.
    pub async fn add_member(
        &self,
        id: NodeId,
        node: NodeInfo,
        learner_only: bool,
    ) -> Result<(), CoordinatorError> {
        let raft = &self.inner.raft;
        let added = tokio::time::timeout(
            CATCH_UP_DEADLINE,
            when_no_change_in_flight(raft, || raft.add_learner(id, node.clone(), true)),
        )
        .await
        .map_err(|_| CoordinatorError::Membership(format!("node {id} did not catch up in time")))?;
        added?;
        if learner_only {
            return Ok(());
        }
        when_no_change_in_flight(raft, || {
            raft.change_membership(ChangeMembers::AddVoterIds(BTreeSet::from([id])), false)
        })
        .await
    }

    /// Removes replica `id` from the cluster, voter or learner.
    pub async fn remove_member(&self, id: NodeId) -> Result<(), CoordinatorError> {
        let raft = &self.inner.raft;
        let is_voter = {
            let m = raft.metrics().borrow().membership_config.clone();
            m.membership().voter_ids().any(|v| v == id)
        };
        let change = if is_voter {
            ChangeMembers::RemoveVoters(BTreeSet::from([id]))
        } else {
            ChangeMembers::RemoveNodes(BTreeSet::from([id]))
        };
        // `retain = false`: a removed voter does not linger as a learner.
        when_no_change_in_flight(raft, || raft.change_membership(change.clone(), false)).await
    }

    /// Builds a snapshot of the state applied so far and waits until it is on disk (this
    /// replica's own: no leader needed).
    pub async fn snapshot(&self) -> Result<SnapshotReport, CoordinatorError> {
        let inner = &self.inner;
        let started = Instant::now();
        let unavailable = |e: &dyn std::fmt::Display| CoordinatorError::Unavailable(e.to_string());
        let applied = inner.raft.metrics().borrow().last_applied.map(|l| l.index);
        let Some(applied) = applied else {
            return Err(CoordinatorError::Unavailable(
                "nothing applied yet: no snapshot to build".into(),
            ));
        };
        loop {
            inner
                .raft
                .trigger()
                .snapshot()
                .await
                .map_err(|e| unavailable(&e))?;
            let built = inner
                .raft
                .wait(Some(SNAPSHOT_RETRIGGER))
                .metrics(
                    |m| m.snapshot.is_some_and(|s| s.index >= applied),
                    "a snapshot of the applied state",
                )
                .await;
            match built {
                Ok(m) => {
                    let bytes = crate::raft::snapshot_bytes(&inner.data_dir)
                        .map_err(|e| self.data_dir_error(e))?;
                    return Ok(SnapshotReport {
                        index: m.snapshot.map_or(applied, |s| s.index),
                        bytes,
                        build: started.elapsed(),
                    });
                }
                Err(openraft::metrics::WaitError::Timeout(..))
                    if started.elapsed() < SNAPSHOT_DEADLINE => {}
                Err(e) => return Err(unavailable(&e)),
            }
        }
    }

    pub fn status(&self) -> ClusterStatus {
        let inner = &self.inner;
        let m = inner.raft.metrics().borrow().clone();
        let membership = m.membership_config.membership();
        let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
        let members = membership
            .nodes()
            .map(|(id, node)| MemberStatus {
                id: *id,
                voter: voters.contains(id),
                node: node.clone(),
            })
            .collect();
        ClusterStatus {
            node_id: inner.node_id,
            cluster_id: inner.identity.cluster_id(),
            state: format!("{:?}", m.state),
            leader: m.current_leader,
            leader_api: self.leader_api_addr(),
            term: m.current_term,
            last_log_index: m.last_log_index,
            commit_index: inner.committed.get(),
            applied_index: m.last_applied.map(|l| l.index),
            snapshot_index: m.snapshot.map(|l| l.index),
            snapshots_installed: inner.installed_snapshots.load(Ordering::Relaxed),
            members,
        }
    }
}
