//! The bounded queue of frames waiting to be written to one client.
//!
//! Full means the client reads slower than it is sent to: it is cut off (kicked) rather than
//! buffered without bound. Senders never wait on a slow client. A kick carries its reason
//! ([`KickReason`]): too slow, or replaced by a resume on another socket.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::task::Poll;
use std::time::Instant;

use futures_util::task::AtomicWaker;

use heliograph_coordinator::registry::{EdgeId, Region, RoomId};

use crate::metrics::RelayPath;
use crate::protocol::Ref;
use crate::signal::Envelope;
use tokio_util::sync::CancellationToken;

mod queue;

pub use queue::Receiver;
use queue::{Sender, TrySendError};

/// One encoded frame for a client.
#[derive(Debug)]
pub struct Outgoing {
    pub text: String,
    /// Message type, for the sent-messages metric.
    pub kind: &'static str,
    /// For a signal: what the edge must know besides its frame. Boxed, so that every slot of
    /// every session's outbox stays small (the queue allocates its slots in blocks).
    pub signal: Option<Box<SignalMeta>>,
}

/// What a queued signal carries besides its frame.
#[derive(Debug)]
pub struct SignalMeta {
    /// When it was read from its sender, for the relay-latency histogram.
    pub relayed_at: Option<Instant>,
    /// How it reached this edge, for the histogram's `path` label.
    pub path: RelayPath,
    /// Where it came from, so that if it is never written (the socket ended first) it goes
    /// to the pending buffer and its sender can be told `expired`.
    pub origin: Origin,
}

/// Where a queued signal came from (see [`Outgoing::origin`]).
#[derive(Debug)]
pub enum Origin {
    /// From a peer of this edge: its parts are moved here, not copied, on the hot path. The
    /// sender is not kept: the frame names it (`from` of a `signal` or an `invite`), and is
    /// read for it only if the signal is never written; a copy of the sender's id for every
    /// signal would cost two atomic operations on its count, on the relay's hot path.
    Local {
        room: RoomId,
        reference: Option<Ref>,
    },
    /// From another edge; the frame is in `Outgoing::text`.
    Relayed(Envelope),
}

impl Outgoing {
    pub fn new(kind: &'static str, text: String) -> Self {
        Self {
            text,
            kind,
            signal: None,
        }
    }

    /// A signal (or an `expired` notice) with what it came with.
    pub fn signal(kind: &'static str, text: String, meta: SignalMeta) -> Self {
        Self {
            text,
            kind,
            signal: Some(Box::new(meta)),
        }
    }

    /// The signal, for `to` on edge `edge`, as an envelope for a pending buffer (its frame is
    /// `text`); `Err` gives back anything but a signal.
    pub fn into_envelope(
        self,
        to: &str,
        edge: &EdgeId,
        region: &Region,
    ) -> Result<Envelope, Outgoing> {
        let Some(meta) = self.signal else {
            return Err(self);
        };
        Ok(match meta.origin {
            Origin::Relayed(e) => Envelope {
                frame: self.text,
                ..e
            },
            Origin::Local { room, reference } => Envelope {
                from_peer: sender_of(&self.text).unwrap_or_default(),
                to_edge: edge.clone(),
                to_peer: to.to_string(),
                room: room.into(),
                frame: self.text,
                sent_at_us: crate::clock::now_us(),
                from_region: region.to_string(),
                reference: reference
                    .map(|r| r.raw().get().to_owned())
                    .unwrap_or_default(),
            },
        })
    }
}

/// The sender a frame names in its `from` field (a `signal` or an `invite` the edge encoded).
fn sender_of(frame: &str) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Named<'a> {
        #[serde(borrow)]
        from: std::borrow::Cow<'a, str>,
    }
    serde_json::from_str::<Named<'_>>(frame)
        .ok()
        .map(|n| n.from.into_owned())
}

/// The sending side of a client's outbox. Cheap to clone: one reference count (routing a
/// signal clones it; a sender and two tokens would be three, two of them behind a lock).
#[derive(Debug, Clone)]
pub struct SessionHandle {
    inner: std::sync::Arc<HandleInner>,
}

#[derive(Debug)]
struct HandleInner {
    tx: Sender<Outgoing>,
    kicked: Arc<Latch>,
    drain: Arc<Latch>,
    finished: CancellationToken,
}

/// The receiving side, owned by the session task.
pub struct OutboxReceiver {
    pub rx: Receiver<Outgoing>,
    /// Raised, with a [`KickReason`], when the session must be cut off.
    pub kicked: Arc<Latch>,
    /// Raised when the edge starts draining.
    pub drain: Arc<Latch>,
    /// Cancelled by the session when it has ended and stored what a resume needs.
    pub finished: CancellationToken,
}

pub fn outbox(capacity: usize) -> (SessionHandle, OutboxReceiver) {
    let (tx, rx) = queue::queue(capacity);
    let kicked = Arc::new(Latch::default());
    let drain = Arc::new(Latch::default());
    let finished = CancellationToken::new();
    (
        SessionHandle {
            inner: std::sync::Arc::new(HandleInner {
                tx,
                kicked: kicked.clone(),
                drain: drain.clone(),
                finished: finished.clone(),
            }),
        },
        OutboxReceiver {
            rx,
            kicked,
            drain,
            finished,
        },
    )
}

/// Why a session is cut off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum KickReason {
    /// Its outbox was full or a write stalled: the client reads too slowly.
    SlowConsumer = 1,
    /// Its peer resumed on another socket.
    Replaced = 2,
}

impl KickReason {
    fn from_latch(value: u8) -> Self {
        if value == Self::Replaced as u8 {
            Self::Replaced
        } else {
            Self::SlowConsumer
        }
    }
}

/// A latch raised once, by anyone, with a small non-zero value (the first raise wins), and
/// awaited by its session. Checking it is one atomic load: a session looks at it every time
/// it waits, where a cancellation token would take a lock on each look.
#[derive(Debug, Default)]
pub struct Latch {
    value: AtomicU8,
    waker: AtomicWaker,
}

/// The value a latch holds when raised without one.
const RAISED: u8 = 1;

impl Latch {
    fn raise_with(&self, value: u8) {
        let _ = self
            .value
            .compare_exchange(0, value, Ordering::AcqRel, Ordering::Acquire);
        self.waker.wake();
    }

    pub fn raise(&self) {
        self.raise_with(RAISED);
    }

    pub fn is_raised(&self) -> bool {
        self.value.load(Ordering::Acquire) != 0
    }

    /// Resolves once the latch is raised. Waited on by one task at a time (its session).
    pub fn raised(&self) -> impl Future<Output = ()> + '_ {
        std::future::poll_fn(move |cx| {
            if self.is_raised() {
                return Poll::Ready(());
            }
            self.waker.register(cx.waker());
            // Raised between the look and the registration: its wake-up may have been missed.
            if self.is_raised() {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        })
    }

    /// Why the session was kicked, once it was.
    pub fn kick_reason(&self) -> KickReason {
        KickReason::from_latch(self.value.load(Ordering::Acquire))
    }
}

/// What became of a frame handed to [`SessionHandle::send`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    Queued,
    /// The outbox was full: the client has been kicked.
    Kicked,
    /// The session has ended.
    Closed,
}

impl SessionHandle {
    /// Whether both handles lead to the same session.
    pub fn same(&self, other: &SessionHandle) -> bool {
        self.inner.tx.same_channel(&other.inner.tx)
    }

    /// Cuts the session off.
    pub fn kick(&self, reason: KickReason) {
        self.inner.kicked.raise_with(reason as u8);
    }

    /// Tells the session the edge is draining.
    pub fn drain(&self) {
        self.inner.drain.raise();
    }

    /// Resolves when the session has ended and stored its state.
    pub async fn finished(&self) {
        self.inner.finished.cancelled().await;
    }

    pub fn send(&self, out: Outgoing) -> Delivery {
        match self.try_send(out) {
            Ok(()) => Delivery::Queued,
            Err((d, _)) => d,
        }
    }

    /// Like [`send`](Self::send), but gives the frame back when it was not queued, so that
    /// it can go to the peer's pending buffer instead.
    pub fn try_send(&self, out: Outgoing) -> Result<(), (Delivery, Outgoing)> {
        match self.inner.tx.try_send(out) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(out)) => {
                self.kick(KickReason::SlowConsumer);
                Err((Delivery::Kicked, out))
            }
            Err(TrySendError::Closed(out)) => Err((Delivery::Closed, out)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::RelayPath;
    use crate::protocol::{SignalKind, encode_signal};
    use heliograph_coordinator::registry::PeerId;

    #[test]
    fn a_local_signal_never_written_names_its_sender_read_from_its_frame() {
        let room = RoomId::new("call".to_owned()).expect("a room id");
        let from = PeerId::new(r#"od"d\ly"#.to_owned()).expect("a peer id");
        let data: &serde_json::value::RawValue =
            serde_json::from_str(r#"{"from":"not this one"}"#).expect("raw data");
        let text = encode_signal(&room, &from, SignalKind::Offer, data.get());
        let out = Outgoing::signal(
            "signal",
            text,
            SignalMeta {
                relayed_at: None,
                path: RelayPath::Local,
                origin: Origin::Local {
                    room: room.clone(),
                    reference: None,
                },
            },
        );
        let edge = EdgeId::new("edge-a".to_owned()).expect("an edge id");
        let region = Region::new("eu".to_owned()).expect("a region");
        let envelope = out
            .into_envelope("target", &edge, &region)
            .expect("a signal");
        assert_eq!(envelope.from_peer, from.as_str());
        assert_eq!(envelope.room, "call");
        assert_eq!(envelope.to_peer, "target");
        assert_eq!(
            sender_of(r#"{"type":"invite","from":"a","room":"r"}"#).as_deref(),
            Some("a")
        );
    }
}
