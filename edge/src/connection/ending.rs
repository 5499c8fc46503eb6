//! How a connection's session ends: for good (the client closed it), or detached (the
//! socket ended, the peer may resume on any edge of the region within the grace period).

use std::time::Duration;

use heliograph_coordinator::registry::{Command, PeerId};

use crate::context::EdgeContext;
use crate::metrics::CloseReason;
use crate::outbox::{Outgoing, SessionHandle};
use crate::session::Owner;
use crate::session::sequencer::Sequencer;

/// How long a detaching session waits for signals on their way through this edge.
const SETTLE_WAIT: Duration = Duration::from_secs(1);

/// The identity a socket serves: its peer, and its claim on that peer's stored session.
pub(super) struct Identity {
    pub(super) peer: PeerId,
    pub(super) owner: Owner,
}

/// The client closed the session (or broke the protocol): it leaves its rooms now, and the
/// senders of signals still pending for it are told `expired`.
pub(super) async fn end_for_good(ctx: &EdgeContext, me: &Identity, handle: &SessionHandle) {
    let Some(in_rooms) = ctx.index.remove_session(&me.peer, handle) else {
        // Another socket of this edge resumed the peer already.
        return;
    };
    // The stored session ends first: once the rooms are told `peer-left`, a resume with the
    // session's token must already be refused, not take up a session left by its rooms.
    match ctx.store().end(&me.peer, Some(&me.owner)).await {
        Ok(pending) => pending.into_iter().for_each(|e| ctx.router.expire(e)),
        Err(e) => tracing::warn!(error = %e, "could not end a stored session"),
    }
    if in_rooms {
        // Its rooms are told `peer-left` by the registry event.
        let peer = me.peer.clone();
        if let Err(e) = ctx.registry.execute(Command::Disconnect { peer }).await {
            tracing::warn!(error = %e, "could not remove a disconnected peer from the registry");
        }
    }
}

/// The socket ended without the client closing the session: what it may not have read
/// (the replay window, then whatever was still queued) is stored for a resume, and the
/// registry keeps its place for the grace period.
pub(super) async fn detach(
    ctx: &EdgeContext,
    me: &Identity,
    handle: &SessionHandle,
    seq: &mut Sequencer,
    leftovers: Vec<Outgoing>,
    reason: CloseReason,
) {
    let Some(in_rooms) = ctx.index.remove_session(&me.peer, handle) else {
        return;
    };
    // Whatever concerns this peer and is still on its way through this edge gets where it
    // goes before the session can be resumed elsewhere (order, see `Router::settle`).
    ctx.router.settle(&me.peer, SETTLE_WAIT).await;
    // Frames never written: signals go back to the pending buffer (their senders must be
    // told if the peer never returns), anything else joins the replay window.
    let mut window = seq.window();
    let mut unsent = Vec::new();
    for out in leftovers {
        match out.into_envelope(me.peer.as_str(), &ctx.edge_id, &ctx.region) {
            Ok(e) => unsent.push(e),
            Err(out) => window.push(seq.stamp_unkept(&out.text)),
        }
    }
    match ctx
        .store()
        .detach(&me.peer, &me.owner, seq.last(), window, unsent)
        .await
    {
        Ok(true) => ctx.metrics.sessions_detached.increment(1),
        // Resumed on another socket already.
        Ok(false) => return,
        Err(e) => tracing::warn!(error = %e, "could not store a detached session"),
    }
    // A draining edge releases its lease at the end, which detaches its peers at once.
    if in_rooms && reason != CloseReason::Shutdown {
        let peer = me.peer.clone();
        if let Err(e) = ctx.registry.execute(Command::Detach { peer }).await {
            tracing::warn!(error = %e, "could not mark a peer detached in the registry");
        }
    }
}
