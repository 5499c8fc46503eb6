//! Client protocol v1: JSON text frames, decoded and validated here and nowhere else.
//!
//! Decoding never panics and never trusts the client: every field is checked for presence,
//! type and size, and a failure names the field and carries the client's `ref` back when one
//! could be read. Server messages are encoded once; opaque client JSON (`data`, `meta`) is
//! passed through as raw text, never re-parsed.

use std::borrow::Cow;
use std::fmt;

use base64::Engine as _;
use heliograph_coordinator::registry::{
    ListingQuery, MAX_LISTING_LIMIT, MAX_LISTING_PREFIX_BYTES, PeerId, RoomId,
};

use crate::contacts::{self, ContactHash};
use serde::Serialize;

use crate::member::MemberKey;
use serde_json::value::RawValue;

mod envelope;
mod relayable;
mod scan;

use envelope::Envelope;
pub use relayable::check_relayable;

/// WebSocket subprotocol name of this version.
pub const SUBPROTOCOL: &str = "heliograph.v1";
/// Longest `ref` a client may attach, in bytes of its JSON text.
pub const MAX_REF_BYTES: usize = 64;
/// Rooms in a `rooms` page when `list-rooms` names no `limit`.
pub const DEFAULT_LIST_LIMIT: usize = 50;
/// Longest `cursor` accepted, in bytes (a cursor names a room id: at most 128 bytes, in
/// base64).
const MAX_CURSOR_BYTES: usize = 256;

/// Error codes sent in `error` frames. The wire names are listed in docs/PROTOCOL.md.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    BadJson,
    UnknownType,
    BadField,
    InvalidRoom,
    InvalidMeta,
    BinaryUnsupported,
    NotInRoom,
    UnknownPeer,
    TooManyRooms,
    RoomFull,
    ResumeFailed,
    Unavailable,
    Internal,
    TokenRequired,
    TokenExpired,
    TokenInvalidSignature,
    TokenAlgorithmRefused,
    TokenMalformed,
    TokenWrongRoom,
    Forbidden,
    RateLimited,
    /// The server API removed this client from a room (a kick); names the room.
    Removed,
    /// The server API closed a room this client was in; names the room.
    RoomClosed,
    /// A Socket.IO event larger than `--max-frame-bytes` (a native frame that large closes
    /// the WebSocket with 1009 instead).
    TooLarge,
    /// An `invite` to a peer that is not a mutual contact (or does not exist, or is offline:
    /// the same answer, so that it tells nothing).
    NotAContact,
    /// A `contacts` request with more hashes than `--max-contact-publish` or
    /// `--max-contact-watch`.
    TooManyContacts,
}

impl ErrorCode {
    pub const ALL: [ErrorCode; 26] = [
        Self::BadJson,
        Self::UnknownType,
        Self::BadField,
        Self::InvalidRoom,
        Self::InvalidMeta,
        Self::BinaryUnsupported,
        Self::NotInRoom,
        Self::UnknownPeer,
        Self::TooManyRooms,
        Self::RoomFull,
        Self::ResumeFailed,
        Self::Unavailable,
        Self::Internal,
        Self::TokenRequired,
        Self::TokenExpired,
        Self::TokenInvalidSignature,
        Self::TokenAlgorithmRefused,
        Self::TokenMalformed,
        Self::TokenWrongRoom,
        Self::Forbidden,
        Self::RateLimited,
        Self::Removed,
        Self::RoomClosed,
        Self::TooLarge,
        Self::NotAContact,
        Self::TooManyContacts,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::BadJson => "bad-json",
            Self::UnknownType => "unknown-type",
            Self::BadField => "bad-field",
            Self::InvalidRoom => "invalid-room",
            Self::InvalidMeta => "invalid-meta",
            Self::BinaryUnsupported => "binary-unsupported",
            Self::NotInRoom => "not-in-room",
            Self::UnknownPeer => "unknown-peer",
            Self::TooManyRooms => "too-many-rooms",
            Self::RoomFull => "room-full",
            Self::ResumeFailed => "resume-failed",
            Self::Unavailable => "unavailable",
            Self::Internal => "internal",
            Self::TokenRequired => "token-required",
            Self::TokenExpired => "token-expired",
            Self::TokenInvalidSignature => "token-invalid-signature",
            Self::TokenAlgorithmRefused => "token-algorithm-refused",
            Self::TokenMalformed => "token-malformed",
            Self::TokenWrongRoom => "token-wrong-room",
            Self::Forbidden => "forbidden",
            Self::RateLimited => "rate-limited",
            Self::TooLarge => "too-large",
            Self::Removed => "removed",
            Self::RoomClosed => "room-closed",
            Self::NotAContact => "not-a-contact",
            Self::TooManyContacts => "too-many-contacts",
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A request the client made that cannot be served.
#[derive(Debug, Clone)]
pub struct ProtocolError {
    pub code: ErrorCode,
    pub message: String,
    pub reference: Option<Ref>,
}

impl ProtocolError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            reference: None,
        }
    }

    fn with_ref(mut self, reference: Option<Ref>) -> Self {
        self.reference = reference;
        self
    }
}

/// A client-chosen request reference (a JSON string or number), echoed verbatim.
#[derive(Debug, Clone)]
pub struct Ref(Box<RawValue>);

impl Ref {
    fn parse(text: &str) -> Result<Self, ProtocolError> {
        let is_scalar = text.starts_with('"')
            || text.starts_with('-')
            || text.bytes().next().is_some_and(|b| b.is_ascii_digit());
        if !is_scalar {
            return Err(ProtocolError::new(
                ErrorCode::BadField,
                "`ref` must be a string or a number",
            ));
        }
        if text.len() > MAX_REF_BYTES {
            return Err(ProtocolError::new(
                ErrorCode::BadField,
                format!("`ref` is longer than {MAX_REF_BYTES} bytes"),
            ));
        }
        Ok(Self(raw_value(text)?.to_owned()))
    }

    /// A numeric `ref`, for requests the edge makes on a client's behalf (Socket.IO).
    pub fn number(n: u64) -> Self {
        Self(raw_json(n.to_string()))
    }

    pub fn raw(&self) -> &RawValue {
        &self.0
    }
}

/// What a signal carries, as named by the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SignalKind {
    Offer,
    Answer,
    Candidate,
    Custom,
}

impl SignalKind {
    fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "offer" => Self::Offer,
            "answer" => Self::Answer,
            "candidate" => Self::Candidate,
            "custom" => Self::Custom,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Offer => "offer",
            Self::Answer => "answer",
            Self::Candidate => "candidate",
            Self::Custom => "custom",
        }
    }
}

/// A decoded, validated client request.
#[derive(Debug)]
pub struct Request<'a> {
    pub reference: Option<Ref>,
    /// The highest `seq` the client has read (any request may carry it): frames up to it
    /// need not be kept for a replay.
    pub ack: Option<u64>,
    pub message: ClientMessage<'a>,
}

#[derive(Debug)]
pub enum ClientMessage<'a> {
    Join {
        room: RoomId,
        /// A JSON object, as the client sent it.
        meta: Option<&'a RawValue>,
        /// A join token (JWT), required when the edge has a signing key configured.
        token: Option<String>,
        /// The member's public key for signals relayed by peers (`meta.key` for the others).
        key: Option<MemberKey>,
        /// List the room to discovery, if this join creates it.
        public: bool,
        /// A JSON object shown in listings, if this join creates the room.
        room_meta: Option<&'a RawValue>,
    },
    /// A page of public rooms (discovery).
    ListRooms(ListingQuery),
    Leave {
        room: RoomId,
    },
    /// `room` and `to` are checked as ids but read in place: a signal is routed by looking
    /// them up, and builds no id of its own.
    Signal {
        room: Cow<'a, str>,
        to: Cow<'a, str>,
        kind: SignalKind,
        /// Valid JSON, relayable verbatim.
        data: &'a str,
    },
    Ping,
    Resume {
        token: String,
        last_seq: Option<u64>,
    },
    /// Replaces this session's published and watched contact hashes.
    Contacts {
        publish: Vec<ContactHash>,
        watch: Vec<ContactHash>,
    },
    /// Invites a mutual contact into an application room.
    Invite {
        to: PeerId,
        room: RoomId,
        data: Option<&'a RawValue>,
    },
}

impl ClientMessage<'_> {
    /// The message type, for metrics labels.
    pub fn type_name(&self) -> &'static str {
        match self {
            Self::Join { .. } => "join",
            Self::Leave { .. } => "leave",
            Self::Signal { .. } => "signal",
            Self::Ping => "ping",
            Self::Resume { .. } => "resume",
            Self::Contacts { .. } => "contacts",
            Self::Invite { .. } => "invite",
            Self::ListRooms(_) => "list-rooms",
        }
    }
}

/// A `seq` the client names (`ack`, `last_seq`).
fn sequence_number(text: &str, field: &str) -> Result<u64, ProtocolError> {
    // Plain digits (valid JSON: no leading zero) are read at once; anything else, and a
    // value beyond u64, is read and refused by serde_json.
    if text.bytes().all(|b| b.is_ascii_digit())
        && let Ok(n) = text.parse::<u64>()
    {
        return Ok(n);
    }
    serde_json::from_str::<u64>(text).map_err(|_| {
        ProtocolError::new(
            ErrorCode::BadField,
            format!("`{field}` must be a non-negative integer"),
        )
    })
}

/// Limits applied while decoding.
#[derive(Debug, Clone, Copy)]
pub struct DecodeLimits {
    pub max_meta_bytes: usize,
    /// Most hashes a `contacts` list may have (the larger of `--max-contact-publish` and
    /// `--max-contact-watch`; each list is checked against its own limit after decoding).
    pub max_contact_hashes: usize,
}

/// Decodes one text frame.
pub fn decode<'a>(text: &'a str, limits: &DecodeLimits) -> Result<Request<'a>, ProtocolError> {
    if !text.trim_start().starts_with('{') {
        return Err(ProtocolError::new(
            ErrorCode::BadJson,
            "a frame must be a JSON object",
        ));
    }
    let env = Envelope::read(text)?;
    let reference = env.reference.map(Ref::parse).transpose()?;
    let ack = env
        .ack
        .map(|raw| sequence_number(raw, "ack"))
        .transpose()
        .map_err(|e| e.with_ref(reference.clone()))?;
    let message = decode_message(&env, limits).map_err(|e| e.with_ref(reference.clone()))?;
    Ok(Request {
        reference,
        ack,
        message,
    })
}

fn decode_message<'a>(
    env: &Envelope<'a>,
    limits: &DecodeLimits,
) -> Result<ClientMessage<'a>, ProtocolError> {
    let ty = required_text(env.ty, "type")?;
    match &*ty {
        "join" => {
            let room = room(env.room)?;
            let meta = json_object(env.meta, "meta", limits)?;
            let token = env
                .token
                .map(|t| required_str(Some(t), "token"))
                .transpose()?;
            let key = match env.key {
                None => None,
                Some(k) => {
                    let text = required_str(Some(k), "key")?;
                    Some(
                        MemberKey::parse(&text)
                            .map_err(|e| ProtocolError::new(ErrorCode::BadField, e.to_string()))?,
                    )
                }
            };
            let public = match env.public {
                None => false,
                Some(raw) => serde_json::from_str::<bool>(raw).map_err(|_| {
                    ProtocolError::new(ErrorCode::BadField, "`public` must be true or false")
                })?,
            };
            let room_meta = json_object(env.room_meta, "room_meta", limits)?;
            Ok(ClientMessage::Join {
                room,
                meta,
                token,
                key,
                public,
                room_meta,
            })
        }
        "list-rooms" => list_rooms(env).map(ClientMessage::ListRooms),
        "leave" => Ok(ClientMessage::Leave {
            room: room(env.room)?,
        }),
        "signal" => {
            let room = room_name(env.room)?;
            let to = required_text(env.to, "to")?;
            PeerId::check(&to).map_err(|e| {
                ProtocolError::new(ErrorCode::BadField, format!("`to` is not a peer id: {e}"))
            })?;
            let kind = required_text(env.kind, "kind")?;
            let kind = SignalKind::parse(&kind).ok_or_else(|| {
                ProtocolError::new(
                    ErrorCode::BadField,
                    "`kind` must be one of offer, answer, candidate, custom",
                )
            })?;
            let data = env
                .data
                .ok_or_else(|| ProtocolError::new(ErrorCode::BadField, "`data` is missing"))?;
            Ok(ClientMessage::Signal {
                room,
                to,
                kind,
                data,
            })
        }
        "ping" => Ok(ClientMessage::Ping),
        "contacts" => Ok(ClientMessage::Contacts {
            publish: hashes(env.publish, "publish", limits.max_contact_hashes)?,
            watch: hashes(env.watch, "watch", limits.max_contact_hashes)?,
        }),
        "invite" => {
            let to: String = required_str(env.to, "to")?;
            let to = PeerId::new(to).map_err(|e| {
                ProtocolError::new(ErrorCode::BadField, format!("`to` is not a peer id: {e}"))
            })?;
            let data = env.data.map(raw_value).transpose()?;
            Ok(ClientMessage::Invite {
                to,
                room: room(env.room)?,
                data,
            })
        }
        "resume" => {
            let token: String = required_str(env.token, "token")?;
            let last_seq = env
                .last_seq
                .map(|raw| sequence_number(raw, "last_seq"))
                .transpose()?;
            Ok(ClientMessage::Resume { token, last_seq })
        }
        other => {
            let shown: String = other.chars().take(32).collect();
            Err(ProtocolError::new(
                ErrorCode::UnknownType,
                format!("unknown message type `{shown}`"),
            ))
        }
    }
}

/// A field's raw text (valid JSON) as a `RawValue`, for the messages that hand one on.
fn raw_value(text: &str) -> Result<&RawValue, ProtocolError> {
    serde_json::from_str(text)
        .map_err(|e| ProtocolError::new(ErrorCode::BadJson, format!("invalid JSON: {e}")))
}

/// An optional JSON object of at most `--max-meta-bytes` (`meta`, `room_meta`).
fn json_object<'a>(
    raw: Option<&'a str>,
    field: &str,
    limits: &DecodeLimits,
) -> Result<Option<&'a RawValue>, ProtocolError> {
    let Some(m) = raw else {
        return Ok(None);
    };
    if !m.starts_with('{') {
        return Err(ProtocolError::new(
            ErrorCode::InvalidMeta,
            format!("`{field}` must be a JSON object"),
        ));
    }
    if m.len() > limits.max_meta_bytes {
        return Err(ProtocolError::new(
            ErrorCode::InvalidMeta,
            format!("`{field}` is larger than {} bytes", limits.max_meta_bytes),
        ));
    }
    raw_value(m).map(Some)
}

/// `list-rooms {prefix?, cursor?, limit?}`.
fn list_rooms(env: &Envelope<'_>) -> Result<ListingQuery, ProtocolError> {
    let prefix = match env.prefix {
        None => String::new(),
        Some(raw) => required_str(Some(raw), "prefix")?,
    };
    if prefix.len() > MAX_LISTING_PREFIX_BYTES {
        return Err(ProtocolError::new(
            ErrorCode::BadField,
            format!("`prefix` is longer than {MAX_LISTING_PREFIX_BYTES} bytes"),
        ));
    }
    let after = match env.cursor {
        None => None,
        Some(raw) => Some(decode_cursor(&required_str(Some(raw), "cursor")?)?),
    };
    let limit = match env.limit {
        None => DEFAULT_LIST_LIMIT,
        Some(raw) => serde_json::from_str::<usize>(raw)
            .ok()
            .filter(|n| (1..=MAX_LISTING_LIMIT).contains(n))
            .ok_or_else(|| {
                ProtocolError::new(
                    ErrorCode::BadField,
                    format!("`limit` must be an integer from 1 to {MAX_LISTING_LIMIT}"),
                )
            })?,
    };
    Ok(ListingQuery {
        prefix,
        after,
        limit,
    })
}

/// The `next` cursor of a page that ends with `room`: opaque to clients (base64url of the
/// room id, which may change), valid on any edge of the cluster.
pub fn encode_cursor(room: &RoomId) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(room.as_str())
}

fn decode_cursor(cursor: &str) -> Result<RoomId, ProtocolError> {
    let bad = || {
        ProtocolError::new(
            ErrorCode::BadField,
            "`cursor` is not a cursor this cluster gave",
        )
    };
    if cursor.len() > MAX_CURSOR_BYTES {
        return Err(bad());
    }
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(cursor)
        .map_err(|_| bad())?;
    let text = String::from_utf8(bytes).map_err(|_| bad())?;
    RoomId::new(text).map_err(|_| bad())
}

/// A string field read in place when it has no escapes (the common case: no allocation).
fn required_text<'a>(raw: Option<&'a str>, field: &str) -> Result<Cow<'a, str>, ProtocolError> {
    match raw.and_then(plain_str) {
        Some(s) => Ok(Cow::Borrowed(s)),
        None => required_str(raw, field).map(Cow::Owned),
    }
}

/// The text of a JSON string without escapes, from a raw value `Envelope::read` validated: it is
/// the bytes between the quotes (a valid string has no raw control characters, and without a
/// backslash nothing in it is encoded). Anything else is read by serde_json.
fn plain_str(text: &str) -> Option<&str> {
    let inner = text.strip_prefix('"')?.strip_suffix('"')?;
    (memchr::memchr(b'\\', inner.as_bytes()).is_none()).then_some(inner)
}

fn required_str(raw: Option<&str>, field: &str) -> Result<String, ProtocolError> {
    let raw = raw
        .ok_or_else(|| ProtocolError::new(ErrorCode::BadField, format!("`{field}` is missing")))?;
    serde_json::from_str::<String>(raw)
        .map_err(|_| ProtocolError::new(ErrorCode::BadField, format!("`{field}` must be a string")))
}

fn room(raw: Option<&str>) -> Result<RoomId, ProtocolError> {
    let name = room_name(raw)?.into_owned();
    RoomId::new(name).map_err(|e| ProtocolError::new(ErrorCode::InvalidRoom, format!("`room` {e}")))
}

/// A `room` field checked as [`room`] checks it, read in place where it can be.
fn room_name(raw: Option<&str>) -> Result<Cow<'_, str>, ProtocolError> {
    let name = required_text(raw, "room")?;
    RoomId::check(&name)
        .map_err(|e| ProtocolError::new(ErrorCode::InvalidRoom, format!("`room` {e}")))?;
    if name.starts_with(contacts::ROOM_PREFIX) {
        return Err(ProtocolError::new(
            ErrorCode::InvalidRoom,
            format!(
                "room names starting with `{}` are reserved",
                contacts::ROOM_PREFIX
            ),
        ));
    }
    Ok(name)
}

/// A list of contact hashes (`publish`, `watch`): absent or `null` is empty. More than
/// `max` entries is refused before any is decoded, so an oversized list costs little.
fn hashes(raw: Option<&str>, field: &str, max: usize) -> Result<Vec<ContactHash>, ProtocolError> {
    let Some(raw) = raw else {
        return Ok(Vec::new());
    };
    let items: Vec<&RawValue> = serde_json::from_str(raw).map_err(|_| {
        ProtocolError::new(
            ErrorCode::BadField,
            format!("`{field}` must be an array of strings"),
        )
    })?;
    if items.len() > max {
        return Err(ProtocolError::new(
            ErrorCode::TooManyContacts,
            format!("`{field}` has more than {max} hashes"),
        ));
    }
    let mut out = Vec::with_capacity(items.len());
    for item in items {
        let text: String = serde_json::from_str(item.get()).map_err(|_| {
            ProtocolError::new(
                ErrorCode::BadField,
                format!("`{field}` must be an array of strings"),
            )
        })?;
        let hash = ContactHash::new(&text)
            .map_err(|e| ProtocolError::new(ErrorCode::BadField, format!("`{field}`: {e}")))?;
        out.push(hash);
    }
    out.sort();
    out.dedup();
    Ok(out)
}

/// A peer as shown to other peers.
#[derive(Debug, Serialize)]
pub struct PeerInfo<'a> {
    pub id: &'a str,
    pub meta: &'a RawValue,
    pub region: &'a str,
}

/// A public room as listed in `rooms`.
#[derive(Debug, Serialize)]
pub struct ListedRoom<'a> {
    pub room: &'a str,
    pub members: u32,
    pub regions: Vec<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub meta: Option<Box<RawValue>>,
}

/// Messages the edge sends. Encoded with [`encode`].
#[derive(Debug, Serialize)]
#[serde(tag = "type", rename_all = "kebab-case")]
pub enum ServerMessage<'a> {
    Welcome {
        peer_id: &'a str,
        resume_token: &'a str,
        region: &'a str,
        edge: &'a str,
        ice_servers: &'a RawValue,
        protocol: &'static str,
    },
    Joined {
        room: &'a str,
        peers: Vec<PeerInfo<'a>>,
        #[serde(rename = "ref", skip_serializing_if = "Option::is_none")]
        reference: Option<&'a RawValue>,
    },
    PeerJoined {
        room: &'a str,
        peer: PeerInfo<'a>,
    },
    Left {
        room: &'a str,
        #[serde(rename = "ref", skip_serializing_if = "Option::is_none")]
        reference: Option<&'a RawValue>,
    },
    PeerLeft {
        room: &'a str,
        peer_id: &'a str,
        reason: &'a str,
    },
    Signal {
        room: &'a str,
        from: &'a str,
        kind: SignalKind,
        data: &'a RawValue,
    },
    Pong {
        #[serde(rename = "ref", skip_serializing_if = "Option::is_none")]
        reference: Option<&'a RawValue>,
    },
    Error {
        code: &'static str,
        message: &'a str,
        #[serde(rename = "ref", skip_serializing_if = "Option::is_none")]
        reference: Option<&'a RawValue>,
        /// The room a `removed` or `room-closed` error is about.
        #[serde(skip_serializing_if = "Option::is_none")]
        room: Option<&'a str>,
    },
    /// The session named by a `resume` continues on this socket; the frames it missed came
    /// just before this one.
    Resumed {
        peer_id: &'a str,
        /// Frames sent before this one because the client had not read them.
        replayed: usize,
        resume_token: &'a str,
        #[serde(rename = "ref", skip_serializing_if = "Option::is_none")]
        reference: Option<&'a RawValue>,
    },
    /// The edge is draining: it closes this socket (1001) in about `after_ms`; resume then.
    Reconnect {
        after_ms: u64,
    },
    /// The answer to `contacts`: the session's sets are replaced.
    ContactsSet {
        #[serde(rename = "ref", skip_serializing_if = "Option::is_none")]
        reference: Option<&'a RawValue>,
    },
    /// A mutual contact came online (`online: true`, with its peer id and region) or went
    /// offline or stopped being mutual (`online: false`).
    Contact {
        hash: &'a str,
        online: bool,
        peer: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        region: Option<&'a str>,
    },
    /// A mutual contact invites this client into `room`.
    Invite {
        from: &'a str,
        room: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        data: Option<&'a RawValue>,
    },
    /// The answer to `list-rooms`: a page of public rooms.
    Rooms {
        items: Vec<ListedRoom<'a>>,
        /// The cursor of the next page; absent on the last one.
        #[serde(skip_serializing_if = "Option::is_none")]
        next: Option<String>,
        /// Some regions did not answer in time: their rooms are missing from this page.
        #[serde(skip_serializing_if = "std::ops::Not::not")]
        partial: bool,
        /// Those regions.
        #[serde(skip_serializing_if = "Vec::is_empty")]
        unreachable: Vec<&'a str>,
        #[serde(rename = "ref", skip_serializing_if = "Option::is_none")]
        reference: Option<&'a RawValue>,
    },
    /// A signal this client sent to `to` will never be delivered.
    Expired {
        to: &'a str,
        room: &'a str,
        #[serde(rename = "ref", skip_serializing_if = "Option::is_none")]
        reference: Option<&'a RawValue>,
    },
}

/// Encodes a server message as the text of one frame.
pub fn encode(message: &ServerMessage<'_>) -> String {
    // Serialising these types cannot fail: every field is a string, a number, a sequence or
    // already-valid raw JSON.
    serde_json::to_string(message).unwrap_or_else(|_| {
        String::from(r#"{"type":"error","code":"internal","message":"encoding failed"}"#)
    })
}

/// A `signal` frame, written directly (the relay's hot path): the text
/// `encode(&ServerMessage::Signal {..})` gives. `data` must be valid JSON.
pub fn encode_signal(room: &RoomId, from: &PeerId, kind: SignalKind, data: &str) -> String {
    let mut out =
        String::with_capacity(64 + room.as_str().len() + from.as_str().len() + data.len());
    out.push_str(r#"{"type":"signal","room":"#);
    push_id(&mut out, room.as_str());
    out.push_str(r#","from":"#);
    push_id(&mut out, from.as_str());
    out.push_str(r#","kind":""#);
    out.push_str(kind.as_str());
    out.push_str(r#"","data":"#);
    out.push_str(data);
    out.push('}');
    out
}

/// An id as a JSON string. Ids have no control characters: only `"` and `\` are escaped.
fn push_id(out: &mut String, id: &str) {
    out.push('"');
    let mut rest = id;
    while let Some(i) = memchr::memchr2(b'"', b'\\', rest.as_bytes()) {
        out.push_str(&rest[..i]);
        out.push('\\');
        out.push_str(&rest[i..=i]);
        rest = &rest[i + 1..];
    }
    out.push_str(rest);
    out.push('"');
}

/// The reference of a request as raw JSON, for echoing.
pub fn ref_raw(reference: Option<&Ref>) -> Option<&RawValue> {
    reference.map(Ref::raw)
}

/// The `error` frame for a protocol error.
pub fn encode_error(error: &ProtocolError) -> String {
    encode(&ServerMessage::Error {
        code: error.code.as_str(),
        message: &error.message,
        reference: ref_raw(error.reference.as_ref()),
        room: None,
    })
}

/// The `error` frame that tells a client the server API took it out of `room` (`removed`)
/// or closed `room` (`room-closed`). No request caused it, so it carries no `ref`.
pub fn encode_room_error(code: ErrorCode, room: &str) -> String {
    let message = match code {
        ErrorCode::RoomClosed => "the room was closed by the server",
        _ => "you were removed from the room by the server",
    };
    encode(&ServerMessage::Error {
        code: code.as_str(),
        message,
        reference: None,
        room: Some(room),
    })
}

/// Raw JSON from text that the edge itself validated earlier (member metadata); `null` if it
/// is somehow not JSON, rather than failing the whole message.
pub fn raw_json(text: String) -> Box<RawValue> {
    RawValue::from_string(text).unwrap_or_else(|_| RawValue::NULL.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: DecodeLimits = DecodeLimits {
        max_meta_bytes: 64,
        max_contact_hashes: 2,
    };

    fn err(text: &str) -> ProtocolError {
        decode(text, &LIMITS).unwrap_err()
    }

    #[test]
    fn decodes_each_type() {
        let r = decode(
            r#"{"type":"join","room":"r","meta":{"n":"a"},"ref":7}"#,
            &LIMITS,
        )
        .unwrap();
        assert!(matches!(
            r.message,
            ClientMessage::Join { meta: Some(_), .. }
        ));
        assert_eq!(r.reference.unwrap().0.get(), "7");
        let r = decode(
            r#"{"type":"signal","room":"r","to":"abc","kind":"offer","data":{"sdp":"v=0"}}"#,
            &LIMITS,
        )
        .unwrap();
        let ClientMessage::Signal { kind, data, .. } = r.message else {
            panic!()
        };
        assert_eq!(kind, SignalKind::Offer);
        assert_eq!(data, r#"{"sdp":"v=0"}"#);
        assert!(matches!(
            decode(r#"{"type":"ping"}"#, &LIMITS).unwrap().message,
            ClientMessage::Ping
        ));
    }

    #[test]
    fn join_key_is_checked() {
        let point = format!("B{}", "A".repeat(86));
        let text = format!(r#"{{"type":"join","room":"r","key":"{point}"}}"#);
        let r = decode(&text, &LIMITS).unwrap();
        let ClientMessage::Join { key: Some(key), .. } = r.message else {
            panic!()
        };
        assert_eq!(key.as_str(), point);
        let none = decode(r#"{"type":"join","room":"r","key":null}"#, &LIMITS).unwrap();
        assert!(matches!(
            none.message,
            ClientMessage::Join { key: None, .. }
        ));
        for bad in [
            r#""short""#,
            "5",
            r#""A+/=""#,
            &format!(r#""A{}""#, "A".repeat(86)),
        ] {
            let e = err(&format!(
                r#"{{"type":"join","room":"r","key":{bad},"ref":1}}"#
            ));
            assert_eq!(e.code, ErrorCode::BadField, "{bad}");
            assert!(e.reference.is_some());
        }
    }

    #[test]
    fn errors_are_precise_and_keep_the_ref() {
        assert_eq!(err("nope").code, ErrorCode::BadJson);
        assert_eq!(err("[1]").code, ErrorCode::BadJson);
        assert_eq!(err(r#"{"type":"join""#).code, ErrorCode::BadJson);
        let e = err(r#"{"type":"dance","ref":"x"}"#);
        assert_eq!(e.code, ErrorCode::UnknownType);
        assert_eq!(e.reference.unwrap().0.get(), "\"x\"");
        assert_eq!(err(r#"{"type":"join"}"#).code, ErrorCode::BadField);
        assert_eq!(err(r#"{"type":"join","room":5}"#).code, ErrorCode::BadField);
        assert_eq!(
            err(r#"{"type":"join","room":""}"#).code,
            ErrorCode::InvalidRoom
        );
        let long = format!(r#"{{"type":"join","room":"{}"}}"#, "r".repeat(200));
        assert_eq!(err(&long).code, ErrorCode::InvalidRoom);
        let big = format!(
            r#"{{"type":"join","room":"r","meta":{{"x":"{}"}}}}"#,
            "m".repeat(100)
        );
        assert_eq!(err(&big).code, ErrorCode::InvalidMeta);
        assert_eq!(
            err(r#"{"type":"join","room":"r","meta":[1]}"#).code,
            ErrorCode::InvalidMeta
        );
        assert_eq!(
            err(r#"{"type":"signal","room":"r","to":"p","kind":"hug","data":1}"#).code,
            ErrorCode::BadField
        );
        assert_eq!(
            err(r#"{"type":"signal","room":"r","to":"p","kind":"offer"}"#).code,
            ErrorCode::BadField
        );
        assert_eq!(
            err(r#"{"type":"ping","ref":{"a":1}}"#).code,
            ErrorCode::BadField
        );
        assert_eq!(err(r#"{"type":1}"#).code, ErrorCode::BadField);
    }

    #[test]
    fn out_of_range_numbers_are_refused_anywhere() {
        assert_eq!(
            err(r#"{"~e":"","ref":800e00050000000}"#).code,
            ErrorCode::BadJson
        );
        assert_eq!(
            err(r#"{"type":"signal","room":"r","to":"p","kind":"offer","data":[1e999]}"#).code,
            ErrorCode::BadJson
        );
        // Big but finite numbers, and digits inside strings, are fine.
        assert!(decode(r#"{"type":"ping","ref":1e300,"x":"1e999"}"#, &LIMITS).is_ok());
        assert!(decode(r#"{"type":"ping","ref":-0.5e-10}"#, &LIMITS).is_ok());
        // Escaped quotes do not end a string early.
        assert!(decode(r#"{"type":"ping","x":"a\"1e999\" \\","ref":1}"#, &LIMITS).is_ok());
        assert_eq!(
            err(r#"{"type":"ping","x":"a\"1e999\" \\","ref":1e999}"#).code,
            ErrorCode::BadJson
        );
    }

    #[test]
    fn long_plain_numbers_are_checked_too() {
        // 309 digits: 9.99e308 is beyond a 64-bit float; 1e308 written out is not.
        let nines = format!(r#"{{"type":"ping","n":{}}}"#, "9".repeat(309));
        assert_eq!(err(&nines).code, ErrorCode::BadJson);
        let big = format!(r#"{{"type":"ping","n":1{}}}"#, "0".repeat(308));
        assert!(decode(&big, &LIMITS).is_ok());
        let short = format!(r#"{{"type":"ping","n":-{}}}"#, "9".repeat(307));
        assert!(decode(&short, &LIMITS).is_ok());
    }

    #[test]
    fn unpaired_surrogates_are_refused_anywhere() {
        assert_eq!(
            err(r#"{"type":"ping","ref":"\u00e9\ud83d|ude00"}"#).code,
            ErrorCode::BadJson
        );
        assert_eq!(
            err(r#"{"type":"signal","room":"r","to":"p","kind":"offer","data":{"s":"\udc00"}}"#)
                .code,
            ErrorCode::BadJson
        );
        assert_eq!(
            err(r#"{"type":"ping","x":"\ud83d\n"}"#).code,
            ErrorCode::BadJson
        );
        assert_eq!(
            err(r#"{"type":"ping","x":"\ud83d"}"#).code,
            ErrorCode::BadJson
        );
        assert!(
            decode(
                r#"{"type":"ping","ref":"\ud83d\ude00 \\ud83d \u00e9"}"#,
                &LIMITS
            )
            .is_ok()
        );
    }

    #[test]
    fn encodes_signal_with_raw_data() {
        let data: &RawValue = serde_json::from_str(r#"{"sdp":"v=0\r\n"}"#).unwrap();
        let text = encode(&ServerMessage::Signal {
            room: "r",
            from: "p",
            kind: SignalKind::Answer,
            data,
        });
        assert_eq!(
            text,
            r#"{"type":"signal","room":"r","from":"p","kind":"answer","data":{"sdp":"v=0\r\n"}}"#
        );
    }

    #[test]
    fn signals_written_directly_are_what_serde_writes() {
        for (room, from, data) in [
            ("r", "p", r#"{"sdp":"v=0\r\n"}"#),
            (r#"a "quoted" \ room"#, r#"p\"#, "5"),
            ("é ✓", "9b7e41", r#"[1,{"from":"x"}]"#),
        ] {
            let room = RoomId::new(room).unwrap();
            let from = PeerId::new(from).unwrap();
            let raw: &RawValue = serde_json::from_str(data).unwrap();
            let expected = encode(&ServerMessage::Signal {
                room: room.as_str(),
                from: from.as_str(),
                kind: SignalKind::Offer,
                data: raw,
            });
            assert_eq!(
                encode_signal(&room, &from, SignalKind::Offer, data),
                expected
            );
        }
    }

    #[test]
    fn contacts_and_invites_are_validated() {
        let a = "a".repeat(43);
        let b = "b".repeat(43);
        let too_many =
            format!(r#"{{"type":"contacts","publish":["{a}"],"watch":["{b}","{a}","{b}"]}}"#);
        assert_eq!(err(&too_many).code, ErrorCode::TooManyContacts);
        let two =
            format!(r#"{{"type":"contacts","publish":["{a}"],"watch":["{b}","{a}"],"ref":1}}"#);
        let r = decode(&two, &LIMITS).unwrap();
        let ClientMessage::Contacts { publish, watch } = r.message else {
            panic!()
        };
        assert_eq!((publish.len(), watch.len()), (1, 2));
        let empty = decode(r#"{"type":"contacts"}"#, &LIMITS).unwrap();
        assert!(
            matches!(empty.message, ClientMessage::Contacts { publish, watch } if publish.is_empty() && watch.is_empty())
        );
        assert_eq!(
            err(r#"{"type":"contacts","watch":["short"]}"#).code,
            ErrorCode::BadField
        );
        assert_eq!(
            err(r#"{"type":"contacts","watch":"x"}"#).code,
            ErrorCode::BadField
        );
        assert!(matches!(
            decode(
                r#"{"type":"invite","to":"p","room":"r","data":{"x":1}}"#,
                &LIMITS
            )
            .unwrap()
            .message,
            ClientMessage::Invite { data: Some(_), .. }
        ));
        assert_eq!(
            err(r#"{"type":"invite","room":"r"}"#).code,
            ErrorCode::BadField
        );
        let reserved = format!(r#"{{"type":"join","room":"~contact/{a}"}}"#);
        assert_eq!(err(&reserved).code, ErrorCode::InvalidRoom);
    }

    #[test]
    fn join_takes_public_and_room_meta() {
        let r = decode(
            r#"{"type":"join","room":"r","public":true,"room_meta":{"t":"x"}}"#,
            &LIMITS,
        )
        .unwrap();
        let ClientMessage::Join {
            public, room_meta, ..
        } = r.message
        else {
            panic!()
        };
        assert!(public);
        assert_eq!(room_meta.unwrap().get(), r#"{"t":"x"}"#);
        assert_eq!(
            err(r#"{"type":"join","room":"r","public":"yes"}"#).code,
            ErrorCode::BadField
        );
        assert_eq!(
            err(r#"{"type":"join","room":"r","room_meta":[1]}"#).code,
            ErrorCode::InvalidMeta
        );
        let big = format!(
            r#"{{"type":"join","room":"r","room_meta":{{"x":"{}"}}}}"#,
            "m".repeat(100)
        );
        assert_eq!(err(&big).code, ErrorCode::InvalidMeta);
    }

    #[test]
    fn list_rooms_is_validated() {
        let r = decode(r#"{"type":"list-rooms"}"#, &LIMITS).unwrap();
        let ClientMessage::ListRooms(q) = r.message else {
            panic!()
        };
        assert_eq!((q.prefix.as_str(), q.after, q.limit), ("", None, 50));
        let cursor = encode_cursor(&RoomId::new("game-7").unwrap());
        let text = format!(
            r#"{{"type":"list-rooms","prefix":"game","cursor":"{cursor}","limit":100,"ref":1}}"#
        );
        let ClientMessage::ListRooms(q) = decode(&text, &LIMITS).unwrap().message else {
            panic!()
        };
        assert_eq!(q.after.unwrap().as_str(), "game-7");
        assert_eq!((q.prefix.as_str(), q.limit), ("game", 100));
        for bad in [
            r#"{"type":"list-rooms","limit":0}"#.to_owned(),
            r#"{"type":"list-rooms","limit":101}"#.to_owned(),
            r#"{"type":"list-rooms","limit":"5"}"#.to_owned(),
            r#"{"type":"list-rooms","limit":2.5}"#.to_owned(),
            r#"{"type":"list-rooms","prefix":7}"#.to_owned(),
            r#"{"type":"list-rooms","cursor":"!!"}"#.to_owned(),
            r#"{"type":"list-rooms","cursor":""}"#.to_owned(),
            format!(r#"{{"type":"list-rooms","prefix":"{}"}}"#, "p".repeat(129)),
        ] {
            let e = err(&bad);
            assert_eq!(e.code, ErrorCode::BadField, "{bad}");
        }
        let e = err(r#"{"type":"list-rooms","limit":0,"ref":"x"}"#);
        assert_eq!(e.reference.unwrap().0.get(), r#""x""#);
    }

    #[test]
    fn every_error_code_is_distinct() {
        let names: std::collections::HashSet<_> =
            ErrorCode::ALL.iter().map(|c| c.as_str()).collect();
        assert_eq!(names.len(), ErrorCode::ALL.len());
    }
}
