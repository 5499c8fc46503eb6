//! The requests a connection serves: join, leave, signal and ping (resume and the contact
//! requests have their own modules). Signal and ping are answered at once; join and leave wait for the registry in
//! the background while the socket keeps writing.

use std::sync::Arc;
use std::time::Instant;

use heliograph_coordinator::CoordinatorError;
use heliograph_coordinator::registry::{Command, Listing, Outcome, PeerId, Rejection, RoomId};
use serde_json::value::RawValue;

use super::commit::{COMMIT_DEADLINE, commit, fence_ms, save_rooms};

/// How long after a join was sent its room events may take to reach its committed epoch
/// before the client is answered `unavailable`: within the second a join may take.
const EVENTS_DEADLINE: std::time::Duration = std::time::Duration::from_millis(900);
/// The least time a join's events get after its answer: they follow it by milliseconds when
/// the edge's replica is healthy, but a replica catching up (restarted, or back from a lost
/// quorum) applies a backlog first, and giving up on a join that is merely late makes its
/// client join again.
const EVENTS_GRACE: std::time::Duration = std::time::Duration::from_secs(1);
use super::discovery;
use super::step::{Caller, Done, Handled, SessionState, error_out};
use super::{contacts, resume};
use crate::auth::Grant;
use crate::context::EdgeContext;
use crate::member;
use crate::outbox::Outgoing;
use crate::protocol::{
    self, ClientMessage, DecodeLimits, ErrorCode, ProtocolError, Ref, ServerMessage, SignalKind,
};
use crate::rooms::JoinStart;
use crate::router::Outbound;

pub(super) fn handle_text(
    text: &str,
    caller: &Caller<'_>,
    limits: &DecodeLimits,
    ctx: &Arc<EdgeContext>,
    state: &mut SessionState,
) -> Handled {
    let request = match protocol::decode(text, limits) {
        Ok(r) => r,
        Err(err) => {
            ctx.metrics.received(caller.ingress, "invalid");
            return Handled::Reply(vec![error_out(&err, ctx)]);
        }
    };
    ctx.metrics
        .received(caller.ingress, request.message.type_name());
    if request.ack.is_some() {
        state.acked = state.acked.max(request.ack);
    }
    let reference = request.reference;
    match request.message {
        ClientMessage::Signal {
            room,
            to,
            kind,
            data,
        } => signal_checked(ctx, caller, state, &room, &to, kind, data, reference),
        ClientMessage::Ping => Handled::Reply(vec![Outgoing::new(
            "pong",
            protocol::encode(&ServerMessage::Pong {
                reference: protocol::ref_raw(reference.as_ref()),
            }),
        )]),
        ClientMessage::Join {
            room,
            meta,
            token,
            key,
            public,
            room_meta,
        } => {
            let grant = match ctx.join_auth.authorize(token.as_deref(), &room) {
                Ok(grant) => grant,
                Err(e) => return fail(ctx, e.code(), &e.to_string(), reference),
            };
            if grant.can_publish {
                state.receive_only.remove(&room);
            } else {
                state.receive_only.insert(room.clone());
            }
            let meta = member::member_meta(meta.map(RawValue::get), &grant.identity, key.as_ref());
            // A token's `public` claim, when it has one, decides over the client's flag.
            let listing = Listing {
                public: grant.public.unwrap_or(public),
                meta: room_meta.map(|m| m.get().to_owned()),
            };
            join(ctx, caller, room, meta, &grant, listing, reference)
        }
        ClientMessage::ListRooms(query) => discovery::list_rooms(ctx, state, query, reference),
        ClientMessage::Leave { room } => leave(ctx, caller, room, reference),
        ClientMessage::Resume { token, last_seq } => {
            resume::request(ctx, caller, &token, last_seq, reference)
        }
        ClientMessage::Contacts { publish, watch } => {
            contacts::set(ctx, caller, state, &publish, &watch, reference)
        }
        ClientMessage::Invite { to, room, data } => {
            contacts::invite(ctx, caller, state, &to, &room, data, reference)
        }
    }
}

/// A decoded signal, from a native frame or another ingress (`data` valid JSON): refused
/// where the session's join token allows receiving only, otherwise routed.
#[allow(clippy::too_many_arguments)]
pub(super) fn signal_checked(
    ctx: &EdgeContext,
    caller: &Caller<'_>,
    state: &SessionState,
    room: &str,
    to: &str,
    kind: SignalKind,
    data: &str,
    reference: Option<Ref>,
) -> Handled {
    if state.receive_only.contains(room) {
        return fail(
            ctx,
            ErrorCode::Forbidden,
            "your join token for this room does not allow sending signals",
            reference,
        );
    }
    signal(ctx, caller, room, to, kind, data, reference)
}

/// A signal: routed at once from the index, never waiting on the registry.
fn signal(
    ctx: &EdgeContext,
    caller: &Caller<'_>,
    room: &str,
    to: &str,
    kind: SignalKind,
    data: &str,
    reference: Option<Ref>,
) -> Handled {
    let peer = caller.peer;
    // The index's own ids come back with the route: the signal builds none.
    let (route, room) = match ctx.index.route_signal_ids(peer, room, to) {
        Ok(routed) => routed,
        Err(ErrorCode::NotInRoom) => {
            return fail(
                ctx,
                ErrorCode::NotInRoom,
                "you are not in that room",
                reference,
            );
        }
        Err(code) => return fail(ctx, code, "no such peer in that room", reference),
    };
    let text = protocol::encode_signal(&room, peer, kind, data);
    // Regions: where the signal goes is the router's decision (router.rs).
    let delivered = ctx.router.send(
        route,
        Outbound {
            room,
            from: peer,
            to,
            reference,
            text,
            received_at: caller.received_at,
        },
    );
    match delivered {
        Ok(()) => Handled::Done,
        Err(refused) => fail(
            ctx,
            refused.error.code(),
            &refused.error.to_string(),
            refused.reference,
        ),
    }
}

/// A leave: committed in the registry in the background; `left` follows.
fn leave(
    ctx: &Arc<EdgeContext>,
    caller: &Caller<'_>,
    room: RoomId,
    reference: Option<Ref>,
) -> Handled {
    if !ctx.index.is_member(caller.peer, &room) {
        return fail(
            ctx,
            ErrorCode::NotInRoom,
            "you are not in that room",
            reference,
        );
    }
    let ctx = Arc::clone(ctx);
    let peer = caller.peer.clone();
    let owner = caller.owner.clone();
    Handled::Later(Box::pin(async move {
        let command = Command::Leave {
            room: room.clone(),
            peer: peer.clone(),
            attempt: 0,
            deadline_ms: fence_ms(),
        };
        let committed = commit(&ctx, command, COMMIT_DEADLINE).await;
        // A retry that finds the peer gone answers for an earlier attempt that left.
        let left = matches!(committed.result, Ok(Outcome::Left { .. }))
            || (committed.retried
                && matches!(
                    committed.result,
                    Ok(Outcome::Rejected(Rejection::NotInRoom))
                ));
        let frames = match committed.result {
            _ if left => {
                ctx.index.local_leave(&peer, &room);
                save_rooms(&ctx, &peer, &owner).await;
                vec![Outgoing::new(
                    "left",
                    protocol::encode(&ServerMessage::Left {
                        room: room.as_str(),
                        reference: protocol::ref_raw(reference.as_ref()),
                    }),
                )]
            }
            Ok(Outcome::Rejected(Rejection::NotInRoom)) => {
                ctx.index.local_leave(&peer, &room);
                vec![error_out(
                    &ProtocolError {
                        code: ErrorCode::NotInRoom,
                        message: "you are not in that room".into(),
                        reference,
                    },
                    &ctx,
                )]
            }
            other => vec![registry_failure(&ctx, other, reference)],
        };
        Done::frames(frames)
    }))
}

/// An `error` reply.
fn fail(ctx: &EdgeContext, code: ErrorCode, message: &str, reference: Option<Ref>) -> Handled {
    let err = ProtocolError {
        code,
        message: message.to_owned(),
        reference,
    };
    Handled::Reply(vec![error_out(&err, ctx)])
}

fn join(
    ctx: &Arc<EdgeContext>,
    caller: &Caller<'_>,
    room: RoomId,
    meta: String,
    grant: &Grant,
    listing: Listing,
    reference: Option<Ref>,
) -> Handled {
    let peer = caller.peer;
    let max_rooms = ctx.config.limits.max_rooms_per_connection;
    match ctx.index.begin_join(
        peer,
        &room,
        reference.clone(),
        max_rooms,
        !grant.can_publish,
    ) {
        Err(code) => {
            let err = ProtocolError {
                code,
                message: format!("a connection may be in at most {max_rooms} rooms"),
                reference,
            };
            Handled::Reply(vec![error_out(&err, ctx)])
        }
        Ok((JoinStart::AlreadyMember, notices)) => {
            Handled::Reply(notices.into_iter().map(|(_, out)| out).collect())
        }
        Ok((JoinStart::Pending, _)) => {
            let ctx = Arc::clone(ctx);
            let peer = peer.clone();
            let owner = caller.owner.clone();
            let max_members = match (ctx.config.limits.max_room_size, grant.max_room_size) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            Handled::Later(Box::pin(async move {
                let started = Instant::now();
                // Names this request in the registry, so that taking it back (should its
                // outcome stay unknown) cannot undo a later join of the same room. Random:
                // a peer may resume on another edge, whose numbers must not collide.
                let attempt = rand::random::<u64>().max(1);
                let command = Command::Join {
                    room: room.clone(),
                    peer: peer.clone(),
                    edge: ctx.edge_id.clone(),
                    meta,
                    max_members,
                    attempt,
                    deadline_ms: fence_ms(),
                    remote_region: None,
                    listing,
                };
                let committed = commit(&ctx, command, COMMIT_DEADLINE).await;
                ctx.metrics
                    .join_seconds
                    .record(started.elapsed().as_secs_f64());
                let frames = match committed.result {
                    // `joined` goes out through the outbox once the index has the room as the
                    // registry had it then, in order with the room's other events.
                    Ok(Outcome::Joined { epoch, .. }) => {
                        if ctx.index.join_committed(&peer, &room, epoch) {
                            watch_events(&ctx, &peer, &room, epoch, attempt, started);
                        }
                        save_rooms(&ctx, &peer, &owner).await;
                        Vec::new()
                    }
                    Ok(Outcome::Rejected(Rejection::RoomFull)) => {
                        ctx.index.abort_join(&peer, &room, None);
                        vec![error_out(
                            &ProtocolError {
                                code: ErrorCode::RoomFull,
                                message: "the room is full".into(),
                                reference,
                            },
                            &ctx,
                        )]
                    }
                    // The session is gone: nobody to answer.
                    Err(_) if !ctx.index.abort_join(&peer, &room, Some(attempt)) => Vec::new(),
                    // A retry came too late, and an earlier attempt may have committed.
                    Ok(Outcome::Rejected(Rejection::Late)) if committed.retried => {
                        if ctx.index.abort_join(&peer, &room, Some(attempt)) {
                            take_back_if_shown(&ctx, &peer, &room);
                            vec![registry_failure(&ctx, committed.result, reference)]
                        } else {
                            Vec::new()
                        }
                    }
                    Err(e) => {
                        // Nobody knows whether the join committed: the client is told it is
                        // not in the room, and if the join committed after all it is taken
                        // back: now if its event is here already, else when it arrives. (The
                        // leave is conditional on this request, so it cannot undo the
                        // client's next join, whichever lands first.)
                        take_back_if_shown(&ctx, &peer, &room);
                        vec![registry_failure(&ctx, Err(e), reference)]
                    }
                    other => {
                        ctx.index.abort_join(&peer, &room, None);
                        vec![registry_failure(&ctx, other, reference)]
                    }
                };
                Done::frames(frames)
            }))
        }
    }
}

/// Gives a committed join until [`EVENTS_DEADLINE`] after it was sent (and at least
/// [`EVENTS_GRACE`] after its answer) for its room events to reach its epoch, then answers it
/// `unavailable` (see [`RoomIndex::give_up_join`](crate::rooms::RoomIndex::give_up_join)):
/// a request never waits on an event that may not come.
fn watch_events(
    ctx: &Arc<EdgeContext>,
    peer: &PeerId,
    room: &RoomId,
    epoch: u64,
    attempt: u64,
    started: Instant,
) {
    let at = (started + EVENTS_DEADLINE).max(Instant::now() + EVENTS_GRACE);
    let (ctx, peer, room) = (Arc::clone(ctx), peer.clone(), room.clone());
    ctx.connection_tasks.clone().spawn(async move {
        tokio::select! {
            () = tokio::time::sleep_until(tokio::time::Instant::from_std(at)) => {}
            () = ctx.shutdown.stopped() => return,
        }
        let Some((handle, reference)) = ctx.index.give_up_join(&peer, &room, epoch, attempt)
        else {
            return;
        };
        ctx.metrics.joins_given_up.increment(1);
        take_back_if_shown(&ctx, &peer, &room);
        tracing::warn!(%peer, %room, epoch, "a committed join's room events did not come in time; answered unavailable");
        let err = ProtocolError {
            code: ErrorCode::Unavailable,
            message: "the registry committed the join but this edge's replica has not seen it; \
                      you are not in the room, retry the join"
                .into(),
            reference,
        };
        let _ = handle.send(error_out(&err, &ctx));
    });
}

/// A join just answered `unavailable` whose membership the index shows is taken back now
/// (see [`RoomIndex::take_back_if_shown`](crate::rooms::RoomIndex::take_back_if_shown)).
fn take_back_if_shown(ctx: &Arc<EdgeContext>, peer: &PeerId, room: &RoomId) {
    if let Some(attempts) = ctx.index.take_back_if_shown(peer, room) {
        // Not a connection task: the take-back outlives the connection, as the follower's do.
        tokio::spawn(crate::follower::take_back(
            Arc::clone(&ctx.index),
            ctx.registry.clone(),
            room.clone(),
            peer.clone(),
            attempts,
        ));
    }
}

/// The registry could not do what was asked; details stay in the log.
fn registry_failure(
    ctx: &EdgeContext,
    result: Result<Outcome, CoordinatorError>,
    reference: Option<Ref>,
) -> Outgoing {
    let (code, message) = match result {
        Err(e) => {
            tracing::warn!(error = %e, "registry call failed");
            (
                ErrorCode::Unavailable,
                "the room registry is unavailable; retry",
            )
        }
        Ok(Outcome::Rejected(Rejection::Late)) => {
            tracing::warn!("a registry write reached the leader after its deadline");
            (
                ErrorCode::Unavailable,
                "the room registry is unavailable; retry",
            )
        }
        Ok(outcome) => {
            tracing::error!(?outcome, "unexpected registry outcome");
            (ErrorCode::Internal, "internal error")
        }
    };
    error_out(
        &ProtocolError {
            code,
            message: message.into(),
            reference,
        },
        ctx,
    )
}
