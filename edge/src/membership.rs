//! Follows the registry's room events and turns them into frames for local peers.
//!
//! One task per edge consumes the event stream in order. If it falls too far behind, it
//! re-reads the rooms it tracks instead of guessing what it missed.

use std::sync::Arc;

use heliograph_coordinator::EmbeddedCoordinator;
use heliograph_coordinator::registry::RoomEvent;
use tokio::sync::broadcast;
use tokio::sync::broadcast::error::RecvError;
use tokio_util::sync::CancellationToken;

use crate::metrics::EdgeMetrics;
use crate::outbox::Delivery;
use crate::rooms::{Notice, RoomIndex};

/// `events` is subscribed before the edge accepts its first socket, so nothing is missed.
pub async fn run(
    index: Arc<RoomIndex>,
    registry: EmbeddedCoordinator,
    mut events: broadcast::Receiver<RoomEvent>,
    metrics: Arc<EdgeMetrics>,
    shutdown: CancellationToken,
) {
    loop {
        let received = tokio::select! {
            () = shutdown.cancelled() => return,
            r = events.recv() => r,
        };
        let notices = match received {
            Ok(event) => index.apply(&event, |room| registry.room(room)),
            Err(RecvError::Lagged(missed)) => {
                tracing::warn!(
                    missed,
                    "fell behind the registry's events; re-reading rooms"
                );
                metrics.registry_resyncs.increment(1);
                index.resync(|room| registry.room(room))
            }
            Err(RecvError::Closed) => return,
        };
        deliver(notices);
        metrics.rooms_tracked.set(index.tracked_rooms() as f64);
    }
}

/// Hands notices to their sessions; a full outbox kicks that session, not the others.
pub fn deliver(notices: Vec<Notice>) {
    for (handle, out) in notices {
        if handle.send(out) == Delivery::Kicked {
            tracing::debug!("outbox full while delivering a room event");
        }
    }
}
