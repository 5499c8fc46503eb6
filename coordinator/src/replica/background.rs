//! The replica's background tasks besides the batcher: the lease/grace sweeper (leader only)
//! and the mirror of openraft's metrics.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::handle::Replica;
use crate::clock::now_ms;
use crate::metrics;
use crate::raft::Raft;
use crate::raft::log_store::CommittedIndex;
use crate::registry::Command;

/// The sweeper re-checks at least this often (the registry can change under it).
const SWEEP_POLL: Duration = Duration::from_millis(250);

/// Ends leases that ran out and removes peers detached for longer than the grace period, by
/// proposing [`Command::Sweep`] whenever the registry says one is due. Only the leader sweeps:
/// followers would just be refused. A replica that has just become leader first gives the
/// edges one lease to renew: while there was no leader (an election, a lost quorum) nobody
/// could commit a renewal, and their leases ran out on paper only.
pub async fn sweep(coordinator: Replica) {
    let cancel = coordinator.inner.cancel.clone();
    let mut last_swept_at = None;
    let mut leading_since = None;
    loop {
        let wait = sweep_once(&coordinator, &mut last_swept_at, &mut leading_since).await;
        tokio::select! {
            () = cancel.cancelled() => return,
            () = tokio::time::sleep(wait) => {}
        }
    }
}

/// Proposes a sweep when one is due; returns how long to wait before looking again.
async fn sweep_once(
    c: &Replica,
    last_swept_at: &mut Option<u64>,
    leading_since: &mut Option<u64>,
) -> Duration {
    let grace_ms = c.inner.grace_ms;
    if !c.is_leader() {
        *leading_since = None;
        return SWEEP_POLL;
    }
    let since = *leading_since.get_or_insert_with(now_ms);
    let leases = now_ms() >= since.saturating_add(c.read(|s| s.longest_lease_ms()));
    let Some(due) = c.read(|s| s.next_sweep_due_ms(grace_ms, leases)) else {
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
    match c.execute(Command::Sweep { grace_ms, leases }).await {
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

/// Mirrors openraft's metrics into the process's metrics.
pub async fn watch_raft_metrics(raft: Raft, committed: CommittedIndex, cancel: CancellationToken) {
    let mut rx = raft.metrics();
    let mut leader = None;
    loop {
        {
            let m = rx.borrow_and_update();
            metrics::raft_term(m.current_term);
            metrics::raft_is_leader(m.current_leader == Some(m.id));
            let applied = m.last_applied.map(|a| a.index);
            if let Some(applied) = applied {
                metrics::raft_last_applied_index(applied);
            }
            if let Some(commit) = committed.get() {
                metrics::raft_apply_lag(commit.saturating_sub(applied.unwrap_or(0)));
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
