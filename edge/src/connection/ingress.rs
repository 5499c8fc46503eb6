//! A session served through another ingress than the native WebSocket (the Socket.IO
//! endpoint): it is fed native request frames and hands back native frames, so that joins,
//! leaves and signals of such a peer go through the very code a native session runs (limits,
//! join tokens, registry commits, the room index, routing), and it is a member like any other.
//!
//! What differs is only what the ingress does with the frames, and that such a session cannot
//! be resumed: when its client goes, the session ends for good. Signals, the hot path, may
//! also come already decoded ([`IngressSession::signal`]), checked as a native frame would be.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;

use heliograph_coordinator::registry::{PeerId, RoomId};

use super::ending::{self, Identity};
use super::requests;
use super::step::{Caller, Handled, SessionState, error_out};
use crate::context::EdgeContext;
use crate::metrics::Ingress;
use crate::outbox::{OutboxReceiver, Outgoing, SessionHandle, outbox};
use crate::protocol::{DecodeLimits, ErrorCode, ProtocolError, Ref, SignalKind};
use crate::session::Owner;

/// A request that waits for the registry; it resolves to the frames that answer it.
pub(crate) type Pending = Pin<Box<dyn Future<Output = Vec<Outgoing>> + Send>>;

/// What a request produced.
pub(crate) enum Answer {
    /// Nothing to send now (a signal on its way, or a `joined` that comes through the outbox).
    Done,
    /// Frames to send after whatever the outbox holds already.
    Reply(Vec<Outgoing>),
    Later(Pending),
}

/// A signal as `protocol::decode` would have decoded it from a native frame.
pub(crate) struct DecodedSignal<'a> {
    pub(crate) room: RoomId,
    pub(crate) to: PeerId,
    pub(crate) kind: SignalKind,
    /// Valid JSON, relayable verbatim (`protocol::check_relayable`).
    pub(crate) data: &'a str,
    pub(crate) reference: Option<Ref>,
}

/// One peer's session, without a socket of its own.
pub(crate) struct IngressSession {
    me: Identity,
    handle: SessionHandle,
    state: SessionState,
    limits: DecodeLimits,
    ingress: Ingress,
}

impl IngressSession {
    /// Enters `peer` in the room index with a fresh outbox, whose receiving side the ingress
    /// drains. `peer` must be unguessable: other peers address it by this id.
    pub(crate) fn open(
        ctx: &EdgeContext,
        peer: PeerId,
        ingress: Ingress,
    ) -> (IngressSession, OutboxReceiver) {
        let me = Identity {
            peer,
            owner: Owner::new(&ctx.edge_id),
        };
        let (handle, outbox) = outbox(ctx.config.limits.outbox_messages);
        ctx.index
            .add_session(me.peer.clone(), handle.clone(), me.owner.clone());
        if ctx.shutdown.is_draining() {
            handle.drain();
        }
        ctx.metrics.opened(ingress);
        let session = IngressSession {
            me,
            handle,
            state: SessionState::default(),
            limits: DecodeLimits {
                max_meta_bytes: ctx.config.limits.max_meta_bytes,
                max_contact_hashes: ctx
                    .config
                    .limits
                    .max_contact_publish
                    .max(ctx.config.limits.max_contact_watch),
            },
            ingress,
        };
        (session, outbox)
    }

    pub(crate) fn peer(&self) -> &PeerId {
        &self.me.peer
    }

    /// Serves one native request frame (`join`, `leave`, `signal` or `ping`), read at
    /// `received_at`.
    pub(crate) fn request(
        &mut self,
        text: &str,
        received_at: Instant,
        ctx: &Arc<EdgeContext>,
    ) -> Answer {
        let caller = caller(&self.me, &self.handle, self.ingress, received_at);
        match requests::handle_text(text, &caller, &self.limits, ctx, &mut self.state) {
            Handled::Done => Answer::Done,
            Handled::Reply(frames) => Answer::Reply(frames),
            Handled::Later(reply) => Answer::Later(Box::pin(async move { reply.await.frames })),
            // Never built by an ingress (it sends no `resume`); refused like any bad request.
            Handled::Resume(_) => Answer::Reply(vec![self.error(
                ctx,
                ErrorCode::UnknownType,
                "sessions of this endpoint cannot be resumed",
                None,
            )]),
        }
    }

    /// Serves a signal the ingress has already decoded and checked as `protocol::decode`
    /// checks a native one (`to` a peer id, `data` valid JSON that can be relayed verbatim,
    /// the frame within the size limit): the hot path, with no native frame written and
    /// read again.
    pub(crate) fn signal(
        &mut self,
        ctx: &Arc<EdgeContext>,
        signal: DecodedSignal<'_>,
        received_at: Instant,
    ) -> Answer {
        let caller = caller(&self.me, &self.handle, self.ingress, received_at);
        ctx.metrics.received(self.ingress, "signal");
        let handled = requests::signal_checked(
            ctx,
            &caller,
            &self.state,
            signal.room.as_str(),
            signal.to.as_str(),
            signal.kind,
            signal.data,
            signal.reference,
        );
        match handled {
            Handled::Done => Answer::Done,
            Handled::Reply(frames) => Answer::Reply(frames),
            // A signal is never answered later; kept total all the same.
            Handled::Later(reply) | Handled::Resume(reply) => {
                Answer::Later(Box::pin(async move { reply.await.frames }))
            }
        }
    }

    /// An `error` frame the ingress itself found (counted like the session's own).
    pub(crate) fn error(
        &self,
        ctx: &EdgeContext,
        code: ErrorCode,
        message: &str,
        reference: Option<Ref>,
    ) -> Outgoing {
        error_out(
            &ProtocolError {
                code,
                message: message.to_owned(),
                reference,
            },
            ctx,
        )
    }

    /// The client is gone: the peer leaves its rooms (they see `peer-left`), and the senders
    /// of signals still waiting for it are told `expired`.
    pub(crate) async fn end(self, ctx: &EdgeContext, outbox: &mut OutboxReceiver) {
        ending::end_for_good(ctx, &self.me, &self.handle).await;
        outbox.rx.close();
        outbox.finished.cancel();
    }
}

/// A session as the author of a request read at `received_at`. A free function over the
/// session's parts, so that the session's request state stays free to borrow mutably.
fn caller<'a>(
    me: &'a Identity,
    handle: &'a SessionHandle,
    ingress: Ingress,
    received_at: Instant,
) -> Caller<'a> {
    Caller {
        peer: &me.peer,
        owner: &me.owner,
        handle,
        received_at,
        ingress,
    }
}
