//! `resume`: a new socket takes over a stored session.
//!
//! Order matters: the socket is entered in the index under the resumed peer *before* the
//! store hands over the session, so a signal published to this edge after the handover
//! finds it; the store's handover is atomic with its pending buffer; the frames go out as
//! replay window, then pending signals, then `resumed`, then whatever came in meanwhile.

use std::sync::Arc;

use heliograph_coordinator::registry::{Command, Outcome, PeerId, Rejection, RoomId};

use super::step::{Caller, Done, Handled, Switch, error_out};
use crate::clock;
use crate::context::EdgeContext;
use crate::outbox::{KickReason, SessionHandle};
use crate::protocol::{ErrorCode, ProtocolError, Ref};
use crate::session::sequencer::{replay_after, seq_of};
use crate::session::{Owner, Restored};

/// How long a resume waits for the peer's previous socket on this edge to wind down (store
/// what it holds) before taking the session over.
const LOCAL_PREVIOUS_SOCKET_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// A `resume` request: checks the token, then takes the session over in the background.
pub(super) fn request(
    ctx: &Arc<EdgeContext>,
    caller: &Caller<'_>,
    token: &str,
    last_seq: Option<u64>,
    reference: Option<Ref>,
) -> Handled {
    let fail = |message: &str, reference: Option<Ref>| {
        ctx.metrics.resume("bad_token");
        let err = ProtocolError {
            code: ErrorCode::ResumeFailed,
            message: message.to_owned(),
            reference,
        };
        Handled::Reply(vec![error_out(&err, ctx)])
    };
    let claims = ctx.tokens.verify(
        token,
        ctx.region.as_str(),
        &ctx.config.sessions.cluster_name,
        clock::now_unix(),
    );
    let resumed = match claims.map(|c| PeerId::new(c.peer)) {
        Ok(Ok(peer)) => peer,
        refused => {
            let why = match refused {
                Err(e) => e.to_string(),
                Ok(_) => "malformed token".to_owned(),
            };
            return fail(
                &format!("resume token refused ({why}); continue with the session from `welcome`"),
                reference,
            );
        }
    };
    if &resumed == caller.peer || ctx.index.in_any_room(caller.peer) {
        return fail(
            "`resume` must be the first request on a new connection",
            reference,
        );
    }
    Handled::Resume(Box::pin(run(
        Arc::clone(ctx),
        resumed,
        // The client holds the token its `welcome` (`seq` 1) carried: it read it, and the
        // window does not keep it.
        last_seq.unwrap_or(0).max(1),
        caller.handle.clone(),
        reference,
    )))
}

fn refused(ctx: &EdgeContext, result: &'static str, message: &str, reference: Option<Ref>) -> Done {
    ctx.metrics.resume(result);
    let err = ProtocolError {
        code: ErrorCode::ResumeFailed,
        message: format!("{message}; continue with the session from `welcome`"),
        reference,
    };
    Done::frames(vec![error_out(&err, ctx)])
}

/// Takes over `peer`'s session for the socket of `handle`, from the client's `last_seq`.
async fn run(
    ctx: Arc<EdgeContext>,
    peer: PeerId,
    last_seq: u64,
    handle: SessionHandle,
    reference: Option<Ref>,
) -> Done {
    let owner = Owner::new(&ctx.edge_id);
    if let Some(previous) = ctx.index.session(&peer) {
        // The peer's previous socket here has not noticed it is dead: it is cut off, and
        // stores what it holds before this socket takes the session over.
        previous.kick(KickReason::Replaced);
        if tokio::time::timeout(LOCAL_PREVIOUS_SOCKET_WAIT, previous.finished())
            .await
            .is_err()
        {
            tracing::warn!("resume: the previous socket did not finish in time");
        }
    }
    if let Some(previous) = ctx
        .index
        .add_resuming(peer.clone(), handle.clone(), owner.clone())
    {
        previous.kick(KickReason::Replaced);
    }
    let restored = match ctx.store().resume(&peer, &owner).await {
        Ok(Some(r)) => r,
        Ok(None) => {
            ctx.index.remove_session(&peer, &handle);
            return refused(
                &ctx,
                "no_session",
                "the session has ended or expired",
                reference,
            );
        }
        Err(e) => {
            tracing::warn!(error = %e, "resume: session store unavailable");
            ctx.index.remove_session(&peer, &handle);
            return refused(
                &ctx,
                "unavailable",
                "the session store is unavailable",
                reference,
            );
        }
    };
    // An edge killed outright never stored what it sent last: the client knows more than
    // the store then, and nothing it holds can be replayed (or needs to be).
    let (last, replay) = if last_seq >= restored.seq {
        (last_seq, Vec::new())
    } else {
        match replay_after(&restored.window, last_seq, restored.seq) {
            Some(replay) => (restored.seq, replay),
            None => {
                give_up(&ctx, &peer, &owner, &handle, restored).await;
                return refused(
                    &ctx,
                    "gap",
                    "frames after `last_seq` are no longer available",
                    reference,
                );
            }
        }
    };
    let rooms: Vec<RoomId> = restored.rooms.iter().map(|r| r.room.clone()).collect();
    let views = match ctx.registry.views(&rooms).await {
        Ok(v) => v,
        Err(e) => {
            tracing::warn!(error = %e, "resume: cannot read the peer's rooms");
            // Hand the session back, so that a later attempt finds it as it was.
            let _ = ctx
                .store()
                .detach(
                    &peer,
                    &owner,
                    restored.seq,
                    restored.window,
                    restored.pending,
                )
                .await;
            ctx.index.remove_session(&peer, &handle);
            return refused(
                &ctx,
                "unavailable",
                "the room registry is unavailable",
                reference,
            );
        }
    };
    let kept = ctx.index.complete_resume(&peer, &restored.rooms, &views);
    if !kept.is_empty() {
        let rebind = Command::Rebind {
            peer: peer.clone(),
            edge: ctx.edge_id.clone(),
            remote_region: None,
        };
        match ctx.registry.execute(rebind).await {
            Ok(Outcome::Done) => {}
            Ok(Outcome::Rejected(Rejection::UnknownPeer)) => {
                // Removed from the registry in the meantime (its grace period ran out).
                give_up(&ctx, &peer, &owner, &handle, restored).await;
                return refused(&ctx, "no_session", "the session has expired", reference);
            }
            other => tracing::warn!(?other, "resume: the registry did not take the rebind"),
        }
    }
    if kept.len() != restored.rooms.len() {
        let _ = ctx.store().save_rooms(&peer, &owner, &kept).await;
    }
    let window: Vec<String> = restored
        .window
        .into_iter()
        .filter(|f| seq_of(f).is_some_and(|s| s <= last))
        .collect();
    Done {
        frames: Vec::new(),
        switch: Some(Box::new(Switch {
            peer,
            owner,
            last_seq: last,
            window,
            replay,
            pending: restored.pending,
            receive_only: kept
                .iter()
                .filter(|r| r.receive_only)
                .map(|r| r.room.clone())
                .collect(),
            reference,
        })),
    }
}

/// The session cannot be continued: it ends for good (its rooms see `peer-left`, the
/// senders of its pending signals get `expired`).
async fn give_up(
    ctx: &EdgeContext,
    peer: &PeerId,
    owner: &Owner,
    handle: &SessionHandle,
    restored: Restored,
) {
    ctx.index.remove_session(peer, handle);
    let command = Command::Disconnect { peer: peer.clone() };
    if let Err(e) = ctx.registry.execute(command).await {
        tracing::warn!(error = %e, "could not remove a peer that cannot resume");
    }
    for e in restored.pending {
        ctx.router.expire(e);
    }
    if let Ok(more) = ctx.store().end(peer, Some(owner)).await {
        more.into_iter().for_each(|e| ctx.router.expire(e));
    }
}
