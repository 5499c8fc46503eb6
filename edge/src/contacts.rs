//! Contact discovery, the domain part: keyed contact hashes, the hidden registry rooms that
//! index them, and the mutual-match rule.
//!
//! A session that publishes hash `h` or watches it is a member of the room
//! [`room_for`]`(h)`, with a member `meta` that says which ([`Role`]). The registry (its
//! Raft group, region-homed rooms and federation) is therefore the shared index across
//! edges and regions, and a session's contacts live and die with its memberships: they
//! survive a resume and end with the session. A local peer `A` and a member `B` are mutual
//! contacts when `B` watches a hash `A` publishes and publishes a hash `A` watches; only then
//! is `A` told about `B` ([`mutual`]). Contact rooms never reach clients as rooms.
//!
//! May import: registry ids. No transport, no other module of the crate.

use std::collections::{BTreeMap, BTreeSet};

use heliograph_coordinator::registry::{PeerId, Region, RoomId};

/// Prefix of the registry rooms that index contact hashes. Reserved: a client's `join`,
/// `leave` or `signal` naming such a room is refused (`invalid-room`).
pub const ROOM_PREFIX: &str = heliograph_coordinator::registry::HIDDEN_ROOM_PREFIX;
/// Length of a contact hash: base64url (no padding) of a 32-byte HMAC-SHA256.
pub const HASH_CHARS: usize = 43;

/// A client-computed keyed hash of a contact handle; the server never sees the handle.
/// Kept as the name of the room that indexes it (validated once, so that naming the room
/// cannot fail later).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ContactHash(RoomId);

/// Why a string is not a contact hash.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("a contact hash is {HASH_CHARS} base64url characters (HMAC-SHA256, unpadded)")]
pub struct BadHash;

impl ContactHash {
    pub fn new(s: &str) -> Result<Self, BadHash> {
        let ok = s.len() == HASH_CHARS
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if !ok {
            return Err(BadHash);
        }
        RoomId::new(format!("{ROOM_PREFIX}{s}"))
            .map(Self)
            .map_err(|_| BadHash)
    }

    pub fn as_str(&self) -> &str {
        &self.0.as_str()[ROOM_PREFIX.len()..]
    }
}

/// Whether a room is a contact room (never shown to clients as a room).
pub fn is_contact_room(room: &RoomId) -> bool {
    room.as_str().starts_with(ROOM_PREFIX)
}

/// The registry room that indexes `hash`.
pub fn room_for(hash: &ContactHash) -> RoomId {
    hash.0.clone()
}

/// The hash a contact room indexes.
pub fn hash_of(room: &RoomId) -> Option<ContactHash> {
    room.as_str()
        .strip_prefix(ROOM_PREFIX)
        .and_then(|h| ContactHash::new(h).ok())
}

/// What a member of a contact room does with its hash.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Role {
    pub publishes: bool,
    pub watches: bool,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct RoleMeta {
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    p: bool,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    w: bool,
}

impl Role {
    /// The member `meta` that records this role in the registry.
    pub fn to_meta(self) -> String {
        serde_json::to_string(&RoleMeta {
            p: self.publishes,
            w: self.watches,
        })
        .unwrap_or_else(|_| "{}".into())
    }

    /// The role a member `meta` records (none if it is not a role).
    pub fn from_meta(meta: &str) -> Self {
        serde_json::from_str::<RoleMeta>(meta).map_or(Self::default(), |m| Self {
            publishes: m.p,
            watches: m.w,
        })
    }
}

/// The sets a `contacts` request asks for, as one role per hash.
pub fn roles(publish: &[ContactHash], watch: &[ContactHash]) -> BTreeMap<ContactHash, Role> {
    let mut roles: BTreeMap<ContactHash, Role> = BTreeMap::new();
    for h in publish {
        roles.entry(h.clone()).or_default().publishes = true;
    }
    for h in watch {
        roles.entry(h.clone()).or_default().watches = true;
    }
    roles
}

/// One member of a contact room, as the matching sees it.
#[derive(Debug, Clone)]
pub struct Seen<'a> {
    pub peer: &'a PeerId,
    pub region: &'a Region,
    pub role: Role,
}

/// A mutual contact as told to one peer: `peer` publishes `hash`, which the told peer watches.
pub type Match = (ContactHash, PeerId);

/// The mutual contacts of `me`, from the contact rooms `me` is in: for each, the hash, `me`'s
/// own role there and the other members. `B` is a match under hash `h` when `me` watches `h`,
/// `B` publishes `h`, and `B` watches some hash `me` publishes.
pub fn mutual<'a>(
    me: &PeerId,
    rooms: impl IntoIterator<Item = (ContactHash, Role, Vec<Seen<'a>>)>,
) -> BTreeMap<Match, Region> {
    let rooms: Vec<_> = rooms.into_iter().collect();
    let watchers_of_me: BTreeSet<&PeerId> = rooms
        .iter()
        .filter(|(_, mine, _)| mine.publishes)
        .flat_map(|(_, _, members)| members.iter())
        .filter(|s| s.role.watches && s.peer != me)
        .map(|s| s.peer)
        .collect();
    let mut out = BTreeMap::new();
    for (hash, mine, members) in &rooms {
        if !mine.watches {
            continue;
        }
        for s in members {
            if s.peer != me && s.role.publishes && watchers_of_me.contains(s.peer) {
                out.insert((hash.clone(), s.peer.clone()), s.region.clone());
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn h(c: char) -> ContactHash {
        ContactHash::new(&c.to_string().repeat(HASH_CHARS)).unwrap()
    }

    #[test]
    fn hashes_are_validated() {
        assert!(ContactHash::new(&"a".repeat(43)).is_ok());
        assert!(ContactHash::new(&"a".repeat(42)).is_err());
        assert!(ContactHash::new(&format!("{}=", "a".repeat(42))).is_err());
        assert!(ContactHash::new(&format!("{}+", "a".repeat(42))).is_err());
        let room = room_for(&h('x'));
        assert!(is_contact_room(&room));
        assert_eq!(hash_of(&room), Some(h('x')));
    }

    #[test]
    fn roles_round_trip_through_meta() {
        for (p, w) in [(true, false), (false, true), (true, true)] {
            let role = Role {
                publishes: p,
                watches: w,
            };
            assert_eq!(Role::from_meta(&role.to_meta()), role);
        }
        assert_eq!(Role::from_meta("{\"name\":1}"), Role::default());
    }

    #[test]
    fn only_mutual_contacts_match() {
        let (a, b, c) = (
            PeerId::new("a").unwrap(),
            PeerId::new("b").unwrap(),
            PeerId::new("c").unwrap(),
        );
        let region = Region::new("eu").unwrap();
        let watch = Role {
            publishes: false,
            watches: true,
        };
        let publish = Role {
            publishes: true,
            watches: false,
        };
        // a publishes ha (watched by b and c), watches hb (published by b) and hc (by c);
        // c watches ha but b does not publish... c publishes hc, and a watches it: c is
        // mutual too. Then without c watching ha, only b.
        let rooms = |c_watches: bool| {
            let mut in_ha = vec![Seen {
                peer: &b,
                region: &region,
                role: watch,
            }];
            if c_watches {
                in_ha.push(Seen {
                    peer: &c,
                    region: &region,
                    role: watch,
                });
            }
            vec![
                (h('a'), publish, in_ha),
                (
                    h('b'),
                    watch,
                    vec![Seen {
                        peer: &b,
                        region: &region,
                        role: publish,
                    }],
                ),
                (
                    h('c'),
                    watch,
                    vec![Seen {
                        peer: &c,
                        region: &region,
                        role: publish,
                    }],
                ),
            ]
        };
        let both = mutual(&a, rooms(true));
        assert_eq!(both.len(), 2);
        let only_b = mutual(&a, rooms(false));
        assert_eq!(
            only_b.keys().cloned().collect::<Vec<_>>(),
            vec![(h('b'), b.clone())]
        );
    }
}
