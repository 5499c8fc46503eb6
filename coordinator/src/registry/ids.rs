//! Newtype identifiers shared by the registry and the edges.
//!
//! Ids arrive from clients and from the wire, so constructors validate them; once built, an id
//! is known to be non-empty, bounded and free of control characters.
//!
//! An id is a shared string (`Arc<str>`): the registry keeps each peer's and room's id in
//! several places (a room's member list, a peer's rooms, the events), and a clone shares the
//! one copy instead of allocating another.

use std::cmp::Ordering;
use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Serialize, Serializer};

/// Longest room id accepted, in bytes.
pub const MAX_ROOM_ID_BYTES: usize = 128;
/// Longest edge id or region name accepted, in bytes.
pub const MAX_NAME_BYTES: usize = 64;
/// Bytes of randomness in a peer id (128 bits: unguessable).
const PEER_ID_RANDOM_BYTES: usize = 16;

/// Why a string is not a valid id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    #[error("must not be empty")]
    Empty,
    #[error("is longer than {0} bytes")]
    TooLong(usize),
    #[error("contains control characters")]
    ControlChar,
}

fn validate(s: &str, max: usize) -> Result<(), IdError> {
    if s.is_empty() {
        return Err(IdError::Empty);
    }
    if s.len() > max {
        return Err(IdError::TooLong(max));
    }
    // Ids are almost always ASCII: a byte test, and the char walk only for the rest.
    let control = if s.is_ascii() {
        // Without an early exit the compiler tests many bytes at once: ids are short, and
        // valid ones are read to the end anyway.
        s.bytes()
            .fold(false, |found, b| found | b.is_ascii_control())
    } else {
        s.chars().any(char::is_control)
    };
    if control {
        return Err(IdError::ControlChar);
    }
    Ok(())
}

/// `a.cmp(b)`, with the first eight bytes compared as one number first. The registry's
/// ordered maps compare a key with a dozen others per lookup, and ids mostly differ within
/// their first bytes (peer ids are random hex): a `memcmp` call for each comparison was 3 %
/// of an edge's CPU in a connection storm. The same order as `str`'s: an id holds no NUL
/// (no control character), so the zeros that pad a short head sort below any byte of a
/// longer one, as the shorter string sorts first.
#[inline]
fn ordered(a: &str, b: &str) -> Ordering {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    match head(a).cmp(&head(b)) {
        Ordering::Equal => a.cmp(b),
        different => different,
    }
}

/// The first eight bytes of `s`, big-endian, zero-padded.
#[inline]
fn head(s: &[u8]) -> u64 {
    let mut word = [0u8; 8];
    let n = s.len().min(8);
    word[..n].copy_from_slice(&s[..n]);
    u64::from_be_bytes(word)
}

macro_rules! string_id {
    ($(#[$doc:meta])* $name:ident, $max:expr) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, Deserialize)]
        #[serde(try_from = "String")]
        pub struct $name(Arc<str>);

        /// The order of the strings (`Borrow<str>` relies on it), faster: see [`ordered`].
        impl Ord for $name {
            fn cmp(&self, other: &Self) -> Ordering {
                ordered(&self.0, &other.0)
            }
        }

        impl PartialOrd for $name {
            fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
                Some(self.cmp(other))
            }
        }

        impl $name {
            /// Validates and wraps `s`.
            pub fn new(s: impl Into<String>) -> Result<Self, IdError> {
                let s = s.into();
                validate(&s, $max)?;
                Ok(Self(Arc::from(s)))
            }

            /// Checks `s` as [`Self::new`] does, without building an id (for a lookup by
            /// a borrowed string).
            pub fn check(s: &str) -> Result<(), IdError> {
                validate(s, $max)
            }

            /// Whether both share one copy of the string.
            pub fn shares_with(&self, other: &Self) -> bool {
                Arc::ptr_eq(&self.0, &other.0)
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl TryFrom<String> for $name {
            type Error = IdError;
            fn try_from(s: String) -> Result<Self, IdError> {
                Self::new(s)
            }
        }

        impl From<$name> for String {
            fn from(id: $name) -> String {
                id.0.as_ref().to_owned()
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.serialize_str(&self.0)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl std::borrow::Borrow<str> for $name {
            fn borrow(&self) -> &str {
                &self.0
            }
        }
    };
}

string_id!(
    /// A room, named by the application.
    RoomId,
    MAX_ROOM_ID_BYTES
);
string_id!(
    /// A connected client. Issued by the edge at `welcome`; 128 random bits in hex.
    PeerId,
    MAX_NAME_BYTES
);
string_id!(
    /// One edge process (stable across the sockets it serves, new per deployment unit).
    EdgeId,
    MAX_NAME_BYTES
);
string_id!(
    /// A deployment region, e.g. `eu` or `us-east`.
    Region,
    MAX_NAME_BYTES
);

/// Prefix of the rooms the edges keep for contact discovery (one per contact hash; see
/// docs/ARCHITECTURE.md). They are the system's own, not the application's: the registry
/// sends no webhooks for them and the server API does not list them.
pub const HIDDEN_ROOM_PREFIX: &str = "~contact/";

impl RoomId {
    /// Whether this is one of the system's own rooms ([`HIDDEN_ROOM_PREFIX`]).
    pub fn is_hidden(&self) -> bool {
        self.as_str().starts_with(HIDDEN_ROOM_PREFIX)
    }
}

impl PeerId {
    /// A fresh random peer id.
    pub fn random() -> Self {
        let bytes: [u8; PEER_ID_RANDOM_BYTES] = rand::random();
        Self(Arc::from(hex::encode(bytes)))
    }
}

impl EdgeId {
    /// A fresh random edge id, for edges that are not given one.
    pub fn random() -> Self {
        let bytes: [u8; 6] = rand::random();
        Self(Arc::from(format!("edge-{}", hex::encode(bytes))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validation() {
        assert_eq!(RoomId::new(""), Err(IdError::Empty));
        assert_eq!(
            RoomId::new("x".repeat(MAX_ROOM_ID_BYTES + 1)),
            Err(IdError::TooLong(MAX_ROOM_ID_BYTES))
        );
        assert_eq!(RoomId::new("a\nb"), Err(IdError::ControlChar));
        assert!(RoomId::new("lobby/42 ünïcode").is_ok());
    }

    #[test]
    fn peer_ids_are_long_and_distinct() {
        let a = PeerId::random();
        let b = PeerId::random();
        assert_ne!(a, b);
        assert_eq!(a.as_str().len(), 32);
    }

    proptest::proptest! {
        /// Ids sort exactly as their strings (maps keyed by ids are looked up by `&str`).
        #[test]
        fn ids_sort_as_their_strings(a in "[^\\p{Cc}]{1,20}", b in "[^\\p{Cc}]{1,20}") {
            let (x, y) = (RoomId::new(a.clone()).unwrap(), RoomId::new(b.clone()).unwrap());
            proptest::prop_assert_eq!(x.cmp(&y), a.as_str().cmp(b.as_str()));
            // Common heads, and one a prefix of the other.
            let (p, q) = (format!("storm-{a}"), format!("storm-{a}{b}"));
            let (x, y) = (RoomId::new(p.clone()).unwrap(), RoomId::new(q.clone()).unwrap());
            proptest::prop_assert_eq!(x.cmp(&y), p.as_str().cmp(q.as_str()));
            proptest::prop_assert_eq!(y.cmp(&x), q.as_str().cmp(p.as_str()));
        }
    }

    #[test]
    fn ids_of_eight_bytes_or_fewer_sort_as_strings() {
        let ids = [
            "a",
            "ab",
            "abcdefgh",
            "abcdefghi",
            "abcdefgi",
            "b",
            "ä",
            "~contact/x",
        ];
        for a in ids {
            for b in ids {
                let (x, y) = (PeerId::new(a).unwrap(), PeerId::new(b).unwrap());
                assert_eq!(x.cmp(&y), a.cmp(b), "{a} vs {b}");
            }
        }
    }

    #[test]
    fn serde_validates() {
        assert!(serde_json::from_str::<RoomId>("\"\"").is_err());
        let r: RoomId = serde_json::from_str("\"lobby\"").unwrap();
        assert_eq!(r.as_str(), "lobby");
    }
}
