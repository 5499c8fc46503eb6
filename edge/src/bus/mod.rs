//! The region's signal bus between edges: one channel per edge, which only that edge reads.
//!
//! - [`redis`]: Redis pub/sub, channel `heliograph:edge:<edge_id>`, for edges of one region
//!   that run as separate processes;
//! - [`local`]: an in-memory bus for edges in one process (a node running alone, tests).
//!
//! The bus is best effort by design: whatever it cannot carry (Redis unreachable, no
//! subscriber on the target's channel, a full publish queue) is handed to the fallback,
//! the coordinator path, so a signal is slower then, never lost.

pub mod local;
pub mod redis;

use std::sync::Arc;

use heliograph_coordinator::registry::EdgeId;

/// Prefix of every edge's channel; the edge id follows.
pub const CHANNEL_PREFIX: &str = "heliograph:edge:";

/// The channel `edge` subscribes to.
pub fn channel(edge: &EdgeId) -> String {
    format!("{CHANNEL_PREFIX}{edge}")
}

/// A signal for a peer on another edge of this region. `frame` is the client frame as the
/// sender's edge encoded it (with `from` stamped there); nobody re-encodes it on the way.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    pub to_edge: EdgeId,
    pub to_peer: String,
    pub room: String,
    pub frame: String,
    /// Sender edge's wall clock when it read the signal (µs since the Unix epoch).
    pub sent_at_us: u64,
    pub from_region: String,
    /// The sender, to be told `expired` if the signal is never delivered (empty: nobody,
    /// e.g. for an `expired` notice itself).
    pub from_peer: String,
    /// The sender's `ref` as raw JSON (a string or a number; empty: none).
    pub reference: String,
}

/// Why a message on the bus could not be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("the bus message is truncated")]
    Truncated,
    #[error("the bus message is not UTF-8")]
    NotUtf8,
    #[error("the bus message has an unknown version")]
    Version,
}

/// Wire version of [`Envelope::encode`].
const WIRE_VERSION: &str = "h2";

impl Envelope {
    /// `h2\n<to_peer>\n<room>\n<sent_at_us>\n<from_region>\n<from_peer>\n<ref>\n<frame>`:
    /// ids, regions and a `ref` (a JSON string or number) hold no raw newline, so a newline
    /// separates them; the frame is the rest as is.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.frame.len() + 96);
        for part in [
            WIRE_VERSION,
            &self.to_peer,
            &self.room,
            &self.sent_at_us.to_string(),
            &self.from_region,
            &self.from_peer,
            &self.reference,
        ] {
            out.extend_from_slice(part.as_bytes());
            out.push(b'\n');
        }
        out.extend_from_slice(self.frame.as_bytes());
        out
    }

    /// Reads a message published on `to_edge`'s channel.
    pub fn decode(to_edge: &EdgeId, bytes: &[u8]) -> Result<Self, DecodeError> {
        let text = std::str::from_utf8(bytes).map_err(|_| DecodeError::NotUtf8)?;
        let mut parts = text.splitn(8, '\n');
        let mut next = || parts.next().ok_or(DecodeError::Truncated);
        if next()? != WIRE_VERSION {
            return Err(DecodeError::Version);
        }
        let to_peer = next()?.to_owned();
        let room = next()?.to_owned();
        let sent_at_us = next()?.parse().map_err(|_| DecodeError::Truncated)?;
        let from_region = next()?.to_owned();
        let from_peer = next()?.to_owned();
        let reference = next()?.to_owned();
        let frame = next()?.to_owned();
        Ok(Self {
            to_edge: to_edge.clone(),
            to_peer,
            room,
            frame,
            sent_at_us,
            from_region,
            from_peer,
            reference,
        })
    }
}

/// Signals queued on the bus and not yet handed over, per target and per sender.
///
/// While a target has some, a newer signal for it must not take the in-process path, or it
/// would overtake them (e.g. the target resumed on this edge while they were queued). While
/// a sender has some, its session is not handed over to another edge yet, or what it sends
/// from there could overtake them.
#[derive(Debug, Default)]
pub struct InFlight {
    total: std::sync::atomic::AtomicUsize,
    targets: std::sync::Mutex<std::collections::HashMap<String, usize>>,
    senders: std::sync::Mutex<std::collections::HashMap<String, usize>>,
}

fn lock(
    m: &std::sync::Mutex<std::collections::HashMap<String, usize>>,
) -> std::sync::MutexGuard<'_, std::collections::HashMap<String, usize>> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn bump(m: &std::sync::Mutex<std::collections::HashMap<String, usize>>, key: &str, up: bool) {
    if key.is_empty() {
        return;
    }
    let mut map = lock(m);
    if up {
        *map.entry(key.to_owned()).or_insert(0) += 1;
    } else if let Some(n) = map.get_mut(key) {
        *n -= 1;
        if *n == 0 {
            map.remove(key);
        }
    }
}

impl InFlight {
    pub fn add(&self, e: &Envelope) {
        use std::sync::atomic::Ordering;
        bump(&self.targets, &e.to_peer, true);
        bump(&self.senders, &e.from_peer, true);
        self.total.fetch_add(1, Ordering::SeqCst);
    }

    pub fn done(&self, to: &str, from: &str) {
        use std::sync::atomic::Ordering;
        bump(&self.targets, to, false);
        bump(&self.senders, from, false);
        self.total.fetch_sub(1, Ordering::SeqCst);
    }

    /// Whether signals for `peer` are still queued.
    pub fn busy(&self, peer: &str) -> bool {
        use std::sync::atomic::Ordering;
        // Nothing queued at all is the common case, and costs no lock.
        self.total.load(Ordering::SeqCst) > 0 && lock(&self.targets).contains_key(peer)
    }

    /// Whether signals from `peer` are still queued.
    pub fn sending(&self, peer: &str) -> bool {
        use std::sync::atomic::Ordering;
        self.total.load(Ordering::SeqCst) > 0 && lock(&self.senders).contains_key(peer)
    }
}

/// Takes a signal the bus could not carry (to the coordinator path).
pub type Fallback = Arc<dyn Fn(Envelope) + Send + Sync>;
/// Hands a signal read from this edge's channel to its local target.
pub type Inbound = Arc<dyn Fn(Envelope) + Send + Sync>;

/// The bus this edge publishes on.
#[derive(Clone)]
pub enum Bus {
    Local(Arc<local::LocalBus>),
    Redis(Arc<redis::RedisBus>),
}

impl Bus {
    /// Signals queued for each target (always none for the in-memory bus, which hands over
    /// at once).
    pub fn busy(&self, peer: &str) -> bool {
        match self {
            Self::Local(_) => false,
            Self::Redis(r) => r.in_flight().busy(peer),
        }
    }

    /// Waits until what was published to this edge before has been read (Redis only).
    pub async fn round_trip(&self, within: std::time::Duration) -> bool {
        match self {
            Self::Local(_) => true,
            Self::Redis(r) => r.round_trip(within).await,
        }
    }

    /// Signals queued from each sender.
    pub fn sending(&self, peer: &str) -> bool {
        match self {
            Self::Local(_) => false,
            Self::Redis(r) => r.in_flight().sending(peer),
        }
    }

    /// Whether the bus can carry signals right now (Redis reachable and subscribed).
    pub fn is_up(&self) -> bool {
        match self {
            Self::Local(_) => true,
            Self::Redis(r) => r.is_up(),
        }
    }

    /// Hands a signal to the bus, which accounts for it from then on (including its own
    /// fallback); `Err` gives it back when the bus cannot take it now.
    pub fn publish(&self, envelope: Envelope) -> Result<(), Box<Envelope>> {
        match self {
            Self::Local(l) => l.publish(envelope),
            Self::Redis(r) => r.publish(envelope, false),
        }
    }

    /// Hands over a signal for a peer without a socket on this edge (Redis only: its
    /// pending buffer, or the edge it resumed on).
    pub fn deposit(&self, envelope: Envelope) -> Result<(), Box<Envelope>> {
        match self {
            Self::Local(_) => Err(Box::new(envelope)),
            Self::Redis(r) => r.publish(envelope, true),
        }
    }

    pub async fn shutdown(&self) {
        match self {
            Self::Local(l) => l.close(),
            Self::Redis(r) => r.shutdown().await,
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn an_envelope_survives_the_wire() {
        let edge = EdgeId::new("edge-b").unwrap();
        let e = Envelope {
            to_edge: edge.clone(),
            to_peer: "p1".into(),
            room: "room one".into(),
            frame: "{\"type\":\"signal\",\n\"data\":\"x\ny\"}".into(),
            sent_at_us: 1_700_000_000_000_123,
            from_region: "eu".into(),
            from_peer: "p0".into(),
            reference: "\"r1\"".into(),
        };
        assert_eq!(Envelope::decode(&edge, &e.encode()), Ok(e));
        assert_eq!(
            Envelope::decode(&edge, b"h2\np1\nroom"),
            Err(DecodeError::Truncated)
        );
        assert_eq!(
            Envelope::decode(&edge, b"h9\np\nr\n1\neu\n{}"),
            Err(DecodeError::Version)
        );
        assert_eq!(channel(&edge), "heliograph:edge:edge-b");
    }
}
