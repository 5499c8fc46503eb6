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
//! its removal). If this task falls behind the event channel, it re-seeds and tells every
//! linked edge to resync.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use tokio::sync::broadcast::error::RecvError;
use tokio_util::sync::CancellationToken;

use super::convert::event_to_proto;
use super::links::Links;
use super::proto::{self, ReplicaToEdge, replica_to_edge};
use crate::metrics;
use crate::registry::{EdgeId, Member, PeerId, RoomEvent, RoomEventKind, RoomId};
use crate::replica::Replica;

struct MirrorRoom {
    epoch: u64,
    members: BTreeMap<PeerId, Member>,
}

#[derive(Default)]
pub(super) struct Mirror {
    rooms: HashMap<RoomId, MirrorRoom>,
}

/// One message for one edge.
pub(super) type Delivery = (EdgeId, ReplicaToEdge);

impl Mirror {
    pub(super) fn seed(replica: &Replica) -> Self {
        let mut rooms = HashMap::new();
        for summary in replica.rooms() {
            if let Some(view) = replica.room(&summary.room) {
                rooms.insert(
                    view.room.clone(),
                    MirrorRoom {
                        epoch: view.epoch,
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

    /// Applies `event` and returns what each interested edge is sent.
    pub(super) fn apply(&mut self, event: &RoomEvent) -> Vec<Delivery> {
        let room = self
            .rooms
            .entry(event.room.clone())
            .or_insert_with(|| MirrorRoom {
                epoch: 0,
                members: BTreeMap::new(),
            });
        if room.epoch >= event.epoch {
            // Already in the seed.
            return Vec::new();
        }
        room.epoch = event.epoch;
        let mut edges: BTreeSet<EdgeId> = room.members.values().map(|m| m.edge.clone()).collect();
        let mut joiner_edge = None;
        match &event.kind {
            RoomEventKind::Joined(m) => {
                room.members.insert(m.peer.clone(), m.clone());
                edges.insert(m.edge.clone());
                joiner_edge = Some(m.edge.clone());
            }
            RoomEventKind::Moved(m) => {
                if let Some(known) = room.members.get_mut(&m.peer) {
                    *known = m.clone();
                    edges.insert(m.edge.clone());
                }
            }
            RoomEventKind::Left { peer, edge, .. } => {
                room.members.remove(peer);
                edges.insert(edge.clone());
            }
        }
        let members: Vec<Member> = room.members.values().cloned().collect();
        if room.members.is_empty() {
            self.rooms.remove(&event.room);
        }
        edges
            .into_iter()
            .map(|edge| {
                let with_members = joiner_edge.as_ref() == Some(&edge);
                let msg = event_to_proto(event, with_members.then_some(members.as_slice()));
                (
                    edge,
                    ReplicaToEdge {
                        msg: Some(replica_to_edge::Msg::Event(msg)),
                    },
                )
            })
            .collect()
    }
}

/// Runs until `stop`, or until the replica's event channel closes.
pub(super) async fn run(replica: Replica, links: Arc<Links>, stop: CancellationToken) {
    let mut events = replica.subscribe();
    let mut mirror = Mirror::seed(&replica);
    loop {
        let received = tokio::select! {
            () = stop.cancelled() => return,
            r = events.recv() => r,
        };
        match received {
            Ok(event) => {
                for (edge, msg) in mirror.apply(&event) {
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
                metrics::fanout_resynced();
                mirror = Mirror::seed(&replica);
                for edge in links.edges() {
                    links.push(
                        &edge,
                        ReplicaToEdge {
                            msg: Some(replica_to_edge::Msg::Resync(proto::Resync {})),
                        },
                    );
                }
            }
            Err(RecvError::Closed) => return,
        }
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

    fn edges(d: &[Delivery]) -> Vec<&str> {
        d.iter().map(|(e, _)| e.as_str()).collect()
    }

    #[test]
    fn interest_follows_membership_at_the_event() {
        let mut m = Mirror::default();
        let d = m.apply(&ev(1, RoomEventKind::Joined(member("a", "e1"))));
        assert_eq!(edges(&d), ["e1"]);
        let d = m.apply(&ev(2, RoomEventKind::Joined(member("b", "e2"))));
        assert_eq!(edges(&d), ["e1", "e2"]);
        // Only the joiner's edge gets the member list.
        for (edge, msg) in &d {
            let Some(replica_to_edge::Msg::Event(e)) = &msg.msg else {
                panic!()
            };
            assert_eq!(e.members.len(), if edge.as_str() == "e2" { 2 } else { 0 });
        }
        // A replayed event is skipped.
        assert!(
            m.apply(&ev(2, RoomEventKind::Joined(member("b", "e2"))))
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
        assert_eq!(edges(&m.apply(&left(3, "a", "e1"))), ["e1", "e2"]);
        // e1 has no member left: it no longer hears about the room, except its own peers.
        assert_eq!(edges(&m.apply(&left(4, "b", "e2"))), ["e2"]);
        assert!(m.rooms.is_empty());
    }
}
