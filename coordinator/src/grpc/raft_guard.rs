//! Who may speak Raft to a replica: only the voters and learners of its cluster.
//!
//! The cluster secret (and mTLS, when configured) says a caller belongs to the deployment; this
//! check says it is a replica of *this* cluster. It catches a removed replica that keeps
//! campaigning, a replica started with the wrong peers, and an edge or tool that holds the
//! secret but has no business on the Raft port. The sender id is the one the request names
//! (`vote.leader_id.node_id`), so it is a guard against mistakes and casual misuse, not
//! against a holder of the secret that lies about its id.
//!
//! Two exceptions keep the cluster live:
//! - an uninitialized replica (no membership yet) accepts anyone: that is how it joins, since
//!   the leader's first `AppendEntries` is what tells it the membership;
//! - a replica accepts replication (`AppendEntries`, `InstallSnapshot`) from an unknown leader
//!   whose term is at least its own: it has missed the membership change that added that
//!   leader and must catch up from it. A stale sender (an older term) gains nothing from this,
//!   and votes from unknown nodes are always refused.

use openraft::Vote;
use tonic::Status;

use crate::raft::{NodeId, Raft};

/// What an RPC asks of the replica.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RpcKind {
    Vote,
    Replication,
}

/// Refuses, with `PERMISSION_DENIED`, an RPC whose sender is not a member or learner of the
/// cluster this replica knows, with the exceptions in the module docs.
pub fn admit(raft: &Raft, vote: &Vote<NodeId>, rpc: RpcKind) -> Result<(), Status> {
    let sender = vote.leader_id().node_id;
    let term = vote.leader_id().term;
    let metrics = raft.metrics();
    let m = metrics.borrow();
    let membership = m.membership_config.membership();
    if membership.nodes().next().is_none() || membership.get_node(&sender).is_some() {
        return Ok(());
    }
    if rpc == RpcKind::Replication && term >= m.current_term {
        return Ok(());
    }
    tracing::warn!(
        sender,
        term,
        ?rpc,
        "refused a raft rpc from a node that is not in the cluster"
    );
    Err(Status::permission_denied(format!(
        "node {sender} is not a member of this cluster"
    )))
}
