//! The edge's soft state: its own peers and the membership of the rooms they are in.
//!
//! [`core`] is the logic (apply, resync, route), pure and unit-tested; [`RoomIndex`] is that
//! core behind one lock, with this edge's session handles. Every method takes the lock once
//! and never holds it across an await. Room events are handed to the sessions' outboxes
//! before the lock is released (a non-blocking push each), so that a session that changes
//! its own membership next (a leave) finds every earlier notice queued already.
//!
//! May import: `outbox` (frames and session handles), `protocol`, `session` (types). Never
//! the router, the region backend, the registry client or a transport.

pub mod core;

use std::collections::{BTreeMap, HashMap};
use std::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};

use heliograph_coordinator::registry::{EdgeId, PeerId, RoomEvent, RoomId, RoomView};

use crate::contacts::{ContactHash, Role};
use crate::outbox::{Delivery, SessionHandle};
use crate::protocol::{ErrorCode, Ref};
use crate::session::{LocalSession, Owner, StoredRoom};

use self::core::RoomCore;
pub use self::core::{Handle, JoinStart};

/// A frame for a local session of this edge.
pub type Notice = self::core::Notice<SessionHandle>;
/// Where a signal goes, with this edge's session handles.
pub type Route = self::core::Route<SessionHandle>;

impl Handle for SessionHandle {
    fn same(&self, other: &Self) -> bool {
        SessionHandle::same(self, other)
    }
}

/// The room index of this edge, shared by its sessions, the router and the follower.
pub struct RoomIndex {
    me: EdgeId,
    core: RwLock<RoomCore<SessionHandle>>,
}

impl RoomIndex {
    pub fn new(me: EdgeId) -> Self {
        Self {
            core: RwLock::new(RoomCore::new(me.clone())),
            me,
        }
    }

    fn read(&self) -> RwLockReadGuard<'_, RoomCore<SessionHandle>> {
        // A poisoned lock means a panic elsewhere; the data is still consistent enough to
        // keep serving (every mutation in the core completes before any call that could
        // panic).
        self.core.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, RoomCore<SessionHandle>> {
        self.core.write().unwrap_or_else(|e| e.into_inner())
    }

    /// Tells every session of this edge that it is draining.
    pub fn drain_sessions(&self) {
        for handle in self.read().handles() {
            handle.drain();
        }
    }

    pub fn add_session(&self, peer: PeerId, handle: SessionHandle, owner: Owner) {
        self.write().add_session(peer, handle, owner);
    }

    /// Forgets a local peer if `handle` is still its session (a resume on this edge may have
    /// replaced it); returns whether it was in any room (and so must be removed from the
    /// registry).
    pub fn remove_session(&self, peer: &PeerId, handle: &SessionHandle) -> Option<bool> {
        self.write().remove_session(peer, handle)
    }

    /// A resume of `peer` starts on this edge with `handle`; returns the session it replaces
    /// (the peer's previous socket here, not yet noticed as dead), which must be cut off.
    pub fn add_resuming(
        &self,
        peer: PeerId,
        handle: SessionHandle,
        owner: Owner,
    ) -> Option<SessionHandle> {
        self.write().add_resuming(peer, handle, owner)
    }

    /// Gives a resumed peer its rooms back (see [`RoomCore::complete_resume`]).
    pub fn complete_resume(
        &self,
        peer: &PeerId,
        rooms: &[StoredRoom],
        views: &HashMap<RoomId, Option<RoomView>>,
    ) -> Vec<StoredRoom> {
        let mut core = self.write();
        let kept = core.complete_resume(peer, rooms, views);
        hand_over(core.refresh_contacts_of(peer));
        kept
    }

    /// The rooms of a local peer (joined or being joined), as a resume needs them.
    pub fn stored_rooms(&self, peer: &PeerId) -> Vec<StoredRoom> {
        self.read().stored_rooms(peer)
    }

    /// Whether a local peer is in or joining any room.
    pub fn in_any_room(&self, peer: &PeerId) -> bool {
        self.read().in_any_room(peer)
    }

    /// Every session with a socket here, as the store keeps it.
    pub fn local_sessions(&self) -> Vec<LocalSession> {
        self.read().local_sessions()
    }

    /// The session of a local peer, whatever its rooms.
    pub fn session(&self, peer: &PeerId) -> Option<SessionHandle> {
        self.read().session(peer)
    }

    pub fn tracked_rooms(&self) -> usize {
        self.read().tracked_rooms()
    }

    /// Records a join about to be sent to the registry.
    pub fn begin_join(
        &self,
        peer: &PeerId,
        room: &RoomId,
        reference: Option<Ref>,
        max_rooms: usize,
        receive_only: bool,
    ) -> Result<(JoinStart, Vec<Notice>), ErrorCode> {
        self.write()
            .begin_join(peer, room, reference, max_rooms, receive_only)
    }

    /// The registry refused or failed the join: forget it (see [`RoomCore::abort_join`]).
    pub fn abort_join(&self, peer: &PeerId, room: &RoomId, doubtful: Option<u64>) -> bool {
        self.write().abort_join(peer, room, doubtful)
    }

    /// See [`RoomCore::take_back_due`].
    pub fn take_back_due(&self, peer: &PeerId, room: &RoomId) -> Option<Vec<u64>> {
        self.write().take_back_due(peer, room)
    }

    /// See [`RoomCore::take_back_if_shown`].
    pub fn take_back_if_shown(&self, peer: &PeerId, room: &RoomId) -> Option<Vec<u64>> {
        self.write().take_back_if_shown(peer, room)
    }

    /// See [`RoomCore::take_back_done`].
    pub fn take_back_done(&self, peer: &PeerId, room: &RoomId) {
        self.write().take_back_done(peer, room)
    }

    /// See [`RoomCore::still_doubtful`].
    pub fn still_doubtful(&self, peer: &PeerId, room: &RoomId, attempts: Vec<u64>) {
        self.write().still_doubtful(peer, room, attempts)
    }

    /// The registry committed the peer's join (see [`RoomCore::join_committed`]).
    /// The registry committed the join at `epoch`; whether it still waits for its events.
    pub fn join_committed(&self, peer: &PeerId, room: &RoomId, epoch: u64) -> bool {
        let mut core = self.write();
        hand_over(core.join_committed(peer, room, epoch));
        core.join_waiting(peer, room)
    }

    /// Whether the peer is in the room (as far as this edge knows).
    pub fn give_up_join(
        &self,
        peer: &PeerId,
        room: &RoomId,
        epoch: u64,
        attempt: u64,
    ) -> Option<(SessionHandle, Option<Ref>)> {
        self.write().give_up_join(peer, room, epoch, attempt)
    }

    pub fn is_member(&self, peer: &PeerId, room: &RoomId) -> bool {
        self.read().is_member(peer, room)
    }

    /// The peer left the room on request: signals stop at once, the event updates the rest.
    pub fn local_leave(&self, peer: &PeerId, room: &RoomId) {
        let mut core = self.write();
        hand_over(core.local_leave(peer, room));
    }

    /// See [`RoomCore::contacts_updating`].
    pub fn contacts_updating(&self, peer: &PeerId, updating: bool) {
        let mut core = self.write();
        hand_over(core.contacts_updating(peer, updating));
    }

    /// See [`RoomCore::contact_roles`].
    pub fn contact_roles(&self, peer: &PeerId) -> BTreeMap<ContactHash, Role> {
        self.read().contact_roles(peer)
    }

    /// See [`RoomCore::contact_room`].
    pub fn contact_room(&self, from: &PeerId, to: &PeerId) -> Option<RoomId> {
        self.read().contact_room(from, to)
    }

    /// Contact hashes published and watched by this edge's sessions.
    pub fn contact_counts(&self) -> (usize, usize) {
        self.read().contact_counts()
    }

    /// A room `from` shares with `to` (see [`RoomCore::shared_room`]).
    pub fn shared_room(&self, from: &PeerId, to: &PeerId) -> Result<RoomId, ErrorCode> {
        self.read().shared_room(from, to)
    }

    /// Finds where a signal from `from` to `to` in `room` goes.
    pub fn route_signal(
        &self,
        from: &PeerId,
        room: &RoomId,
        to: &PeerId,
    ) -> Result<Route, ErrorCode> {
        self.read().route_signal(from, room, to)
    }

    /// [`Self::route_signal`] for ids given as text, with the index's own copy of the room's.
    pub fn route_signal_ids(
        &self,
        from: &PeerId,
        room: &str,
        to: &str,
    ) -> Result<(Route, RoomId), ErrorCode> {
        self.read().route_signal_ids(from, room, to)
    }

    /// The session of a local peer that is a member of `room`, for a signal relayed from
    /// another edge (which checked the sender's side).
    pub fn local_member(&self, peer: &PeerId, room: &RoomId) -> Option<SessionHandle> {
        self.read().local_member(peer, room)
    }

    /// Whether `peer` has a session on this edge.
    pub fn has_session(&self, peer: &PeerId) -> bool {
        self.read().has_session(peer)
    }

    pub fn edge(&self) -> &EdgeId {
        &self.me
    }

    /// Every room this edge tracks or is joining, for a resync.
    pub fn rooms_to_resync(&self) -> Vec<RoomId> {
        self.read().rooms_to_resync()
    }

    /// Applies one registry event (see [`RoomCore::apply`]).
    pub fn apply(&self, event: &RoomEvent, view: impl Fn(&RoomId) -> Option<RoomView>) {
        let mut core = self.write();
        hand_over(core.apply(event, view));
    }

    /// Brings one room to the registry's view of it (see [`RoomCore::resync_one`]).
    pub fn resync_one(&self, room: RoomId, fresh: Option<RoomView>) {
        let mut core = self.write();
        hand_over(core.resync_one(room, fresh));
    }

    /// Re-reads every tracked room after missing events (see [`RoomCore::resync`]).
    pub fn resync(&self, view: impl Fn(&RoomId) -> Option<RoomView>) {
        let mut core = self.write();
        hand_over(core.resync(view));
    }
}

/// Hands notices to their sessions; a full outbox kicks that session, not the others.
fn hand_over(notices: Vec<Notice>) {
    for (handle, out) in notices {
        if handle.send(out) == Delivery::Kicked {
            tracing::debug!("outbox full while delivering a room event");
        }
    }
}
