//! Registry state: edges, rooms and peers, and how commands change them.

use std::collections::BTreeMap;

use imbl::{OrdMap, OrdSet};
use serde::{Deserialize, Serialize};

use super::command::{Command, Listing, Outcome, Rejection, Stamped};
use super::event::{LeaveReason, Member, RoomEvent, RoomEventKind};
use super::ids::{EdgeId, PeerId, Region, RoomId};
use super::index::{DetachedIndex, RemotePeers};
use super::listing::{ListingPage, ListingQuery, RoomListing};
use super::persistent::deserialize_spread;
use super::small::{SmallMap, SmallSet};
use super::webhooks::{WebhookEvent, WebhookOutbox};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EdgeRecord {
    pub region: Region,
    pub address: String,
    pub incarnation: u64,
    /// The lease runs out at this time (ms since the Unix epoch, leader's clock).
    pub lease_until_ms: u64,
    /// The lease ran out or was released; the record stays while peers are detached from it.
    pub down: bool,
    /// Node id of the replica the edge is attached to (0: unknown, e.g. an embedded edge).
    #[serde(default)]
    pub replica: u64,
    /// The lease's length as the edge asked for it (0 in records from before it was kept).
    #[serde(default)]
    pub lease_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct RoomRecord {
    epoch: u64,
    /// When the room was created here (the creating join's apply time; 0 in state from
    /// before it was kept): the same name created in two regions goes to the older one.
    #[serde(default)]
    created_at_ms: u64,
    members: SmallMap<PeerId, String>,
    /// When each member joined (the join's apply time); absent in state from before it was
    /// kept.
    #[serde(default)]
    joined_at: SmallMap<PeerId, u64>,
    /// The `room_meta` of the creating join, shown in listings when the room is public.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    listing_meta: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct PeerRecord {
    edge: EdgeId,
    region: Region,
    rooms: SmallSet<RoomId>,
    detached_since_ms: Option<u64>,
    /// The join request that last joined (or re-joined) each room, when it was named.
    #[serde(default)]
    attempts: SmallMap<RoomId, u64>,
    /// Detached because its edge, of another region's group, was down or unreachable (and
    /// attached again when it is back).
    #[serde(default)]
    detached_remotely: bool,
}

/// The fields of a [`Command::Join`], borrowed.
struct JoinRequest<'a> {
    room: &'a RoomId,
    peer: &'a PeerId,
    edge: &'a EdgeId,
    remote_region: Option<&'a Region>,
    meta: &'a str,
    max_members: Option<u32>,
    attempt: u64,
    at_ms: u64,
    listing: &'a Listing,
}

/// A map whose keys a record's ids can share (see [`shared`]).
trait KeyedBy<K> {
    fn key_of(&self, id: &K) -> Option<&K>;
}

impl<K: Ord, V> KeyedBy<K> for BTreeMap<K, V> {
    fn key_of(&self, id: &K) -> Option<&K> {
        self.get_key_value(id).map(|(k, _)| k)
    }
}

impl<K: Ord + Clone, V: Clone> KeyedBy<K> for OrdMap<K, V> {
    fn key_of(&self, id: &K) -> Option<&K> {
        self.get_key_value(id).map(|(k, _)| k)
    }
}

/// `id` as `map` keys it, sharing that key's string; `id` itself when `map` has no such key.
fn shared<K: Clone>(map: &impl KeyedBy<K>, id: &K) -> K {
    map.key_of(id).unwrap_or(id).clone()
}

/// Detaches `p` (keyed `id`) as of `since` unless it already is, entering it in `index`.
fn detach(index: &mut DetachedIndex, id: &PeerId, p: &mut PeerRecord, since: u64) {
    if p.detached_since_ms.is_none() {
        p.detached_since_ms = Some(since);
        index.insert(since, id.clone());
    }
}

/// Attaches `p` (keyed `id`) again, taking it out of `index`.
fn attach(index: &mut DetachedIndex, id: &PeerId, p: &mut PeerRecord) {
    if let Some(since) = p.detached_since_ms.take() {
        index.remove(since, id);
    }
}

/// A room as seen by a reader.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoomView {
    pub room: RoomId,
    pub epoch: u64,
    pub members: Vec<Member>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoomSummary {
    pub room: RoomId,
    pub epoch: u64,
    pub members: u32,
}

/// The whole registry. Ordered maps keep iteration (and so snapshots and event order)
/// deterministic across replicas.
///
/// The rooms and the peers (the maps that grow with the members) are persistent maps: a
/// clone shares every node with the original, and a change afterwards copies only the path
/// to what it changes. So the copy a snapshot is built from costs nothing to take, however
/// large the registry, and costs memory only for what changes while it is encoded. They
/// serialise exactly as a `BTreeMap` does (snapshots of either load into the other).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegistryState {
    edges: BTreeMap<EdgeId, EdgeRecord>,
    #[serde(deserialize_with = "deserialize_spread")]
    rooms: OrdMap<RoomId, RoomRecord>,
    #[serde(deserialize_with = "deserialize_spread")]
    peers: OrdMap<PeerId, PeerRecord>,
    /// Epochs keep increasing across a room's deletion and re-creation, so that a consumer
    /// never mistakes a new room for an old one.
    next_epoch: u64,
    /// What the changes owe the webhook endpoints (empty unless webhooks are configured).
    #[serde(default)]
    webhooks: WebhookOutbox,
    /// Other regions' gateways (API addresses): the rooms they home are reached through them.
    #[serde(default)]
    regions: BTreeMap<Region, Vec<String>>,
    /// The public rooms (listed to discovery), so that a listing walks only them. A room
    /// leaves it when it empties. Absent in state from before discovery: none is public.
    #[serde(default, skip_serializing_if = "OrdSet::is_empty")]
    public: OrdSet<RoomId>,
    /// Detached peers by detach time, for the sweeper (derived, see [`super::index`]).
    #[serde(skip)]
    detached: DetachedIndex,
    /// Peers on other regions' edges, for the federation liveness round (derived).
    #[serde(skip)]
    remote_peers: RemotePeers,
}

impl RegistryState {
    /// Applies one command; returns its outcome and the room events it caused, in order.
    pub fn apply(&mut self, stamped: &Stamped) -> (Outcome, Vec<RoomEvent>) {
        let at = stamped.at_ms;
        let mut events = Vec::new();
        if stamped.command.deadline_ms().is_some_and(|d| at > d) {
            // Stamped by the leader after the edge answered its client: applying it now
            // would contradict that answer (a join or leave held by a stalled replica).
            return (Outcome::Rejected(Rejection::Late), events);
        }
        let outcome = match &stamped.command {
            Command::RegisterEdge {
                edge,
                region,
                address,
                incarnation,
                lease_ms,
                resumable_sessions,
                replica,
            } => self.register_edge(
                at,
                edge,
                EdgeRecord {
                    region: region.clone(),
                    address: address.clone(),
                    incarnation: *incarnation,
                    lease_until_ms: at.saturating_add(*lease_ms),
                    down: false,
                    replica: *replica,
                    lease_ms: *lease_ms,
                },
                *resumable_sessions,
                &mut events,
            ),
            Command::RenewLease {
                edge,
                incarnation,
                lease_ms,
            } => match self.edges.get_mut(edge) {
                None => Outcome::Rejected(Rejection::UnknownEdge),
                Some(rec) if rec.incarnation != *incarnation || rec.down => {
                    Outcome::Rejected(Rejection::StaleIncarnation)
                }
                Some(rec) => {
                    rec.lease_until_ms = rec.lease_until_ms.max(at.saturating_add(*lease_ms));
                    rec.lease_ms = *lease_ms;
                    Outcome::Done
                }
            },
            Command::ReleaseEdge { edge, incarnation } => match self.edges.get(edge) {
                None => Outcome::Rejected(Rejection::UnknownEdge),
                Some(rec) if rec.incarnation != *incarnation => {
                    Outcome::Rejected(Rejection::StaleIncarnation)
                }
                Some(_) => {
                    self.edge_down(edge, at);
                    Outcome::Done
                }
            },
            Command::Join {
                room,
                peer,
                edge,
                meta,
                max_members,
                attempt,
                deadline_ms: _,
                remote_region,
                listing,
            } => {
                let request = JoinRequest {
                    room,
                    peer,
                    edge,
                    remote_region: remote_region.as_ref(),
                    meta,
                    max_members: *max_members,
                    attempt: *attempt,
                    at_ms: at,
                    listing,
                };
                self.join(request, &mut events)
            }
            Command::Leave {
                room,
                peer,
                attempt,
                deadline_ms: _,
            } => {
                let holds = |p: &PeerRecord| {
                    p.rooms.contains(room)
                        && (*attempt == 0 || p.attempts.get(room) == Some(attempt))
                };
                if !self.peers.get(peer).is_some_and(holds) {
                    // (A conditional leave of a membership a later join re-made is refused
                    // the same way: as far as that request goes, the peer is not there.)
                    Outcome::Rejected(Rejection::NotInRoom)
                } else {
                    let epoch = self.leave(room, peer, LeaveReason::Left, &mut events);
                    Outcome::Left { epoch }
                }
            }
            Command::Disconnect { peer } => {
                self.remove_peer(peer, LeaveReason::Disconnected, &mut events);
                Outcome::Done
            }
            Command::Detach { peer } => {
                if let Some(p) = self.peers.get_mut(peer) {
                    detach(&mut self.detached, peer, p, at);
                }
                Outcome::Done
            }
            Command::Rebind {
                peer,
                edge,
                remote_region,
            } => self.rebind(peer, edge, remote_region.as_ref(), &mut events),
            Command::Rehome { room, to, members } => self.rehome(room, to, members, &mut events),
            Command::RemoteEdges { alive, down, gone } => {
                // Only the peers that change are written (a write may copy a path of the
                // map, see [`RegistryState`]).
                let changing: Vec<PeerId> = self
                    .peers
                    .iter()
                    .filter(|(_, p)| {
                        (alive.contains(&p.edge) && p.detached_remotely)
                            || (down.contains(&p.edge) && p.detached_since_ms.is_none())
                    })
                    .map(|(id, _)| id.clone())
                    .collect();
                for id in changing {
                    let Some(p) = self.peers.get_mut(&id) else {
                        continue;
                    };
                    if alive.contains(&p.edge) && p.detached_remotely {
                        p.detached_remotely = false;
                        attach(&mut self.detached, &id, p);
                    } else if down.contains(&p.edge) && p.detached_since_ms.is_none() {
                        p.detached_remotely = true;
                        detach(&mut self.detached, &id, p, at);
                    }
                }
                let gone_peers: Vec<PeerId> = self
                    .peers
                    .iter()
                    .filter(|(_, p)| gone.contains(&p.edge))
                    .map(|(id, _)| id.clone())
                    .collect();
                for peer in gone_peers {
                    // Their region removed them after its own grace period.
                    self.remove_peer(&peer, LeaveReason::Expired, &mut events);
                }
                Outcome::Done
            }
            Command::SetRegion { region, gateways } => {
                if gateways.is_empty() {
                    self.regions.remove(region);
                } else {
                    self.regions.insert(region.clone(), gateways.clone());
                }
                Outcome::Done
            }
            Command::Sweep { grace_ms, leases } => {
                self.sweep(at, *grace_ms, *leases, &mut events);
                Outcome::Done
            }
            Command::Remove { room, peer } => {
                let member = self.peers.get(peer).is_some_and(|p| p.rooms.contains(room));
                if member {
                    let epoch = self.leave(room, peer, LeaveReason::Removed, &mut events);
                    Outcome::Left { epoch }
                } else if self.rooms.contains_key(room) {
                    Outcome::Rejected(Rejection::NotInRoom)
                } else {
                    Outcome::Rejected(Rejection::UnknownRoom)
                }
            }
            Command::Close { room } => {
                let members: Vec<PeerId> = self
                    .rooms
                    .get(room)
                    .map(|r| r.members.keys().cloned().collect())
                    .unwrap_or_default();
                if members.is_empty() {
                    Outcome::Rejected(Rejection::UnknownRoom)
                } else {
                    let mut epoch = 0;
                    for peer in members {
                        epoch = self.leave(room, &peer, LeaveReason::Closed, &mut events);
                    }
                    Outcome::Left { epoch }
                }
            }
            Command::ConfigureWebhooks {
                endpoints,
                capacity,
            } => {
                self.webhooks.configure(endpoints, *capacity);
                Outcome::Done
            }
            Command::AckWebhooks { endpoint, ids } => {
                self.webhooks.ack(endpoint, ids);
                Outcome::Done
            }
        };
        self.record_webhooks(at, &events);
        (outcome, events)
    }

    /// Turns the room events of one command into webhook records, in order: a join that
    /// made a room is preceded by `room_started`, a leave that emptied one is followed by
    /// `room_finished`.
    fn record_webhooks(&mut self, at: u64, events: &[RoomEvent]) {
        for (i, event) in events.iter().enumerate() {
            let room = &event.room;
            if room.is_hidden() {
                // Contact discovery's index, not an application's room.
                continue;
            }
            match &event.kind {
                RoomEventKind::Joined(m) => {
                    // A join adds one member, so a room it leaves with one member it made.
                    let made = self
                        .rooms
                        .get(room)
                        .is_some_and(|r| r.members.len() == 1 && r.members.contains_key(&m.peer));
                    if made {
                        let room = room.clone();
                        self.webhooks.record(at, WebhookEvent::RoomStarted { room });
                    }
                    self.webhooks.record(
                        at,
                        WebhookEvent::PeerJoined {
                            room: room.clone(),
                            peer: m.peer.clone(),
                            edge: m.edge.clone(),
                            region: m.region.clone(),
                            meta: m.meta.clone(),
                        },
                    );
                }
                RoomEventKind::Left { peer, edge, reason } => {
                    self.webhooks.record(
                        at,
                        WebhookEvent::PeerLeft {
                            room: room.clone(),
                            peer: peer.clone(),
                            edge: edge.clone(),
                            reason: *reason,
                        },
                    );
                    let last_of_room = !events[i + 1..].iter().any(|e| &e.room == room);
                    if last_of_room && !self.rooms.contains_key(room) {
                        let room = room.clone();
                        self.webhooks
                            .record(at, WebhookEvent::RoomFinished { room });
                    }
                }
                RoomEventKind::Moved(_) | RoomEventKind::Rehomed(_) => {}
            }
        }
    }

    fn register_edge(
        &mut self,
        at: u64,
        edge: &EdgeId,
        record: EdgeRecord,
        resumable_sessions: bool,
        events: &mut Vec<RoomEvent>,
    ) -> Outcome {
        let incarnation = record.incarnation;
        if let Some(rec) = self.edges.get(edge) {
            if rec.incarnation > incarnation {
                return Outcome::Rejected(Rejection::StaleIncarnation);
            }
            if rec.incarnation < incarnation {
                // The previous process of this edge is gone; so are its sockets.
                let leftovers = self.peers_of(edge);
                for peer in leftovers {
                    if resumable_sessions {
                        if let Some(p) = self.peers.get_mut(&peer) {
                            detach(&mut self.detached, &peer, p, at);
                        }
                    } else {
                        self.remove_peer(&peer, LeaveReason::Disconnected, events);
                    }
                }
            } else if rec.down {
                // The same process is back (e.g. it reached another replica after its lease
                // ran out): its sockets survived, so the peers that were detached only because
                // the edge went down are attached again. Peers detached earlier stay detached.
                let down_since = rec.lease_until_ms;
                for id in self.peers_of(edge) {
                    if let Some(p) = self.peers.get_mut(&id)
                        && p.detached_since_ms == Some(down_since)
                    {
                        attach(&mut self.detached, &id, p);
                    }
                }
            }
        }
        self.edges.insert(edge.clone(), record);
        Outcome::Done
    }

    fn join(&mut self, request: JoinRequest<'_>, events: &mut Vec<RoomEvent>) -> Outcome {
        let JoinRequest {
            room,
            peer,
            edge,
            remote_region,
            meta,
            max_members,
            attempt,
            at_ms,
            listing,
        } = request;
        let Some(region) = self.edge_region(edge, remote_region) else {
            return Outcome::Rejected(Rejection::UnknownEdge);
        };
        if let Some(p) = self.peers.get_mut(peer) {
            if &p.edge != edge {
                return Outcome::Rejected(Rejection::WrongEdge);
            }
            if p.rooms.contains(room) {
                // A retried join (e.g. after a leader change) is answered, not repeated; the
                // membership is now this request's.
                if attempt != 0 {
                    p.attempts.insert(room.clone(), attempt);
                }
                return self.joined_outcome(room);
            }
        }
        let size = self.rooms.get(room).map_or(0, |r| r.members.len());
        if max_members.is_some_and(|max| size >= max as usize) {
            return Outcome::Rejected(Rejection::RoomFull);
        }
        // One copy of each id: the room's, the peer's and the edge's as the registry already
        // holds them (else the request's, which every new record then shares).
        let room = &shared(&self.rooms, room);
        let peer = &shared(&self.peers, peer);
        let edge = &shared(&self.edges, edge);
        let epoch = self.bump_epoch();
        if listing.public && !self.rooms.contains_key(room) {
            // Only the creating join decides: a later join saying `public` changes nothing.
            self.public.insert(room.clone());
        }
        let rec = self
            .rooms
            .entry(room.clone())
            .or_insert_with(|| RoomRecord {
                epoch,
                created_at_ms: at_ms,
                members: SmallMap::new(),
                joined_at: SmallMap::new(),
                listing_meta: listing.meta.clone(),
            });
        rec.epoch = epoch;
        rec.members.insert(peer.clone(), meta.to_owned());
        rec.joined_at.insert(peer.clone(), at_ms);
        let p = self
            .peers
            .entry(peer.clone())
            .or_insert_with(|| PeerRecord {
                edge: edge.clone(),
                region: region.clone(),
                rooms: SmallSet::new(),
                detached_since_ms: None,
                attempts: SmallMap::new(),
                detached_remotely: false,
            });
        p.rooms.insert(room.clone());
        if attempt != 0 {
            p.attempts.insert(room.clone(), attempt);
        }
        if remote_region.is_some() {
            self.remote_peers.insert(peer.clone());
        }
        events.push(RoomEvent {
            room: room.clone(),
            epoch,
            kind: RoomEventKind::Joined(Member {
                peer: peer.clone(),
                edge: edge.clone(),
                region,
                meta: meta.to_owned(),
            }),
        });
        self.joined_outcome(room)
    }

    /// Makes every copy of an id share the one the registry keys it by (a state just decoded
    /// from a snapshot holds a string per occurrence). Changes no value.
    pub fn share_ids(&mut self) {
        let mut regions: BTreeMap<Region, ()> = BTreeMap::new();
        // Changed in place, key by key (a persistent map has no mutable walk): a map just
        // decoded shares no node, so nothing is copied, and the tree keeps the shape its
        // decoding gave it (see `super::persistent`).
        let peer_ids: Vec<PeerId> = self.peers.keys().cloned().collect();
        for id in &peer_ids {
            let Some(p) = self.peers.get_mut(id) else {
                continue;
            };
            p.edge = shared(&self.edges, &p.edge);
            if !regions.contains_key(&p.region) {
                regions.insert(p.region.clone(), ());
            }
            p.region = shared(&regions, &p.region);
            p.rooms.replace_each(|r| shared(&self.rooms, r));
            p.attempts.replace_keys(|r| shared(&self.rooms, r));
        }
        drop(peer_ids);
        let room_ids: Vec<RoomId> = self.rooms.keys().cloned().collect();
        for id in &room_ids {
            if let Some(rec) = self.rooms.get_mut(id) {
                rec.members.replace_keys(|p| shared(&self.peers, p));
                rec.joined_at.replace_keys(|p| shared(&self.peers, p));
            }
        }
        self.rebuild_indexes();
    }

    /// The state's value without its derived indexes, for a snapshot (which does not hold
    /// them): shares every record with `self` (see [`RegistryState`]), so taking it does not
    /// walk the members.
    pub fn snapshot_copy(&self) -> Self {
        Self {
            edges: self.edges.clone(),
            rooms: self.rooms.clone(),
            peers: self.peers.clone(),
            next_epoch: self.next_epoch,
            webhooks: self.webhooks.clone(),
            regions: self.regions.clone(),
            public: self.public.clone(),
            detached: DetachedIndex::default(),
            remote_peers: RemotePeers::default(),
        }
    }

    /// Builds the derived indexes from the records (they are not serialised).
    fn rebuild_indexes(&mut self) {
        self.detached.clear();
        self.remote_peers.clear();
        for (id, p) in &self.peers {
            if let Some(since) = p.detached_since_ms {
                self.detached.insert(since, id.clone());
            }
            if !self.edges.contains_key(&p.edge) {
                self.remote_peers.insert(id.clone());
            }
        }
    }

    fn joined_outcome(&self, room: &RoomId) -> Outcome {
        match self.room(room) {
            Some(view) => Outcome::Joined {
                epoch: view.epoch,
                members: view.members,
            },
            None => Outcome::Rejected(Rejection::NotInRoom),
        }
    }

    fn rehome(
        &mut self,
        room: &RoomId,
        to: &Region,
        members: &[PeerId],
        events: &mut Vec<RoomEvent>,
    ) -> Outcome {
        let Some(rec) = self.rooms.get(room) else {
            return Outcome::Rejected(Rejection::UnknownRoom);
        };
        let same = rec.members.len() == members.len()
            && members.iter().all(|p| rec.members.contains_key(p));
        if !same {
            return Outcome::Rejected(Rejection::NotInRoom);
        }
        let epoch = self.bump_epoch();
        self.rooms.remove(room);
        self.public.remove(room);
        for peer in members {
            if let Some(p) = self.peers.get_mut(peer) {
                p.rooms.remove(room);
                p.attempts.remove(room);
                if p.rooms.is_empty() {
                    self.forget_peer(peer);
                }
            }
        }
        events.push(RoomEvent {
            room: room.clone(),
            epoch,
            kind: RoomEventKind::Rehomed(to.clone()),
        });
        Outcome::Left { epoch }
    }

    /// The region of `edge`: `remote` for an edge of another region's group, else that of
    /// the live edge registered here (`None`: unknown or down).
    fn edge_region(&self, edge: &EdgeId, remote: Option<&Region>) -> Option<Region> {
        match remote {
            Some(region) => Some(region.clone()),
            None => self
                .edges
                .get(edge)
                .filter(|e| !e.down)
                .map(|e| e.region.clone()),
        }
    }

    fn rebind(
        &mut self,
        peer: &PeerId,
        edge: &EdgeId,
        remote_region: Option<&Region>,
        events: &mut Vec<RoomEvent>,
    ) -> Outcome {
        let Some(region) = self.edge_region(edge, remote_region) else {
            return Outcome::Rejected(Rejection::UnknownEdge);
        };
        let Some(p) = self.peers.get_mut(peer) else {
            return Outcome::Rejected(Rejection::UnknownPeer);
        };
        p.edge = edge.clone();
        p.region = region.clone();
        attach(&mut self.detached, peer, p);
        let rooms: Vec<RoomId> = p.rooms.iter().cloned().collect();
        if remote_region.is_some() {
            self.remote_peers.insert(peer.clone());
        } else {
            self.remote_peers.remove(peer);
        }
        for room in rooms {
            let epoch = self.bump_epoch();
            if let Some(rec) = self.rooms.get_mut(&room) {
                rec.epoch = epoch;
                let meta = rec.members.get(peer).cloned().unwrap_or_default();
                events.push(RoomEvent {
                    room,
                    epoch,
                    kind: RoomEventKind::Moved(Member {
                        peer: peer.clone(),
                        edge: edge.clone(),
                        region: region.clone(),
                        meta,
                    }),
                });
            }
        }
        Outcome::Done
    }

    fn sweep(&mut self, at: u64, grace_ms: u64, leases: bool, events: &mut Vec<RoomEvent>) {
        let expired: Vec<EdgeId> = self
            .edges
            .iter()
            .filter(|(_, e)| leases && !e.down && e.lease_until_ms <= at)
            .map(|(id, _)| id.clone())
            .collect();
        for edge in expired {
            let since = self.edges.get(&edge).map_or(at, |e| e.lease_until_ms);
            self.edge_down(&edge, since);
        }
        // The peers whose grace has ended: detached at or before `at - grace_ms`, read from
        // the index (entries that no longer apply are dropped on the way).
        let mut overdue: Vec<PeerId> = match at.checked_sub(grace_ms) {
            None => Vec::new(),
            Some(cutoff) => self
                .detached
                .take_until(cutoff)
                .into_iter()
                .filter(|(since, id)| {
                    self.peers
                        .get(id)
                        .is_some_and(|p| p.detached_since_ms == Some(*since))
                })
                .map(|(_, id)| id)
                .collect(),
        };
        // Removed in id order, as a walk of the peers would (the events' order).
        overdue.sort();
        for peer in overdue {
            self.remove_peer(&peer, LeaveReason::Expired, events);
        }
        // Forget down edges that no longer have peers.
        let peers = &self.peers;
        self.edges
            .retain(|id, e| !e.down || peers.values().any(|p| &p.edge == id));
    }

    /// Marks the edge down and detaches its attached peers as of `since`.
    fn edge_down(&mut self, edge: &EdgeId, since: u64) {
        if let Some(rec) = self.edges.get_mut(edge) {
            rec.down = true;
            rec.lease_until_ms = rec.lease_until_ms.min(since);
        }
        for id in self.peers_of(edge) {
            if let Some(p) = self.peers.get_mut(&id) {
                detach(&mut self.detached, &id, p, since);
            }
        }
    }

    fn peers_of(&self, edge: &EdgeId) -> Vec<PeerId> {
        self.peers
            .iter()
            .filter(|(_, p)| &p.edge == edge)
            .map(|(id, _)| id.clone())
            .collect()
    }

    fn remove_peer(&mut self, peer: &PeerId, reason: LeaveReason, events: &mut Vec<RoomEvent>) {
        let rooms: Vec<RoomId> = self
            .peers
            .get(peer)
            .map(|p| p.rooms.iter().cloned().collect())
            .unwrap_or_default();
        for room in rooms {
            self.leave(&room, peer, reason, events);
        }
        self.forget_peer(peer);
    }

    /// Removes the peer's record, and it from the indexes.
    fn forget_peer(&mut self, peer: &PeerId) {
        if let Some(mut p) = self.peers.remove(peer) {
            attach(&mut self.detached, peer, &mut p);
        }
        self.remote_peers.remove(peer);
    }

    /// Removes `peer` from `room`; returns the room's new epoch.
    fn leave(
        &mut self,
        room: &RoomId,
        peer: &PeerId,
        reason: LeaveReason,
        events: &mut Vec<RoomEvent>,
    ) -> u64 {
        let epoch = self.bump_epoch();
        let mut edge = None;
        if let Some(p) = self.peers.get_mut(peer) {
            p.rooms.remove(room);
            p.attempts.remove(room);
            edge = Some(p.edge.clone());
            if p.rooms.is_empty() {
                self.forget_peer(peer);
            }
        }
        if let Some(rec) = self.rooms.get_mut(room) {
            rec.members.remove(peer);
            rec.joined_at.remove(peer);
            rec.epoch = epoch;
            if rec.members.is_empty() {
                self.rooms.remove(room);
                self.public.remove(room);
            }
        }
        if let Some(edge) = edge {
            events.push(RoomEvent {
                room: room.clone(),
                epoch,
                kind: RoomEventKind::Left {
                    peer: peer.clone(),
                    edge,
                    reason,
                },
            });
        }
        epoch
    }

    fn bump_epoch(&mut self) -> u64 {
        self.next_epoch += 1;
        self.next_epoch
    }

    /// Edges of other regions' groups with members here (not registered here), by region,
    /// each with whether some of its peers are attached and whether some were detached
    /// because of it.
    pub fn remote_edges(&self) -> BTreeMap<Region, BTreeMap<EdgeId, (bool, bool)>> {
        let mut out: BTreeMap<Region, BTreeMap<EdgeId, (bool, bool)>> = BTreeMap::new();
        for p in self.remote_peers.iter().filter_map(|id| self.peers.get(id)) {
            if self.edges.contains_key(&p.edge) {
                continue;
            }
            let e = out
                .entry(p.region.clone())
                .or_default()
                .entry(p.edge.clone())
                .or_insert((false, false));
            e.0 |= p.detached_since_ms.is_none();
            e.1 |= p.detached_remotely;
        }
        out
    }

    /// Other regions' gateways, by region.
    pub fn regions(&self) -> &BTreeMap<Region, Vec<String>> {
        &self.regions
    }

    /// When `room` was created here, if it is here.
    pub fn created_at_ms(&self, room: &RoomId) -> Option<u64> {
        self.rooms.get(room).map(|r| r.created_at_ms)
    }

    /// Every room homed here with its creation time (see [`Self::created_at_ms`]).
    pub fn homes(&self) -> Vec<(RoomId, u64)> {
        self.rooms
            .iter()
            .map(|(id, r)| (id.clone(), r.created_at_ms))
            .collect()
    }

    /// The epoch of the latest change to any room: a reader's view of the registry is at
    /// least this recent.
    pub fn epoch(&self) -> u64 {
        self.next_epoch
    }

    /// The room's members with their locations, or `None` when nobody is in it.
    pub fn room(&self, room: &RoomId) -> Option<RoomView> {
        let rec = self.rooms.get(room)?;
        let members = rec
            .members
            .iter()
            .filter_map(|(peer, meta)| {
                let p = self.peers.get(peer)?;
                Some(Member {
                    peer: peer.clone(),
                    edge: p.edge.clone(),
                    region: p.region.clone(),
                    meta: meta.clone(),
                })
            })
            .collect();
        Some(RoomView {
            room: room.clone(),
            epoch: rec.epoch,
            members,
        })
    }

    pub fn rooms(&self) -> Vec<RoomSummary> {
        self.rooms
            .iter()
            .map(|(room, rec)| RoomSummary {
                room: room.clone(),
                epoch: rec.epoch,
                members: u32::try_from(rec.members.len()).unwrap_or(u32::MAX),
            })
            .collect()
    }

    /// Up to `query.limit` public rooms matching `query`, in id order, and whether more
    /// match. Walks only the public rooms, from the cursor (or the prefix) on.
    pub fn public_rooms(&self, query: &ListingQuery) -> ListingPage {
        use std::ops::Bound;
        let start = match &query.after {
            Some(after) if after.as_str() >= query.prefix.as_str() => {
                Bound::Excluded(after.as_str())
            }
            _ => Bound::Included(query.prefix.as_str()),
        };
        let mut page = ListingPage::default();
        let candidates = self
            .public
            .range::<_, str>((start, Bound::Unbounded))
            .take_while(|room| room.as_str().starts_with(&query.prefix));
        for room in candidates {
            if page.rooms.len() == query.limit {
                page.more = true;
                break;
            }
            let Some(rec) = self.rooms.get(room) else {
                continue;
            };
            let mut regions: Vec<Region> = rec
                .members
                .keys()
                .filter_map(|p| self.peers.get(p).map(|p| p.region.clone()))
                .collect();
            regions.sort();
            regions.dedup();
            page.rooms.push(RoomListing {
                room: room.clone(),
                members: u32::try_from(rec.members.len()).unwrap_or(u32::MAX),
                regions,
                meta: rec.listing_meta.clone(),
            });
        }
        page
    }

    /// How `room` is listed to discovery (private when it is not here).
    pub fn listing(&self, room: &RoomId) -> Listing {
        Listing {
            public: self.public.contains(room),
            meta: self.rooms.get(room).and_then(|r| r.listing_meta.clone()),
        }
    }

    /// When `peer` joined `room` (ms since the epoch, leader's clock), if it is a member and
    /// the time was kept.
    pub fn joined_at_ms(&self, room: &RoomId, peer: &PeerId) -> Option<u64> {
        self.rooms.get(room)?.joined_at.get(peer).copied()
    }

    /// The webhook outbox as applied.
    pub fn webhooks(&self) -> &WebhookOutbox {
        &self.webhooks
    }

    /// Room ids in order, from the first one after `after` (all of them without it).
    pub fn room_ids_after<'a>(
        &'a self,
        after: Option<&RoomId>,
    ) -> impl Iterator<Item = &'a RoomId> + 'a {
        use std::ops::Bound;
        let start = match after {
            Some(room) => Bound::Excluded(room.clone()),
            None => Bound::Unbounded,
        };
        self.rooms
            .range((start, Bound::Unbounded))
            .map(|(room, _)| room)
    }

    /// How many rooms have members.
    pub fn room_count(&self) -> usize {
        self.rooms.len()
    }

    pub fn edge(&self, edge: &EdgeId) -> Option<&EdgeRecord> {
        self.edges.get(edge)
    }

    pub fn edges(&self) -> impl Iterator<Item = (&EdgeId, &EdgeRecord)> {
        self.edges.iter()
    }

    /// Whether the peer is currently detached.
    pub fn is_detached(&self, peer: &PeerId) -> Option<bool> {
        self.peers.get(peer).map(|p| p.detached_since_ms.is_some())
    }

    /// The earliest time at which a [`Command::Sweep`] would change something, if any.
    /// The longest lease a live edge holds: how long a new leader gives edges to renew before
    /// it ends leases that ran out while nobody could commit a renewal.
    pub fn longest_lease_ms(&self) -> u64 {
        self.edges
            .values()
            .filter(|e| !e.down)
            .map(|e| e.lease_ms)
            .max()
            .unwrap_or(0)
    }

    /// When the next sweep is due: a lease running out (unless `leases` is false) or a
    /// detached peer's grace ending.
    pub fn next_sweep_due_ms(&self, grace_ms: u64, leases: bool) -> Option<u64> {
        let leases = self
            .edges
            .values()
            .filter(|e| leases && !e.down)
            .map(|e| e.lease_until_ms);
        let detached = self
            .detached
            .earliest()
            .map(|since| since.saturating_add(grace_ms));
        leases.chain(detached).min()
    }
}

#[cfg(test)]
mod tests {
    use super::super::ids::HIDDEN_ROOM_PREFIX;
    use super::*;

    fn id<T: TryFrom<String>>(s: &str) -> T
    where
        T::Error: std::fmt::Debug,
    {
        T::try_from(s.to_owned()).unwrap()
    }

    fn at(at_ms: u64, command: Command) -> Stamped {
        Stamped { at_ms, command }
    }

    /// The indexes kept in step with the changes are those built from the records.
    fn assert_indexed(s: &RegistryState) {
        let mut rebuilt = s.clone();
        rebuilt.rebuild_indexes();
        assert_eq!(s.detached.entries(), rebuilt.detached.entries());
        assert_eq!(s.remote_peers.entries(), rebuilt.remote_peers.entries());
    }

    fn register(s: &mut RegistryState, edge: &str, incarnation: u64, resumable: bool) {
        let (o, _) = s.apply(&at(
            0,
            Command::RegisterEdge {
                edge: id(edge),
                region: id("eu"),
                address: "127.0.0.1:1".into(),
                incarnation,
                lease_ms: 1_000,
                resumable_sessions: resumable,
                replica: 0,
            },
        ));
        assert_eq!(o, Outcome::Done);
    }

    fn join(
        s: &mut RegistryState,
        room: &str,
        peer: &str,
        edge: &str,
    ) -> (Outcome, Vec<RoomEvent>) {
        s.apply(&at(
            1,
            Command::Join {
                room: id(room),
                peer: id(peer),
                edge: id(edge),
                meta: "{}".into(),
                max_members: Some(2),
                attempt: 0,
                deadline_ms: 0,
                remote_region: None,
                listing: Default::default(),
            },
        ))
    }

    fn join_listed(s: &mut RegistryState, room: &str, peer: &str, public: bool, meta: &str) {
        s.apply(&at(
            1,
            Command::Join {
                room: id(room),
                peer: id(peer),
                edge: id("e1"),
                meta: "{}".into(),
                max_members: None,
                attempt: 0,
                deadline_ms: 0,
                remote_region: None,
                listing: Listing {
                    public,
                    meta: Some(meta.into()),
                },
            },
        ));
    }

    fn listed(s: &RegistryState, prefix: &str, after: Option<&str>, limit: usize) -> Vec<String> {
        s.public_rooms(&ListingQuery {
            prefix: prefix.into(),
            after: after.map(id),
            limit,
        })
        .rooms
        .iter()
        .map(|r| format!("{}:{}", r.room, r.members))
        .collect()
    }

    #[test]
    fn only_rooms_created_public_are_listed_and_the_creating_join_decides() {
        let mut s = RegistryState::default();
        register(&mut s, "e1", 1, false);
        join_listed(&mut s, "game-a", "p1", true, r#"{"title":"A"}"#);
        join_listed(&mut s, "game-b", "p2", false, "{}");
        // A later join saying public changes nothing, nor one saying private.
        join_listed(&mut s, "game-b", "p3", true, "{}");
        join_listed(&mut s, "game-a", "p4", false, r#"{"title":"other"}"#);
        join_listed(&mut s, "chat", "p5", true, "{}");
        assert_eq!(listed(&s, "", None, 10), ["chat:1", "game-a:2"]);
        let page = s.public_rooms(&ListingQuery {
            prefix: "game".into(),
            after: None,
            limit: 10,
        });
        assert_eq!(page.rooms.len(), 1);
        assert_eq!(page.rooms[0].meta.as_deref(), Some(r#"{"title":"A"}"#));
        assert_eq!(page.rooms[0].regions, vec![id::<Region>("eu")]);
        assert!(s.listing(&id("game-a")).public && !s.listing(&id("game-b")).public);
        // Pages: the cursor is exclusive, `more` says whether to go on.
        let first = s.public_rooms(&ListingQuery {
            prefix: String::new(),
            after: None,
            limit: 1,
        });
        assert!(first.more);
        assert_eq!(listed(&s, "", Some("chat"), 1), ["game-a:2"]);
        assert!(listed(&s, "", Some("game-a"), 1).is_empty());
        assert!(listed(&s, "game", Some("zzz"), 5).is_empty());
        // An emptied room leaves the listing; re-created private, it stays out.
        for (room, peer) in [("game-a", "p1"), ("game-a", "p4")] {
            s.apply(&at(
                2,
                Command::Leave {
                    room: id(room),
                    peer: id(peer),
                    attempt: 0,
                    deadline_ms: 0,
                },
            ));
        }
        join_listed(&mut s, "game-a", "p6", false, "{}");
        assert_eq!(listed(&s, "", None, 10), ["chat:1"]);
        // The flag and the meta survive a snapshot.
        let json = serde_json::to_string(&s).unwrap();
        let back: RegistryState = serde_json::from_str(&json).unwrap();
        assert_eq!(back, s);
    }

    #[test]
    fn join_lists_members_and_emits_event() {
        let mut s = RegistryState::default();
        register(&mut s, "e1", 1, false);
        join(&mut s, "r", "a", "e1");
        let (o, ev) = join(&mut s, "r", "b", "e1");
        let Outcome::Joined { members, epoch } = o else {
            panic!("{o:?}")
        };
        assert_eq!(members.len(), 2);
        assert_eq!(ev.len(), 1);
        assert_eq!(ev[0].epoch, epoch);
        // Capacity holds.
        assert_eq!(
            join(&mut s, "r", "c", "e1").0,
            Outcome::Rejected(Rejection::RoomFull)
        );
        // A retried join is idempotent.
        let (o, ev) = join(&mut s, "r", "b", "e1");
        assert!(matches!(o, Outcome::Joined { .. }));
        assert!(ev.is_empty());
    }

    /// An edge takes back a join it answered `unavailable` with a leave conditional on that
    /// join request: the leave must not undo the client's next join of the room, whichever
    /// of the two commits first.
    #[test]
    fn a_conditional_leave_spares_a_later_join() {
        let attempt = |s: &mut RegistryState, n: u64| {
            s.apply(&at(
                1,
                Command::Join {
                    room: id("r"),
                    peer: id("a"),
                    edge: id("e1"),
                    meta: "{}".into(),
                    max_members: None,
                    attempt: n,
                    deadline_ms: 0,
                    remote_region: None,
                    listing: Default::default(),
                },
            ))
            .0
        };
        let leave = |s: &mut RegistryState, n: u64| {
            s.apply(&at(
                2,
                Command::Leave {
                    room: id("r"),
                    peer: id("a"),
                    attempt: n,
                    deadline_ms: 0,
                },
            ))
            .0
        };
        let mut s = RegistryState::default();
        register(&mut s, "e1", 1, false);
        // The doubtful join 7 committed, then the retry 8 did: the take-back of 7 is refused.
        assert!(matches!(attempt(&mut s, 7), Outcome::Joined { .. }));
        assert!(matches!(attempt(&mut s, 8), Outcome::Joined { .. }));
        assert_eq!(leave(&mut s, 7), Outcome::Rejected(Rejection::NotInRoom));
        assert_eq!(s.room(&id("r")).map(|v| v.members.len()), Some(1));
        // The take-back of 8 (or a plain leave) still leaves.
        assert!(matches!(leave(&mut s, 8), Outcome::Left { .. }));
        assert!(s.room(&id("r")).is_none());
        // The take-back first, then the retry: the retry joins anew.
        assert!(matches!(attempt(&mut s, 9), Outcome::Joined { .. }));
        assert!(matches!(leave(&mut s, 9), Outcome::Left { .. }));
        assert!(matches!(attempt(&mut s, 10), Outcome::Joined { .. }));
        assert_eq!(leave(&mut s, 9), Outcome::Rejected(Rejection::NotInRoom));
        assert!(matches!(leave(&mut s, 0), Outcome::Left { .. }));
    }

    /// A join or leave stamped after its deadline (held by a stalled replica, forwarded
    /// after the edge answered its client) changes nothing.
    #[test]
    fn a_request_past_its_deadline_is_refused() {
        let mut s = RegistryState::default();
        register(&mut s, "e1", 1, false);
        let join = |deadline_ms| Command::Join {
            room: id("r"),
            peer: id("a"),
            edge: id("e1"),
            meta: "{}".into(),
            max_members: None,
            attempt: 1,
            deadline_ms,
            remote_region: None,
            listing: Default::default(),
        };
        let (o, ev) = s.apply(&at(100, join(99)));
        assert_eq!((o, ev.len()), (Outcome::Rejected(Rejection::Late), 0));
        assert!(s.room(&id("r")).is_none());
        assert!(matches!(
            s.apply(&at(100, join(100))).0,
            Outcome::Joined { .. }
        ));
        let leave = Command::Leave {
            room: id("r"),
            peer: id("a"),
            attempt: 0,
            deadline_ms: 50,
        };
        assert_eq!(
            s.apply(&at(100, leave)).0,
            Outcome::Rejected(Rejection::Late)
        );
        assert!(s.room(&id("r")).is_some());
    }

    /// Contact discovery's rooms are the system's own: no webhook is recorded for them, and
    /// the application's rooms around them are recorded as ever.
    #[test]
    fn hidden_rooms_feed_no_webhooks() {
        let mut s = RegistryState::default();
        s.apply(&at(
            0,
            Command::ConfigureWebhooks {
                endpoints: vec!["hook".into()],
                capacity: 100,
            },
        ));
        register(&mut s, "e1", 1, false);
        let hidden = format!("{HIDDEN_ROOM_PREFIX}abc");
        assert!(id::<RoomId>(&hidden).is_hidden());
        assert!(!id::<RoomId>("r").is_hidden());
        join(&mut s, &hidden, "a", "e1");
        join(&mut s, "r", "a", "e1");
        s.apply(&at(2, Command::Disconnect { peer: id("a") }));
        let rooms: Vec<String> = s
            .webhooks()
            .pending_for("hook", 0, 100)
            .iter()
            .map(|r| format!("{} {:?}", r.event.name(), r.event))
            .collect();
        assert_eq!(rooms.len(), 4, "{rooms:?}");
        assert!(rooms.iter().all(|r| !r.contains("~contact/")), "{rooms:?}");
    }

    /// Kick and close leave with their own reasons; the webhook outbox records each change
    /// once, with a room's start and finish around its members' joins and leaves.
    #[test]
    fn remove_and_close_leave_with_their_reasons_and_feed_the_outbox() {
        let mut s = RegistryState::default();
        s.apply(&at(
            0,
            Command::ConfigureWebhooks {
                endpoints: vec!["hook".into()],
                capacity: 100,
            },
        ));
        register(&mut s, "e1", 1, false);
        join(&mut s, "r", "a", "e1");
        join(&mut s, "r", "b", "e1");
        assert_eq!(s.joined_at_ms(&id("r"), &id("a")), Some(1));
        let (o, ev) = s.apply(&at(
            2,
            Command::Remove {
                room: id("r"),
                peer: id("a"),
            },
        ));
        assert!(matches!(o, Outcome::Left { .. }));
        assert!(matches!(
            ev[0].kind,
            RoomEventKind::Left {
                reason: LeaveReason::Removed,
                ..
            }
        ));
        let refused = |s: &mut RegistryState, room: &str, peer: &str| {
            s.apply(&at(
                3,
                Command::Remove {
                    room: id(room),
                    peer: id(peer),
                },
            ))
            .0
        };
        assert_eq!(
            refused(&mut s, "r", "a"),
            Outcome::Rejected(Rejection::NotInRoom)
        );
        assert_eq!(
            refused(&mut s, "nowhere", "a"),
            Outcome::Rejected(Rejection::UnknownRoom)
        );
        let (_, ev) = s.apply(&at(4, Command::Close { room: id("r") }));
        assert_eq!(ev.len(), 1);
        assert!(s.room(&id("r")).is_none());
        let (o, _) = s.apply(&at(5, Command::Close { room: id("r") }));
        assert_eq!(o, Outcome::Rejected(Rejection::UnknownRoom));
        let names: Vec<&str> = s
            .webhooks()
            .pending_for("hook", 0, 100)
            .iter()
            .map(|r| r.event.name())
            .collect();
        assert_eq!(
            names,
            [
                "room_started",
                "peer_joined",
                "peer_joined",
                "peer_left",
                "peer_left",
                "room_finished"
            ]
        );
        // The state (with its outbox) survives a snapshot round trip; older state without
        // the new fields still loads.
        let json = serde_json::to_string(&s).unwrap();
        let back: RegistryState = serde_json::from_str(&json).unwrap();
        assert_eq!(back, s);
        let old: RegistryState = serde_json::from_str(
            r#"{"edges":{},"rooms":{"r":{"epoch":1,"members":{}}},"peers":{},"next_epoch":1}"#,
        )
        .unwrap();
        assert!(old.webhooks().is_empty());
        assert!(
            !old.listing(&id("r")).public,
            "rooms of old state are private"
        );
    }

    /// A join logged before discovery existed (no `listing`) applies as a private join.
    #[test]
    fn an_old_join_entry_is_a_private_join() {
        let old: Stamped = serde_json::from_str(
            r#"{"at_ms":1,"command":{"Join":{"room":"r","peer":"p","edge":"e1","meta":"{}","max_members":null}}}"#,
        )
        .unwrap();
        let Command::Join { listing, .. } = &old.command else {
            panic!("{old:?}")
        };
        assert_eq!(listing, &Listing::default());
        let mut s = RegistryState::default();
        register(&mut s, "e1", 1, false);
        assert!(matches!(s.apply(&old).0, Outcome::Joined { .. }));
        assert!(
            s.public_rooms(&ListingQuery {
                prefix: String::new(),
                after: None,
                limit: 10
            })
            .rooms
            .is_empty()
        );
    }

    #[test]
    fn unknown_edge_is_refused() {
        let mut s = RegistryState::default();
        assert_eq!(
            join(&mut s, "r", "a", "e1").0,
            Outcome::Rejected(Rejection::UnknownEdge)
        );
    }

    #[test]
    fn leaving_empties_rooms() {
        let mut s = RegistryState::default();
        register(&mut s, "e1", 1, false);
        join(&mut s, "r", "a", "e1");
        let (o, ev) = s.apply(&at(
            2,
            Command::Leave {
                room: id("r"),
                peer: id("a"),
                attempt: 0,
                deadline_ms: 0,
            },
        ));
        assert!(matches!(o, Outcome::Left { .. }));
        assert!(matches!(
            ev[0].kind,
            RoomEventKind::Left {
                reason: LeaveReason::Left,
                ..
            }
        ));
        assert!(s.room(&id("r")).is_none());
        assert!(s.rooms().is_empty());
    }

    #[test]
    fn new_incarnation_removes_leftovers() {
        let mut s = RegistryState::default();
        register(&mut s, "e1", 1, false);
        join(&mut s, "r", "a", "e1");
        register(&mut s, "e1", 2, false);
        assert!(s.room(&id("r")).is_none());
        // An older incarnation cannot come back.
        let (o, _) = s.apply(&at(
            0,
            Command::RegisterEdge {
                edge: id("e1"),
                region: id("eu"),
                address: String::new(),
                incarnation: 1,
                lease_ms: 1,
                resumable_sessions: false,
                replica: 0,
            },
        ));
        assert_eq!(o, Outcome::Rejected(Rejection::StaleIncarnation));
    }

    #[test]
    fn expired_lease_detaches_then_grace_removes() {
        let mut s = RegistryState::default();
        register(&mut s, "e1", 1, true);
        register(&mut s, "e2", 1, true);
        join(&mut s, "r", "a", "e1");
        join(&mut s, "r", "b", "e2");
        s.apply(&at(
            500,
            Command::RenewLease {
                edge: id("e2"),
                incarnation: 1,
                lease_ms: 10_000,
            },
        ));
        assert_eq!(s.next_sweep_due_ms(2_000, true), Some(1_000));
        // A new leader gives edges a lease to renew first: it ends no lease yet (and has
        // nothing else due, nobody being detached).
        assert_eq!(s.next_sweep_due_ms(2_000, false), None);
        s.apply(&at(
            1_000,
            Command::Sweep {
                grace_ms: 2_000,
                leases: false,
            },
        ));
        assert_eq!(s.is_detached(&id("a")), Some(false));
        assert_eq!(s.longest_lease_ms(), 10_000);
        let (_, ev) = s.apply(&at(
            1_000,
            Command::Sweep {
                grace_ms: 2_000,
                leases: true,
            },
        ));
        assert!(ev.is_empty());
        assert_eq!(s.is_detached(&id("a")), Some(true));
        assert_eq!(s.is_detached(&id("b")), Some(false));
        assert_indexed(&s);
        assert_eq!(s.next_sweep_due_ms(2_000, true), Some(3_000));
        let (_, ev) = s.apply(&at(
            3_000,
            Command::Sweep {
                grace_ms: 2_000,
                leases: true,
            },
        ));
        assert_eq!(ev.len(), 1);
        assert!(
            matches!(&ev[0].kind, RoomEventKind::Left { reason: LeaveReason::Expired, peer, .. } if peer.as_str() == "a")
        );
        assert!(
            s.edge(&id("e1")).is_none(),
            "a down edge without peers is forgotten"
        );
        assert_indexed(&s);
    }

    #[test]
    fn same_incarnation_reregisters_on_another_replica_and_keeps_its_peers() {
        let mut s = RegistryState::default();
        register(&mut s, "e1", 1, false);
        join(&mut s, "r", "a", "e1");
        // The lease runs out while the edge switches replica.
        s.apply(&at(
            1_000,
            Command::Sweep {
                grace_ms: 5_000,
                leases: true,
            },
        ));
        assert_eq!(s.is_detached(&id("a")), Some(true));
        let (o, ev) = s.apply(&at(
            1_500,
            Command::RegisterEdge {
                edge: id("e1"),
                region: id("eu"),
                address: "127.0.0.1:1".into(),
                incarnation: 1,
                lease_ms: 1_000,
                resumable_sessions: false,
                replica: 7,
            },
        ));
        assert_eq!(o, Outcome::Done);
        assert!(ev.is_empty());
        let rec = s.edge(&id("e1")).unwrap();
        assert_eq!((rec.replica, rec.down), (7, false));
        assert_eq!(s.is_detached(&id("a")), Some(false));
        assert_eq!(s.room(&id("r")).unwrap().members.len(), 1);
        assert_indexed(&s);
        // Nothing is due: the peer is not swept later.
        assert_eq!(s.next_sweep_due_ms(5_000, true), Some(2_500));
        let (_, ev) = s.apply(&at(
            2_400,
            Command::Sweep {
                grace_ms: 5_000,
                leases: true,
            },
        ));
        assert!(ev.is_empty());
    }

    #[test]
    fn rebind_moves_without_leaving() {
        let mut s = RegistryState::default();
        register(&mut s, "e1", 1, true);
        register(&mut s, "e2", 1, true);
        join(&mut s, "r", "a", "e1");
        s.apply(&at(2, Command::Detach { peer: id("a") }));
        let (o, ev) = s.apply(&at(
            3,
            Command::Rebind {
                peer: id("a"),
                edge: id("e2"),
                remote_region: None,
            },
        ));
        assert_eq!(o, Outcome::Done);
        assert!(matches!(&ev[0].kind, RoomEventKind::Moved(m) if m.edge.as_str() == "e2"));
        assert_eq!(s.is_detached(&id("a")), Some(false));
        assert_eq!(s.room(&id("r")).unwrap().members[0].edge.as_str(), "e2");
        assert_indexed(&s);
    }

    #[test]
    fn the_sweeper_and_liveness_indexes_follow_every_change() {
        let mut s = RegistryState::default();
        register(&mut s, "e1", 1, true);
        let remote_join = |s: &mut RegistryState, room: &str, peer: &str, edge: &str| {
            s.apply(&at(
                1,
                Command::Join {
                    room: id(room),
                    peer: id(peer),
                    edge: id(edge),
                    meta: "{}".into(),
                    max_members: None,
                    attempt: 0,
                    deadline_ms: 0,
                    remote_region: Some(id("us")),
                    listing: Default::default(),
                },
            ))
        };
        join(&mut s, "r", "a", "e1");
        remote_join(&mut s, "r", "x", "us-1");
        remote_join(&mut s, "q", "y", "us-2");
        assert_indexed(&s);
        assert_eq!(s.remote_edges()["us"].len(), 2);
        // A remote edge down detaches its peers; back, it attaches them again.
        let remote = |alive: &[&str], down: &[&str], gone: &[&str]| Command::RemoteEdges {
            alive: alive.iter().map(|e| id(e)).collect(),
            down: down.iter().map(|e| id(e)).collect(),
            gone: gone.iter().map(|e| id(e)).collect(),
        };
        s.apply(&at(10, remote(&[], &["us-1"], &[])));
        assert_eq!(s.is_detached(&id("x")), Some(true));
        assert_eq!(s.next_sweep_due_ms(100, false), Some(110));
        assert_indexed(&s);
        s.apply(&at(20, remote(&["us-1"], &[], &[])));
        assert_eq!(s.is_detached(&id("x")), Some(false));
        assert_eq!(s.next_sweep_due_ms(100, false), None);
        assert_indexed(&s);
        // Detached, then gone with its room: nothing stays due.
        s.apply(&at(30, Command::Detach { peer: id("a") }));
        assert_eq!(s.next_sweep_due_ms(100, false), Some(130));
        s.apply(&at(
            31,
            Command::Leave {
                room: id("r"),
                peer: id("a"),
                attempt: 0,
                deadline_ms: 0,
            },
        ));
        assert_eq!(s.next_sweep_due_ms(100, false), None);
        assert_indexed(&s);
        // A remote peer moving to this group's edge is no longer remote.
        s.apply(&at(
            40,
            Command::Rebind {
                peer: id("x"),
                edge: id("e1"),
                remote_region: None,
            },
        ));
        assert_indexed(&s);
        assert_eq!(s.remote_edges()["us"].len(), 1);
        // An edge its region no longer knows: its peers are removed.
        s.apply(&at(50, remote(&[], &[], &["us-2"])));
        assert!(s.remote_edges().is_empty());
        assert_indexed(&s);
    }

    #[test]
    fn epochs_increase_across_room_recreation() {
        let mut s = RegistryState::default();
        register(&mut s, "e1", 1, false);
        let (Outcome::Joined { epoch: e1, .. }, _) = join(&mut s, "r", "a", "e1") else {
            panic!()
        };
        s.apply(&at(2, Command::Disconnect { peer: id("a") }));
        let (Outcome::Joined { epoch: e2, .. }, _) = join(&mut s, "r", "a", "e1") else {
            panic!()
        };
        assert!(e2 > e1 + 1);
    }
}
