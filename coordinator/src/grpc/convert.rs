//! Conversions between the protobuf messages and the registry's types.
//!
//! Wire strings become validated ids here; a bad id is a [`ConvertError`] naming the field,
//! which the service answers with `invalid_argument`.

use super::proto;
use crate::registry::{
    EdgeId, IdError, LeaveReason, ListingPage, ListingQuery, MAX_LISTING_LIMIT,
    MAX_LISTING_PREFIX_BYTES, Member, PeerId, Region, Rejection, RoomEvent, RoomEventKind, RoomId,
    RoomListing, RoomSummary, RoomView,
};

/// A field of a request that does not hold a valid value.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct ConvertError {
    pub field: &'static str,
    pub reason: String,
}

impl ConvertError {
    pub fn new(field: &'static str, reason: impl ToString) -> Self {
        Self {
            field,
            reason: reason.to_string(),
        }
    }
}

fn id<T>(
    field: &'static str,
    s: &str,
    make: impl FnOnce(String) -> Result<T, IdError>,
) -> Result<T, ConvertError> {
    make(s.to_owned()).map_err(|e| ConvertError::new(field, e))
}

pub fn room(field: &'static str, s: &str) -> Result<RoomId, ConvertError> {
    id(field, s, RoomId::new)
}
pub fn peer(field: &'static str, s: &str) -> Result<PeerId, ConvertError> {
    id(field, s, PeerId::new)
}
pub fn edge(field: &'static str, s: &str) -> Result<EdgeId, ConvertError> {
    id(field, s, EdgeId::new)
}
pub fn region(field: &'static str, s: &str) -> Result<Region, ConvertError> {
    id(field, s, Region::new)
}

pub fn member_to_proto(m: &Member) -> proto::Member {
    proto::Member {
        peer_id: m.peer.to_string(),
        edge_id: m.edge.to_string(),
        region: m.region.to_string(),
        meta_json: m.meta.clone(),
    }
}

pub fn member_from_proto(m: &proto::Member) -> Result<Member, ConvertError> {
    Ok(Member {
        peer: peer("member.peer_id", &m.peer_id)?,
        edge: edge("member.edge_id", &m.edge_id)?,
        region: region("member.region", &m.region)?,
        meta: m.meta_json.clone(),
    })
}

pub fn members_from_proto(ms: &[proto::Member]) -> Result<Vec<Member>, ConvertError> {
    ms.iter().map(member_from_proto).collect()
}

pub fn rejection_to_proto(r: Option<Rejection>) -> proto::Rejection {
    match r {
        None => proto::Rejection::None,
        Some(Rejection::UnknownEdge) => proto::Rejection::UnknownEdge,
        Some(Rejection::StaleIncarnation) => proto::Rejection::StaleIncarnation,
        Some(Rejection::RoomFull) => proto::Rejection::RoomFull,
        Some(Rejection::UnknownPeer) => proto::Rejection::UnknownPeer,
        Some(Rejection::NotInRoom) => proto::Rejection::NotInRoom,
        Some(Rejection::WrongEdge) => proto::Rejection::WrongEdge,
        Some(Rejection::Late) => proto::Rejection::Late,
        Some(Rejection::UnknownRoom) => proto::Rejection::UnknownRoom,
    }
}

/// `None` for `REJECTION_NONE`; an unknown value (a newer peer) is an error.
pub fn rejection_from_proto(value: i32) -> Result<Option<Rejection>, ConvertError> {
    let r = proto::Rejection::try_from(value)
        .map_err(|_| ConvertError::new("rejected", format!("unknown value {value}")))?;
    Ok(match r {
        proto::Rejection::None => None,
        proto::Rejection::UnknownEdge => Some(Rejection::UnknownEdge),
        proto::Rejection::StaleIncarnation => Some(Rejection::StaleIncarnation),
        proto::Rejection::RoomFull => Some(Rejection::RoomFull),
        proto::Rejection::UnknownPeer => Some(Rejection::UnknownPeer),
        proto::Rejection::NotInRoom => Some(Rejection::NotInRoom),
        proto::Rejection::WrongEdge => Some(Rejection::WrongEdge),
        proto::Rejection::Late => Some(Rejection::Late),
        proto::Rejection::UnknownRoom => Some(Rejection::UnknownRoom),
    })
}

pub fn leave_reason_from_str(s: &str) -> Result<LeaveReason, ConvertError> {
    match s {
        "left" => Ok(LeaveReason::Left),
        "disconnected" => Ok(LeaveReason::Disconnected),
        "expired" => Ok(LeaveReason::Expired),
        "removed" => Ok(LeaveReason::Removed),
        "closed" => Ok(LeaveReason::Closed),
        other => Err(ConvertError::new(
            "left.reason",
            format!("unknown {other:?}"),
        )),
    }
}

/// `members` is the room's full member list, sent only with a `joined` event about a member
/// on the receiving edge.
pub fn event_to_proto(event: &RoomEvent, members: Option<&[Member]>) -> proto::RoomEvent {
    let kind = match &event.kind {
        RoomEventKind::Joined(m) => proto::room_event::Kind::Joined(member_to_proto(m)),
        RoomEventKind::Moved(m) => proto::room_event::Kind::Moved(member_to_proto(m)),
        RoomEventKind::Rehomed(region) => proto::room_event::Kind::Rehomed(region.to_string()),
        RoomEventKind::Left { peer, edge, reason } => {
            proto::room_event::Kind::Left(proto::PeerLeft {
                peer_id: peer.to_string(),
                edge_id: edge.to_string(),
                reason: reason.as_str().to_owned(),
            })
        }
    };
    proto::RoomEvent {
        room: event.room.to_string(),
        epoch: event.epoch,
        kind: Some(kind),
        members: members
            .unwrap_or_default()
            .iter()
            .map(member_to_proto)
            .collect(),
    }
}

/// The event, and the room's member list at its epoch when one came with it.
pub fn event_from_proto(
    e: &proto::RoomEvent,
) -> Result<(RoomEvent, Option<RoomView>), ConvertError> {
    let room_id = room("event.room", &e.room)?;
    let kind = match &e.kind {
        Some(proto::room_event::Kind::Joined(m)) => RoomEventKind::Joined(member_from_proto(m)?),
        Some(proto::room_event::Kind::Moved(m)) => RoomEventKind::Moved(member_from_proto(m)?),
        Some(proto::room_event::Kind::Rehomed(r)) => RoomEventKind::Rehomed(region("rehomed", r)?),
        Some(proto::room_event::Kind::Left(l)) => RoomEventKind::Left {
            peer: peer("left.peer_id", &l.peer_id)?,
            edge: edge("left.edge_id", &l.edge_id)?,
            reason: leave_reason_from_str(&l.reason)?,
        },
        None => return Err(ConvertError::new("event.kind", "missing")),
    };
    let view = if e.members.is_empty() {
        None
    } else {
        Some(RoomView {
            room: room_id.clone(),
            epoch: e.epoch,
            members: members_from_proto(&e.members)?,
        })
    };
    Ok((
        RoomEvent {
            room: room_id,
            epoch: e.epoch,
            kind,
        },
        view,
    ))
}

/// `applied_epoch`: how recent the reader's state is, sent with "not found" so that the
/// receiver can tell an empty room from a replica that has not caught up with the room yet.
pub fn room_view_to_proto(view: Option<RoomView>, applied_epoch: u64) -> proto::GetRoomResponse {
    match view {
        None => proto::GetRoomResponse {
            found: false,
            epoch: applied_epoch,
            members: Vec::new(),
        },
        Some(v) => proto::GetRoomResponse {
            found: true,
            epoch: v.epoch,
            members: v.members.iter().map(member_to_proto).collect(),
        },
    }
}

pub fn room_view_from_proto(
    room_id: &RoomId,
    r: &proto::GetRoomResponse,
) -> Result<Option<RoomView>, ConvertError> {
    if !r.found {
        // Nobody in the room as of `epoch`: an empty view with that epoch, so that a reader
        // ahead of that replica keeps what it knows (0: a replica that does not say).
        return Ok((r.epoch > 0).then(|| RoomView {
            room: room_id.clone(),
            epoch: r.epoch,
            members: Vec::new(),
        }));
    }
    Ok(Some(RoomView {
        room: room_id.clone(),
        epoch: r.epoch,
        members: members_from_proto(&r.members)?,
    }))
}

pub fn summary_to_proto(s: &RoomSummary) -> proto::RoomSummary {
    proto::RoomSummary {
        room: s.room.to_string(),
        epoch: s.epoch,
        members: s.members,
    }
}

pub fn listing_query_to_proto(q: &ListingQuery) -> proto::DiscoverRoomsRequest {
    proto::DiscoverRoomsRequest {
        prefix: q.prefix.clone(),
        after: q
            .after
            .as_ref()
            .map(ToString::to_string)
            .unwrap_or_default(),
        limit: u32::try_from(q.limit).unwrap_or(u32::MAX),
    }
}

/// A discovery request as a query; the limit and the prefix are checked (the edge checks
/// them first; a replica does not trust that).
pub fn listing_query_from_proto(
    r: &proto::DiscoverRoomsRequest,
) -> Result<ListingQuery, ConvertError> {
    let limit = usize::try_from(r.limit).unwrap_or(usize::MAX);
    if !(1..=MAX_LISTING_LIMIT).contains(&limit) {
        return Err(ConvertError::new(
            "limit",
            format!("must be between 1 and {MAX_LISTING_LIMIT}"),
        ));
    }
    if r.prefix.len() > MAX_LISTING_PREFIX_BYTES {
        return Err(ConvertError::new(
            "prefix",
            format!("is longer than {MAX_LISTING_PREFIX_BYTES} bytes"),
        ));
    }
    let after = (!r.after.is_empty())
        .then(|| room("after", &r.after))
        .transpose()?;
    Ok(ListingQuery {
        prefix: r.prefix.clone(),
        after,
        limit,
    })
}

pub fn listing_page_to_proto(
    page: &ListingPage,
    unreachable: Vec<String>,
) -> proto::DiscoverRoomsResponse {
    proto::DiscoverRoomsResponse {
        rooms: page
            .rooms
            .iter()
            .map(|r| proto::PublicRoom {
                room: r.room.to_string(),
                members: r.members,
                regions: r.regions.iter().map(ToString::to_string).collect(),
                meta_json: r.meta.clone().unwrap_or_default(),
            })
            .collect(),
        more: page.more,
        unreachable,
    }
}

/// A page of public rooms and the regions that did not answer for it.
pub fn listing_page_from_proto(
    r: &proto::DiscoverRoomsResponse,
) -> Result<(ListingPage, Vec<Region>), ConvertError> {
    let rooms = r
        .rooms
        .iter()
        .map(|p| {
            Ok(RoomListing {
                room: room("rooms.room", &p.room)?,
                members: p.members,
                regions: p
                    .regions
                    .iter()
                    .map(|x| region("rooms.regions", x))
                    .collect::<Result<_, _>>()?,
                meta: (!p.meta_json.is_empty()).then(|| p.meta_json.clone()),
            })
        })
        .collect::<Result<_, ConvertError>>()?;
    let unreachable = r
        .unreachable
        .iter()
        .map(|x| region("unreachable", x))
        .collect::<Result<_, _>>()?;
    Ok((
        ListingPage {
            rooms,
            more: r.more,
        },
        unreachable,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_round_trip() {
        let m = Member {
            peer: PeerId::new("p").unwrap(),
            edge: EdgeId::new("e").unwrap(),
            region: Region::new("eu").unwrap(),
            meta: "{}".into(),
        };
        for kind in [
            RoomEventKind::Joined(m.clone()),
            RoomEventKind::Moved(m.clone()),
            RoomEventKind::Left {
                peer: m.peer.clone(),
                edge: m.edge.clone(),
                reason: LeaveReason::Expired,
            },
        ] {
            let event = RoomEvent {
                room: RoomId::new("r").unwrap(),
                epoch: 7,
                kind,
            };
            let wire = event_to_proto(&event, Some(std::slice::from_ref(&m)));
            let (back, view) = event_from_proto(&wire).unwrap();
            assert_eq!(back, event);
            assert_eq!(view.unwrap().members, vec![m.clone()]);
        }
        for r in [
            None,
            Some(Rejection::RoomFull),
            Some(Rejection::WrongEdge),
            Some(Rejection::Late),
        ] {
            let wire = rejection_to_proto(r) as i32;
            assert_eq!(rejection_from_proto(wire).unwrap(), r);
        }
        assert!(rejection_from_proto(99).is_err());
        // Not found: empty as of the replica's applied epoch, so a reader can tell it lags.
        let room = RoomId::new("r").unwrap();
        let empty = room_view_from_proto(&room, &room_view_to_proto(None, 9)).unwrap();
        assert_eq!(empty.map(|v| (v.epoch, v.members.len())), Some((9, 0)));
        let unknown = proto::GetRoomResponse::default();
        assert_eq!(room_view_from_proto(&room, &unknown).unwrap(), None);
        let bad = proto::RoomEvent {
            room: String::new(),
            ..Default::default()
        };
        assert_eq!(event_from_proto(&bad).unwrap_err().field, "event.room");
    }

    #[test]
    fn listings_round_trip_and_bad_queries_are_refused() {
        let q = ListingQuery {
            prefix: "game".into(),
            after: Some(RoomId::new("game-1").unwrap()),
            limit: 5,
        };
        assert_eq!(
            listing_query_from_proto(&listing_query_to_proto(&q)).unwrap(),
            q
        );
        for (limit, prefix) in [(0, ""), (101, ""), (5, &*"p".repeat(129))] {
            let bad = proto::DiscoverRoomsRequest {
                prefix: prefix.to_owned(),
                after: String::new(),
                limit,
            };
            assert!(listing_query_from_proto(&bad).is_err());
        }
        let page = ListingPage {
            rooms: vec![RoomListing {
                room: RoomId::new("game-2").unwrap(),
                members: 3,
                regions: vec![Region::new("eu").unwrap(), Region::new("us").unwrap()],
                meta: Some(r#"{"t":1}"#.into()),
            }],
            more: true,
        };
        let wire = listing_page_to_proto(&page, vec!["ap".into()]);
        let (back, unreachable) = listing_page_from_proto(&wire).unwrap();
        assert_eq!(back, page);
        assert_eq!(unreachable, vec![Region::new("ap").unwrap()]);
    }
}
