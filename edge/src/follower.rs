//! Follows the registry's events and turns them into frames for local peers. It sits above
//! both the registry client (whose events it reads) and the router (through which it
//! delivers relayed signals), so that neither imports the other's consumer.
//!
//! One task per edge consumes the events in order: room events update the index; "resync"
//! (the edge fell behind, or its coordinator link was re-established) re-reads every tracked
//! room; signals relayed from other edges are handed to their local target.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use heliograph_coordinator::registry::{
    Command, LeaveReason, Outcome, PeerId, Region as RegionName, RoomEventKind, RoomId, RoomView,
};

use heliograph_coordinator::telemetry;

use crate::metrics::{EdgeMetrics, RelayPath};

use crate::registry::{Events, Registry, RegistryEvent};
use crate::rooms::RoomIndex;
use crate::router::Router;
use crate::shutdown::{Shutdown, Stage};
use crate::signal::Envelope;

/// How long one attempt to take a peer out of a room may take.
const TAKE_BACK_DEADLINE: Duration = Duration::from_secs(2);
/// How long a take-back keeps trying through registry failures (a quorum lost for a while,
/// several leader elections) before it is left to the next resync. Refusals (a request in
/// doubt that does not hold the membership) are answers, not failures: they cost no wait.
const TAKE_BACK_FOR: Duration = Duration::from_secs(120);
const TAKE_BACK_BACKOFF_MIN: Duration = Duration::from_millis(50);
const TAKE_BACK_BACKOFF_MAX: Duration = Duration::from_secs(1);

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
    // One wait for the whole loop: the follower runs once per registry event.
    let stopped = shutdown.reached(Stage::Stopped);
    tokio::pin!(stopped);
    loop {
        let received = tokio::select! {
            () = &mut stopped => return,
            r = events.next() => r,
        };
        match received {
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
                });
                if let RoomEventKind::Rehomed(home) = &event.kind {
                    // Read it from its new home (through this edge's replica).
                    tracing::info!(room = %event.room, %home, "a room moved to another region");
                    match registry.views(std::slice::from_ref(&event.room)).await {
                        Ok(mut views) => {
                            let fresh = views.remove(&event.room).flatten();
                            index.resync_one(event.room.clone(), fresh);
                        }
                        Err(e) => tracing::warn!(error = %e, "could not re-read a moved room"),
                    }
                }
                if let RoomEventKind::Joined(member) = &event.kind
                    && &member.edge == index.edge()
                    && let Some(attempts) = index.take_back_due(&member.peer, &event.room)
                {
                    // A join this edge answered `unavailable` (its outcome was unknown)
                    // committed after all: the client is not in the room, so the registry
                    // must not keep it there.
                    tokio::spawn(take_back(
                        Arc::clone(&index),
                        registry.clone(),
                        event.room.clone(),
                        member.peer.clone(),
                        attempts,
                    ));
                }
            }
            Some(RegistryEvent::Resync) => {
                metrics.registry_resyncs.increment(1);
                let rooms = index.rooms_to_resync();
                // Rare (a new link, or events missed): worth a line when reading a fault.
                tracing::info!(rooms = rooms.len(), "re-reading the tracked rooms");
                match registry.views(&rooms).await {
                    Ok(views) => {
                        remove_ghosts(&index, &registry, &views);
                        index.resync(|room| views.get(room).cloned().flatten());
                    }
                    Err(e) => {
                        // The link that asked for it is gone; the next one asks again.
                        tracing::warn!(error = %e, "could not re-read rooms");
                    }
                }
            }
            Some(RegistryEvent::Signal {
                envelope,
                traceparent,
            }) => {
                deliver_relayed(&router, &region, envelope, &traceparent);
                continue;
            }
            Some(RegistryEvent::Undeliverable) => {
                metrics.relay_undeliverable.increment(1);
                continue;
            }
        }
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
/// (e.g. they left while the coordinator was unreachable): remove them now. Members whose
/// client was answered `unavailable` for a join that committed after all leave the room. The commands run in the background: the
/// follower never waits on a commit (the registry may have lost its quorum), since room
/// events and relayed signals come through it.
fn remove_ghosts(
    index: &Arc<RoomIndex>,
    registry: &Registry,
    views: &HashMap<RoomId, Option<RoomView>>,
) {
    let mut gone = HashSet::new();
    let mut stray = Vec::new();
    for view in views.values().flatten() {
        for m in view.members.iter().filter(|m| &m.edge == index.edge()) {
            if !index.has_session(&m.peer) {
                gone.insert(m.peer.clone());
            } else if let Some(attempts) = index.take_back_due(&m.peer, &view.room) {
                stray.push((view.room.clone(), m.peer.clone(), attempts));
            }
        }
    }
    if gone.is_empty() && stray.is_empty() {
        return;
    }
    let registry = registry.clone();
    let index = Arc::clone(index);
    tokio::spawn(async move {
        for peer in gone {
            let removed = tokio::time::timeout(
                TAKE_BACK_DEADLINE,
                registry.execute(Command::Disconnect { peer: peer.clone() }),
            );
            match removed.await {
                Ok(Ok(_)) => {
                    tracing::info!(%peer, "removed a peer without a session here from the registry")
                }
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "could not remove a departed peer from the registry")
                }
                Err(_) => {
                    tracing::warn!("could not remove a departed peer from the registry in time")
                }
            }
        }
        for (room, peer, attempts) in stray {
            take_back(Arc::clone(&index), registry.clone(), room, peer, attempts).await;
        }
    });
}

/// Takes a peer out of a room it is not in as far as its client knows. Each leave is
/// conditional on one of the join requests in doubt (`attempts`): the registry leaves the
/// membership only if that request made it, so a leave is safe to retry and cannot undo the
/// client's own later join. It is retried through a leader election; if it still does not
/// get through, the next resync tries again.
pub(crate) async fn take_back(
    index: Arc<RoomIndex>,
    registry: Registry,
    room: RoomId,
    peer: PeerId,
    attempts: Vec<u64>,
) {
    let give_up_at = tokio::time::Instant::now() + TAKE_BACK_FOR;
    let mut backoff = TAKE_BACK_BACKOFF_MIN;
    let mut remaining = attempts.clone();
    while tokio::time::Instant::now() < give_up_at {
        let Some(&attempt) = remaining.first() else {
            // None of them holds the membership: a later join of the client's does.
            index.take_back_done(&peer, &room);
            return;
        };
        if !index.has_session(&peer) {
            // The session ended here (its end takes the peer out of every room) or moved
            // to another edge with its rooms as the client knows them.
            index.take_back_done(&peer, &room);
            return;
        }
        let command = Command::Leave {
            room: room.clone(),
            peer: peer.clone(),
            attempt,
            // Conditional on the join request, so safe whenever it lands.
            deadline_ms: 0,
        };
        match tokio::time::timeout(TAKE_BACK_DEADLINE, registry.execute(command)).await {
            Ok(Ok(Outcome::Left { .. })) => {
                tracing::info!(
                    %peer, %room, attempt,
                    "a peer the registry kept in a room it was told it is not in has left it"
                );
                index.take_back_done(&peer, &room);
                return;
            }
            // Not this request's membership (gone already, or another request's).
            Ok(Ok(_)) => {
                remaining.remove(0);
                continue;
            }
            Ok(Err(e)) => tracing::debug!(error = %e, "could not take a peer out of a room yet"),
            Err(_) => tracing::debug!("could not take a peer out of a room in time yet"),
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(TAKE_BACK_BACKOFF_MAX);
    }
    tracing::warn!(%peer, %room, "could not take a peer out of a room; the next resync tries again");
    index.still_doubtful(&peer, &room, remaining);
}

/// A signal from another edge through the coordinator: its frame (with `from` stamped
/// there) goes to the local target if it is still in the room. With tracing on, its delivery
/// is the last span of the trace the sender's edge started.
fn deliver_relayed(router: &Router, region: &RegionName, signal: Envelope, traceparent: &str) {
    // The sender's edge names its region: a signal from elsewhere came through the gateways.
    let cross_region = !signal.from_region.is_empty() && signal.from_region != region.as_str();
    let span = if telemetry::enabled() {
        let span = tracing::info_span!(
            target: telemetry::TARGET,
            "signal.deliver",
            cross_region,
            room = %signal.room,
        );
        telemetry::set_parent(&span, traceparent);
        span
    } else {
        tracing::Span::none()
    };
    let _entered = span.enter();
    let path = if cross_region {
        RelayPath::CrossRegion
    } else {
        RelayPath::Coordinator
    };
    router.deliver_inbound(signal, path);
}
