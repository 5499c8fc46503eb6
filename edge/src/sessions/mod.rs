//! Resumable sessions: what a peer needs to come back on any edge of its region.
//!
//! Per peer the store keeps, for `--detach-grace-ms` plus a margin after its last refresh:
//! - the **owner**: the edge whose socket serves the peer now (empty while detached). A
//!   resume moves it, atomically with taking the pending buffer, so a signal is either in
//!   the buffer the resume takes or is sent to the new owner; never neither;
//! - the **rooms** (with their receive-only flag) and the last **sequence number** sent;
//! - the **replay window**: the frames, as sent with their `seq`, that the client may not
//!   have read when its socket ended (the last `--replay-window` written, plus whatever was
//!   still queued), saved when the socket ends;
//! - the **pending buffer**: signals that arrived while the peer had no socket, bounded by
//!   `--pending-signals`; each keeps its sender and `ref`, so that a sender whose signal is
//!   never delivered is told `expired`.
//!
//! Two stores: [`memory::MemoryStore`] (no `--redis`: sessions resume on this process only)
//! and [`redis::RedisStore`] (the region's Redis, shared by all of its edges).

pub mod memory;
pub mod redis;
pub mod resume;
pub mod sequencer;
pub mod token;

use std::sync::Arc;
use std::time::Duration;

use heliograph_coordinator::registry::{PeerId, RoomId};
use serde::{Deserialize, Serialize};

use crate::bus::Envelope;

pub use token::{TokenClaims, TokenError, TokenKey};

/// The session store failed (unreachable, or it answered something unexpected).
#[derive(Debug, thiserror::Error)]
#[error("session store: {0}")]
pub struct StoreError(pub String);

/// A room of a stored session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredRoom {
    pub room: RoomId,
    /// Joined with a token that does not allow sending signals.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub receive_only: bool,
}

/// What a resume takes over from the store.
#[derive(Debug, Default)]
pub struct Restored {
    pub rooms: Vec<StoredRoom>,
    /// The last `seq` the previous socket wrote (as far as the store knows: an edge killed
    /// outright had no chance to save it).
    pub seq: u64,
    /// Frames as sent, with their `seq`, oldest first.
    pub window: Vec<String>,
    /// Signals that arrived while the peer was detached, oldest first.
    pub pending: Vec<Envelope>,
}

/// Why a signal for a peer without a socket here could not be kept for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Deposit {
    /// The pending buffer is full: the sender must be told `expired`.
    Full,
    /// The peer has no session (it ended for good): the sender must be told `expired`.
    NoSession,
}

/// One socket's claim on a session: `<edge>/<nonce>`. A resume moves the claim to the new
/// socket, so an older socket (on any edge) can no longer write the session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Owner(String);

impl Owner {
    pub fn new(edge: &heliograph_coordinator::registry::EdgeId) -> Self {
        Self(format!("{edge}/{:016x}", rand::random::<u64>()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Store limits, from the configuration.
#[derive(Debug, Clone, Copy)]
pub struct StoreLimits {
    /// How long a session outlives its last refresh.
    pub ttl: Duration,
    /// Signals a pending buffer holds.
    pub pending: usize,
}

impl StoreLimits {
    pub fn ttl_ms(&self) -> u64 {
        u64::try_from(self.ttl.as_millis()).unwrap_or(u64::MAX)
    }
}

/// The session store of this edge.
#[derive(Clone)]
pub enum Sessions {
    Memory(Arc<memory::MemoryStore>),
    Redis(Arc<redis::RedisStore>),
}

impl Sessions {
    /// Creates the session of a new socket, owned by this edge.
    pub async fn open(&self, peer: &PeerId, owner: &Owner) -> Result<(), StoreError> {
        match self {
            Self::Memory(m) => {
                m.open(peer, owner);
                Ok(())
            }
            Self::Redis(r) => r.open(peer, owner).await,
        }
    }

    /// Records the peer's rooms (after a join or a leave), if this edge still owns it.
    pub async fn save_rooms(
        &self,
        peer: &PeerId,
        owner: &Owner,
        rooms: &[StoredRoom],
    ) -> Result<(), StoreError> {
        match self {
            Self::Memory(m) => {
                m.save_rooms(peer, owner, rooms);
                Ok(())
            }
            Self::Redis(r) => r.save_rooms(peer, owner, rooms).await,
        }
    }

    /// The socket ended but the peer may resume: saves what it may not have read (the
    /// replay window; the signals never written go in front of its pending buffer, so that
    /// their senders are told if it never comes back), and from now on signals for it go to
    /// its pending buffer. Returns false when another socket owns the session already.
    pub async fn detach(
        &self,
        peer: &PeerId,
        owner: &Owner,
        seq: u64,
        window: Vec<String>,
        unsent: Vec<Envelope>,
    ) -> Result<bool, StoreError> {
        match self {
            Self::Memory(m) => Ok(m.detach(peer, owner, seq, window, unsent)),
            Self::Redis(r) => r.detach(peer, owner, seq, window, unsent).await,
        }
    }

    /// Makes this edge the session's owner and takes what the peer missed. `None`: no such
    /// session (it ended, or expired).
    pub async fn resume(
        &self,
        peer: &PeerId,
        owner: &Owner,
    ) -> Result<Option<Restored>, StoreError> {
        match self {
            Self::Memory(m) => Ok(m.resume(peer, owner)),
            Self::Redis(r) => r.resume(peer, owner).await,
        }
    }

    /// Ends the session for good; returns the signals still pending for it, whose senders
    /// must be told `expired`. With an `owner`, a session that another socket owns now is
    /// left alone (and nothing is returned).
    pub async fn end(
        &self,
        peer: &PeerId,
        owner: Option<&Owner>,
    ) -> Result<Vec<Envelope>, StoreError> {
        match self {
            Self::Memory(m) => Ok(m.end(peer, owner)),
            Self::Redis(r) => r.end(peer, owner).await,
        }
    }
}
