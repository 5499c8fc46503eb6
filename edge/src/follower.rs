//! Follows the registry's events and turns them into frames for local peers. It sits above
//! both the registry client (whose events it reads) and the router (through which it
//! delivers relayed signals), so that neither imports the other's consumer.
//!
//! One task per edge consumes the events in order: room events update the index; "resync"
//! (the edge fell behind, or its coordinator link was re-established) re-reads every tracked
//! room; signals relayed from other edges are handed to their local target.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use heliograph_coordinator::registry::{
    Command, LeaveReason, PeerId, Region as RegionName, RoomEventKind, RoomId, RoomView,
};

use crate::metrics::{EdgeMetrics, RelayPath};
use crate::outbox::Delivery;
use crate::registry::{Events, Registry, RegistryEvent};
use crate::rooms::{Notice, RoomIndex};
use crate::router::Router;
use crate::shutdown::{Shutdown, Stage};
use crate::signal::Envelope;

/// `events` is subscribed before the edge accepts its first socket, so nothing is missed.
pub async fn follow(
    index: Arc<RoomIndex>,
    registry: Registry,
    mut events: Events,
    router: Arc<Router>,
    metrics: Arc<EdgeMetrics>,
    region: RegionName,
    shutdown: Arc<Shutdown>,
) {
    loop {
        let received = tokio::select! {
            () = shutdown.reached(Stage::Stopped) => return,
            r = events.next() => r,
        };
        let notices = match received {
            None => return,
            Some(RegistryEvent::Room { event, view }) => {
                if let RoomEventKind::Left {
                    peer,
                    reason: LeaveReason::Expired,
                    ..
                } = &event.kind
                {
                    // The peer did not resume in time: whoever sent it signals meanwhile
                    // is told. (Every edge in the room sees this; one takes the buffer.)
                    expire_pending(&router, peer).await;
                }
                index.apply(&event, |room| {
                    view.clone()
                        .filter(|v| &v.room == room)
                        .or_else(|| registry.local_view(room))
                })
            }
            Some(RegistryEvent::Resync) => {
                metrics.registry_resyncs.increment(1);
                let rooms = index.rooms_to_resync();
                match registry.views(&rooms).await {
                    Ok(views) => {
                        remove_ghosts(&index, &registry, &views).await;
                        index.resync(|room| views.get(room).cloned().flatten())
                    }
                    Err(e) => {
                        // The link that asked for it is gone; the next one asks again.
                        tracing::warn!(error = %e, "could not re-read rooms");
                        Vec::new()
                    }
                }
            }
            Some(RegistryEvent::Signal(signal)) => {
                deliver_relayed(&router, &region, signal);
                continue;
            }
            Some(RegistryEvent::Undeliverable) => {
                metrics.relay_undeliverable.increment(1);
                continue;
            }
        };
        deliver(notices);
        metrics.rooms_tracked.set(index.tracked_rooms() as f64);
    }
}

/// Takes the pending buffer of a peer that is gone for good; its senders are told `expired`.
pub async fn expire_pending(router: &Router, peer: &PeerId) {
    match router.region().end(peer, None).await {
        Ok(pending) => pending.into_iter().for_each(|e| router.expire(e)),
        Err(e) => tracing::warn!(error = %e, "could not take an expired peer's pending signals"),
    }
}

/// Members on this edge without a session here are peers whose `Disconnect` was lost
/// (e.g. they left while the coordinator was unreachable): remove them now.
async fn remove_ghosts(
    index: &RoomIndex,
    registry: &Registry,
    views: &HashMap<RoomId, Option<RoomView>>,
) {
    let ghosts: HashSet<PeerId> = views
        .values()
        .flatten()
        .flat_map(|v| v.members.iter())
        .filter(|m| &m.edge == index.edge() && !index.has_session(&m.peer))
        .map(|m| m.peer.clone())
        .collect();
    for peer in ghosts {
        if let Err(e) = registry.execute(Command::Disconnect { peer }).await {
            tracing::warn!(error = %e, "could not remove a departed peer from the registry");
        }
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

/// A signal from another edge through the coordinator: its frame (with `from` stamped
/// there) goes to the local target if it is still in the room.
fn deliver_relayed(router: &Router, region: &RegionName, signal: Envelope) {
    // The sender's edge names its region: a signal from elsewhere came through the gateways.
    let path = if signal.from_region.is_empty() || signal.from_region == region.as_str() {
        RelayPath::Coordinator
    } else {
        RelayPath::CrossRegion
    };
    router.deliver_inbound(signal, path);
}
