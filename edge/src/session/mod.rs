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
//! This module holds what a session *is* (its records, its claim, its sequence numbers and
//! replay window, its resume token); where it is stored is the region backend's business
//! (`region`), and the socket that serves it is a `connection`.

pub mod sequencer;
pub mod token;

use std::time::Duration;

use heliograph_coordinator::registry::{EdgeId, PeerId, RoomId};
use serde::{Deserialize, Serialize};

use crate::signal::Envelope;

pub use token::{TokenClaims, TokenKey};

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

/// One socket's claim on a session: `<edge>/<nonce>`. A resume moves the claim to the new
/// socket, so an older socket (on any edge) can no longer write the session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Owner(String);

impl Owner {
    pub fn new(edge: &EdgeId) -> Self {
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

/// A session with a socket on this edge, as the store keeps it alive.
#[derive(Debug, Clone)]
pub struct LocalSession {
    pub peer: PeerId,
    pub owner: Owner,
    pub rooms: Vec<StoredRoom>,
}
