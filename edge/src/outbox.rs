//! The bounded queue of frames waiting to be written to one client.
//!
//! Full means the client reads slower than it is sent to: it is cut off (kicked) rather than
//! buffered without bound. Senders never wait on a slow client.

use std::time::Instant;

use tokio::sync::mpsc;

use crate::metrics::RelayPath;
use tokio_util::sync::CancellationToken;

/// One encoded frame for a client.
#[derive(Debug)]
pub struct Outgoing {
    pub text: String,
    /// Message type, for the sent-messages metric.
    pub kind: &'static str,
    /// When a relayed signal was read from its sender, for the relay-latency histogram.
    pub relayed_at: Option<Instant>,
    /// How a relayed signal reached this edge, for the histogram's `path` label.
    pub path: RelayPath,
}

impl Outgoing {
    pub fn new(kind: &'static str, text: String) -> Self {
        Self {
            text,
            kind,
            relayed_at: None,
            path: RelayPath::Local,
        }
    }
}

/// The sending side of a client's outbox. Cheap to clone.
#[derive(Debug, Clone)]
pub struct SessionHandle {
    tx: mpsc::Sender<Outgoing>,
    kicked: CancellationToken,
}

/// The receiving side, owned by the session task.
pub struct OutboxReceiver {
    pub rx: mpsc::Receiver<Outgoing>,
    /// Cancelled when the client was too slow and must be disconnected.
    pub kicked: CancellationToken,
}

pub fn outbox(capacity: usize) -> (SessionHandle, OutboxReceiver) {
    let (tx, rx) = mpsc::channel(capacity);
    let kicked = CancellationToken::new();
    (
        SessionHandle {
            tx,
            kicked: kicked.clone(),
        },
        OutboxReceiver { rx, kicked },
    )
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
        self.tx.same_channel(&other.tx)
    }

    /// Cuts the session off (its peer resumed on another socket).
    pub fn kick(&self) {
        self.kicked.cancel();
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
        match self.tx.try_send(out) {
            Ok(()) => Ok(()),
            Err(mpsc::error::TrySendError::Full(out)) => {
                self.kicked.cancel();
                Err((Delivery::Kicked, out))
            }
            Err(mpsc::error::TrySendError::Closed(out)) => Err((Delivery::Closed, out)),
        }
    }
}
