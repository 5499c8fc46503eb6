//! Between the dialect and `heliograph.v1`: a client's event becomes the native request a
//! native client would send (a join or leave), or the parts of a native signal, read straight
//! from the packet's text without a JSON tree; and a native frame for the peer becomes the
//! dialect's event (and the answer to an acknowledgement, where the client asked for one).
//! Pure: no sockets.
//!
//! Signals: the dialect's `offer`, `answer` and `ice-candidate` (and `signal`) are the native
//! kinds `offer`, `answer`, `candidate` (and `custom`). The event's payload, minus any `from`
//! the client put in, is the native `data`, relayed as the client wrote it; the payload
//! delivered is that `data` with `from` set to the sender's peer id (a `data` that is not a
//! JSON object arrives as `{"data": …, "from": …}`).

use std::borrow::Cow;

use serde::Deserialize;
use serde::de::{Deserializer as _, IgnoredAny, SeqAccess, Visitor};
use serde_json::value::RawValue;
use serde_json::{Map, Value, json};

use super::dialect::Dialect;
use crate::protocol::{self, ErrorCode, SignalKind};

/// What a client's event asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Request {
    Join,
    Leave,
    Signal(SignalKind),
}

/// A request the dialect's payload cannot make.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub code: ErrorCode,
    pub message: String,
}

fn refuse(code: ErrorCode, message: impl Into<String>) -> Refusal {
    Refusal {
        code,
        message: message.into(),
    }
}

/// What the connection's `auth` payload gives every join: a join token and the peer's
/// metadata (`{token?, meta?}`).
#[derive(Debug, Clone, Default)]
pub struct Auth {
    pub token: Option<String>,
    pub meta: Option<Value>,
}

impl Auth {
    /// Reads `auth`; anything but a string `token` or an object `meta` is ignored (the
    /// metadata's own limits are checked by the join, like a native one's).
    pub fn from_payload(auth: Option<&Value>) -> Auth {
        let field = |name| auth.and_then(|a| a.get(name));
        Auth {
            token: field("token").and_then(Value::as_str).map(str::to_owned),
            meta: field("meta").filter(|m| m.is_object()).cloned(),
        }
    }
}

/// An event's arguments as the packet carries them: a JSON array, its first element the
/// event's name when `named`.
#[derive(Debug, Clone, Copy)]
pub struct Args<'a> {
    pub json: &'a str,
    pub named: bool,
}

/// Reads the first element of a JSON array (after the event's name, if `named`), checking the
/// whole array; `None` for no such element or not a valid array.
struct FirstElement {
    named: bool,
}

impl<'de> Visitor<'de> for FirstElement {
    type Value = Option<&'de RawValue>;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("an array")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        if self.named && seq.next_element::<IgnoredAny>()?.is_none() {
            return Ok(None);
        }
        let first = seq.next_element::<&'de RawValue>()?;
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(first)
    }
}

fn first_element(json: &str, named: bool) -> Option<&RawValue> {
    let mut de = serde_json::Deserializer::from_str(json);
    let first = de.deserialize_seq(FirstElement { named }).ok()?;
    de.end().ok()?;
    first
}

/// The event's first argument, borrowed from the packet. An event whose arguments are not
/// valid JSON has none (and is refused as if it had none).
pub fn first_arg(args: Args<'_>) -> Option<&RawValue> {
    first_element(args.json, args.named)
}

/// The room a `join-room` or `leave-room` names: a string, or a number written as one
/// (Node servers accept both). The room is the first argument (or that argument's first
/// element, for an array).
pub fn room_of(arg: Option<&RawValue>) -> Result<String, Refusal> {
    let bad = || {
        refuse(
            ErrorCode::BadField,
            "the room must be a string (the event's first argument)",
        )
    };
    let raw = arg.ok_or_else(bad)?;
    let text = raw.get();
    match text.as_bytes().first() {
        Some(b'"') => serde_json::from_str::<String>(text).map_err(|_| bad()),
        Some(b'-' | b'0'..=b'9') => serde_json::from_str::<serde_json::Number>(text)
            .map(|n| n.to_string())
            .map_err(|_| bad()),
        Some(b'[') => room_of(first_element(text, false)),
        _ => Err(bad()),
    }
}

/// The native `join` for `room`.
pub fn join(room: &str, auth: &Auth, reference: u64) -> String {
    let mut frame = json!({"type": "join", "room": room, "ref": reference});
    if let Some(token) = &auth.token {
        frame["token"] = Value::String(token.clone());
    }
    if let Some(meta) = &auth.meta {
        frame["meta"] = meta.clone();
    }
    frame.to_string()
}

/// The native `leave` for `room`.
pub fn leave(room: &str, reference: u64) -> String {
    json!({"type": "leave", "room": room, "ref": reference}).to_string()
}

/// A signal event's payload, checked as a native `signal` frame's `data` is: the target
/// (`to`) and the data to relay (valid JSON), which is the payload minus any `from` (the edge
/// stamps the sender), borrowed from the packet unless there was a `from` to drop.
#[derive(Debug)]
pub struct SignalArgs<'a> {
    pub to: Cow<'a, str>,
    pub data: Cow<'a, str>,
}

/// The fields of a signal's payload the edge reads; the others are relayed as they are.
#[derive(Deserialize)]
struct SignalHead<'a> {
    #[serde(borrow)]
    to: Option<&'a RawValue>,
    #[serde(default, deserialize_with = "present")]
    from: bool,
}

/// Whether a field is there at all (a `null` one too).
fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
    IgnoredAny::deserialize(d).map(|_| true)
}

/// What follows the event's name in a packet's arguments (`["name", …`), without reading
/// the arguments themselves; `None` when there is nothing after the name.
fn after_name(json: &str) -> Option<&str> {
    let rest = json
        .trim_start()
        .strip_prefix('[')?
        .trim_start()
        .strip_prefix('"')?;
    rest.get(string_len(rest)? + 1..)?
        .trim_start()
        .strip_prefix(',')
        .map(str::trim_start)
}

/// The signal's payload (its first argument, or that argument's first element for an array)
/// and the peer it goes to. The usual packet, `["offer",{…}]`, is read in one pass: the
/// payload's fields where it lies (its text is what that pass consumed); other shapes take
/// [`first_arg`] first.
pub fn signal_args(args: Args<'_>) -> Result<SignalArgs<'_>, Refusal> {
    if args.named
        && let Some(rest) = after_name(args.json).filter(|r| r.starts_with('{'))
    {
        let mut stream = serde_json::Deserializer::from_str(rest).into_iter::<SignalHead<'_>>();
        return match stream.next() {
            Some(Ok(head)) => signal_from(head, &rest[..stream.byte_offset()]),
            _ => Err(missing_to()),
        };
    }
    signal_args_of(first_arg(args))
}

/// [`signal_args`] for the first argument.
fn signal_args_of(arg: Option<&RawValue>) -> Result<SignalArgs<'_>, Refusal> {
    let mut object = arg.ok_or_else(missing_to)?;
    if object.get().starts_with('[') {
        object = first_element(object.get(), false).ok_or_else(missing_to)?;
    }
    let text = object.get();
    if !text.starts_with('{') {
        return Err(missing_to());
    }
    let head: SignalHead<'_> = serde_json::from_str(text).map_err(|_| missing_to())?;
    signal_from(head, text)
}

/// The signal whose payload is the object `text` (valid JSON), with `head` read from it.
fn signal_from<'a>(head: SignalHead<'a>, text: &'a str) -> Result<SignalArgs<'a>, Refusal> {
    let to = head
        .to
        .and_then(|to| serde_json::from_str::<Cow<'_, str>>(to.get()).ok())
        .filter(|to| !to.is_empty())
        .ok_or_else(missing_to)?;
    // What `protocol::decode` checks of a native frame, so that the data can be relayed
    // verbatim to peers whose JSON parsers are strict.
    protocol::check_relayable(text).map_err(|e| refuse(ErrorCode::BadField, e.message))?;
    let data = if head.from {
        let mut data: Map<String, Value> = serde_json::from_str(text).map_err(|_| missing_to())?;
        data.remove("from");
        Cow::Owned(Value::Object(data).to_string())
    } else {
        Cow::Borrowed(text)
    };
    Ok(SignalArgs { to, data })
}

fn missing_to() -> Refusal {
    refuse(
        ErrorCode::BadField,
        "a signal's payload must be an object whose `to` is the target's id",
    )
}

/// The length of the native `signal` frame a native client would send for this signal
/// (`{"type":"signal","room":…,"to":…,"kind":…,"data":…,"ref":…}`), to which the native
/// frame limit applies. Ids have no control characters: only `"` and `\` are escaped.
pub fn signal_frame_len(
    room: &str,
    to: &str,
    kind: SignalKind,
    data: &str,
    reference: u64,
) -> usize {
    let quoted = |s: &str| s.len() + 2 + s.bytes().filter(|b| matches!(b, b'"' | b'\\')).count();
    let digits = reference.checked_ilog10().map_or(1, |d| d as usize + 1);
    r#"{"type":"signal","room":,"to":,"kind":"","data":,"ref":}"#.len()
        + quoted(room)
        + quoted(to)
        + kind.as_str().len()
        + data.len()
        + digits
}

/// What a native frame becomes for a Socket.IO client.
#[derive(Debug, Default)]
pub struct Delivery<'d> {
    /// An event to emit: its name and its one argument (JSON, emitted as it is).
    pub event: Option<(&'d str, Box<RawValue>)>,
    /// The answer to the acknowledgement of the request numbered so.
    pub ack: Option<(u64, Value)>,
}

/// The fields of a native `signal` frame an event needs.
#[derive(Deserialize)]
struct SignalFrame<'a> {
    #[serde(borrow)]
    from: Cow<'a, str>,
    #[serde(borrow)]
    kind: Cow<'a, str>,
    #[serde(borrow)]
    data: &'a RawValue,
}

/// A native `signal` frame's parts as `protocol::encode_signal` lays them out
/// (`{"type":"signal","room":"…","from":"…","kind":"…","data":…}`), found without reading
/// the data: `from` as its JSON string's content, the kind, and the data. `None` for another
/// layout.
fn signal_parts(frame: &str) -> Option<(&str, &str, &str)> {
    let rest = frame
        .strip_prefix(r#"{"type":"signal","room":""#)?
        .strip_suffix('}')?;
    let rest = rest
        .get(string_len(rest)?..)?
        .strip_prefix(r#"","from":""#)?;
    let (from, rest) = rest.split_at_checked(string_len(rest)?)?;
    let rest = rest.strip_prefix(r#"","kind":""#)?;
    let (kind, rest) = rest.split_at_checked(string_len(rest)?)?;
    let data = rest.strip_prefix(r#"","data":"#)?;
    Some((from, kind, data))
}

/// The length of the content of the JSON string `s` starts within: up to its closing quote,
/// the first one not escaped.
fn string_len(s: &str) -> Option<usize> {
    let bytes = s.as_bytes();
    let mut i = 0;
    loop {
        let k = memchr::memchr2(b'"', b'\\', bytes.get(i..)?)?;
        if bytes[i + k] == b'\\' {
            i += k + 2;
        } else {
            return Some(i + k);
        }
    }
}

/// A native `signal` as the dialect's event: `data` with `from` added, written directly (the
/// hot path: no tree of the payload is built, and the data is read once, to check the
/// result). `from` goes last, so that a `from` the data already had (a native sender's) is
/// overridden for JSON readers, where the last key wins.
fn signal_event<'d>(dialect: &'d Dialect, frame: &str) -> Option<(&'d str, Box<RawValue>)> {
    let event = |kind: &str| match kind {
        "offer" => &dialect.offer,
        "answer" => &dialect.answer,
        "candidate" => &dialect.ice_candidate,
        _ => &dialect.signal,
    };
    // `from` is a JSON string, or (`q` a quote) a JSON string's content.
    let payload = |q: &str, from: &str, data: &str| {
        let mut payload = String::with_capacity(data.len() + from.len() + 20);
        match data.strip_prefix('{').and_then(|d| d.strip_suffix('}')) {
            Some(inner) if inner.trim().is_empty() => payload.push('{'),
            Some(inner) => {
                payload.push('{');
                payload.push_str(inner);
                payload.push(',');
            }
            None => {
                payload.push_str(r#"{"data":"#);
                payload.push_str(data);
                payload.push(',');
            }
        }
        for part in [r#""from":"#, q, from, q, "}"] {
            payload.push_str(part);
        }
        RawValue::from_string(payload).ok()
    };
    if let Some((from, kind, data)) = signal_parts(frame)
        && let Some(raw) = payload("\"", from, data)
    {
        return Some((event(kind), raw));
    }
    let f: SignalFrame<'_> = serde_json::from_str(frame).ok()?;
    let raw = payload("", &Value::from(&*f.from).to_string(), f.data.get())?;
    Some((event(&f.kind), raw))
}

/// An event whose argument is a JSON tree.
fn event(name: &str, payload: Value) -> Option<(&str, Box<RawValue>)> {
    Some((name, serde_json::value::to_raw_value(&payload).ok()?))
}

/// Translates one native frame (as the edge encoded it) of type `kind`. Frames without a
/// meaning in the dialect (`pong`, `welcome`) give an empty delivery.
pub fn deliver<'d>(dialect: &'d Dialect, kind: &str, frame: &str) -> Delivery<'d> {
    // (The server API's `message` frames travel the signal path too: they are no `signal`
    // frame, and take the general way.)
    if kind == "signal"
        && let Some(event) = signal_event(dialect, frame)
    {
        return Delivery {
            event: Some(event),
            ack: None,
        };
    }
    let Ok(Value::Object(mut f)) = serde_json::from_str::<Value>(frame) else {
        return Delivery::default();
    };
    let reference = f.get("ref").and_then(Value::as_u64);
    let ty = f.get("type").and_then(Value::as_str).unwrap_or_default();
    let take = |f: &mut Map<String, Value>, k: &str| f.remove(k).unwrap_or(Value::Null);
    match ty {
        "joined" => {
            let users: Vec<Value> = match f.get("peers") {
                Some(Value::Array(peers)) => {
                    peers.iter().filter_map(|p| p.get("id")).cloned().collect()
                }
                _ => Vec::new(),
            };
            let room = take(&mut f, "room");
            Delivery {
                ack: reference
                    .map(|r| (r, json!({"ok": true, "room": room, "users": users.clone()}))),
                event: event(&dialect.room_users, Value::Array(users)),
            }
        }
        "left" => Delivery {
            event: None,
            ack: reference.map(|r| (r, json!({"ok": true, "room": take(&mut f, "room")}))),
        },
        "peer-joined" => Delivery {
            event: f
                .get("peer")
                .and_then(|p| p.get("id"))
                .and_then(|id| event(&dialect.user_joined, id.clone())),
            ack: None,
        },
        "peer-left" => Delivery {
            event: event(&dialect.user_left, take(&mut f, "peer_id")),
            ack: None,
        },
        "message" => {
            f.remove("type");
            f.remove("seq");
            Delivery {
                event: event(&dialect.server_message, Value::Object(f)),
                ack: None,
            }
        }
        "error" => {
            f.remove("type");
            f.remove("ref");
            f.remove("seq");
            let answer = json!({"ok": false, "code": f.get("code"), "message": f.get("message")});
            Delivery {
                event: event(&dialect.error, Value::Object(f)),
                ack: reference.map(|r| (r, answer)),
            }
        }
        // A signal of this peer that will never be delivered: told as an error, with the
        // target and the room.
        "expired" => Delivery {
            event: event(
                &dialect.error,
                json!({
                    "code": "expired",
                    "message": "the signal could not be delivered: the peer is gone",
                    "to": take(&mut f, "to"),
                    "room": take(&mut f, "room"),
                }),
            ),
            ack: None,
        },
        _ => Delivery::default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A packet's arguments (`["event", args…]`).
    fn named(json: &str) -> Args<'_> {
        Args { json, named: true }
    }

    /// The first argument of a packet's arguments.
    fn arg(json: &str) -> Option<&RawValue> {
        first_arg(named(json))
    }

    #[test]
    fn events_become_native_requests() {
        assert_eq!(room_of(arg(r#"["join-room","r1"]"#)).unwrap(), "r1");
        assert_eq!(room_of(arg(r#"["join-room", "r\"1" ]"#)).unwrap(), "r\"1");
        assert_eq!(room_of(arg(r#"["join-room",42]"#)).unwrap(), "42");
        assert_eq!(room_of(arg(r#"["join-room",["r2","x"]]"#)).unwrap(), "r2");
        assert_eq!(room_of(arg(r#"["join-room","r3",{"x":1}]"#)).unwrap(), "r3");
        assert_eq!(
            room_of(first_arg(Args {
                json: r#"["r4"]"#,
                named: false
            }))
            .unwrap(),
            "r4"
        );
        for bad in [
            r#"["join-room",{}]"#,
            r#"["join-room"]"#,
            r#"["join-room","r",{]"#,
        ] {
            assert_eq!(
                room_of(arg(bad)).unwrap_err().code,
                ErrorCode::BadField,
                "{bad}"
            );
        }
        let auth = Auth::from_payload(Some(&json!({"token": "t", "meta": {"n": 1}})));
        let join: Value = serde_json::from_str(&join("r", &auth, 7)).unwrap();
        assert_eq!(
            join,
            json!({"type": "join", "room": "r", "ref": 7, "token": "t", "meta": {"n": 1}})
        );
    }

    #[test]
    fn signal_payloads_are_read_without_a_tree() {
        // Borrowed from the packet as the client wrote it, `to` included.
        let packet = r#"["offer",{"to":"b","sdp":"v=0","n":[1,{"from":2}]}]"#;
        let args = signal_args(named(packet)).unwrap();
        assert_eq!(args.to, "b");
        assert!(matches!(args.data, Cow::Borrowed(_)));
        assert_eq!(args.data, r#"{"to":"b","sdp":"v=0","n":[1,{"from":2}]}"#);
        // The same payload in other shapes: spaced, several arguments, within an array.
        for packet in [
            r#" [ "offer" , {"to":"b","sdp":"v=0","n":[1,{"from":2}]} , 3 ] "#,
            r#"["off\"er",{"to":"b","sdp":"v=0","n":[1,{"from":2}]},{"x":1}]"#,
            r#"["offer",[{"to":"b","sdp":"v=0","n":[1,{"from":2}]}]]"#,
        ] {
            let args = signal_args(named(packet)).unwrap();
            assert_eq!(args.data, r#"{"to":"b","sdp":"v=0","n":[1,{"from":2}]}"#);
        }
        // A `from` of the client's own is dropped (even a null one).
        for packet in [
            r#"["offer",{"to":"b","from":"forged","sdp":"v=0"}]"#,
            r#"["offer",{"from":null,"to":"b","sdp":"v=0"}]"#,
        ] {
            let args = signal_args(named(packet)).unwrap();
            let data: Value = serde_json::from_str(&args.data).unwrap();
            assert_eq!(data, json!({"to": "b", "sdp": "v=0"}), "{packet}");
        }
        // An escaped `to`, and the payload as the first element of an array argument.
        let args = signal_args(named(r#"["offer",[{"to":"\u0062"},2]]"#)).unwrap();
        assert_eq!(args.to, "b");
        for bad in [
            r#"["offer",{"sdp":1}]"#,
            r#"["offer","b"]"#,
            r#"["offer",{"to":42}]"#,
            r#"["offer",{"to":""}]"#,
            r#"["offer"]"#,
            r#"["offer",["b"]]"#,
            r#"["offer",{"to":"b","x":1e999}]"#,
            r#"["offer",{"to":"b","x":"\ud800"}]"#,
            r#"["offer",{"to":"b"]"#,
        ] {
            assert_eq!(
                signal_args(named(bad)).unwrap_err().code,
                ErrorCode::BadField,
                "{bad}"
            );
        }
        // The native frame's length, which the frame limit applies to.
        let data = r#"{"to":"b","sdp":"v=0"}"#;
        let frame = format!(
            r#"{{"type":"signal","room":"r\"1","to":"b","kind":"offer","data":{data},"ref":107}}"#
        );
        assert_eq!(
            signal_frame_len("r\"1", "b", SignalKind::Offer, data, 107),
            frame.len()
        );
    }

    #[test]
    fn signal_frames_are_read_where_the_edge_writes_them() {
        use heliograph_coordinator::registry::{PeerId, RoomId};
        let d = Dialect::default();
        // Ids that hold the keys' patterns, escaped in the frame.
        let room = RoomId::new(r#"r","from":"x","kind":"y","data":1"#).unwrap();
        let from = PeerId::new(r#"p\"q","kind":""#).unwrap();
        for data in [r#"{"sdp":"v=0","from":"forged"}"#, "{}", "5", r#"["a"]"#] {
            let frame = protocol::encode_signal(&room, &from, SignalKind::Answer, data);
            let (_, kind, read) = signal_parts(&frame).unwrap();
            assert_eq!((kind, read), ("answer", data), "{frame}");
            let (name, raw) = signal_event(&d, &frame).unwrap();
            assert_eq!(name, "answer");
            let payload: Value = serde_json::from_str(raw.get()).unwrap();
            assert_eq!(payload["from"], json!(from.as_str()), "{frame}");
        }
        // Another layout takes the general way.
        let other = r#"{"from":"a","type":"signal","kind":"offer","data":{"x":1},"room":"r"}"#;
        assert!(signal_parts(other).is_none());
        assert_eq!(
            ev(&deliver(&d, "signal", other)),
            Some(("offer".into(), json!({"x": 1, "from": "a"})))
        );
    }

    /// The event of a delivery, its argument as a tree.
    fn ev(delivery: &Delivery) -> Option<(String, Value)> {
        let (name, raw) = delivery.event.as_ref()?;
        Some((name.to_string(), serde_json::from_str(raw.get()).unwrap()))
    }

    #[test]
    fn native_frames_become_dialect_events() {
        let d = Dialect::default();
        let joined =
            r#"{"seq":2,"type":"joined","room":"r","peers":[{"id":"a","meta":{}}],"ref":4}"#;
        let delivery = deliver(&d, "joined", joined);
        assert_eq!(ev(&delivery), Some(("room-users".into(), json!(["a"]))));
        assert_eq!(
            delivery.ack,
            Some((4, json!({"ok": true, "room": "r", "users": ["a"]})))
        );
        let signal = r#"{"type":"signal","room":"r","from":"a","kind":"candidate","data":{"candidate":"c"}}"#;
        assert_eq!(
            ev(&deliver(&d, "signal", signal)),
            Some((
                "ice-candidate".into(),
                json!({"candidate": "c", "from": "a"})
            ))
        );
        // A `from` in the data: the sender's id is the one a JSON reader sees.
        let forged =
            r#"{"type":"signal","room":"r","from":"a","kind":"offer","data":{"from":"x"}}"#;
        assert_eq!(
            ev(&deliver(&d, "signal", forged)),
            Some(("offer".into(), json!({"from": "a"})))
        );
        let empty = r#"{"type":"signal","room":"r","from":"a","kind":"answer","data":{}}"#;
        assert_eq!(
            ev(&deliver(&d, "signal", empty)),
            Some(("answer".into(), json!({"from": "a"})))
        );
        let custom = r#"{"type":"signal","room":"r","from":"a","kind":"custom","data":5}"#;
        assert_eq!(
            ev(&deliver(&d, "signal", custom)),
            Some(("signal".into(), json!({"data": 5, "from": "a"})))
        );
        let left = r#"{"type":"peer-left","room":"r","peer_id":"a","reason":"left"}"#;
        assert_eq!(
            ev(&deliver(&d, "peer-left", left)),
            Some(("user-left".into(), json!("a")))
        );
        let error = r#"{"type":"error","code":"not-in-room","message":"m","ref":9}"#;
        let delivery = deliver(&d, "error", error);
        assert_eq!(
            ev(&delivery),
            Some((
                "error".into(),
                json!({"code": "not-in-room", "message": "m"})
            ))
        );
        assert_eq!(delivery.ack.unwrap().0, 9);
        let message = r#"{"type":"message","room":"r","from":"server","data":{"x":1}}"#;
        assert_eq!(
            ev(&deliver(&d, "signal", message)),
            Some((
                "server-message".into(),
                json!({"room": "r", "from": "server", "data": {"x": 1}})
            ))
        );
        let pong = deliver(&d, "pong", r#"{"type":"pong"}"#);
        assert!(pong.event.is_none() && pong.ack.is_none());
    }
}
