//! The room index's pure core: this edge's peers and the membership of the rooms they are
//! in, with no lock, no I/O and no transport; the handle type of a local session is a
//! parameter, so that tests drive the core with plain values.
//!
//! The registry is the truth; the core follows it by applying room events in epoch order
//! (an event at or below a room's known epoch is already included and is skipped). A room is
//! tracked while at least one local peer is in it. Every change returns the frames that local
//! sessions must be sent ([`Notice`]s), to be handed over once the caller's lock is released.
//!
//! Contact rooms (`crate::contacts`) are tracked like any room but never shown to clients as
//! rooms: instead, every change to one re-computes the mutual contacts of its local members,
//! and each peer is sent the difference from what it was told (`contact` frames).

use std::collections::{BTreeMap, HashMap, HashSet};

/// The index's maps are read on every signal, keyed by ids (room ids chosen by clients):
/// foldhash, seeded per process, costs a fraction of SipHash there.
type Map<K, V> = HashMap<K, V, foldhash::fast::RandomState>;
type Set<K> = HashSet<K, foldhash::fast::RandomState>;

/// Joins of one room kept in doubt per peer (a client retrying through a long outage, about
/// one a second); the oldest is forgotten first. A repeated join that reaches the registry
/// makes the membership its own, so the newest are the ones that matter.
const MAX_DOUBTFUL_JOINS: usize = 32;

use heliograph_coordinator::registry::{
    EdgeId, LeaveReason, Member, PeerId, Region, RoomEvent, RoomEventKind, RoomId, RoomView,
};
use serde_json::value::RawValue;

use crate::contacts::{self, ContactHash, Match, Role, Seen, is_contact_room};
use crate::outbox::Outgoing;
use crate::protocol::{self, ErrorCode, PeerInfo, Ref, ServerMessage};
use crate::session::{LocalSession, Owner, StoredRoom};

/// A local session as the core sees it: something to hand frames to, cheap to clone.
pub trait Handle: Clone {
    /// Whether both lead to the same session.
    fn same(&self, other: &Self) -> bool;
}

/// Where a member of a tracked room is connected.
#[derive(Debug, Clone)]
struct MemberInfo {
    edge: EdgeId,
    region: Region,
    meta: Box<RawValue>,
    /// In a contact room, what the member does with its hash (read from `meta` once).
    role: Role,
}

impl MemberInfo {
    fn from_member(m: &Member, room: &RoomId) -> Self {
        Self {
            edge: m.edge.clone(),
            region: m.region.clone(),
            meta: protocol::raw_json(m.meta.clone()),
            role: if is_contact_room(room) {
                Role::from_meta(&m.meta)
            } else {
                Role::default()
            },
        }
    }
}

#[derive(Debug)]
struct RoomEntry {
    epoch: u64,
    members: Map<PeerId, MemberInfo>,
}

#[derive(Debug)]
struct LocalPeer<H> {
    handle: H,
    /// This socket's claim on the stored session.
    owner: Owner,
    rooms: Set<RoomId>,
    /// A resume is being set up: relayed signals are taken before its rooms are known.
    resuming: bool,
    /// Joins sent to the registry whose event has not been seen yet, with the client's ref.
    pending_joins: Map<RoomId, PendingJoin>,
    /// What few sessions ever have, out of line: every peer's entry sits in the index's
    /// table, whose slots are sized by it (and read on every signal).
    rare: Option<Box<RarePeer>>,
}

/// A local peer's state that most sessions never have: made on first use.
#[derive(Debug, Default)]
struct RarePeer {
    /// Rooms joined with a token that does not allow sending signals (kept for a resume).
    receive_only: Set<RoomId>,
    /// Joins answered `unavailable` whose outcome was unknown: if one committed after all, the
    /// registry must take it back (and only those: a member the index merely lost track of
    /// is not taken out). Each with the attempt numbers of the join requests in doubt (a
    /// client may retry and be left in doubt again), on which the take-back is conditional.
    doubtful: Map<RoomId, Vec<u64>>,
    /// Rooms where a take-back of such joins is on its way.
    taking_back: Set<RoomId>,
    /// The mutual contacts this session was last told are online, with their regions.
    contacts_told: BTreeMap<Match, Region>,
    /// A `contacts` request of this session is changing its contact rooms: its matches are
    /// computed once when it ends, not after each of its (up to a thousand) commands.
    contacts_updating: bool,
}

/// A join sent to the registry whose `joined` has not been sent yet.
#[derive(Debug)]
struct PendingJoin {
    /// The client's `ref`, echoed in `joined`.
    reference: Option<Ref>,
    /// The registry committed the join; the index must reach this room epoch before the
    /// joiner is told who is there (events up to it may still be on their way).
    committed_at: Option<u64>,
}

/// The index: rooms this edge tracks and its local peers.
pub struct RoomCore<H> {
    me: EdgeId,
    rooms: Map<RoomId, RoomEntry>,
    peers: Map<PeerId, LocalPeer<H>>,
}

fn stored<H>(local: &LocalPeer<H>) -> Vec<StoredRoom> {
    let mut rooms: Vec<StoredRoom> = local
        .rooms
        .iter()
        .chain(local.pending_joins.keys())
        .map(|room| StoredRoom {
            room: room.clone(),
            receive_only: local.rare().is_some_and(|r| r.receive_only.contains(room)),
        })
        .collect();
    rooms.sort_by(|a, b| a.room.cmp(&b.room));
    rooms.dedup();
    rooms
}

impl<H> LocalPeer<H> {
    fn new(handle: H, owner: Owner) -> Self {
        Self {
            handle,
            owner,
            rooms: Set::default(),
            resuming: false,
            pending_joins: Map::default(),
            rare: None,
        }
    }

    fn rare(&self) -> Option<&RarePeer> {
        self.rare.as_deref()
    }

    fn rare_mut(&mut self) -> &mut RarePeer {
        self.rare.get_or_insert_with(Box::default)
    }
}

/// A frame to hand to a local session once the index lock is released.
pub type Notice<H> = (H, Outgoing);

/// Where a signal goes, decided from this edge's membership cache.
#[derive(Debug, Clone)]
pub enum Route<H> {
    /// The target is connected here: hand the frame over in process.
    Local(H),
    /// The target is connected to another edge, in `region` (see `router`).
    Remote { edge: EdgeId, region: Region },
    /// The target was connected here and has no socket now (it may resume): its signals go
    /// to its pending buffer.
    Detached,
}

/// Why a join cannot start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JoinStart {
    /// Sent to the registry; `joined` follows from the room event.
    Pending,
    /// Already a member: `joined` was produced at once.
    AlreadyMember,
}

impl<H: Handle> RoomCore<H> {
    pub fn new(me: EdgeId) -> Self {
        Self {
            me,
            rooms: Map::default(),
            peers: Map::default(),
        }
    }

    /// Every local session's handle.
    pub fn handles(&self) -> impl Iterator<Item = &H> {
        self.peers.values().map(|p| &p.handle)
    }

    pub fn add_session(&mut self, peer: PeerId, handle: H, owner: Owner) {
        self.peers.insert(peer, LocalPeer::new(handle, owner));
    }

    /// Forgets a local peer if `handle` is still its session (a resume on this edge may have
    /// replaced it); returns whether it was in any room (and so must be removed from the
    /// registry).
    pub fn remove_session(&mut self, peer: &PeerId, handle: &H) -> Option<bool> {
        if !self.peers.get(peer).is_some_and(|p| p.handle.same(handle)) {
            return None;
        }
        self.peers
            .remove(peer)
            .map(|p| !p.rooms.is_empty() || !p.pending_joins.is_empty())
    }

    /// A resume of `peer` starts on this edge with `handle`; returns the session it replaces
    /// (the peer's previous socket here, not yet noticed as dead), which must be cut off.
    pub fn add_resuming(&mut self, peer: PeerId, handle: H, owner: Owner) -> Option<H> {
        let mut local = LocalPeer::new(handle, owner);
        local.resuming = true;
        self.peers.insert(peer, local).map(|p| p.handle)
    }

    /// Gives a resumed peer its rooms back. `views` are the rooms as the registry has them;
    /// rooms that no longer list the peer are dropped. Returns the rooms it is in.
    pub fn complete_resume(
        &mut self,
        peer: &PeerId,
        rooms: &[StoredRoom],
        views: &HashMap<RoomId, Option<RoomView>>,
    ) -> Vec<StoredRoom> {
        let inner = self;
        let mut kept = Vec::new();
        for stored in rooms {
            let Some(view) = views.get(&stored.room).cloned().flatten() else {
                continue;
            };
            if !view.members.iter().any(|m| &m.peer == peer) {
                continue;
            }
            let entry = inner
                .rooms
                .entry(stored.room.clone())
                .or_insert_with(|| entry_from_view(&view));
            if let Some(member) = entry.members.get_mut(peer) {
                // The registry learns of the move from the rebind that follows.
                member.edge = inner.me.clone();
            }
            kept.push(stored.clone());
        }
        if let Some(local) = inner.peers.get_mut(peer) {
            local.resuming = false;
            for stored in &kept {
                local.rooms.insert(stored.room.clone());
                if stored.receive_only {
                    local.rare_mut().receive_only.insert(stored.room.clone());
                }
            }
        }
        kept
    }

    /// The rooms of a local peer (joined or being joined), as a resume needs them.
    pub fn stored_rooms(&self, peer: &PeerId) -> Vec<StoredRoom> {
        self.peers.get(peer).map(stored).unwrap_or_default()
    }

    /// Whether a local peer is in or joining any room.
    pub fn in_any_room(&self, peer: &PeerId) -> bool {
        self.peers
            .get(peer)
            .is_some_and(|p| !p.rooms.is_empty() || !p.pending_joins.is_empty())
    }

    /// Every session with a socket here, as the store keeps it.
    pub fn local_sessions(&self) -> Vec<LocalSession> {
        self.peers
            .iter()
            .filter(|(_, p)| !p.resuming)
            .map(|(peer, p)| LocalSession {
                peer: peer.clone(),
                owner: p.owner.clone(),
                rooms: stored(p),
            })
            .collect()
    }

    /// The session of a local peer, whatever its rooms.
    pub fn session(&self, peer: &PeerId) -> Option<H> {
        self.peers.get(peer).map(|p| p.handle.clone())
    }

    pub fn tracked_rooms(&self) -> usize {
        self.rooms.len()
    }

    /// Records a join about to be sent to the registry.
    pub fn begin_join(
        &mut self,
        peer: &PeerId,
        room: &RoomId,
        reference: Option<Ref>,
        max_rooms: usize,
        receive_only: bool,
    ) -> Result<(JoinStart, Vec<Notice<H>>), ErrorCode> {
        let inner = self;
        let Some(local) = inner.peers.get_mut(peer) else {
            return Err(ErrorCode::Internal);
        };
        if receive_only {
            local.rare_mut().receive_only.insert(room.clone());
        } else if let Some(rare) = local.rare.as_mut() {
            rare.receive_only.remove(room);
        }
        if local.rooms.contains(room) {
            let handle = local.handle.clone();
            let notice = inner
                .rooms
                .get(room)
                .map(|entry| (handle, joined_frame(room, entry, peer, reference.as_ref())));
            return Ok((JoinStart::AlreadyMember, notice.into_iter().collect()));
        }
        // Contact rooms have limits of their own (`--max-contact-publish`, `-watch`).
        let app_rooms = local
            .rooms
            .iter()
            .chain(local.pending_joins.keys())
            .filter(|r| !is_contact_room(r))
            .count();
        if !is_contact_room(room) && app_rooms >= max_rooms {
            return Err(ErrorCode::TooManyRooms);
        }
        local.pending_joins.insert(
            room.clone(),
            PendingJoin {
                reference,
                committed_at: None,
            },
        );
        Ok((JoinStart::Pending, Vec::new()))
    }

    /// The registry refused or failed the join: forget it.
    /// Returns false when there was nothing to abort: the join was answered already (a join
    /// completes only on the registry's answer, so this is one given up), or the session is
    /// gone. With `doubtful` (the join request's attempt number),
    /// the join's outcome is unknown and the client is told it is not in the room: a commit
    /// seen later must be taken back.
    pub fn abort_join(&mut self, peer: &PeerId, room: &RoomId, doubtful: Option<u64>) -> bool {
        let Some(local) = self.peers.get_mut(peer) else {
            return false;
        };
        if local.pending_joins.remove(room).is_none() {
            return false;
        }
        if let Some(attempt) = doubtful {
            let attempts = local.rare_mut().doubtful.entry(room.clone()).or_default();
            if attempts.len() >= MAX_DOUBTFUL_JOINS {
                attempts.remove(0);
            }
            attempts.push(attempt);
        }
        true
    }

    /// A join the registry committed at `epoch` whose room events have not reached that epoch
    /// in time: the replica this edge reads events from may never learn of the commit (it lost
    /// its quorum right after the leader committed). The join is then treated like any join
    /// whose outcome is unknown: forgotten here, the client told it is not in the room, and the
    /// membership taken back when the events arrive. Returns the joiner's handle and `ref` when
    /// the join was still waiting; `None` when it completed (or was answered) meanwhile.
    pub fn give_up_join(
        &mut self,
        peer: &PeerId,
        room: &RoomId,
        epoch: u64,
        attempt: u64,
    ) -> Option<(H, Option<Ref>)> {
        let local = self.peers.get(peer)?;
        let pending = local.pending_joins.get(room)?;
        if pending.committed_at != Some(epoch) {
            return None;
        }
        let answer = (local.handle.clone(), pending.reference.clone());
        self.abort_join(peer, room, Some(attempt)).then_some(answer)
    }

    /// Whether the registry lists `peer` in `room` although its client was told it is not
    /// there (a doubtful join that committed after all): the attempt numbers of the joins in
    /// doubt. Answers once: the caller takes it back (with leaves conditional on those
    /// numbers, so that a later join of the client's stands), and reports with
    /// [`Self::take_back_done`] or [`Self::still_doubtful`].
    pub fn take_back_due(&mut self, peer: &PeerId, room: &RoomId) -> Option<Vec<u64>> {
        let local = self.peers.get_mut(peer)?;
        if local.rooms.contains(room) || local.pending_joins.contains_key(room) {
            return None;
        }
        let rare = local.rare.as_mut()?;
        let attempts = rare.doubtful.remove(room)?;
        rare.taking_back.insert(room.clone());
        Some(attempts)
    }

    /// Like [`Self::take_back_due`], for a join just answered `unavailable` whose membership
    /// the index already shows: its event arrived while the join waited for the registry's
    /// answer (a join completes on that answer only), so no later event will ask for the
    /// take-back. Taking back a membership that is someone else's (an older one, whose leave
    /// is still on its way) is harmless: the leave is conditional on the join requests in
    /// doubt, and the registry refuses it.
    pub fn take_back_if_shown(&mut self, peer: &PeerId, room: &RoomId) -> Option<Vec<u64>> {
        let shown = self
            .rooms
            .get(room)
            .is_some_and(|entry| entry.members.contains_key(peer));
        if !shown {
            return None;
        }
        self.take_back_due(peer, room)
    }

    /// A take-back ended: the membership it was for is gone, or a later join owns it.
    pub fn take_back_done(&mut self, peer: &PeerId, room: &RoomId) {
        if let Some(rare) = self.peers.get_mut(peer).and_then(|l| l.rare.as_mut()) {
            rare.taking_back.remove(room);
        }
    }

    /// A take-back did not get through: the next resync tries again, unless the client has
    /// joined the room since (its join then owns the membership).
    pub fn still_doubtful(&mut self, peer: &PeerId, room: &RoomId, attempts: Vec<u64>) {
        let Some(local) = self.peers.get_mut(peer) else {
            return;
        };
        if let Some(rare) = local.rare.as_mut() {
            rare.taking_back.remove(room);
        }
        if local.rooms.contains(room) {
            return;
        }
        local
            .rare_mut()
            .doubtful
            .entry(room.clone())
            .or_insert(attempts);
    }

    /// The registry committed the peer's join; the room was at `epoch` then. The joiner is
    /// told who is there as soon as the index includes that epoch: now, if it does (the
    /// room's events got here first, or a retried join committed nothing new), else when
    /// the event that brings it there is applied.
    pub fn join_committed(&mut self, peer: &PeerId, room: &RoomId, epoch: u64) -> Vec<Notice<H>> {
        let mut notices = Vec::new();
        let Some(pending) = self
            .peers
            .get_mut(peer)
            .and_then(|local| local.pending_joins.get_mut(room))
        else {
            // Told already.
            return notices;
        };
        pending.committed_at = Some(epoch);
        if self
            .rooms
            .get(room)
            .is_some_and(|entry| entry.epoch >= epoch)
        {
            complete_join(self, room, peer, &mut notices);
            if is_contact_room(room) {
                refresh_contacts(self, [peer.clone()], &mut notices);
            }
        }
        notices
    }

    /// Whether a join of `peer` to `room` is still waiting for its room events.
    pub fn join_waiting(&self, peer: &PeerId, room: &RoomId) -> bool {
        self.peers
            .get(peer)
            .is_some_and(|p| p.pending_joins.contains_key(room))
    }

    /// Whether the peer is in the room (as far as this edge knows).
    pub fn is_member(&self, peer: &PeerId, room: &RoomId) -> bool {
        self.peers.get(peer).is_some_and(|p| p.rooms.contains(room))
    }

    /// The peer left the room on request: signals stop at once, the event updates the rest.
    pub fn local_leave(&mut self, peer: &PeerId, room: &RoomId) -> Vec<Notice<H>> {
        let mut notices = Vec::new();
        if let Some(local) = self.peers.get_mut(peer) {
            local.rooms.remove(room);
        }
        if is_contact_room(room) {
            refresh_contacts(self, [peer.clone()], &mut notices);
        }
        notices
    }

    /// A `contacts` request of `peer` starts (`true`: its matches wait) or ends (`false`:
    /// they are computed now, and the difference told).
    pub fn contacts_updating(&mut self, peer: &PeerId, updating: bool) -> Vec<Notice<H>> {
        if let Some(local) = self.peers.get_mut(peer)
            && (updating || local.rare.is_some())
        {
            local.rare_mut().contacts_updating = updating;
        }
        if updating {
            Vec::new()
        } else {
            self.refresh_contacts_of(peer)
        }
    }

    /// Tells a local peer the difference between its mutual contacts now and what it was
    /// last told (after a resume, everything: the edge it resumed from told it before).
    pub fn refresh_contacts_of(&mut self, peer: &PeerId) -> Vec<Notice<H>> {
        let mut notices = Vec::new();
        refresh_contacts(self, [peer.clone()], &mut notices);
        notices
    }

    /// The contact hashes a local peer is in the registry with, and its role for each
    /// (from its own member `meta` in each contact room).
    pub fn contact_roles(&self, peer: &PeerId) -> BTreeMap<ContactHash, Role> {
        let Some(local) = self.peers.get(peer) else {
            return BTreeMap::new();
        };
        local
            .rooms
            .iter()
            .filter(|r| is_contact_room(r))
            .filter_map(|room| {
                let hash = contacts::hash_of(room)?;
                let me = self.rooms.get(room)?.members.get(peer)?;
                Some((hash, me.role))
            })
            .collect()
    }

    /// The contact room through which `from` may reach `to`: one where `to` publishes a hash
    /// `from` watches, and only while `from` was told `to` is a mutual contact.
    pub fn contact_room(&self, from: &PeerId, to: &PeerId) -> Option<RoomId> {
        let local = self.peers.get(from)?;
        local
            .rare()?
            .contacts_told
            .keys()
            .find(|(_, peer)| peer == to)
            .map(|(hash, _)| contacts::room_for(hash))
    }

    /// Contact hashes published and watched by this edge's sessions. Walks the tracked rooms
    /// (a prefix test each) and the local members of contact rooms only.
    pub fn contact_counts(&self) -> (usize, usize) {
        let mut counts = (0, 0);
        for (room, entry) in self.rooms.iter().filter(|(r, _)| is_contact_room(r)) {
            for (peer, info) in &entry.members {
                let here = self.peers.get(peer).is_some_and(|p| p.rooms.contains(room));
                if info.edge == self.me && here {
                    let role = info.role;
                    counts.0 += usize::from(role.publishes);
                    counts.1 += usize::from(role.watches);
                }
            }
        }
        counts
    }

    /// A room `from` (a peer of this edge) shares with `to`, for ingresses whose signals name
    /// no room (Socket.IO): the first in room-id order, so the choice is stable. `Err` says
    /// why there is none: `from` is in no room, or `to` is in none of them.
    pub fn shared_room(&self, from: &PeerId, to: &PeerId) -> Result<RoomId, ErrorCode> {
        let rooms = match self.peers.get(from) {
            Some(p) if !p.rooms.is_empty() => &p.rooms,
            _ => return Err(ErrorCode::NotInRoom),
        };
        rooms
            .iter()
            .filter(|room| !is_contact_room(room))
            .filter(|room| {
                self.rooms
                    .get(*room)
                    .is_some_and(|entry| entry.members.contains_key(to))
            })
            .min()
            .cloned()
            .ok_or(ErrorCode::UnknownPeer)
    }

    /// Finds where a signal from `from` to `to` in `room` goes.
    pub fn route_signal(
        &self,
        from: &PeerId,
        room: &RoomId,
        to: &PeerId,
    ) -> Result<Route<H>, ErrorCode> {
        self.route_signal_ids(from, room.as_str(), to.as_str())
            .map(|(route, _)| route)
    }

    /// [`Self::route_signal`] for ids given as text (a signal as it was read), with the
    /// index's own copy of the room's id (a queued signal keeps it): routing builds no id.
    pub fn route_signal_ids(
        &self,
        from: &PeerId,
        room: &str,
        to: &str,
    ) -> Result<(Route<H>, RoomId), ErrorCode> {
        let inner = self;
        if !inner
            .peers
            .get(from)
            .is_some_and(|p| p.rooms.contains(room))
        {
            return Err(ErrorCode::NotInRoom);
        }
        let (room_id, member) = inner
            .rooms
            .get_key_value(room)
            .and_then(|(id, entry)| Some((id, entry.members.get(to)?)))
            .ok_or(ErrorCode::UnknownPeer)?;
        let ids = |route| Ok((route, room_id.clone()));
        // A socket here wins over the registry's view, which may not have seen the peer
        // resume here yet. A resuming socket holds what it is sent until its replay is out.
        match inner.peers.get(to) {
            Some(p) if p.resuming || p.rooms.contains(room) => {
                return ids(Route::Local(p.handle.clone()));
            }
            // Its join committed here (the registry's view lists it on this edge, and the
            // room's members were told it joined) and only its own answer is still on the
            // way: what they send it at once is delivered, not refused.
            Some(p) if member.edge == self.me && p.pending_joins.contains_key(room) => {
                return ids(Route::Local(p.handle.clone()));
            }
            Some(_) if member.edge == self.me => return Err(ErrorCode::UnknownPeer),
            _ => {}
        }
        if member.edge != self.me {
            return ids(Route::Remote {
                edge: member.edge.clone(),
                region: member.region.clone(),
            });
        }
        ids(Route::Detached)
    }

    /// The session of a local peer that is a member of `room`, for a signal relayed from
    /// another edge (which checked the sender's side).
    pub fn local_member(&self, peer: &PeerId, room: &RoomId) -> Option<H> {
        // A pending join counts: the other edge routed here because the registry lists the
        // peer as a member, so the join committed (see `route_signal_ids`).
        self.peers
            .get(peer)
            .filter(|p| p.resuming || p.rooms.contains(room) || p.pending_joins.contains_key(room))
            .map(|p| p.handle.clone())
    }

    /// Whether `peer` has a session on this edge.
    pub fn has_session(&self, peer: &PeerId) -> bool {
        self.peers.contains_key(peer)
    }

    /// Every room this edge tracks or is joining, for a resync.
    pub fn rooms_to_resync(&self) -> Vec<RoomId> {
        let mut rooms: Vec<RoomId> = self.rooms.keys().cloned().collect();
        for p in self.peers.values() {
            rooms.extend(p.pending_joins.keys().cloned());
        }
        rooms.sort();
        rooms.dedup();
        rooms
    }

    /// Applies one registry event; returns the frames local peers must be sent.
    /// `view` gives the room's members at the event's epoch, for a room this edge starts
    /// tracking (a remote coordinator sends them with the event; the embedded one is read).
    pub fn apply(
        &mut self,
        event: &RoomEvent,
        view: impl Fn(&RoomId) -> Option<RoomView>,
    ) -> Vec<Notice<H>> {
        let me = self.me.clone();
        let inner = self;
        let mut notices = Vec::new();
        let room = &event.room;
        // Local peers whose contacts this event may change: the local members before it and
        // after it (a leaver among them).
        let before = if is_contact_room(room) {
            local_members(inner, &me, room)
        } else {
            Vec::new()
        };
        match &event.kind {
            RoomEventKind::Joined(member) => {
                let is_local_joiner = member.edge == me && inner.peers.contains_key(&member.peer);
                let fresh = match inner.rooms.get_mut(room) {
                    Some(entry) if entry.epoch >= event.epoch => false,
                    Some(entry) => {
                        entry.epoch = event.epoch;
                        // A member already known (e.g. moved here with its room from another
                        // region's group) is not news.
                        entry
                            .members
                            .insert(member.peer.clone(), MemberInfo::from_member(member, room))
                            .is_none()
                    }
                    None if is_local_joiner => {
                        let Some(v) = view(room) else {
                            // The room is already gone again; the leave event follows.
                            return notices;
                        };
                        inner.rooms.insert(room.clone(), entry_from_view(&v));
                        // Nobody local was in the room before.
                        false
                    }
                    None => return notices,
                };
                if fresh {
                    let joiner = MemberInfo::from_member(member, room);
                    notify_others(
                        &*inner,
                        &me,
                        room,
                        &member.peer,
                        &mut notices,
                        |peer_room, _| {
                            let info = peer_info(&member.peer, &joiner);
                            let frame = protocol::encode(&ServerMessage::PeerJoined {
                                room: peer_room.as_str(),
                                peer: info,
                            });
                            Outgoing::new("peer-joined", frame)
                        },
                    );
                }
                if is_local_joiner {
                    complete_join(inner, room, &member.peer, &mut notices);
                }
            }
            RoomEventKind::Left { peer, reason, .. } => {
                let Some(entry) = inner.rooms.get_mut(room) else {
                    return notices;
                };
                if entry.epoch >= event.epoch {
                    return notices;
                }
                entry.epoch = event.epoch;
                entry.members.remove(peer);
                if let Some(local) = inner.peers.get_mut(peer) {
                    let was_in = local.rooms.remove(room);
                    // Taken out by the server API: the client is told, since it asked for
                    // nothing (its connection stays open for its other rooms).
                    let code = match reason {
                        LeaveReason::Removed => Some(ErrorCode::Removed),
                        LeaveReason::Closed => Some(ErrorCode::RoomClosed),
                        _ => None,
                    };
                    if let Some(code) = code.filter(|_| was_in && !is_contact_room(room)) {
                        let frame = protocol::encode_room_error(code, room.as_str());
                        notices.push((local.handle.clone(), Outgoing::new("error", frame)));
                    }
                }
                notify_others(&*inner, &me, room, peer, &mut notices, |peer_room, _| {
                    let frame = protocol::encode(&ServerMessage::PeerLeft {
                        room: peer_room.as_str(),
                        peer_id: peer.as_str(),
                        reason: reason.as_str(),
                    });
                    Outgoing::new("peer-left", frame)
                });
                drop_if_unused(inner, &me, room);
            }
            RoomEventKind::Rehomed(_) => {
                // The room's epochs now come from its new home's group: whatever it says next
                // is newer than what the old one said. The follower re-reads the room.
                if let Some(entry) = inner.rooms.get_mut(room) {
                    entry.epoch = 0;
                }
            }
            RoomEventKind::Moved(member) => {
                if let Some(entry) = inner.rooms.get_mut(room)
                    && entry.epoch < event.epoch
                {
                    entry.epoch = event.epoch;
                    entry
                        .members
                        .insert(member.peer.clone(), MemberInfo::from_member(member, room));
                }
            }
        }
        complete_committed(inner, &me, room, &mut notices);
        if is_contact_room(room) {
            let mut peers = before;
            peers.extend(local_members(inner, &me, room));
            peers.sort();
            peers.dedup();
            refresh_contacts(inner, peers, &mut notices);
        }
        notices
    }

    /// Brings one room to `fresh` (see [`Self::resync`]).
    pub fn resync_one(&mut self, room: RoomId, fresh: Option<RoomView>) -> Vec<Notice<H>> {
        let me = self.me.clone();
        let mut notices = Vec::new();
        resync_room(self, &me, room, fresh, &mut notices);
        notices
    }

    /// Re-reads every tracked room after missing events, telling local peers what changed.
    pub fn resync(&mut self, view: impl Fn(&RoomId) -> Option<RoomView>) -> Vec<Notice<H>> {
        let rooms = self.rooms_to_resync();
        let me = self.me.clone();
        let inner = self;
        let mut notices = Vec::new();
        for room in rooms {
            let fresh = view(&room);
            resync_room(inner, &me, room, fresh, &mut notices);
        }
        notices
    }
}

/// Brings one room's entry to `fresh` (the registry's view, `None`: nobody is there), telling
/// local peers the difference; a view older than the entry is ignored.
fn resync_room<H: Handle>(
    inner: &mut RoomCore<H>,
    me: &EdgeId,
    room: RoomId,
    fresh: Option<RoomView>,
    notices: &mut Vec<Notice<H>>,
) {
    // A replica that lags behind the events this index applied has nothing to add:
    // its older view would undo what the index knows.
    if let (Some(v), Some(entry)) = (&fresh, inner.rooms.get(&room))
        && v.epoch < entry.epoch
    {
        tracing::debug!(%room, view = v.epoch, index = entry.epoch, "a re-read older than the index is ignored");
        return;
    }
    let mut contact_peers = if is_contact_room(&room) {
        local_members(inner, me, &room)
    } else {
        Vec::new()
    };
    let old_epoch = inner.rooms.get(&room).map(|e| e.epoch);
    let old: Map<PeerId, MemberInfo> = inner
        .rooms
        .remove(&room)
        .map(|e| e.members)
        .unwrap_or_default();
    let new = fresh.map(|v| entry_from_view(&v));
    let new_members: HashSet<PeerId> = new
        .as_ref()
        .map(|e| e.members.keys().cloned().collect())
        .unwrap_or_default();
    if let Some(entry) = new {
        inner.rooms.insert(room.clone(), entry);
    }
    for gone in old.keys().filter(|p| !new_members.contains(*p)) {
        if let Some(local) = inner.peers.get_mut(gone) {
            // Rare and decisive (a client of this edge leaves a room without asking): logged
            // so that a membership the registry and the edge disagree on can be traced.
            if local.rooms.remove(&room) {
                tracing::info!(peer = %gone, %room, "a local member is not in the room as re-read");
            }
        }
        notify_others(&*inner, me, &room, gone, notices, |r, _| {
            let frame = protocol::encode(&ServerMessage::PeerLeft {
                room: r.as_str(),
                peer_id: gone.as_str(),
                reason: "disconnected",
            });
            Outgoing::new("peer-left", frame)
        });
    }
    let arrived: Vec<PeerId> = new_members
        .iter()
        .filter(|p| !old.contains_key(*p))
        .cloned()
        .collect();
    {
        let gone: Vec<&PeerId> = old.keys().filter(|p| !new_members.contains(*p)).collect();
        tracing::debug!(%room, ?old_epoch, new_epoch = ?inner.rooms.get(&room).map(|e| e.epoch), ?gone, ?arrived, "room re-read");
    }
    // Members that arrived are announced first, to those already in the room; a
    // local joiner among them is then told who is there, once, in its `joined`
    // (announcing arrivals after it would repeat members its `joined` listed).
    for peer in &arrived {
        let Some(info) = inner
            .rooms
            .get(&room)
            .and_then(|e| e.members.get(peer))
            .cloned()
        else {
            return;
        };
        notify_others(&*inner, me, &room, peer, notices, |r, _| {
            let frame = protocol::encode(&ServerMessage::PeerJoined {
                room: r.as_str(),
                peer: peer_info(peer, &info),
            });
            Outgoing::new("peer-joined", frame)
        });
    }
    let joiners: Vec<PeerId> = new_members
        .iter()
        .filter(|p| {
            inner
                .peers
                .get(*p)
                .is_some_and(|local| local.pending_joins.contains_key(&room))
        })
        .cloned()
        .collect();
    for peer in joiners {
        complete_join(inner, &room, &peer, notices);
    }
    if is_contact_room(&room) {
        contact_peers.extend(local_members(inner, me, &room));
        contact_peers.sort();
        contact_peers.dedup();
        refresh_contacts(inner, contact_peers, notices);
    }
    drop_if_unused(inner, me, &room);
}

/// The members of `room` that have a session on this edge.
fn local_members<H>(inner: &RoomCore<H>, me: &EdgeId, room: &RoomId) -> Vec<PeerId> {
    inner.rooms.get(room).map_or_else(Vec::new, |entry| {
        entry
            .members
            .iter()
            .filter(|(p, info)| &info.edge == me && inner.peers.contains_key(*p))
            .map(|(p, _)| p.clone())
            .collect()
    })
}

/// Re-computes the mutual contacts of each of `peers` (local sessions) from the contact
/// rooms it is in, and queues a `contact` frame for each difference from what it was told.
fn refresh_contacts<H: Handle>(
    inner: &mut RoomCore<H>,
    peers: impl IntoIterator<Item = PeerId>,
    notices: &mut Vec<Notice<H>>,
) {
    for peer in peers {
        let updating = |l: &&LocalPeer<H>| l.rare().is_some_and(|r| r.contacts_updating);
        let Some(local) = inner.peers.get(&peer).filter(|l| !updating(l)) else {
            continue;
        };
        let rooms = local
            .rooms
            .iter()
            .filter(|r| is_contact_room(r))
            .filter_map(|room| {
                let entry = inner.rooms.get(room)?;
                let hash = contacts::hash_of(room)?;
                let mine = entry.members.get(&peer)?.role;
                let seen: Vec<Seen<'_>> = entry
                    .members
                    .iter()
                    .map(|(p, info)| Seen {
                        peer: p,
                        region: &info.region,
                        role: info.role,
                    })
                    .collect();
                Some((hash, mine, seen))
            });
        let now = contacts::mutual(&peer, rooms);
        let Some(local) = inner.peers.get_mut(&peer) else {
            continue;
        };
        for ((hash, other), region) in &now {
            let told = local
                .rare()
                .and_then(|r| r.contacts_told.get(&(hash.clone(), other.clone())));
            if told != Some(region) {
                let frame = protocol::encode(&ServerMessage::Contact {
                    hash: hash.as_str(),
                    online: true,
                    peer: other.as_str(),
                    region: Some(region.as_str()),
                });
                notices.push((local.handle.clone(), Outgoing::new("contact", frame)));
            }
        }
        for (hash, other) in local
            .rare()
            .into_iter()
            .flat_map(|r| r.contacts_told.keys())
        {
            if !now.contains_key(&(hash.clone(), other.clone())) {
                let frame = protocol::encode(&ServerMessage::Contact {
                    hash: hash.as_str(),
                    online: false,
                    peer: other.as_str(),
                    region: None,
                });
                notices.push((local.handle.clone(), Outgoing::new("contact", frame)));
            }
        }
        if !now.is_empty() || local.rare.is_some() {
            local.rare_mut().contacts_told = now;
        }
    }
}

fn entry_from_view(view: &RoomView) -> RoomEntry {
    RoomEntry {
        epoch: view.epoch,
        members: view
            .members
            .iter()
            .map(|m| (m.peer.clone(), MemberInfo::from_member(m, &view.room)))
            .collect(),
    }
}

fn peer_info<'a>(peer: &'a PeerId, info: &'a MemberInfo) -> PeerInfo<'a> {
    PeerInfo {
        id: peer.as_str(),
        meta: &info.meta,
        region: info.region.as_str(),
    }
}

fn joined_frame(
    room: &RoomId,
    entry: &RoomEntry,
    me: &PeerId,
    reference: Option<&Ref>,
) -> Outgoing {
    let mut peers: Vec<PeerInfo<'_>> = entry
        .members
        .iter()
        .filter(|(p, _)| *p != me)
        .map(|(p, info)| peer_info(p, info))
        .collect();
    peers.sort_by(|a, b| a.id.cmp(b.id));
    let frame = protocol::encode(&ServerMessage::Joined {
        room: room.as_str(),
        peers,
        reference: protocol::ref_raw(reference),
    });
    Outgoing::new("joined", frame)
}

/// The local peer's join is in the room entry: it becomes a member and is told who is there.
fn complete_join<H: Handle>(
    inner: &mut RoomCore<H>,
    room: &RoomId,
    peer: &PeerId,
    notices: &mut Vec<Notice<H>>,
) {
    let Some(entry) = inner.rooms.get(room) else {
        return;
    };
    if !entry.members.contains_key(peer) {
        return;
    }
    let Some(local) = inner.peers.get_mut(peer) else {
        return;
    };
    let Some(pending) = local.pending_joins.get(room) else {
        // Not a join this session asked for (already completed).
        return;
    };
    // Only the registry's answer to this join, and an index that has reached the epoch of
    // that answer, complete it. Seeing the peer in the room is not enough: the membership
    // seen may be an older one, from before a leave whose event has not arrived yet (a
    // re-read from a replica still catching up, or an old `joined` event), or one of an
    // earlier join in doubt, about to be taken back. Completing on it would let that leave
    // take the client out of the room it was just told it is in.
    if pending.committed_at.is_none_or(|at| entry.epoch < at) {
        return;
    }
    let Some(PendingJoin { reference, .. }) = local.pending_joins.remove(room) else {
        return;
    };
    // Most sessions join once: the table's slots are given back rather than kept for the
    // socket's life.
    if local.pending_joins.is_empty() {
        local.pending_joins = Map::default();
    }
    local.rooms.insert(room.clone());
    // The client is in the room now: earlier joins in doubt are moot.
    if let Some(rare) = local.rare.as_mut() {
        rare.doubtful.remove(room);
    }
    if is_contact_room(room) {
        // Answered by `contacts-set`; what the membership changes is told by `contact`.
        return;
    }
    notices.push((
        local.handle.clone(),
        joined_frame(room, entry, peer, reference.as_ref()),
    ));
}

/// Local joiners of `room` whose join the registry committed at an epoch the index has
/// reached are told who is there.
fn complete_committed<H: Handle>(
    inner: &mut RoomCore<H>,
    me: &EdgeId,
    room: &RoomId,
    notices: &mut Vec<Notice<H>>,
) {
    let Some(entry) = inner.rooms.get(room) else {
        return;
    };
    let ready: Vec<PeerId> = entry
        .members
        .iter()
        .filter(|(peer, info)| {
            &info.edge == me
                && inner.peers.get(*peer).is_some_and(|local| {
                    local
                        .pending_joins
                        .get(room)
                        .and_then(|p| p.committed_at)
                        .is_some_and(|at| at <= entry.epoch)
                })
        })
        .map(|(peer, _)| peer.clone())
        .collect();
    for peer in ready {
        complete_join(inner, room, &peer, notices);
    }
}

/// Queues a frame for every local member of `room` other than `subject`.
fn notify_others<H: Handle>(
    inner: &RoomCore<H>,
    me: &EdgeId,
    room: &RoomId,
    subject: &PeerId,
    notices: &mut Vec<Notice<H>>,
    frame: impl Fn(&RoomId, &PeerId) -> Outgoing,
) {
    if is_contact_room(room) {
        // Never shown as a room: its changes reach clients as `contact` frames.
        return;
    }
    let Some(entry) = inner.rooms.get(room) else {
        return;
    };
    for (peer, info) in &entry.members {
        if peer == subject || &info.edge != me {
            continue;
        }
        if let Some(local) = inner.peers.get(peer).filter(|p| p.rooms.contains(room)) {
            notices.push((local.handle.clone(), frame(room, peer)));
        }
    }
}

/// Stops tracking a room in which no local peer is a member. (A pending joiner's own event
/// starts tracking it again from a fresh view.)
fn drop_if_unused<H>(inner: &mut RoomCore<H>, me: &EdgeId, room: &RoomId) {
    let used = inner.rooms.get(room).is_some_and(|entry| {
        entry
            .members
            .iter()
            .any(|(p, info)| &info.edge == me && inner.peers.contains_key(p))
    });
    if !used {
        inner.rooms.remove(room);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    /// A session handle for the tests: a number.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    struct H(u32);

    impl Handle for H {
        fn same(&self, other: &Self) -> bool {
            self == other
        }
    }

    const ME: &str = "edge-a";
    const OTHER: &str = "edge-b";

    fn peer(id: &str) -> PeerId {
        PeerId::new(id).unwrap()
    }

    fn room() -> RoomId {
        RoomId::new("room-1").unwrap()
    }

    fn member(id: &str, edge: &str) -> Member {
        Member {
            peer: peer(id),
            edge: EdgeId::new(edge).unwrap(),
            region: Region::new("eu").unwrap(),
            meta: "{}".into(),
        }
    }

    fn view(epoch: u64, members: &[(&str, &str)]) -> RoomView {
        RoomView {
            room: room(),
            epoch,
            members: members.iter().map(|(p, e)| member(p, e)).collect(),
        }
    }

    fn joined(epoch: u64, id: &str, edge: &str) -> RoomEvent {
        RoomEvent {
            room: room(),
            epoch,
            kind: RoomEventKind::Joined(member(id, edge)),
        }
    }

    fn left(epoch: u64, id: &str, edge: &str) -> RoomEvent {
        RoomEvent {
            room: room(),
            epoch,
            kind: RoomEventKind::Left {
                peer: peer(id),
                edge: EdgeId::new(edge).unwrap(),
                reason: LeaveReason::Left,
            },
        }
    }

    /// The notices as (handle, type, the peer they are about), in order.
    fn summary(notices: &[Notice<H>]) -> Vec<(u32, String, String)> {
        notices
            .iter()
            .map(|(h, out)| {
                let v: serde_json::Value = serde_json::from_str(&out.text).unwrap();
                let about = match out.kind {
                    "joined" => v["peers"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(|p| p["id"].as_str().unwrap().to_owned())
                        .collect::<Vec<_>>()
                        .join(","),
                    "peer-joined" => v["peer"]["id"].as_str().unwrap().to_owned(),
                    "peer-left" => v["peer_id"].as_str().unwrap().to_owned(),
                    other => panic!("unexpected notice {other}"),
                };
                (h.0, out.kind.to_owned(), about)
            })
            .collect()
    }

    fn notice(h: u32, kind: &str, about: &str) -> (u32, String, String) {
        (h, kind.to_owned(), about.to_owned())
    }

    /// Edge A with local peer `a` (handle 1) in `room-1`, which also holds `b` on edge B;
    /// the room is at epoch 2.
    #[test]
    fn a_joiner_the_room_was_told_of_is_a_target_before_its_own_answer() {
        let mut core = with_a_and_remote_b();
        core.add_session(peer("c"), H(3), Owner::new(&EdgeId::new(ME).unwrap()));
        let (start, _) = core
            .begin_join(&peer("c"), &room(), None, 8, false)
            .unwrap();
        assert_eq!(start, JoinStart::Pending);
        // Before the registry lists it, c is nobody's target.
        assert!(matches!(
            core.route_signal(&peer("a"), &room(), &peer("c")),
            Err(ErrorCode::UnknownPeer)
        ));
        // The event comes before the answer to c's join: a is told c joined, and may signal
        // it at once.
        let notices = core.apply(&joined(3, "c", ME), |_| None);
        assert_eq!(summary(&notices), [notice(1, "peer-joined", "c")]);
        assert!(matches!(
            core.route_signal(&peer("a"), &room(), &peer("c")),
            Ok(Route::Local(H(3)))
        ));
        assert!(core.local_member(&peer("c"), &room()).is_some());
        // A local peer with no join there is still no target.
        core.add_session(peer("d"), H(4), Owner::new(&EdgeId::new(ME).unwrap()));
        assert!(matches!(
            core.route_signal(&peer("a"), &room(), &peer("d")),
            Err(ErrorCode::UnknownPeer)
        ));
    }

    fn with_a_and_remote_b() -> RoomCore<H> {
        let mut core = RoomCore::new(EdgeId::new(ME).unwrap());
        core.add_session(peer("a"), H(1), Owner::new(&EdgeId::new(ME).unwrap()));
        let (start, _) = core
            .begin_join(&peer("a"), &room(), None, 8, false)
            .unwrap();
        assert_eq!(start, JoinStart::Pending);
        assert!(core.join_committed(&peer("a"), &room(), 1).is_empty());
        let notices = core.apply(&joined(1, "a", ME), |_| Some(view(1, &[("a", ME)])));
        assert_eq!(summary(&notices), [notice(1, "joined", "")]);
        let notices = core.apply(&joined(2, "b", OTHER), |_| None);
        assert_eq!(summary(&notices), [notice(1, "peer-joined", "b")]);
        core
    }

    fn contact(hash: char) -> (ContactHash, RoomId) {
        let h = ContactHash::new(&hash.to_string().repeat(contacts::HASH_CHARS)).unwrap();
        let room = contacts::room_for(&h);
        (h, room)
    }

    fn contact_event(room: &RoomId, epoch: u64, id: &str, edge: &str, role: Role) -> RoomEvent {
        let mut m = member(id, edge);
        m.meta = role.to_meta();
        RoomEvent {
            room: room.clone(),
            epoch,
            kind: RoomEventKind::Joined(m),
        }
    }

    /// The `contact` notices as (handle, hash's first character, online, peer).
    fn contact_summary(notices: &[Notice<H>]) -> Vec<(u32, char, bool, String)> {
        notices
            .iter()
            .map(|(h, out)| {
                assert_eq!(out.kind, "contact", "only contact frames: {}", out.text);
                let v: serde_json::Value = serde_json::from_str(&out.text).unwrap();
                let hash = v["hash"].as_str().unwrap().chars().next().unwrap();
                (
                    h.0,
                    hash,
                    v["online"].as_bool().unwrap(),
                    v["peer"].as_str().unwrap().into(),
                )
            })
            .collect()
    }

    #[test]
    fn contact_rooms_tell_only_mutual_contacts_and_never_show_as_rooms() {
        let me = EdgeId::new(ME).unwrap();
        let mut core = RoomCore::new(me.clone());
        core.add_session(peer("a"), H(1), Owner::new(&me));
        let (_, ha) = contact('a');
        let (_, hb) = contact('b');
        let publish = Role {
            publishes: true,
            watches: false,
        };
        let watch = Role {
            publishes: false,
            watches: true,
        };
        // a publishes `a`, watches `b`.
        for (epoch, room, role) in [(1, &ha, publish), (1, &hb, watch)] {
            core.begin_join(&peer("a"), room, None, usize::MAX, false)
                .unwrap();
            let mut m = member("a", ME);
            m.meta = role.to_meta();
            let v = RoomView {
                room: room.clone(),
                epoch,
                members: vec![m],
            };
            let notices = core.apply(&contact_event(room, epoch, "a", ME, role), |_| {
                Some(v.clone())
            });
            assert!(notices.is_empty(), "no `joined` for a contact room");
            let notices = core.join_committed(&peer("a"), room, epoch);
            assert!(notices.is_empty(), "no `joined` for a contact room");
            assert!(core.is_member(&peer("a"), room));
        }
        // c watches `a` (a stranger: a does not watch anything c publishes): nothing.
        let notices = core.apply(&contact_event(&ha, 2, "c", OTHER, watch), |_| None);
        assert!(notices.is_empty());
        // b publishes `b`: not mutual yet.
        let notices = core.apply(&contact_event(&hb, 2, "b", OTHER, publish), |_| None);
        assert!(notices.is_empty());
        // b watches `a`: mutual.
        let notices = core.apply(&contact_event(&ha, 3, "b", OTHER, watch), |_| None);
        assert_eq!(contact_summary(&notices), [(1, 'b', true, "b".into())]);
        assert_eq!(core.contact_room(&peer("a"), &peer("b")), Some(hb.clone()));
        assert_eq!(core.contact_room(&peer("a"), &peer("c")), None);
        // b's session ends: offline.
        let notices = core.apply(
            &RoomEvent {
                room: hb.clone(),
                epoch: 3,
                kind: RoomEventKind::Left {
                    peer: peer("b"),
                    edge: EdgeId::new(OTHER).unwrap(),
                    reason: LeaveReason::Expired,
                },
            },
            |_| None,
        );
        assert_eq!(contact_summary(&notices), [(1, 'b', false, "b".into())]);
        assert_eq!(core.contact_room(&peer("a"), &peer("b")), None);
        assert_eq!(core.contact_counts(), (1, 1));

        // While a `contacts` request of a's runs, its matches wait; they are told once after.
        assert!(core.contacts_updating(&peer("a"), true).is_empty());
        let notices = core.apply(&contact_event(&hb, 4, "b", OTHER, publish), |_| None);
        assert!(notices.is_empty(), "deferred");
        let notices = core.contacts_updating(&peer("a"), false);
        assert_eq!(contact_summary(&notices), [(1, 'b', true, "b".into())]);
    }

    #[test]
    fn an_event_at_or_below_the_known_epoch_is_skipped() {
        let mut core = with_a_and_remote_b();
        // The same event again, and an older one: already included, nobody is told twice.
        assert!(core.apply(&joined(2, "b", OTHER), |_| None).is_empty());
        assert!(core.apply(&joined(1, "c", OTHER), |_| None).is_empty());
        assert!(core.apply(&left(2, "b", OTHER), |_| None).is_empty());
        assert!(
            core.route_signal(&peer("a"), &room(), &peer("b")).is_ok(),
            "b is still a member"
        );
        assert!(matches!(
            core.route_signal(&peer("a"), &room(), &peer("c")),
            Err(ErrorCode::UnknownPeer)
        ));
        // A newer one applies.
        let notices = core.apply(&left(3, "b", OTHER), |_| None);
        assert_eq!(summary(&notices), [notice(1, "peer-left", "b")]);
    }

    #[test]
    fn a_join_completes_once_with_the_members_before_it() {
        let mut core = with_a_and_remote_b();
        core.add_session(peer("c"), H(3), Owner::new(&EdgeId::new(ME).unwrap()));
        core.begin_join(&peer("c"), &room(), None, 8, false)
            .unwrap();
        assert!(core.join_committed(&peer("c"), &room(), 3).is_empty());
        let notices = core.apply(&joined(3, "c", ME), |_| None);
        assert_eq!(
            summary(&notices),
            [notice(1, "peer-joined", "c"), notice(3, "joined", "a,b")]
        );
        // A member that joins again is answered from the index at once, not sent anew.
        let (start, notices) = core
            .begin_join(&peer("c"), &room(), None, 8, false)
            .unwrap();
        assert_eq!(start, JoinStart::AlreadyMember);
        assert_eq!(summary(&notices), [notice(3, "joined", "a,b")]);
        // Too many rooms for one connection.
        let other_room = RoomId::new("room-2").unwrap();
        assert!(matches!(
            core.begin_join(&peer("c"), &other_room, None, 1, false),
            Err(ErrorCode::TooManyRooms)
        ));
    }

    #[test]
    fn a_resync_tells_local_members_only_what_changed() {
        let mut core = with_a_and_remote_b();
        // Missed events: b left, c (remote) joined; a is still there.
        let notices = core.resync(|_| Some(view(7, &[("a", ME), ("c", OTHER)])));
        assert_eq!(
            summary(&notices),
            [notice(1, "peer-left", "b"), notice(1, "peer-joined", "c")]
        );
        // Nothing changed: nothing to tell.
        assert!(
            core.resync(|_| Some(view(7, &[("a", ME), ("c", OTHER)])))
                .is_empty()
        );
        // The resynced epoch holds: an older event is skipped.
        assert!(core.apply(&joined(6, "d", OTHER), |_| None).is_empty());
    }

    #[test]
    fn a_resync_from_a_lagging_replica_changes_nothing() {
        let mut core = with_a_and_remote_b();
        // A replica that has not applied b's join yet (epoch 1 < 2).
        assert!(core.resync(|_| Some(view(1, &[("a", ME)]))).is_empty());
        assert!(core.route_signal(&peer("a"), &room(), &peer("b")).is_ok());
        // A member the index knows but nobody told otherwise is never "due" to be taken back.
        assert_eq!(core.take_back_due(&peer("a"), &room()), None);
    }

    #[test]
    fn a_resync_completes_a_committed_join_whose_event_was_missed() {
        let mut core = RoomCore::new(EdgeId::new(ME).unwrap());
        core.add_session(peer("a"), H(1), Owner::new(&EdgeId::new(ME).unwrap()));
        core.begin_join(&peer("a"), &room(), None, 8, false)
            .unwrap();
        assert_eq!(
            core.rooms_to_resync(),
            [room()],
            "a pending join is re-read"
        );
        assert!(core.join_committed(&peer("a"), &room(), 3).is_empty());
        let notices = core.resync(|_| Some(view(4, &[("a", ME), ("b", OTHER)])));
        assert_eq!(summary(&notices), [notice(1, "joined", "b")]);
        assert!(core.is_member(&peer("a"), &room()));
    }

    #[test]
    fn a_resync_tells_a_joiner_each_member_once_and_the_others_of_the_joiner() {
        // a is in the room; c is joining on this edge; its event was missed, and so was the
        // arrival of several remote members.
        let mut core = with_a_and_remote_b();
        core.add_session(peer("c"), H(3), Owner::new(&EdgeId::new(ME).unwrap()));
        core.begin_join(&peer("c"), &room(), None, 8, false)
            .unwrap();
        assert!(core.join_committed(&peer("c"), &room(), 8).is_empty());
        let members = [
            ("a", ME),
            ("b", OTHER),
            ("c", ME),
            ("d", OTHER),
            ("e", OTHER),
        ];
        let mut got = summary(&core.resync(|_| Some(view(9, &members))));
        got.sort();
        assert_eq!(
            got,
            [
                notice(1, "peer-joined", "c"),
                notice(1, "peer-joined", "d"),
                notice(1, "peer-joined", "e"),
                notice(3, "joined", "a,b,d,e"),
            ]
        );
    }

    /// a left and joins again at once; its edge reads events from a replica that has not
    /// applied the leave yet. What that replica shows (a in the room, from before the leave)
    /// must not answer the new join: the leave's event, arriving next, would take a out of
    /// the room it was just told it is in, while the registry keeps it there (a ghost).
    #[test]
    fn a_membership_from_before_a_leave_does_not_answer_the_next_join() {
        let mut core = with_a_and_remote_b();
        // a's leave committed at 3 (its event is still on its way); its new join at 4.
        core.local_leave(&peer("a"), &room());
        core.begin_join(&peer("a"), &room(), None, 8, false)
            .unwrap();
        // A re-read from the lagging replica, and a repeated old event, show a in the room.
        let notices = core.resync(|_| Some(view(2, &[("a", ME), ("b", OTHER)])));
        assert!(summary(&notices).is_empty(), "{notices:?}");
        assert!(core.apply(&joined(1, "a", ME), |_| None).is_empty());
        // The registry's answer: committed at 4, which the index has not reached.
        assert!(core.join_committed(&peer("a"), &room(), 4).is_empty());
        assert!(!core.is_member(&peer("a"), &room()));
        // The replica catches up: the leave, then the join, which completes.
        assert!(core.apply(&left(3, "a", ME), |_| None).is_empty());
        let notices = core.apply(&joined(4, "a", ME), |_| {
            Some(view(4, &[("a", ME), ("b", OTHER)]))
        });
        assert_eq!(summary(&notices), [notice(1, "joined", "b")]);
        assert!(core.is_member(&peer("a"), &room()));
    }

    #[test]
    fn a_committed_join_is_answered_once_the_index_has_its_epoch() {
        let mut core = with_a_and_remote_b();
        let owner = Owner::new(&EdgeId::new(ME).unwrap());
        // The registry's answer comes before the room's events: the joiner waits for them.
        core.add_session(peer("c"), H(3), owner.clone());
        core.begin_join(&peer("c"), &room(), None, 8, false)
            .unwrap();
        assert!(core.join_committed(&peer("c"), &room(), 4).is_empty());
        let notices = core.apply(&joined(3, "d", OTHER), |_| None);
        assert_eq!(summary(&notices), [notice(1, "peer-joined", "d")]);
        let notices = core.apply(&joined(4, "c", ME), |_| None);
        assert_eq!(
            summary(&notices),
            [notice(1, "peer-joined", "c"), notice(3, "joined", "a,b,d")]
        );
        // The answer after the events: nothing more to say.
        assert!(core.join_committed(&peer("c"), &room(), 4).is_empty());
    }

    /// A replica that has not caught up with the room yet reads it as empty: that view is
    /// older than the index's and changes nothing (it used to drop the room, and with it the
    /// local members' membership and every later event of the room). An empty view as recent
    /// as the index's is the room emptied.
    #[test]
    fn an_empty_view_from_a_lagging_replica_changes_nothing() {
        let mut core = with_a_and_remote_b();
        let lagging = RoomView {
            room: room(),
            epoch: 1,
            members: Vec::new(),
        };
        assert!(core.resync(|_| Some(lagging.clone())).is_empty());
        assert!(core.is_member(&peer("a"), &room()));
        let notices = core.apply(&left(3, "b", OTHER), |_| None);
        assert_eq!(summary(&notices), [notice(1, "peer-left", "b")]);
        let emptied = RoomView {
            room: room(),
            epoch: 4,
            members: Vec::new(),
        };
        core.resync(|_| Some(emptied.clone()));
        assert!(!core.is_member(&peer("a"), &room()));
    }

    /// c's first join was left in doubt, committed, and is being taken back when c joins
    /// again: seeing c in the room (that first membership, about to go) must not answer the
    /// new join; only the registry's answer to it does.
    #[test]
    fn a_membership_being_taken_back_does_not_answer_a_new_join() {
        let mut core = with_a_and_remote_b();
        core.add_session(peer("c"), H(3), Owner::new(&EdgeId::new(ME).unwrap()));
        core.begin_join(&peer("c"), &room(), None, 8, false)
            .unwrap();
        core.abort_join(&peer("c"), &room(), Some(7));
        core.apply(&joined(3, "c", ME), |_| None);
        assert_eq!(core.take_back_due(&peer("c"), &room()), Some(vec![7]));
        core.begin_join(&peer("c"), &room(), None, 8, false)
            .unwrap();
        // A resync shows the room with c in it: c is not answered from it.
        let notices = core.resync(|_| Some(view(4, &[("a", ME), ("b", OTHER), ("c", ME)])));
        assert!(
            !summary(&notices).iter().any(|n| n.1 == "joined"),
            "{notices:?}"
        );
        assert!(!core.is_member(&peer("c"), &room()));
        // The take-back removed the first membership; c's join committed anew.
        core.take_back_done(&peer("c"), &room());
        core.apply(&left(5, "c", ME), |_| None);
        core.apply(&joined(6, "c", ME), |_| None);
        let notices = core.join_committed(&peer("c"), &room(), 6);
        assert!(core.is_member(&peer("c"), &room()), "{notices:?}");
    }

    #[test]
    fn every_join_left_in_doubt_is_taken_back_until_one_succeeds() {
        let mut core = with_a_and_remote_b();
        core.add_session(peer("c"), H(3), Owner::new(&EdgeId::new(ME).unwrap()));
        for attempt in [7, 8] {
            core.begin_join(&peer("c"), &room(), None, 8, false)
                .unwrap();
            assert_eq!(
                core.take_back_due(&peer("c"), &room()),
                None,
                "nothing is taken back while a join is on its way"
            );
            core.abort_join(&peer("c"), &room(), Some(attempt));
        }
        // Either request may be the one that committed.
        core.apply(&joined(3, "c", ME), |_| None);
        assert_eq!(core.take_back_due(&peer("c"), &room()), Some(vec![7, 8]));
        // A join that succeeds makes the earlier doubts moot.
        core.abort_join(&peer("c"), &room(), None);
        core.begin_join(&peer("c"), &room(), None, 8, false)
            .unwrap();
        core.abort_join(&peer("c"), &room(), Some(9));
        core.begin_join(&peer("c"), &room(), None, 8, false)
            .unwrap();
        core.join_committed(&peer("c"), &room(), 3);
        core.still_doubtful(&peer("c"), &room(), vec![9]);
        assert_eq!(core.take_back_due(&peer("c"), &room()), None);
    }

    #[test]
    fn a_join_that_committed_after_its_client_gave_up_is_answered_when_retried() {
        let mut core = with_a_and_remote_b();
        core.add_session(peer("c"), H(3), Owner::new(&EdgeId::new(ME).unwrap()));
        core.begin_join(&peer("c"), &room(), None, 8, false)
            .unwrap();
        // The outcome stayed unknown: the client was told `unavailable`.
        core.abort_join(&peer("c"), &room(), Some(7));
        // The join committed after all; its event tells the others, not c.
        let notices = core.apply(&joined(3, "c", ME), |_| None);
        assert_eq!(summary(&notices), [notice(1, "peer-joined", "c")]);
        assert_eq!(
            core.take_back_due(&peer("c"), &room()),
            Some(vec![7]),
            "a ghost to take back"
        );
        assert_eq!(
            core.take_back_due(&peer("c"), &room()),
            None,
            "taken back once"
        );
        core.still_doubtful(&peer("c"), &room(), vec![7]);
        assert_eq!(
            core.take_back_due(&peer("c"), &room()),
            Some(vec![7]),
            "a take-back that failed is due again"
        );
        // c retries; the registry answers from the room (no new event): c is told at once.
        let (start, _) = core
            .begin_join(&peer("c"), &room(), None, 8, false)
            .unwrap();
        assert_eq!(start, JoinStart::Pending);
        let notices = core.join_committed(&peer("c"), &room(), 3);
        assert_eq!(summary(&notices), [notice(3, "joined", "a,b")]);
        assert!(core.is_member(&peer("c"), &room()));
    }

    /// The leader committed the join and lost its quorum before the edge's replica heard of
    /// it: the answer came, the events never do (until the quorum returns). The join is given
    /// up (the client is told `unavailable`), and taken back once its event arrives.
    #[test]
    fn a_committed_join_whose_events_do_not_come_is_given_up_and_taken_back() {
        let mut core = with_a_and_remote_b();
        core.add_session(peer("c"), H(3), Owner::new(&EdgeId::new(ME).unwrap()));
        core.begin_join(&peer("c"), &room(), None, 8, false)
            .unwrap();
        assert!(core.join_committed(&peer("c"), &room(), 4).is_empty());
        assert!(core.join_waiting(&peer("c"), &room()));
        // Another commit's epoch does not give this one up.
        assert!(core.give_up_join(&peer("c"), &room(), 5, 7).is_none());
        let (handle, _) = core.give_up_join(&peer("c"), &room(), 4, 7).unwrap();
        assert_eq!(handle, H(3));
        assert!(!core.join_waiting(&peer("c"), &room()));
        assert!(
            core.give_up_join(&peer("c"), &room(), 4, 7).is_none(),
            "once"
        );
        // The quorum returns: the event tells the others, not c, and c's join is taken back.
        let notices = core.apply(&joined(4, "c", ME), |_| None);
        assert_eq!(summary(&notices), [notice(1, "peer-joined", "c")]);
        assert!(!core.is_member(&peer("c"), &room()));
        assert_eq!(core.take_back_due(&peer("c"), &room()), Some(vec![7]));
    }

    /// c's join committed and its event arrived, but the registry's answer did not come in
    /// time: c is told `unavailable` and, since no later event will ask for it, the
    /// membership is due to be taken back at once. Without the event nothing is due yet.
    #[test]
    fn a_join_given_up_after_its_event_arrived_is_taken_back_at_once() {
        let mut core = with_a_and_remote_b();
        core.add_session(peer("c"), H(3), Owner::new(&EdgeId::new(ME).unwrap()));
        core.begin_join(&peer("c"), &room(), None, 8, false)
            .unwrap();
        let notices = core.apply(&joined(3, "c", ME), |_| None);
        assert_eq!(summary(&notices), [notice(1, "peer-joined", "c")]);
        assert!(!core.is_member(&peer("c"), &room()), "no answer yet");
        assert!(core.abort_join(&peer("c"), &room(), Some(7)));
        assert_eq!(core.take_back_if_shown(&peer("c"), &room()), Some(vec![7]));
        assert_eq!(core.take_back_if_shown(&peer("c"), &room()), None, "once");

        core.add_session(peer("d"), H(4), Owner::new(&EdgeId::new(ME).unwrap()));
        core.begin_join(&peer("d"), &room(), None, 8, false)
            .unwrap();
        assert!(core.abort_join(&peer("d"), &room(), Some(8)));
        assert_eq!(core.take_back_if_shown(&peer("d"), &room()), None);
        assert_eq!(
            core.take_back_due(&peer("d"), &room()),
            Some(vec![8]),
            "the event, when it comes, asks for it"
        );
    }

    /// A join whose events came in time completed: nothing to give up.
    #[test]
    fn a_completed_join_is_not_given_up() {
        let mut core = with_a_and_remote_b();
        core.add_session(peer("c"), H(3), Owner::new(&EdgeId::new(ME).unwrap()));
        core.begin_join(&peer("c"), &room(), None, 8, false)
            .unwrap();
        core.join_committed(&peer("c"), &room(), 3);
        core.apply(&joined(3, "c", ME), |_| None);
        assert!(core.is_member(&peer("c"), &room()));
        assert!(core.give_up_join(&peer("c"), &room(), 3, 7).is_none());
        assert!(core.is_member(&peer("c"), &room()));
    }

    #[test]
    fn a_room_without_local_members_is_no_longer_tracked() {
        let mut core = with_a_and_remote_b();
        assert_eq!(core.tracked_rooms(), 1);
        // A remote member leaving keeps the room: a is still here.
        core.apply(&left(3, "b", OTHER), |_| None);
        assert_eq!(core.tracked_rooms(), 1);
        let notices = core.apply(&left(4, "a", ME), |_| None);
        assert!(notices.is_empty(), "nobody local is left to tell");
        assert_eq!(core.tracked_rooms(), 0);
        assert!(!core.is_member(&peer("a"), &room()));
        // Events of an untracked room are ignored, unless a local joiner starts it again.
        assert!(core.apply(&joined(5, "b", OTHER), |_| None).is_empty());
        assert_eq!(core.tracked_rooms(), 0);
    }

    #[test]
    fn a_local_socket_wins_over_the_registry_view() {
        let mut core = with_a_and_remote_b();
        assert!(matches!(
            core.route_signal(&peer("a"), &room(), &peer("b")),
            Ok(Route::Remote { .. })
        ));
        // b resumes on this edge; the registry still names edge B until its rebind commits.
        let replaced = core.add_resuming(peer("b"), H(2), Owner::new(&EdgeId::new(ME).unwrap()));
        assert!(replaced.is_none());
        assert!(matches!(
            core.route_signal(&peer("a"), &room(), &peer("b")),
            Ok(Route::Local(H(2)))
        ));
        // A local socket not (yet) in the room is not a target there.
        core.add_session(peer("d"), H(4), Owner::new(&EdgeId::new(ME).unwrap()));
        assert!(matches!(
            core.route_signal(&peer("a"), &room(), &peer("d")),
            Err(ErrorCode::UnknownPeer)
        ));
        // A peer that is not in the room cannot send there.
        assert!(matches!(
            core.route_signal(&peer("d"), &room(), &peer("a")),
            Err(ErrorCode::NotInRoom)
        ));
        // A local member whose socket is gone (detached) keeps its signals here.
        assert_eq!(
            core.remove_session(&peer("a"), &H(9)),
            None,
            "another handle"
        );
        assert_eq!(core.remove_session(&peer("a"), &H(1)), Some(true));
        let notices = core.apply(&joined(3, "e", ME), |_| None);
        assert!(notices.is_empty());
    }
}
