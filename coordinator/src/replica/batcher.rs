//! Packs concurrent commands into one Raft log entry.
//!
//! openraft 0.9 appends and fsyncs each `client_write` on its own, so proposing one entry per
//! command caps writes at the disk's sync rate. The batcher proposes everything queued while
//! the previous entry was committing as one [`Batch`], stamped with one leader time, and answers
//! each caller with its own outcome. Commands of a batch apply in queue order.

use std::time::Duration;

use openraft::error::{ClientWriteError, Fatal, RaftError};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::clock::now_ms;
use crate::error::CoordinatorError;
use crate::metrics;
use crate::raft::{Batch, BatchOutcome, NodeId, NodeInfo, Raft};
use crate::registry::{Command, Outcome, Stamped};

/// Most commands proposed in one entry; bounds the entry's size and its apply time.
pub const MAX_BATCH_COMMANDS: usize = 1_024;
/// Commands queued for the batcher before `execute` waits for room.
pub const QUEUE_COMMANDS: usize = 4 * MAX_BATCH_COMMANDS;
/// How long one batch may take to commit; past it, its callers get `Unavailable` (the entry may
/// still commit later, as with any timed-out write).
const COMMIT_DEADLINE: Duration = Duration::from_secs(10);

pub type Reply = oneshot::Sender<Result<Outcome, CoordinatorError>>;

pub struct Proposal {
    pub command: Command,
    pub reply: Reply,
}

/// Proposes queued commands until cancelled or every sender is gone.
pub async fn run(raft: Raft, mut queue: mpsc::Receiver<Proposal>, cancel: CancellationToken) {
    let mut taken = Vec::with_capacity(MAX_BATCH_COMMANDS);
    loop {
        let received = tokio::select! {
            () = cancel.cancelled() => break,
            n = queue.recv_many(&mut taken, MAX_BATCH_COMMANDS) => n,
        };
        if received == 0 {
            break;
        }
        let at_ms = now_ms();
        let (commands, replies): (Vec<_>, Vec<_>) = taken
            .drain(..)
            .map(|p| {
                (
                    Stamped {
                        at_ms,
                        command: p.command,
                    },
                    p.reply,
                )
            })
            .unzip();
        metrics::batch_size(commands.len());
        let write = tokio::time::timeout(COMMIT_DEADLINE, raft.client_write(Batch(commands)));
        let result = tokio::select! {
            () = cancel.cancelled() => Err(CoordinatorError::ShuttingDown),
            r = write => match r {
                Ok(Ok(response)) => Ok(response.data),
                Ok(Err(e)) => Err(write_error(&raft, e)),
                Err(_) => Err(CoordinatorError::Unavailable("the write did not commit in time".into())),
            },
        };
        answer(replies, result);
    }
    // Dropping the queue answers everyone still waiting with `ShuttingDown` (their reply
    // channels close).
    queue.close();
}

fn answer(replies: Vec<Reply>, result: Result<BatchOutcome, CoordinatorError>) {
    match result {
        Ok(BatchOutcome(outcomes)) if outcomes.len() == replies.len() => {
            for (reply, outcome) in replies.into_iter().zip(outcomes) {
                // The caller may have given up; nothing to do then.
                let _ = reply.send(Ok(outcome));
            }
        }
        Ok(BatchOutcome(outcomes)) => {
            tracing::error!(
                expected = replies.len(),
                got = outcomes.len(),
                "a batch produced the wrong number of outcomes"
            );
            for reply in replies {
                let _ = reply.send(Err(CoordinatorError::Unavailable(
                    "internal error applying the batch".into(),
                )));
            }
        }
        Err(e) => {
            for reply in replies {
                let _ = reply.send(Err(clone_error(&e)));
            }
        }
    }
}

/// `CoordinatorError` holds no non-clonable sources, but is not `Clone` to keep that freedom;
/// every caller of a failed batch gets an equal error.
fn clone_error(e: &CoordinatorError) -> CoordinatorError {
    match e {
        CoordinatorError::ShuttingDown => CoordinatorError::ShuttingDown,
        CoordinatorError::NotLeader { leader_api } => CoordinatorError::NotLeader {
            leader_api: leader_api.clone(),
        },
        CoordinatorError::Membership(m) => CoordinatorError::Membership(m.clone()),
        other => CoordinatorError::Unavailable(other.to_string()),
    }
}

/// Maps a failed write (or membership change) to the crate's error.
pub fn write_error(
    raft: &Raft,
    e: RaftError<NodeId, ClientWriteError<NodeId, NodeInfo>>,
) -> CoordinatorError {
    match e {
        RaftError::APIError(ClientWriteError::ForwardToLeader(f)) => {
            let leader_api = f
                .leader_node
                .map(|n| n.api_addr)
                .filter(|a| !a.is_empty())
                .or_else(|| f.leader_id.and_then(|id| node_api_addr(raft, id)));
            CoordinatorError::NotLeader { leader_api }
        }
        RaftError::APIError(ClientWriteError::ChangeMembershipError(e)) => {
            CoordinatorError::Membership(e.to_string())
        }
        RaftError::Fatal(Fatal::Stopped) => CoordinatorError::ShuttingDown,
        other => CoordinatorError::Unavailable(other.to_string()),
    }
}

/// The edge-facing address of `id` in the membership this replica knows.
pub fn node_api_addr(raft: &Raft, id: NodeId) -> Option<String> {
    let metrics = raft.metrics();
    let m = metrics.borrow();
    m.membership_config
        .membership()
        .get_node(&id)
        .map(|n| n.api_addr.clone())
        .filter(|a| !a.is_empty())
}
