//! The room registry as the edge sees it: the embedded single replica (the default) or a
//! remote coordinator cluster, behind the same calls, so sessions and the membership task
//! have one code path.
//!
//! - writes: [`Registry::execute`] with registry [`Command`]s;
//! - events: [`Events`], a stream of [`RegistryEvent`]s (room events in order, "resync"
//!   when events may have been missed, and signals relayed from other edges);
//! - reads: [`Registry::views`] for a resync, [`Registry::public_rooms`] for discovery;
//!
//! The follower (`crate::follower`) is the one task that consumes the events.
//! Protobuf types are converted here (`relayed`, and the coordinator's `convert` in
//! `remote`) and go no further into the edge.

mod batch;
mod delivery;
mod relayed;
mod remote;

use std::collections::HashMap;
use std::sync::Arc;

use heliograph_coordinator::registry::{
    Command, ListingPage, ListingQuery, Outcome, Region, RoomEvent, RoomId, RoomView,
};
use heliograph_coordinator::{CoordinatorError, Replica};
use tokio::sync::{broadcast, mpsc};

pub use remote::{EVENTS_BUFFER, RemoteRegistry, RemoteSettings};

use crate::signal::Envelope;

/// Something the membership task must act on, in order.
#[derive(Debug)]
pub enum RegistryEvent {
    /// A room event; `view` is the room at the event's epoch when the registry sent it along.
    Room {
        event: RoomEvent,
        view: Option<RoomView>,
    },
    /// Events may have been missed: re-read every tracked room.
    Resync,
    /// A signal from a peer on another edge, for a local peer, with the W3C trace context
    /// it came with (empty: none).
    Signal {
        envelope: Envelope,
        traceparent: String,
    },
    /// A relayed signal that could not be read.
    Undeliverable,
}

#[derive(Clone)]
pub enum Registry {
    Embedded(Replica),
    Remote(Arc<RemoteRegistry>),
}

/// Why a signal could not be handed to the coordinator.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RelayError {
    /// Too many signals for the target edge are unacknowledged (it is unreachable or slow).
    #[error("too many signals to the target edge are unacknowledged")]
    Full,
    #[error("this edge runs alone: there is no other edge to relay to")]
    Embedded,
}

impl Registry {
    pub async fn execute(&self, command: Command) -> Result<Outcome, CoordinatorError> {
        match self {
            Self::Embedded(c) => c.execute(command).await,
            Self::Remote(r) => r.execute(command).await,
        }
    }

    pub fn is_ready(&self) -> bool {
        match self {
            Self::Embedded(c) => c.is_ready(),
            Self::Remote(r) => r.is_ready(),
        }
    }

    /// A room as the registry has it, when it can be read without a round trip.
    pub fn local_view(&self, room: &RoomId) -> Option<RoomView> {
        match self {
            Self::Embedded(c) => c.room(room),
            Self::Remote(_) => None,
        }
    }

    /// The current views of `rooms` (`None`: empty). Fails as a whole, so that a resync
    /// never mistakes an unreadable room for an empty one.
    pub async fn views(
        &self,
        rooms: &[RoomId],
    ) -> Result<HashMap<RoomId, Option<RoomView>>, CoordinatorError> {
        match self {
            Self::Embedded(c) => Ok(rooms.iter().map(|r| (r.clone(), c.room(r))).collect()),
            Self::Remote(remote) => remote.views(rooms).await,
        }
    }

    /// A page of public rooms (discovery) from every region's group, and the regions that
    /// did not answer in time. The embedded replica is the only group there is.
    pub async fn public_rooms(
        &self,
        query: &ListingQuery,
        within: std::time::Duration,
    ) -> Result<(ListingPage, Vec<Region>), CoordinatorError> {
        match self {
            Self::Embedded(c) => Ok((c.public_rooms(query), Vec::new())),
            Self::Remote(r) => r.public_rooms(query, within).await,
        }
    }

    /// Sends a signal towards a peer on another edge, with the trace context of the span
    /// that sends it (empty: none) and the target edge's region when it is another one
    /// (empty: this edge's).
    pub fn relay(
        &self,
        signal: Envelope,
        traceparent: String,
        to_region: &str,
    ) -> Result<(), RelayError> {
        match self {
            Self::Embedded(_) => Err(RelayError::Embedded),
            Self::Remote(r) => r.relay(signal, traceparent, to_region),
        }
    }

    pub async fn shutdown(&self) {
        match self {
            Self::Embedded(c) => c.shutdown().await,
            Self::Remote(r) => r.shutdown().await,
        }
    }
}

/// The registry's events for this edge.
pub enum Events {
    Embedded(broadcast::Receiver<RoomEvent>),
    Remote(mpsc::Receiver<RegistryEvent>),
}

impl Events {
    /// The next event; `None` when the registry is gone.
    pub async fn next(&mut self) -> Option<RegistryEvent> {
        match self {
            Self::Embedded(rx) => match rx.recv().await {
                Ok(event) => Some(RegistryEvent::Room { event, view: None }),
                Err(broadcast::error::RecvError::Lagged(missed)) => {
                    tracing::warn!(missed, "fell behind the registry's events");
                    Some(RegistryEvent::Resync)
                }
                Err(broadcast::error::RecvError::Closed) => None,
            },
            Self::Remote(rx) => rx.recv().await,
        }
    }
}
