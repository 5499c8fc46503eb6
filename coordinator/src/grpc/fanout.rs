//! Turns the replica's room events into `Link` messages for the edges that need them.
//!
//! Interest is computed from a mirror of room membership that this task keeps by applying
//! the same events, so it is exact *at the event's epoch* even when the registry has moved
//! on by the time the event is handled: an edge hears about a room while one of its peers is
//! a member, and about every event concerning one of its peers. A `joined` event about a
//! member on the edge carries the room's member list at that epoch.
//!
//! The mirror is seeded from the applied state. Events that were applied before the seed
//! read but received after it are recognised by epoch (rooms in the seed) or cancel out
//! (a room absent from the seed was emptied before the read, so its buffered events end in
//! its removal). If this task falls behind the event channel, or the replica installs a
//! snapshot from its leader (which replaces the applied state without events), it re-seeds
//! and tells every linked edge to resync.
//!
//! Events for edges of other regions (members of rooms homed here) go to the streams of the
//! replicas of those regions that follow this one ([`Watchers`]), with each room created
//! and emptied here; a new stream starts from this task's mirror, so it misses nothing.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::broadcast::error::RecvError;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::convert::event_to_proto;
use super::federation::watchers::{Watcher, Watchers};
use super::links::Links;
use super::proto::{self, ReplicaToEdge, replica_to_edge};
use crate::metrics;
use crate::registry::{EdgeId, Member, PeerId, Region, RoomEvent, RoomEventKind, RoomId, SmallMap};
use crate::replica::Replica;

struct MirrorRoom {
    epoch: u64,
    created_at_ms: u64,
    /// A sorted vector, not a `BTreeMap`: the mirror holds every room of the registry, most
    /// with a few members, and a B-tree's first node (about 1 KiB here) cost more than half a
    /// kilobyte per member at a million members.
    members: SmallMap<PeerId, Member>,
}

#[derive(Default)]
pub(super) struct Mirror {
    rooms: HashMap<RoomId, MirrorRoom>,
}

/// One message for one edge (of that region).
pub(super) type Delivery = (EdgeId, Region, ReplicaToEdge);

/// What applying one event changed.
#[derive(Default)]
pub(super) struct Applied {
    pub deliveries: Vec<Delivery>,
    /// The room was created by this event (a new home here).
    pub created: bool,
    /// The room emptied with this event.
    pub emptied: bool,
}

impl Mirror {
    pub(super) fn seed(replica: &Replica) -> Self {
        let mut rooms = HashMap::new();
        for (room, created_at_ms) in replica.homes() {
            if let Some(view) = replica.room(&room) {
                rooms.insert(
                    view.room.clone(),
                    MirrorRoom {
                        epoch: view.epoch,
                        created_at_ms,
                        members: view
                            .members
                            .into_iter()
                            .map(|m| (m.peer.clone(), m))
                            .collect(),
                    },
                );
            }
        }
        Self { rooms }
    }

    /// Every room with its creation time.
    pub(super) fn homes(&self) -> Vec<(RoomId, u64)> {
        self.rooms
            .iter()
            .map(|(id, r)| (id.clone(), r.created_at_ms))
            .collect()
    }

    /// Applies `event` (`created_at_ms`: the room's creation time if it creates it) and
    /// returns what each interested edge is sent.
    pub(super) fn apply(&mut self, event: &RoomEvent, created_at_ms: impl Fn() -> u64) -> Applied {
        let mut applied = Applied::default();
        let room = self.rooms.entry(event.room.clone()).or_insert_with(|| {
            applied.created = true;
            MirrorRoom {
                epoch: 0,
                created_at_ms: created_at_ms(),
                members: SmallMap::new(),
            }
        });
        if room.epoch >= event.epoch {
            // Already in the seed.
            return Applied::default();
        }
        room.epoch = event.epoch;
        let mut edges: BTreeSet<(EdgeId, Region)> = room
            .members
            .values()
            .map(|m| (m.edge.clone(), m.region.clone()))
            .collect();
        let mut joiner_edge = None;
        match &event.kind {
            RoomEventKind::Joined(m) => {
                room.members.insert(m.peer.clone(), m.clone());
                edges.insert((m.edge.clone(), m.region.clone()));
                joiner_edge = Some(m.edge.clone());
            }
            RoomEventKind::Moved(m) => {
                if let Some(known) = room.members.get_mut(&m.peer) {
                    *known = m.clone();
                    edges.insert((m.edge.clone(), m.region.clone()));
                }
            }
            RoomEventKind::Left { peer, edge, .. } => {
                if let Some(gone) = room.members.remove(peer) {
                    edges.insert((edge.clone(), gone.region));
                }
            }
            // Every member's edge hears it (in `edges` already); the room is no longer here.
            RoomEventKind::Rehomed(_) => room.members.clear(),
        }
        // The member list goes only to the joiner's edge.
        let members: Vec<Member> = if joiner_edge.is_some() {
            room.members.values().cloned().collect()
        } else {
            Vec::new()
        };
        if room.members.is_empty() {
            self.rooms.remove(&event.room);
            applied.emptied = true;
        }
        applied.deliveries = edges
            .into_iter()
            .map(|(edge, region)| {
                let with_members = joiner_edge.as_ref() == Some(&edge);
                let msg = event_to_proto(event, with_members.then_some(members.as_slice()));
                (
                    edge,
                    region,
                    ReplicaToEdge {
                        msg: Some(replica_to_edge::Msg::Event(msg)),
                    },
                )
            })
            .collect();
        applied
    }
}

/// How often the task looks whether the replica installed a snapshot.
const INSTALL_CHECK: Duration = Duration::from_millis(100);

/// Runs until `stop`, or until the replica's event channel closes.
pub(super) async fn run(
    replica: Replica,
    links: Arc<Links>,
    mut new_watchers: mpsc::Receiver<Watcher>,
    stop: CancellationToken,
) {
    let mut events = replica.subscribe();
    let mut mirror = Mirror::seed(&replica);
    let mut watchers = Watchers::default();
    let here = Region::new(replica.region()).ok();
    let mut installed = replica.snapshots_installed();
    let mut install_check = tokio::time::interval(INSTALL_CHECK);
    install_check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let received = tokio::select! {
            () = stop.cancelled() => return,
            Some(watcher) = new_watchers.recv() => {
                watchers.add(watcher, mirror.homes());
                continue;
            }
            r = events.recv() => r,
            _ = install_check.tick() => {
                let now = replica.snapshots_installed();
                if now != installed {
                    installed = now;
                    tracing::info!("the replica installed a snapshot; resyncing edges");
                    resync(&replica, &links, &mut mirror, &mut watchers);
                }
                continue;
            }
        };
        match received {
            Ok(event) => {
                let applied = mirror.apply(&event, || {
                    replica.created_at_ms(&event.room).unwrap_or_default()
                });
                if !watchers.is_empty() {
                    if applied.created {
                        let at = mirror.rooms.get(&event.room).map_or(0, |r| r.created_at_ms);
                        watchers.created(&event.room, at);
                    }
                    if applied.emptied {
                        watchers.emptied(&event.room);
                    }
                }
                for (edge, region, msg) in applied.deliveries {
                    let other_region = here.as_ref() != Some(&region);
                    if other_region && !links.is_linked(&edge) {
                        // An edge of another region's group: its replicas follow this group.
                        if let Some(replica_to_edge::Msg::Event(e)) = msg.msg {
                            watchers.event(&region, &edge, e);
                        }
                        continue;
                    }
                    // Not linked here: the edge is attached to another replica, which sends it
                    // the same event from its own copy of the log.
                    links.push(&edge, msg);
                }
            }
            Err(RecvError::Lagged(missed)) => {
                tracing::warn!(
                    missed,
                    "fan-out fell behind the room events; resyncing edges"
                );
                resync(&replica, &links, &mut mirror, &mut watchers);
            }
            Err(RecvError::Closed) => return,
        }
    }
}

/// The mirror is read again from the applied state, and every linked edge re-reads its rooms.
fn resync(replica: &Replica, links: &Links, mirror: &mut Mirror, watchers: &mut Watchers) {
    metrics::fanout_resynced();
    *mirror = Mirror::seed(replica);
    // The following regions start again from the list of homes.
    watchers.clear();
    for edge in links.edges() {
        links.push(
            &edge,
            ReplicaToEdge {
                msg: Some(replica_to_edge::Msg::Resync(proto::Resync {})),
            },
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::{LeaveReason, Region};

    fn member(peer: &str, edge: &str) -> Member {
        Member {
            peer: PeerId::new(peer).unwrap(),
            edge: EdgeId::new(edge).unwrap(),
            region: Region::new("eu").unwrap(),
            meta: "{}".into(),
        }
    }

    fn ev(epoch: u64, kind: RoomEventKind) -> RoomEvent {
        RoomEvent {
            room: RoomId::new("r").unwrap(),
            epoch,
            kind,
        }
    }

    fn edges(d: &Applied) -> Vec<&str> {
        d.deliveries.iter().map(|(e, _, _)| e.as_str()).collect()
    }

    impl Mirror {
        fn apply_now(&mut self, event: &RoomEvent) -> Applied {
            self.apply(event, || 1)
        }
    }

    #[test]
    fn interest_follows_membership_at_the_event() {
        let mut m = Mirror::default();
        let d = m.apply_now(&ev(1, RoomEventKind::Joined(member("a", "e1"))));
        assert_eq!(edges(&d), ["e1"]);
        let d = m.apply_now(&ev(2, RoomEventKind::Joined(member("b", "e2"))));
        assert_eq!(edges(&d), ["e1", "e2"]);
        // Only the joiner's edge gets the member list.
        for (edge, _, msg) in &d.deliveries {
            let Some(replica_to_edge::Msg::Event(e)) = &msg.msg else {
                panic!()
            };
            assert_eq!(e.members.len(), if edge.as_str() == "e2" { 2 } else { 0 });
        }
        // A replayed event is skipped.
        assert!(
            m.apply_now(&ev(2, RoomEventKind::Joined(member("b", "e2"))))
                .deliveries
                .is_empty()
        );
        let left = |epoch, peer: &str, edge: &str| {
            ev(
                epoch,
                RoomEventKind::Left {
                    peer: PeerId::new(peer).unwrap(),
                    edge: EdgeId::new(edge).unwrap(),
                    reason: LeaveReason::Left,
                },
            )
        };
        assert_eq!(edges(&m.apply_now(&left(3, "a", "e1"))), ["e1", "e2"]);
        // e1 has no member left: it no longer hears about the room, except its own peers.
        assert_eq!(edges(&m.apply_now(&left(4, "b", "e2"))), ["e2"]);
        assert!(m.rooms.is_empty());
    }
}
