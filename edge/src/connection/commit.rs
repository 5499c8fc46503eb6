//! A join or leave committed in the registry on a client's behalf, with a deadline.
//!
//! A registry call can fail without saying whether its command committed (the leader was
//! lost mid-request, a replica stalled). Such a failure is retried until the deadline: join
//! and leave are idempotent in the registry (a member joining again is answered with the
//! room; a leave of a non-member is `NotInRoom`), so a retry answers for the first attempt
//! too. Only when the deadline passes with no answer is the outcome unknown: the client is
//! told `unavailable`, and a join that commits after all is taken back by the follower when
//! its event arrives. After a change of membership the session's rooms are stored for a
//! resume ([`save_rooms`]).

use std::time::Duration;

use heliograph_coordinator::CoordinatorError;
use heliograph_coordinator::registry::{Command, Outcome, PeerId};
use heliograph_coordinator::telemetry;
use tokio::time::Instant;
use tracing::Instrument;

use crate::clock;
use crate::context::EdgeContext;
use crate::session::Owner;

/// How long a join or leave may take, retries included, before the client is answered
/// `unavailable`: a registry that lost its quorum must not hold a client for more than a
/// second (a healthy commit takes milliseconds; a leader election about a second).
pub(super) const COMMIT_DEADLINE: Duration = Duration::from_millis(800);
/// How far the leader's clock may run ahead of the edge's before a write sent in time is
/// refused as late; NTP keeps clocks far closer. Between the edge's deadline and the fence a
/// join that commits is taken back by the follower.
const CLOCK_SKEW_ALLOWANCE: Duration = Duration::from_secs(2);
const RETRY_BACKOFF_MIN: Duration = Duration::from_millis(25);
const RETRY_BACKOFF_MAX: Duration = Duration::from_millis(400);

/// The unix ms a join or leave sent now must not take effect after (`deadline_ms`): a copy
/// held by a stalled replica and forwarded after the client was answered is refused by the
/// registry instead of contradicting the answer.
pub(super) fn fence_ms() -> u64 {
    let allowance = COMMIT_DEADLINE + CLOCK_SKEW_ALLOWANCE;
    clock::now_ms() + u64::try_from(allowance.as_millis()).unwrap_or(u64::MAX)
}

/// Stores the rooms of a local peer for a later resume.
pub(super) async fn save_rooms(ctx: &EdgeContext, peer: &PeerId, owner: &Owner) {
    let rooms = ctx.index.stored_rooms(peer);
    if let Err(e) = ctx.store().save_rooms(peer, owner, &rooms).await {
        tracing::warn!(error = %e, "could not store a session's rooms");
    }
}

/// What became of a command.
pub(super) struct Committed {
    /// The registry's answer, or the last error when none came before the deadline.
    pub(super) result: Result<Outcome, CoordinatorError>,
    /// An attempt failed before the answer: the command may have been applied by it, so a
    /// refusal in the answer may describe the state the earlier attempt left.
    pub(super) retried: bool,
}

/// Runs `command` until the registry answers or `within` has passed. With tracing on, the
/// whole commit (retries included) is one span, the root of the command's trace: the calls
/// to the registry carry its context to the replica and on to the leader.
pub(super) async fn commit(ctx: &EdgeContext, command: Command, within: Duration) -> Committed {
    if telemetry::enabled() {
        let span = tracing::info_span!(
            target: telemetry::TARGET,
            "registry.commit",
            command = command.name(),
        );
        attempts(ctx, command, within).instrument(span).await
    } else {
        attempts(ctx, command, within).await
    }
}

async fn attempts(ctx: &EdgeContext, command: Command, within: Duration) -> Committed {
    let deadline = Instant::now() + within;
    let mut backoff = RETRY_BACKOFF_MIN;
    let mut retried = false;
    loop {
        let attempt = tokio::time::timeout_at(deadline, ctx.registry.execute(command.clone()));
        let error = match attempt.await {
            Ok(Ok(outcome)) => {
                return Committed {
                    result: Ok(outcome),
                    retried,
                };
            }
            Ok(Err(e)) => e,
            Err(_) => CoordinatorError::Unavailable("no answer before the deadline".into()),
        };
        if Instant::now() + backoff >= deadline {
            return Committed {
                result: Err(error),
                retried,
            };
        }
        tracing::debug!(%error, "registry write failed; retrying");
        retried = true;
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(RETRY_BACKOFF_MAX);
    }
}
