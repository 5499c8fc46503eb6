//! One client connection: welcome, the read loop, the bounded outbox, keepalive and close.
//!
//! A session processes its client's requests one at a time (a join finishes before the next
//! frame is read), but keeps writing its outbox and answering keepalive while a registry
//! call is in flight, so a slow commit never makes a peer look dead or slow.

use std::collections::HashSet;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket};
use futures_util::SinkExt;
use heliograph_coordinator::registry::{Command, Outcome, PeerId, Rejection, RoomId};
use serde_json::value::RawValue;

use crate::EdgeContext;
use crate::auth::Grant;
use crate::limits::{ConnectionSlot, RateLimiter};
use crate::metrics::CloseReason;
use crate::outbox::{Flag, Outgoing, SessionHandle, outbox};
use crate::protocol::{
    self, ClientMessage, DecodeLimits, ErrorCode, ProtocolError, Ref, ServerMessage,
};
use crate::rooms::JoinStart;
use crate::sessions::resume::{self, Switch};
use crate::sessions::sequencer::Sequencer;
use crate::sessions::{Owner, TokenClaims};

/// WebSocket close codes used by the edge (RFC 6455 §7.4.1).
pub mod close_code {
    pub const GOING_AWAY: u16 = 1001;
    pub const INVALID_PAYLOAD: u16 = 1007;
    pub const POLICY: u16 = 1008;
    pub const TOO_BIG: u16 = 1009;
    /// Client close codes in this range detach the session (the client resumes it later)
    /// instead of ending it.
    pub const RESUME_LATER: std::ops::RangeInclusive<u16> = 4000..=4099;
}

/// A draining socket is closed at least this long after its `reconnect` notice: what the
/// client sent before it read the notice still arrives and is served.
pub const DRAIN_NOTICE_FLOOR: Duration = Duration::from_secs(1);
/// How long a detaching session waits for signals on their way through this edge.
const SETTLE_WAIT: Duration = Duration::from_secs(1);
/// How long a draining socket waits for the client's reply to its close.
const DRAIN_CLOSE_WAIT: Duration = Duration::from_secs(1);

/// Frames written to the socket in one go before flushing.
const WRITE_BATCH: usize = 64;

/// What a request that ran in the background produced.
pub struct Done {
    pub frames: Vec<Outgoing>,
    /// A resume succeeded: this socket continues that session.
    pub switch: Option<Box<Switch>>,
}

impl Done {
    pub fn frames(frames: Vec<Outgoing>) -> Self {
        Self {
            frames,
            switch: None,
        }
    }
}

type Reply = Pin<Box<dyn Future<Output = Done> + Send>>;

/// Sends at most one `rate-limited` error per this interval, so a flood is not mirrored.
const RATE_LIMIT_NOTICE_INTERVAL: Duration = Duration::from_secs(1);

/// What a session remembers about its own requests.
#[derive(Default)]
struct SessionState {
    /// Rooms joined with a receive-only token: signals from this peer there are refused.
    receive_only: HashSet<RoomId>,
    /// The highest `ack` the client sent since the replay window was last trimmed.
    acked: Option<u64>,
}

/// The identity this socket serves: its peer, and its claim on that peer's stored session.
struct Identity {
    peer: PeerId,
    owner: Owner,
}

/// Serves one client until it leaves, fails, or the edge shuts down. `slot` holds this
/// connection's place in the connection limits until the session ends.
#[allow(clippy::manual_async_fn)] // deliberately not an async fn: see the comment inside
pub fn run(
    mut socket: WebSocket,
    ctx: Arc<EdgeContext>,
    slot: ConnectionSlot,
) -> impl Future<Output = ()> + Send {
    // An async block rather than an async fn: an async fn keeps a second copy of its
    // by-value arguments (the socket alone is ~370 bytes) in every session's task.
    async move {
        let mut me = Identity {
            peer: PeerId::random(),
            owner: Owner::new(&ctx.edge_id),
        };
        let (handle, mut outbox) = outbox(ctx.config.limits.outbox_messages);
        ctx.index
            .add_session(me.peer.clone(), handle.clone(), me.owner.clone());
        // Entered after the drain told the sessions of the index: it drains too.
        if ctx.draining.load(std::sync::atomic::Ordering::SeqCst) {
            handle.drain();
        }
        ctx.metrics.connections_accepted.increment(1);
        ctx.metrics.connections_open.increment(1.0);
        // Cold steps are boxed: their futures would otherwise size every idle session's task.
        if let Err(e) = Box::pin(ctx.sessions_store.open(&me.peer, &me.owner)).await {
            // The session works; it just cannot be resumed.
            tracing::warn!(error = %e, "could not store a new session");
        }
        let mut seq = Sequencer::new(ctx.config.sessions.replay_window);

        let welcome = protocol::encode(&ServerMessage::Welcome {
            peer_id: me.peer.as_str(),
            resume_token: &issue_token(&ctx, &me.peer),
            region: ctx.region.as_str(),
            edge: ctx.edge_id.as_str(),
            ice_servers: &ice_servers(&ctx, &me.peer),
            protocol: protocol::SUBPROTOCOL,
        });
        let mut reason = None;
        let welcome = send_all(
            &mut socket,
            vec![Outgoing::new("welcome", welcome)],
            &mut seq,
            &ctx,
        );
        if welcome.await.is_err() {
            reason = Some(CloseReason::Abrupt);
        }

        let limits = DecodeLimits {
            max_meta_bytes: ctx.config.limits.max_meta_bytes,
        };
        let mut last_heard = Instant::now();
        let mut ping = tokio::time::interval(ctx.config.ping_interval);
        ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ping.tick().await;
        let mut inflight: Option<Reply> = None;
        // A resume in flight: the outbox waits, so that what the resumed session missed is
        // written before anything newer.
        let mut resuming = false;
        let mut state = SessionState::default();
        let mut rate = RateLimiter::new(
            ctx.config.rate_limit_per_second,
            ctx.config.rate_limit_burst,
        );
        let mut last_rate_notice: Option<Instant> = None;
        let mut drain_close_at: Option<tokio::time::Instant> = None;

        let reason = match reason {
            Some(r) => r,
            None => loop {
                tokio::select! {
                    biased;
                    // The frequent events first: when one is ready the rarer ones are not even
                    // polled. None of those is urgent to the frame (a kicked or draining
                    // session ends once nothing else is ready; a stuck write is cut by `guarded`).
                    out = outbox.rx.recv(), if !resuming => {
                        let Some(out) = out else { break CloseReason::Abrupt };
                        if let Err(reason) =
                            guarded(|| write_batch(&mut socket, out, &mut outbox.rx, &mut seq, &ctx), &outbox.kicked, &ctx).await
                        {
                            break reason;
                        }
                    }
                    msg = socket.recv(), if inflight.is_none() => {
                        last_heard = Instant::now();
                        if matches!(msg, Some(Ok(Message::Text(_) | Message::Binary(_))))
                            && !rate.allow(last_heard)
                        {
                            // Over its rate: the frame is dropped, and the client told (sparingly).
                            ctx.metrics.received("invalid");
                            let due = last_rate_notice
                                .is_none_or(|t| t.elapsed() >= RATE_LIMIT_NOTICE_INTERVAL);
                            if due {
                                last_rate_notice = Some(last_heard);
                                let err = ProtocolError::new(
                                    ErrorCode::RateLimited,
                                    "too many messages; frames are being dropped",
                                );
                                if let Err(reason) =
                                    guarded(|| send_error(&mut socket, &err, &mut seq, &ctx), &outbox.kicked, &ctx).await
                                {
                                    break reason;
                                }
                            } else {
                                ctx.metrics.error(ErrorCode::RateLimited);
                            }
                            continue;
                        }
                        match msg {
                            None => break CloseReason::Abrupt,
                            Some(Err(e)) => break read_error_reason(e),
                            Some(Ok(Message::Close(frame))) => {
                                break match frame {
                                    Some(f) if close_code::RESUME_LATER.contains(&f.code) => {
                                        CloseReason::ClientDetach
                                    }
                                    _ => CloseReason::ClientClose,
                                };
                            }
                            Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
                            Some(Ok(Message::Binary(_))) => {
                                ctx.metrics.received("invalid");
                                let err = ProtocolError::new(
                                    ErrorCode::BinaryUnsupported,
                                    "binary frames are not part of heliograph.v1; send JSON text",
                                );
                                if let Err(reason) =
                                    guarded(|| send_error(&mut socket, &err, &mut seq, &ctx), &outbox.kicked, &ctx).await
                                {
                                    break reason;
                                }
                            }
                            Some(Ok(Message::Text(text))) => {
                                let received_at = last_heard;
                                let caller = Caller {
                                    peer: &me.peer,
                                    owner: &me.owner,
                                    handle: &handle,
                                    received_at,
                                };
                                let handled = handle_text(&text, &caller, &limits, &ctx, &mut state);
                                if let Some(ack) = state.acked.take() {
                                    seq.acknowledge(ack);
                                }
                                match handled {
                                    Handled::Done => {}
                                    Handled::Reply(replies) => {
                                        if let Err(reason) =
                                            guarded(|| send_all(&mut socket, replies, &mut seq, &ctx), &outbox.kicked, &ctx).await
                                        {
                                            break reason;
                                        }
                                    }
                                    Handled::Later(fut) => inflight = Some(fut),
                                    Handled::Resume(fut) => {
                                        inflight = Some(fut);
                                        resuming = true;
                                    }
                                }
                            }
                        }
                    }
                    done = async {
                        match inflight.as_mut() {
                            Some(f) => f.await,
                            None => std::future::pending().await,
                        }
                    }, if inflight.is_some() => {
                        inflight = None;
                        resuming = false;
                        // The client was not read while the request ran; that is not its silence.
                        last_heard = Instant::now();
                        let mut frames = done.frames;
                        if let Some(switch) = done.switch {
                            let replayed = switch.replay.len() + switch.pending.len();
                            let previous = std::mem::replace(
                                &mut me,
                                Identity {
                                    peer: switch.peer.clone(),
                                    owner: switch.owner.clone(),
                                },
                            );
                            // The fresh session of this socket's `welcome` is not needed.
                            ctx.index.remove_session(&previous.peer, &handle);
                            let store = ctx.sessions_store.clone();
                            tokio::spawn(async move {
                                let _ = store.end(&previous.peer, Some(&previous.owner)).await;
                            });
                            state.receive_only = switch.receive_only.clone();
                            seq.resume_from(switch.last_seq, switch.window.clone());
                            if let Err(reason) =
                                guarded(|| write_stamped(&mut socket, &switch.replay, &ctx), &outbox.kicked, &ctx).await
                            {
                                break reason;
                            }
                            frames = switch.into_frames(issue_token(&ctx, &me.peer));
                            ctx.metrics.signals_replayed.increment(replayed as u64);
                            ctx.metrics.resume("ok");
                        }
                        if let Err(reason) =
                            guarded(|| send_all(&mut socket, frames, &mut seq, &ctx), &outbox.kicked, &ctx).await
                        {
                            break reason;
                        }
                    }
                    () = outbox.kicked.raised() => break CloseReason::SlowConsumer,
                    // (After the drain notice the socket closes by itself, within the shutdown
                    // grace; a write stuck past it is cut by `guarded`.)
                    () = outbox.drain.raised(), if drain_close_at.is_none() => {
                        // Draining: this socket closes at a random point of the drain window,
                        // so that its clients do not all resume elsewhere at once.
                        // The floor lets what the client sent before it read the notice arrive;
                        // both fit in the shutdown grace with time left to close and store.
                        let budget = ctx
                            .config
                            .shutdown_grace
                            .saturating_sub(DRAIN_CLOSE_WAIT * 2);
                        let floor = DRAIN_NOTICE_FLOOR.min(budget / 2);
                        let window = ctx
                            .config
                            .sessions
                            .drain_window
                            .min(budget.saturating_sub(floor));
                        let after = floor + window.mul_f64(rand::random::<f64>());
                        drain_close_at = Some(tokio::time::Instant::now() + after);
                        ctx.metrics.drain_notices.increment(1);
                        let notice = Outgoing::new(
                            "reconnect",
                            protocol::encode(&ServerMessage::Reconnect {
                                after_ms: u64::try_from(after.as_millis()).unwrap_or(u64::MAX),
                            }),
                        );
                        if let Err(reason) =
                            guarded(|| send_all(&mut socket, vec![notice], &mut seq, &ctx), &outbox.kicked, &ctx).await
                        {
                            break reason;
                        }
                    }
                    () = async {
                        match drain_close_at {
                            Some(at) => tokio::time::sleep_until(at).await,
                            None => std::future::pending().await,
                        }
                    } => break CloseReason::Shutdown,
                    _ = ping.tick() => {
                        if inflight.is_none() && last_heard.elapsed() > ctx.config.keepalive_timeout {
                            break CloseReason::KeepaliveTimeout;
                        }
                        if let Err(reason) =
                            guarded(|| socket.send(Message::Ping(Default::default())), &outbox.kicked, &ctx).await
                        {
                            break reason;
                        }
                    }
                }
            },
        };

        ctx.metrics.closed(reason);
        ctx.metrics.connections_open.decrement(1.0);
        if reason.ends_session() {
            Box::pin(close(&mut socket, reason)).await;
            Box::pin(end_for_good(&ctx, &me, &handle)).await;
            outbox.rx.close();
        } else {
            let draining = reason == CloseReason::Shutdown && !ctx.hard_stop.is_cancelled();
            if draining {
                // The close goes first, and what the client sent before it read the close is
                // still served; a resume elsewhere waits until the state below is stored.
                let caller = Caller {
                    peer: &me.peer,
                    owner: &me.owner,
                    handle: &handle,
                    received_at: Instant::now(),
                };
                Box::pin(serve_until_closed(
                    &mut socket,
                    &caller,
                    &limits,
                    &ctx,
                    &mut state,
                ))
                .await;
            }
            // The peer may resume: what it may not have read is stored before it can.
            outbox.rx.close();
            let mut leftovers = Vec::new();
            while let Ok(out) = outbox.rx.try_recv() {
                leftovers.push(out);
            }
            Box::pin(detach(&ctx, &me, &handle, seq, leftovers, reason)).await;
            if !draining {
                Box::pin(close(&mut socket, reason)).await;
            }
        }
        outbox.finished.cancel();
        drop(slot);
    }
}

/// Drain: sends the close (1001), then reads until the client's close reply (at most
/// [`DRAIN_CLOSE_WAIT`]), relaying the signals the client sent before it saw the close.
/// Anything else it sent then is dropped: it resumes elsewhere and asks again.
async fn serve_until_closed(
    socket: &mut WebSocket,
    caller: &Caller<'_>,
    limits: &DecodeLimits,
    ctx: &Arc<EdgeContext>,
    state: &mut SessionState,
) {
    let frame = CloseFrame {
        code: close_code::GOING_AWAY,
        reason: Utf8Bytes::from_static("edge draining: resume elsewhere"),
    };
    let sent = tokio::time::timeout(DRAIN_CLOSE_WAIT, socket.send(Message::Close(Some(frame))));
    if !matches!(sent.await, Ok(Ok(()))) {
        return;
    }
    let deadline = tokio::time::Instant::now() + DRAIN_CLOSE_WAIT;
    while let Ok(Some(Ok(msg))) = tokio::time::timeout_at(deadline, socket.recv()).await {
        let Message::Text(text) = msg else {
            if matches!(msg, Message::Close(_)) {
                return;
            }
            continue;
        };
        let is_signal = protocol::decode(&text, limits)
            .is_ok_and(|r| matches!(r.message, ClientMessage::Signal { .. }));
        if is_signal {
            let caller = Caller {
                received_at: Instant::now(),
                ..*caller
            };
            // Its replies (errors) cannot be sent after the close.
            let _ = handle_text(&text, &caller, limits, ctx, state);
        }
    }
}

/// The client closed the session (or broke the protocol): it leaves its rooms now, and the
/// senders of signals still pending for it are told `expired`.
async fn end_for_good(ctx: &Arc<EdgeContext>, me: &Identity, handle: &SessionHandle) {
    let Some(in_rooms) = ctx.index.remove_session(&me.peer, handle) else {
        // Another socket of this edge resumed the peer already.
        return;
    };
    if in_rooms {
        // Its rooms are told `peer-left` by the registry event.
        let peer = me.peer.clone();
        if let Err(e) = ctx.registry.execute(Command::Disconnect { peer }).await {
            tracing::warn!(error = %e, "could not remove a disconnected peer from the registry");
        }
    }
    match ctx.sessions_store.end(&me.peer, Some(&me.owner)).await {
        Ok(pending) => pending.into_iter().for_each(|e| ctx.router.expire(e)),
        Err(e) => tracing::warn!(error = %e, "could not end a stored session"),
    }
}

/// The socket ended without the client closing the session: what it may not have read
/// (the replay window, then whatever was still queued) is stored for a resume, and the
/// registry keeps its place for the grace period.
async fn detach(
    ctx: &Arc<EdgeContext>,
    me: &Identity,
    handle: &SessionHandle,
    mut seq: Sequencer,
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
        match out.into_envelope(&me.peer, &ctx.edge_id, &ctx.region) {
            Ok(e) => unsent.push(e),
            Err(out) => window.push(seq.stamp_unkept(&out.text)),
        }
    }
    match ctx
        .sessions_store
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

fn issue_token(ctx: &EdgeContext, peer: &PeerId) -> String {
    let now_unix = heliograph_coordinator::clock::now_ms() / 1000;
    ctx.tokens.sign(&TokenClaims {
        peer: peer.to_string(),
        region: ctx.region.to_string(),
        cluster: ctx.config.sessions.cluster_name.clone(),
        expires_unix: now_unix + ctx.config.sessions.token_ttl.as_secs(),
    })
}

/// What `handle_text` needs to know about the socket it serves.
#[derive(Clone, Copy)]
struct Caller<'a> {
    peer: &'a PeerId,
    owner: &'a Owner,
    handle: &'a SessionHandle,
    received_at: Instant,
}

enum Handled {
    Done,
    Reply(Vec<Outgoing>),
    Later(Reply),
    /// A resume: nothing else is written to the socket until it finishes.
    Resume(Reply),
}

fn error_out(err: &ProtocolError, ctx: &EdgeContext) -> Outgoing {
    ctx.metrics.error(err.code);
    Outgoing::new("error", protocol::encode_error(err))
}

fn handle_text(
    text: &str,
    caller: &Caller<'_>,
    limits: &DecodeLimits,
    ctx: &Arc<EdgeContext>,
    state: &mut SessionState,
) -> Handled {
    let peer = caller.peer;
    let request = match protocol::decode(text, limits) {
        Ok(r) => r,
        Err(err) => {
            ctx.metrics.received("invalid");
            return Handled::Reply(vec![error_out(&err, ctx)]);
        }
    };
    ctx.metrics.received(request.message.type_name());
    if request.ack.is_some() {
        state.acked = state.acked.max(request.ack);
    }
    let reference = request.reference;
    let fail = |code: ErrorCode, message: &str, reference: Option<Ref>| {
        let err = ProtocolError {
            code,
            message: message.to_owned(),
            reference,
        };
        Handled::Reply(vec![error_out(&err, ctx)])
    };
    match request.message {
        ClientMessage::Signal { room, .. } if state.receive_only.contains(&room) => fail(
            ErrorCode::Forbidden,
            "your join token for this room does not allow sending signals",
            reference,
        ),
        ClientMessage::Signal {
            room,
            to,
            kind,
            data,
        } => match ctx.index.route_signal(peer, &room, &to) {
            Ok(route) => {
                let text = protocol::encode(&ServerMessage::Signal {
                    room: room.as_str(),
                    from: peer.as_str(),
                    kind,
                    data,
                });
                // Regions: where the signal goes is the router's decision (router.rs).
                let delivered = ctx.router.send(
                    route,
                    crate::router::Outbound {
                        room,
                        from: peer,
                        to: &to,
                        reference,
                        text,
                        received_at: caller.received_at,
                    },
                );
                match delivered {
                    Ok(()) => Handled::Done,
                    Err(refused) => fail(
                        refused.error.code(),
                        &refused.error.to_string(),
                        refused.reference,
                    ),
                }
            }
            Err(ErrorCode::NotInRoom) => {
                fail(ErrorCode::NotInRoom, "you are not in that room", reference)
            }
            Err(code) => fail(code, "no such peer in that room", reference),
        },
        ClientMessage::Ping => Handled::Reply(vec![Outgoing::new(
            "pong",
            protocol::encode(&ServerMessage::Pong {
                reference: protocol::ref_raw(reference.as_ref()),
            }),
        )]),
        ClientMessage::Join { room, meta, token } => {
            let grant = match ctx.join_auth.authorize(token.as_deref(), &room) {
                Ok(grant) => grant,
                Err(e) => return fail(e.code(), &e.to_string(), reference),
            };
            if grant.can_publish {
                state.receive_only.remove(&room);
            } else {
                state.receive_only.insert(room.clone());
            }
            join(ctx, caller, room, meta, &grant, reference)
        }
        ClientMessage::Leave { room } => {
            if !ctx.index.is_member(peer, &room) {
                return fail(ErrorCode::NotInRoom, "you are not in that room", reference);
            }
            let ctx = Arc::clone(ctx);
            let peer = peer.clone();
            let owner = caller.owner.clone();
            Handled::Later(Box::pin(async move {
                let result = ctx
                    .registry
                    .execute(Command::Leave {
                        room: room.clone(),
                        peer: peer.clone(),
                    })
                    .await;
                let frames = match result {
                    Ok(Outcome::Left { .. }) => {
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
        ClientMessage::Resume { token, last_seq } => {
            let now_unix = heliograph_coordinator::clock::now_ms() / 1000;
            let claims = ctx.tokens.verify(
                &token,
                ctx.region.as_str(),
                &ctx.config.sessions.cluster_name,
                now_unix,
            );
            let resumed = match claims.map(|c| PeerId::new(c.peer)) {
                Ok(Ok(peer)) => peer,
                refused => {
                    ctx.metrics.resume("bad_token");
                    let why = match refused {
                        Err(e) => e.to_string(),
                        Ok(_) => "malformed token".to_owned(),
                    };
                    return fail(
                        ErrorCode::ResumeFailed,
                        &format!(
                            "resume token refused ({why}); continue with the session from `welcome`"
                        ),
                        reference,
                    );
                }
            };
            if &resumed == peer || ctx.index.in_any_room(peer) {
                ctx.metrics.resume("bad_token");
                return fail(
                    ErrorCode::ResumeFailed,
                    "`resume` must be the first request on a new connection",
                    reference,
                );
            }
            Handled::Resume(Box::pin(resume::run(
                Arc::clone(ctx),
                resumed,
                last_seq.unwrap_or(0),
                caller.handle.clone(),
                reference,
            )))
        }
    }
}

/// Stores the rooms of a local peer for a later resume.
async fn save_rooms(ctx: &EdgeContext, peer: &PeerId, owner: &Owner) {
    let rooms = ctx.index.stored_rooms(peer);
    if let Err(e) = ctx.sessions_store.save_rooms(peer, owner, &rooms).await {
        tracing::warn!(error = %e, "could not store a session's rooms");
    }
}

fn join(
    ctx: &Arc<EdgeContext>,
    caller: &Caller<'_>,
    room: RoomId,
    meta: Option<&RawValue>,
    grant: &Grant,
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
            let meta = member_meta(meta, grant);
            let max_members = match (ctx.config.limits.max_room_size, grant.max_room_size) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            Handled::Later(Box::pin(async move {
                let started = Instant::now();
                let result = ctx
                    .registry
                    .execute(Command::Join {
                        room: room.clone(),
                        peer: peer.clone(),
                        edge: ctx.edge_id.clone(),
                        meta,
                        max_members,
                    })
                    .await;
                ctx.metrics
                    .join_seconds
                    .record(started.elapsed().as_secs_f64());
                let frames = match result {
                    // `joined` is sent when the room event arrives, in order with the room's
                    // other events.
                    Ok(Outcome::Joined { .. }) => {
                        save_rooms(&ctx, &peer, &owner).await;
                        Vec::new()
                    }
                    Ok(Outcome::Rejected(Rejection::RoomFull)) => {
                        ctx.index.abort_join(&peer, &room);
                        vec![error_out(
                            &ProtocolError {
                                code: ErrorCode::RoomFull,
                                message: "the room is full".into(),
                                reference,
                            },
                            &ctx,
                        )]
                    }
                    other => {
                        ctx.index.abort_join(&peer, &room);
                        vec![registry_failure(&ctx, other, reference)]
                    }
                };
                Done::frames(frames)
            }))
        }
    }
}

/// The registry could not do what was asked; details stay in the log.
fn registry_failure(
    ctx: &EdgeContext,
    result: Result<Outcome, heliograph_coordinator::CoordinatorError>,
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

/// The metadata other peers see. With join tokens, `identity` is the token's verified
/// subject and overrides anything the client put there.
fn member_meta(meta: Option<&RawValue>, grant: &Grant) -> String {
    let raw = meta.map_or("{}", RawValue::get);
    if grant.identity.is_empty() {
        return raw.to_owned();
    }
    let mut object: serde_json::Map<String, serde_json::Value> =
        serde_json::from_str(raw).unwrap_or_default();
    object.insert(
        "identity".into(),
        serde_json::Value::String(grant.identity.clone()),
    );
    serde_json::Value::Object(object).to_string()
}

/// The `ice_servers` of `welcome`: the configured STUN/TURN URLs, plus TURN credentials for
/// this peer when a TURN secret is configured.
fn ice_servers(ctx: &EdgeContext, peer: &PeerId) -> Box<RawValue> {
    let Some(turn) = &ctx.config.turn else {
        return ctx.ice_servers.clone();
    };
    let mut servers: Vec<serde_json::Value> =
        serde_json::from_str(ctx.ice_servers.get()).unwrap_or_default();
    let now_unix = heliograph_coordinator::clock::now_ms() / 1000;
    if let Ok(v) = serde_json::to_value(turn.credentials(peer, now_unix)) {
        servers.push(v);
    }
    protocol::raw_json(serde_json::Value::Array(servers).to_string())
}

fn read_error_reason(e: axum::Error) -> CloseReason {
    use tokio_tungstenite::tungstenite::Error as WsError;
    use tokio_tungstenite::tungstenite::error::ProtocolError;
    match e.into_inner().downcast::<WsError>() {
        Ok(ws) => match *ws {
            WsError::Capacity(_) => CloseReason::FrameTooLarge,
            WsError::Utf8(_) => CloseReason::InvalidUtf8,
            // The connection was lost (a reset), not a client speaking badly.
            WsError::Protocol(ProtocolError::ResetWithoutClosingHandshake) => CloseReason::Abrupt,
            WsError::Protocol(_) => CloseReason::ProtocolError,
            _ => CloseReason::Abrupt,
        },
        Err(_) => CloseReason::Abrupt,
    }
}

/// Runs a socket write, but gives up when the client is kicked, the edge shuts down, or the
/// write stalls past `--write-timeout-ms`: a client that stops reading blocks its writes, and
/// must not keep its session (or the memory queued for it) alive.
///
/// Takes the write as a function making it: the future is then built in place, where a future
/// passed by value would be stored twice in every session's task.
async fn guarded<W: Future<Output = Result<(), axum::Error>>>(
    write: impl FnOnce() -> W,
    kicked: &Flag,
    ctx: &EdgeContext,
) -> Result<(), CloseReason> {
    let mut write = std::pin::pin!(write());
    // Most writes complete at once (there is room in the socket buffer): they need no timer
    // and no waiters, which would cost more than the write.
    if let Some(r) = futures_util::FutureExt::now_or_never(write.as_mut()) {
        return r.map_err(|_| CloseReason::Abrupt);
    }
    // Boxed: the timer and waiters are rare, and would otherwise size every session's task.
    Box::pin(async move {
        tokio::select! {
            r = write => r.map_err(|_| CloseReason::Abrupt),
            () = kicked.raised() => Err(CloseReason::SlowConsumer),
            () = ctx.hard_stop.cancelled() => Err(CloseReason::Shutdown),
            () = tokio::time::sleep(ctx.config.write_timeout) => Err(CloseReason::SlowConsumer),
        }
    })
    .await
}

/// Sends the close frame that matches `reason`, if the socket can still take one.
async fn close(socket: &mut WebSocket, reason: CloseReason) {
    let frame = match reason {
        CloseReason::Shutdown => Some((close_code::GOING_AWAY, "server shutting down")),
        CloseReason::SlowConsumer => Some((close_code::POLICY, "slow consumer: outbox full")),
        CloseReason::FrameTooLarge => Some((close_code::TOO_BIG, "frame too large")),
        CloseReason::InvalidUtf8 => Some((close_code::INVALID_PAYLOAD, "invalid UTF-8")),
        CloseReason::ProtocolError => None,
        CloseReason::KeepaliveTimeout => Some((close_code::GOING_AWAY, "keepalive timeout")),
        CloseReason::ClientClose | CloseReason::ClientDetach | CloseReason::Abrupt => None,
    };
    let deadline = std::time::Duration::from_secs(1);
    let send = async {
        if let Some((code, reason)) = frame {
            let _ = socket
                .send(Message::Close(Some(CloseFrame {
                    code,
                    reason: Utf8Bytes::from_static(reason),
                })))
                .await;
        } else {
            // Flushes the automatic reply to a client's close frame.
            let _ = socket.flush().await;
        }
    };
    let _ = tokio::time::timeout(deadline, send).await;
}

async fn send_error(
    socket: &mut WebSocket,
    err: &ProtocolError,
    seq: &mut Sequencer,
    ctx: &EdgeContext,
) -> Result<(), axum::Error> {
    send_all(socket, vec![error_out(err, ctx)], seq, ctx).await
}

async fn send_all(
    socket: &mut WebSocket,
    frames: Vec<Outgoing>,
    seq: &mut Sequencer,
    ctx: &EdgeContext,
) -> Result<(), axum::Error> {
    if frames.is_empty() {
        return Ok(());
    }
    for out in frames {
        feed(socket, out, seq, ctx).await?;
    }
    socket.flush().await
}

/// Numbers a frame and queues it on the socket. Not an async fn: the numbering is done at
/// once, and what is awaited is only the socket's own `feed`.
fn feed<'s>(
    socket: &'s mut WebSocket,
    out: Outgoing,
    seq: &mut Sequencer,
    ctx: &EdgeContext,
) -> futures_util::sink::Feed<'s, WebSocket, Message> {
    ctx.metrics.sent(out.kind);
    if let Some((at, path)) = out
        .signal
        .as_ref()
        .and_then(|m| Some((m.relayed_at?, m.path)))
    {
        ctx.metrics.relay(path).record(at.elapsed().as_secs_f64());
    }
    let text = seq.stamp(&out.text);
    socket.feed(Message::Text(text))
}

/// Writes frames that carry their `seq` already (a resumed session's replay).
async fn write_stamped(
    socket: &mut WebSocket,
    frames: &[String],
    ctx: &EdgeContext,
) -> Result<(), axum::Error> {
    if frames.is_empty() {
        return Ok(());
    }
    for frame in frames {
        ctx.metrics.sent(crate::sessions::resume::kind_of(frame));
        socket.feed(Message::Text(frame.clone().into())).await?;
    }
    socket.flush().await
}

/// Writes `first` and whatever else is already queued (up to a batch), then flushes once.
async fn write_batch(
    socket: &mut WebSocket,
    first: Outgoing,
    rx: &mut tokio::sync::mpsc::Receiver<Outgoing>,
    seq: &mut Sequencer,
    ctx: &EdgeContext,
) -> Result<(), axum::Error> {
    feed(socket, first, seq, ctx).await?;
    for _ in 1..WRITE_BATCH {
        match rx.try_recv() {
            Ok(out) => feed(socket, out, seq, ctx).await?,
            Err(_) => break,
        }
    }
    socket.flush().await
}
