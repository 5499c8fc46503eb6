//! Room events: what the members of a room are told when its membership changes.

use serde::{Deserialize, Serialize};

use super::ids::{EdgeId, PeerId, Region, RoomId};

/// A member of a room, with where it is connected.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    pub peer: PeerId,
    pub edge: EdgeId,
    pub region: Region,
    /// A JSON object supplied by the peer when it joined (validated by the edge).
    pub meta: String,
}

/// Why a peer left a room.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LeaveReason {
    /// The peer asked to leave.
    Left,
    /// The peer's connection closed for good.
    Disconnected,
    /// The peer was detached (its edge died or drained) and did not resume within the grace
    /// period.
    Expired,
    /// The server API removed the peer from the room (a kick).
    Removed,
    /// The server API closed the room: every member leaves with this reason.
    Closed,
}

impl LeaveReason {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Left => "left",
            Self::Disconnected => "disconnected",
            Self::Expired => "expired",
            Self::Removed => "removed",
            Self::Closed => "closed",
        }
    }
}

/// A change to one room. `epoch` increases by one with every change to that room, so a
/// consumer that already knows a later epoch can ignore an event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoomEvent {
    pub room: RoomId,
    pub epoch: u64,
    pub kind: RoomEventKind,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum RoomEventKind {
    Joined(Member),
    Left {
        peer: PeerId,
        edge: EdgeId,
        reason: LeaveReason,
    },
    /// The peer resumed on another edge; it stays in the room.
    Moved(Member),
    /// The room moved to another region's group, which created it too, and earlier: its
    /// members are now members there (nobody left). Readers re-read it from its new home.
    Rehomed(Region),
}
