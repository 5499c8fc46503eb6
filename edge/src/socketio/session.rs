//! One Socket.IO client: the task that feeds its events to an [`IngressSession`] (joins and
//! leaves as native requests, signals as their decoded parts), and turns the native frames for
//! it into the dialect's events.
//!
//! Like a native connection it serves one request at a time (a join finishes before the next
//! event is read) while it keeps delivering what others send, and a reply never overtakes
//! room events queued before it. Acknowledgements: each request is numbered (its native
//! `ref`); the frame that answers it (`joined`, `left`, `error`) answers the client's
//! acknowledgement, and a signal, silent on success, is acknowledged at once.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use heliograph_coordinator::registry::PeerId;
use serde_json::{Value, json};
use socketioxide::SendError;
use socketioxide::extract::{AckSender, SocketRef};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::dialect::Dialect;
use super::translate::{self, Auth, Request};
use crate::connection::ingress::{Answer, DecodedSignal, IngressSession, Pending};
use crate::context::EdgeContext;
use crate::limits::{ConnectionSlot, RateLimiter};
use crate::metrics::{CloseReason, Ingress};
use crate::outbox::{OutboxReceiver, Outgoing};
use crate::protocol::ErrorCode;

/// Sends at most one `rate-limited` error per this interval, so a flood is not mirrored.
const RATE_LIMIT_NOTICE_INTERVAL: Duration = Duration::from_secs(1);
/// Acknowledgements waiting for their answer. Each request is answered within the registry's
/// commit deadline; the bound only keeps a client that never reads from growing the map.
const MAX_PENDING_ACKS: usize = 256;
/// Frames emitted in one go before looking at the client's next event.
const DELIVERY_BATCH: usize = 64;

/// A client's event, as its handler received it: nothing decoded yet but its name.
pub(super) struct Input {
    /// What the event's name asks for, or the name of an event the dialect does not have.
    pub(super) request: Result<Request, String>,
    pub(super) args: EventArgs,
    /// Where the client asked for an acknowledgement.
    pub(super) ack: Option<AckSender>,
    pub(super) at: Instant,
}

/// An event's arguments as they came.
pub(super) enum EventArgs {
    /// The packet as Socket.IO received it (`["event", args…]`), shared, not copied.
    Packet(socketioxide::handler::Value),
    /// The arguments as a JSON array (`[args…]`), for a packet with binary attachments,
    /// which Socket.IO decodes itself.
    Decoded(String),
}

impl EventArgs {
    fn args(&self) -> translate::Args<'_> {
        match self {
            EventArgs::Packet(value) => translate::Args {
                json: value.as_str().map_or("[]", |s| s.as_str()),
                named: true,
            },
            EventArgs::Decoded(json) => translate::Args { json, named: false },
        }
    }
}

/// What the socket's handlers share with its task.
pub(super) struct Feed {
    pub(super) inputs: mpsc::Receiver<Input>,
    /// Cancelled when the client disconnects (or the server disconnected it).
    pub(super) gone: CancellationToken,
}

/// Serves the client of `socket` until it goes or the edge drains.
pub(super) async fn run(
    socket: SocketRef,
    ctx: Arc<EdgeContext>,
    dialect: Arc<Dialect>,
    auth: Auth,
    mut feed: Feed,
    slot: ConnectionSlot,
) {
    let peer = match PeerId::new(socket.id.to_string()) {
        Ok(p) => p,
        Err(e) => {
            // Socket.IO ids are 16 url-safe characters: this cannot happen.
            tracing::error!(error = %e, "a Socket.IO id is not a valid peer id");
            let _ = socket.disconnect();
            return;
        }
    };
    let (mut session, mut outbox) = IngressSession::open(&ctx, peer, Ingress::SocketIo);
    let mut out = Deliverer {
        socket: &socket,
        dialect: &dialect,
        ctx: &ctx,
        acks: BTreeMap::new(),
    };
    let mut rate = RateLimiter::new(
        ctx.config.rate_limit_per_second,
        ctx.config.rate_limit_burst,
    );
    let mut last_rate_notice: Option<Instant> = None;
    let mut next_ref: u64 = 0;
    let mut inflight: Option<Pending> = None;

    let reason = loop {
        let step: Result<(), CloseReason> = tokio::select! {
            biased;
            first = outbox.rx.recv() => match first {
                Some(first) => out.batch(first, &mut outbox),
                None => Err(CloseReason::Abrupt),
            },
            input = feed.inputs.recv(), if inflight.is_none() => match input {
                None => Err(CloseReason::ClientClose),
                Some(input) if !rate.allow(input.at) => {
                    ctx.metrics.received(Ingress::SocketIo, "invalid");
                    let due = last_rate_notice
                        .is_none_or(|t| t.elapsed() >= RATE_LIMIT_NOTICE_INTERVAL);
                    if due {
                        last_rate_notice = Some(input.at);
                        let err = session.error(
                            &ctx,
                            ErrorCode::RateLimited,
                            "too many events; events are being dropped",
                            None,
                        );
                        acknowledge(input.ack, || refusal(ErrorCode::RateLimited));
                        out.frames(vec![err])
                    } else {
                        ctx.metrics.error(ErrorCode::RateLimited);
                        acknowledge(input.ack, || refusal(ErrorCode::RateLimited));
                        Ok(())
                    }
                }
                Some(input) => {
                    next_ref += 1;
                    let reference = next_ref;
                    let answer = serve(&mut session, &ctx, &auth, &input, reference);
                    if let Some(ack) = input.ack {
                        out.expect_ack(reference, ack);
                    }
                    match answer {
                        Answer::Done => {
                            // A signal on its way: it is acknowledged now. (A `joined` that
                            // comes through the outbox answers its own acknowledgement.)
                            out.answer(reference, || json!({"ok": true}));
                            Ok(())
                        }
                        Answer::Reply(frames) => out.after_queued(frames, &mut outbox),
                        Answer::Later(pending) => {
                            inflight = Some(pending);
                            Ok(())
                        }
                    }
                }
            },
            frames = async {
                match inflight.as_mut() {
                    Some(f) => f.await,
                    None => std::future::pending().await,
                }
            }, if inflight.is_some() => {
                inflight = None;
                out.after_queued(frames, &mut outbox)
            }
            // Like a native connection, which reads its socket's close only between requests:
            // a join or leave in flight finishes (index and registry agree) before the session
            // ends.
            () = feed.gone.cancelled(), if inflight.is_none() => Err(CloseReason::ClientClose),
            () = outbox.kicked.raised() => Err(CloseReason::SlowConsumer),
            // The session ends here, and the ingress closes every transport at once
            // (`socketio::close_on_drain`): the clients reconnect elsewhere.
            () = outbox.drain.raised(), if inflight.is_none() => Err(CloseReason::Shutdown),
        };
        if let Err(reason) = step {
            break reason;
        }
    };
    ctx.metrics.closed(Ingress::SocketIo, reason);
    session.end(&ctx, &mut outbox).await;
    if !feed.gone.is_cancelled() && reason != CloseReason::Shutdown {
        // The server ends it: the client is told, and does not reconnect by itself.
        let _ = socket.clone().disconnect();
    }
    drop(slot);
}

/// Serves one client event: a join or leave as the native request, a signal straight from
/// the packet's text.
fn serve(
    session: &mut IngressSession,
    ctx: &Arc<EdgeContext>,
    auth: &Auth,
    input: &Input,
    reference: u64,
) -> Answer {
    let refused = |session: &IngressSession, code, message: &str| {
        ctx.metrics.received(Ingress::SocketIo, "invalid");
        let reference = crate::protocol::Ref::number(reference);
        Answer::Reply(vec![session.error(ctx, code, message, Some(reference))])
    };
    let request = match &input.request {
        Ok(request) => *request,
        Err(name) => {
            return refused(
                session,
                ErrorCode::UnknownType,
                &format!("`{name}` is not an event of this server"),
            );
        }
    };
    let args = input.args.args();
    let text = match request {
        Request::Join => translate::room_of(translate::first_arg(args))
            .map(|room| translate::join(&room, auth, reference)),
        Request::Leave => translate::room_of(translate::first_arg(args))
            .map(|room| translate::leave(&room, reference)),
        Request::Signal(kind) => {
            let args = match translate::signal_args(args) {
                Ok(args) => args,
                Err(e) => return refused(session, e.code, &e.message),
            };
            let Ok(target) = PeerId::new(args.to) else {
                return refused(
                    session,
                    ErrorCode::UnknownPeer,
                    "no such peer in your rooms",
                );
            };
            let room = match ctx.index.shared_room(session.peer(), &target) {
                Ok(room) => room,
                Err(ErrorCode::NotInRoom) => {
                    return refused(session, ErrorCode::NotInRoom, "you are in no room");
                }
                Err(code) => return refused(session, code, "no such peer in your rooms"),
            };
            let data = &*args.data;
            let size =
                translate::signal_frame_len(room.as_str(), target.as_str(), kind, data, reference);
            if size > ctx.config.limits.max_frame_bytes {
                return too_large(ctx, |c, m| refused(session, c, m));
            }
            let signal = DecodedSignal {
                room,
                to: target,
                kind,
                data,
                reference: input
                    .ack
                    .as_ref()
                    .map(|_| crate::protocol::Ref::number(reference)),
            };
            return session.signal(ctx, signal, input.at);
        }
    };
    let text = match text {
        Ok(text) => text,
        Err(e) => return refused(session, e.code, &e.message),
    };
    if text.len() > ctx.config.limits.max_frame_bytes {
        return too_large(ctx, |c, m| refused(session, c, m));
    }
    session.request(&text, input.at, ctx)
}

/// The native frame limit, on what the event amounts to (the transport's own limit is
/// higher, so that an oversized event is answered rather than cutting the connection).
fn too_large(ctx: &EdgeContext, refused: impl FnOnce(ErrorCode, &str) -> Answer) -> Answer {
    let limit = ctx.config.limits.max_frame_bytes;
    refused(
        ErrorCode::TooLarge,
        &format!("the event is larger than {limit} bytes"),
    )
}

/// The answer an acknowledgement gets when the request was refused before it was made.
fn refusal(code: ErrorCode) -> Value {
    json!({"ok": false, "code": code.as_str()})
}

/// Answers an acknowledgement, where the client asked for one.
fn acknowledge(ack: Option<AckSender>, value: impl FnOnce() -> Value) {
    if let Some(ack) = ack {
        let _ = ack.send(&value());
    }
}

/// Emits native frames to the client as dialect events, and answers acknowledgements.
struct Deliverer<'a> {
    socket: &'a SocketRef,
    dialect: &'a Dialect,
    ctx: &'a EdgeContext,
    /// Acknowledgements by request number, waiting for the frame that answers them.
    acks: BTreeMap<u64, AckSender>,
}

impl Deliverer<'_> {
    fn expect_ack(&mut self, reference: u64, ack: AckSender) {
        if self.acks.len() >= MAX_PENDING_ACKS {
            self.acks.pop_first();
        }
        self.acks.insert(reference, ack);
    }

    /// Answers the acknowledgement of request `reference`, if the client asked for one.
    fn answer(&mut self, reference: u64, value: impl FnOnce() -> Value) {
        if let Some(ack) = self.acks.remove(&reference) {
            let _ = ack.send(&value());
        }
    }

    /// `first` and whatever else is queued, up to a batch.
    fn batch(&mut self, first: Outgoing, outbox: &mut OutboxReceiver) -> Result<(), CloseReason> {
        self.one(first)?;
        for _ in 1..DELIVERY_BATCH {
            match outbox.rx.try_recv() {
                Ok(out) => self.one(out)?,
                Err(_) => break,
            }
        }
        Ok(())
    }

    /// What the outbox holds now, then `replies`.
    fn after_queued(
        &mut self,
        replies: Vec<Outgoing>,
        outbox: &mut OutboxReceiver,
    ) -> Result<(), CloseReason> {
        while let Ok(out) = outbox.rx.try_recv() {
            self.one(out)?;
        }
        self.frames(replies)
    }

    fn frames(&mut self, frames: Vec<Outgoing>) -> Result<(), CloseReason> {
        frames.into_iter().try_for_each(|out| self.one(out))
    }

    fn one(&mut self, out: Outgoing) -> Result<(), CloseReason> {
        let delivery = translate::deliver(self.dialect, out.kind, &out.text);
        if let Some((event, payload)) = &delivery.event {
            self.ctx.metrics.sent(Ingress::SocketIo, out.kind);
            if let Some((at, path)) = out
                .signal
                .as_ref()
                .and_then(|m| Some((m.relayed_at?, m.path)))
            {
                self.ctx
                    .metrics
                    .relay(path)
                    .record(at.elapsed().as_secs_f64());
            }
            match self.socket.emit(event, payload) {
                Ok(()) => {}
                // Socket.IO's own queue for the client is full: it reads too slowly, like a
                // native client whose outbox fills.
                Err(SendError::Socket(socketioxide::SocketError::InternalChannelFull)) => {
                    return Err(CloseReason::SlowConsumer);
                }
                Err(SendError::Socket(socketioxide::SocketError::Closed)) => {
                    return Err(CloseReason::Abrupt);
                }
                Err(e) => tracing::warn!(error = %e, %event, "cannot emit a Socket.IO event"),
            }
        }
        if let Some((reference, value)) = delivery.ack {
            self.answer(reference, || value);
        }
        Ok(())
    }
}
