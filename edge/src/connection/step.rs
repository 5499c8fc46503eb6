//! One request of a connection: who asks ([`Caller`]), what its handling produced
//! ([`Handled`], and [`Done`] for a request that ran in the background), and what a session
//! remembers between requests ([`SessionState`]).

use std::collections::HashSet;
use std::future::Future;
use std::pin::Pin;
use std::time::Instant;

use heliograph_coordinator::registry::{PeerId, RoomId};

use crate::context::EdgeContext;
use crate::limits::RateLimiter;
use crate::metrics::Ingress;
use crate::outbox::{Outgoing, SessionHandle};
use crate::protocol::{self, ProtocolError, Ref, ServerMessage};
use crate::session::Owner;
use crate::signal::Envelope;

/// What `handle_text` needs to know about the socket it serves.
#[derive(Clone, Copy)]
pub(super) struct Caller<'a> {
    pub(super) peer: &'a PeerId,
    pub(super) owner: &'a Owner,
    pub(super) handle: &'a SessionHandle,
    pub(super) received_at: Instant,
    /// Which endpoint the request came through, for the message metrics.
    pub(super) ingress: Ingress,
}

/// What a session remembers about its own requests.
#[derive(Default)]
pub(super) struct SessionState {
    /// Rooms joined with a receive-only token: signals from this peer there are refused.
    pub(super) receive_only: HashSet<RoomId>,
    /// The highest `ack` the client sent since the replay window was last trimmed.
    pub(super) acked: Option<u64>,
    /// This connection's `list-rooms` budget (`--list-rooms-per-minute`), from its first one.
    pub(super) list_rooms: Option<RateLimiter>,
    /// Rate limits of `contacts` and `invite`.
    pub(super) contacts: ContactLimits,
}

/// Per-connection rate limiters of the contact requests, made on first use.
#[derive(Default)]
pub(super) struct ContactLimits {
    pub(super) updates: Option<RateLimiter>,
    pub(super) invites: Option<RateLimiter>,
}

/// A request running in the background (a registry call); the socket keeps writing and
/// answering keepalive meanwhile.
pub(super) type Reply = Pin<Box<dyn Future<Output = Done> + Send>>;

pub(super) enum Handled {
    Done,
    Reply(Vec<Outgoing>),
    Later(Reply),
    /// A resume: nothing else is written to the socket until it finishes.
    Resume(Reply),
}

/// What a request that ran in the background produced.
pub(super) struct Done {
    pub(super) frames: Vec<Outgoing>,
    /// A resume succeeded: this socket continues that session.
    pub(super) switch: Option<Box<Switch>>,
}

impl Done {
    pub(super) fn frames(frames: Vec<Outgoing>) -> Self {
        Self {
            frames,
            switch: None,
        }
    }
}

/// A resume that succeeded: what the socket continues with.
pub(super) struct Switch {
    pub(super) peer: PeerId,
    pub(super) owner: Owner,
    /// The last `seq` of the session before this socket.
    pub(super) last_seq: u64,
    /// The replay window to keep (frames already numbered).
    pub(super) window: Vec<String>,
    /// Frames the client missed, with their `seq`, to write first.
    pub(super) replay: Vec<String>,
    /// Signals that waited for the peer, to number and write next.
    pub(super) pending: Vec<Envelope>,
    pub(super) receive_only: HashSet<RoomId>,
    pub(super) reference: Option<Ref>,
}

impl Switch {
    /// The pending signals and the `resumed` frame, to be numbered as they are written.
    pub(super) fn into_frames(self, token: String) -> Vec<Outgoing> {
        let replayed = self.replay.len() + self.pending.len();
        let mut frames: Vec<Outgoing> = self
            .pending
            .into_iter()
            .map(|e| {
                let kind = if e.room.is_empty() {
                    "expired"
                } else {
                    "signal"
                };
                Outgoing::new(kind, e.frame)
            })
            .collect();
        frames.push(Outgoing::new(
            "resumed",
            protocol::encode(&ServerMessage::Resumed {
                peer_id: self.peer.as_str(),
                replayed,
                resume_token: &token,
                reference: protocol::ref_raw(self.reference.as_ref()),
            }),
        ));
        frames
    }
}

/// An `error` frame, counted.
pub(super) fn error_out(err: &ProtocolError, ctx: &EdgeContext) -> Outgoing {
    ctx.metrics.error(err.code);
    Outgoing::new("error", protocol::encode_error(err))
}
