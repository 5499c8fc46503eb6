//! Commands that change the registry, and their outcomes.

use serde::{Deserialize, Serialize};

use super::event::Member;
use super::ids::{EdgeId, PeerId, Region, RoomId};

/// A command with the leader's wall-clock time (milliseconds since the Unix epoch) stamped in,
/// so that every replica applies exactly the same thing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stamped {
    pub at_ms: u64,
    pub command: Command,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    /// An edge process starts (or restarts: a higher `incarnation` replaces the previous one).
    /// Peers left over from a previous incarnation are detached when their sessions can be
    /// resumed elsewhere (`resumable_sessions`), and removed otherwise.
    RegisterEdge {
        edge: EdgeId,
        region: Region,
        address: String,
        incarnation: u64,
        lease_ms: u64,
        resumable_sessions: bool,
        /// Node id of the replica the edge is attached to (its `Link`), so that signals for
        /// the edge can be sent to that replica. Updated when the edge switches replica.
        #[serde(default)]
        replica: u64,
    },
    RenewLease {
        edge: EdgeId,
        incarnation: u64,
        lease_ms: u64,
    },
    /// The edge leaves on purpose (drain): its lease ends now and its peers are detached.
    ReleaseEdge { edge: EdgeId, incarnation: u64 },
    Join {
        room: RoomId,
        peer: PeerId,
        edge: EdgeId,
        meta: String,
        /// Refuse the join when the room already has this many members.
        max_members: Option<u32>,
        /// Names this join request (retries of one request carry the same number; 0 names
        /// none). The room's membership remembers the last request that joined or re-joined
        /// it, so that a leave conditional on an earlier request cannot undo a later one.
        #[serde(default)]
        attempt: u64,
        /// Unix ms (the edge's clock) after which the join must not take effect: the edge
        /// has answered its client by then. A request held by a stalled replica and forwarded
        /// late is refused (`Late`) when the leader stamps it. 0: no deadline.
        #[serde(default)]
        deadline_ms: u64,
        /// The edge's region when the edge belongs to another region's group (a member
        /// joining a room homed here from elsewhere): its edge is not registered here, and
        /// its liveness is that region's business. `None`: an edge of this group.
        #[serde(default)]
        remote_region: Option<Region>,
        /// How the room is listed, when this join creates it (a join to an existing room
        /// changes nothing of it). Absent in entries from before discovery: private.
        #[serde(default)]
        listing: Listing,
    },
    Leave {
        room: RoomId,
        peer: PeerId,
        /// Non-zero: leave only if the membership is still the one join request `attempt`
        /// made (an edge taking back a join it answered `unavailable`, which must not undo
        /// the client's next, successful join). Zero: leave whatever joined.
        #[serde(default)]
        attempt: u64,
        /// As for `Join`: not after this unix ms (0: no deadline).
        #[serde(default)]
        deadline_ms: u64,
    },
    /// The peer is gone for good: it leaves every room.
    Disconnect { peer: PeerId },
    /// The peer's connection is gone but it may resume within the grace period.
    Detach { peer: PeerId },
    /// A detached peer resumed on `edge` (of `remote_region`, as for `Join`).
    Rebind {
        peer: PeerId,
        edge: EdgeId,
        #[serde(default)]
        remote_region: Option<Region>,
    },
    /// The room moves to `to`'s group, which homes the same name since earlier: `members`
    /// (the room's members when the move began, already joined there) leave this group's
    /// room without a `Left` event. Refused (`NotInRoom`) when the members changed meanwhile.
    Rehome {
        room: RoomId,
        to: Region,
        members: Vec<PeerId>,
    },
    /// What the leader learnt about edges of other regions' groups with members here: peers
    /// on `down` edges (or of a region it cannot reach) are detached now and removed after
    /// the grace period unless their edge comes back (`alive` attaches the peers detached
    /// this way again); peers on `gone` edges (unknown to their region: it removed them after
    /// its own grace period) are removed now, as `expired`.
    RemoteEdges {
        alive: Vec<EdgeId>,
        down: Vec<EdgeId>,
        gone: Vec<EdgeId>,
    },
    /// Another region's gateways (API addresses), for region-homed rooms; none: forget it.
    SetRegion {
        region: Region,
        gateways: Vec<String>,
    },
    /// Ends the leases that ran out by `at_ms` (unless `leases` is false: a new leader gives
    /// edges a lease to renew first) and removes peers detached for `grace_ms` or longer.
    /// Proposed by the leader when its view says something is due.
    Sweep {
        grace_ms: u64,
        #[serde(default = "sweep_leases")]
        leases: bool,
    },
    /// The server API removes a peer from one room (`Left { reason: removed }`).
    Remove { room: RoomId, peer: PeerId },
    /// The server API closes a room: every member leaves it (`Left { reason: closed }`).
    Close { room: RoomId },
    /// The webhook outbox from now on: which endpoints each new record waits for, and how
    /// many records it holds at most (0: webhooks off, the outbox is emptied). Proposed by the
    /// leader when its configuration differs from the replicated one.
    ConfigureWebhooks {
        endpoints: Vec<String>,
        capacity: u32,
    },
    /// `endpoint` has the records `ids` (delivered, or given up on): they no longer wait for
    /// it. Proposed by the leader's webhook delivery.
    AckWebhooks { endpoint: String, ids: Vec<u64> },
}

/// How a room is listed to discovery (`list-rooms`), set by its creating join.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Listing {
    /// Listed at all; private (never listed) by default.
    #[serde(default)]
    pub public: bool,
    /// A JSON object shown in listings (`room_meta`), as the client sent it.
    #[serde(default)]
    pub meta: Option<String>,
}

/// Entries logged before `Sweep::leases` existed ended leases.
fn sweep_leases() -> bool {
    true
}

impl Command {
    /// The unix ms after which the command must not take effect, if it has one.
    pub fn deadline_ms(&self) -> Option<u64> {
        match self {
            Self::Join { deadline_ms, .. } | Self::Leave { deadline_ms, .. } => {
                (*deadline_ms != 0).then_some(*deadline_ms)
            }
            _ => None,
        }
    }

    /// A fixed, low-cardinality name for metrics and logs.
    pub fn name(&self) -> &'static str {
        match self {
            Self::RegisterEdge { .. } => "register_edge",
            Self::RenewLease { .. } => "renew_lease",
            Self::ReleaseEdge { .. } => "release_edge",
            Self::Join { .. } => "join",
            Self::Leave { .. } => "leave",
            Self::Disconnect { .. } => "disconnect",
            Self::Detach { .. } => "detach",
            Self::Rebind { .. } => "rebind",
            Self::Sweep { .. } => "sweep",
            Self::Remove { .. } => "remove",
            Self::Close { .. } => "close",
            Self::ConfigureWebhooks { .. } => "configure_webhooks",
            Self::AckWebhooks { .. } => "ack_webhooks",
            Self::SetRegion { .. } => "set_region",
            Self::Rehome { .. } => "rehome",
            Self::RemoteEdges { .. } => "remote_edges",
        }
    }
}

/// Why a command was refused. A refused command changes nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum Rejection {
    #[error("the edge is not registered")]
    UnknownEdge,
    #[error("a newer incarnation of the edge is registered")]
    StaleIncarnation,
    #[error("the room is full")]
    RoomFull,
    #[error("the peer is not known to the registry")]
    UnknownPeer,
    #[error("the peer is not in that room")]
    NotInRoom,
    #[error("the peer is attached to another edge")]
    WrongEdge,
    /// The request reached the leader after its deadline and was not applied.
    #[error("the request arrived after its deadline")]
    Late,
    #[error("the room has no members")]
    UnknownRoom,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome {
    Done,
    /// The room's epoch and members (the joiner included) right after the join.
    Joined {
        epoch: u64,
        members: Vec<Member>,
    },
    Left {
        epoch: u64,
    },
    Rejected(Rejection),
}
