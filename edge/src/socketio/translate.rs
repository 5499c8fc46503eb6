//! Between the dialect and `heliograph.v1`: a client's event becomes the native request a
//! native client would send, and a native frame for the peer becomes the dialect's event
//! (and the answer to an acknowledgement, where the client asked for one). Pure: no sockets.
//!
//! Signals: the dialect's `offer`, `answer` and `ice-candidate` (and `signal`) are the native
//! kinds `offer`, `answer`, `candidate` (and `custom`). The event's payload, minus any `from`
//! the client put in, is the native `data`; the payload delivered is that `data` with `from`
//! set to the sender's peer id (a `data` that is not a JSON object arrives as
//! `{"data": …, "from": …}`).

use std::borrow::Cow;

use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{Map, Value, json};

use super::dialect::Dialect;
use crate::protocol::{ErrorCode, SignalKind};

/// What a client's event asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Request {
    Join,
    Leave,
    Signal(SignalKind),
}

/// The request an event names, if it names one.
pub fn classify(dialect: &Dialect, event: &str) -> Option<Request> {
    let d = dialect;
    Some(match event {
        e if e == d.join_room => Request::Join,
        e if e == d.leave_room => Request::Leave,
        e if e == d.offer => Request::Signal(SignalKind::Offer),
        e if e == d.answer => Request::Signal(SignalKind::Answer),
        e if e == d.ice_candidate => Request::Signal(SignalKind::Candidate),
        e if e == d.signal => Request::Signal(SignalKind::Custom),
        _ => return None,
    })
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

/// The room a `join-room` or `leave-room` names: a string, or a number written as one
/// (Node servers accept both). Socket.IO hands over several arguments as an array: the
/// room is the first.
pub fn room_of(payload: &Value) -> Result<String, Refusal> {
    match payload {
        Value::String(s) => Ok(s.clone()),
        Value::Number(n) => Ok(n.to_string()),
        Value::Array(args) if !args.is_empty() => room_of(&args[0]),
        _ => Err(refuse(
            ErrorCode::BadField,
            "the room must be a string (the event's first argument)",
        )),
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

/// The signal's payload (its first argument) and the peer it goes to (`to`).
pub fn signal_target(payload: &Value) -> Result<(&Map<String, Value>, &str), Refusal> {
    let object = match payload {
        Value::Object(o) => o,
        Value::Array(args) => match args.first() {
            Some(Value::Object(o)) => o,
            _ => return Err(missing_to()),
        },
        _ => return Err(missing_to()),
    };
    match object.get("to") {
        Some(Value::String(to)) if !to.is_empty() => Ok((object, to)),
        _ => Err(missing_to()),
    }
}

fn missing_to() -> Refusal {
    refuse(
        ErrorCode::BadField,
        "a signal's payload must be an object whose `to` is the target's id",
    )
}

/// The native `signal` carrying `payload` (minus any `from`: the edge stamps the sender).
/// Written directly (the hot path): the payload is serialized once, and copied only when it
/// has a `from` to drop.
pub fn signal(
    room: &str,
    to: &str,
    kind: SignalKind,
    payload: &Map<String, Value>,
    reference: u64,
) -> String {
    let data = if payload.contains_key("from") {
        let mut data = payload.clone();
        data.remove("from");
        Value::Object(data).to_string()
    } else {
        // (A map of JSON values always serializes.)
        serde_json::to_string(payload).unwrap_or_else(|_| "{}".to_owned())
    };
    format!(
        r#"{{"type":"signal","room":{},"to":{},"kind":"{}","data":{data},"ref":{reference}}}"#,
        Value::from(room),
        Value::from(to),
        kind.as_str(),
    )
}

/// What a native frame becomes for a Socket.IO client.
#[derive(Debug, Default)]
pub struct Delivery {
    /// An event to emit: its name and its one argument (JSON, emitted as it is).
    pub event: Option<(String, Box<RawValue>)>,
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

/// A native `signal` as the dialect's event: `data` with `from` added, written directly (the
/// hot path: no tree of the payload is built). `from` goes last, so that a `from` the data
/// already had (a native sender's) is overridden for JSON readers, where the last key wins.
fn signal_event(dialect: &Dialect, frame: &str) -> Option<(String, Box<RawValue>)> {
    let f: SignalFrame<'_> = serde_json::from_str(frame).ok()?;
    let event = match &*f.kind {
        "offer" => &dialect.offer,
        "answer" => &dialect.answer,
        "candidate" => &dialect.ice_candidate,
        _ => &dialect.signal,
    };
    let from = Value::from(&*f.from);
    let data = f.data.get();
    let payload = match data.strip_prefix('{').and_then(|d| d.strip_suffix('}')) {
        Some(inner) if inner.trim().is_empty() => format!(r#"{{"from":{from}}}"#),
        Some(inner) => format!(r#"{{{inner},"from":{from}}}"#),
        None => format!(r#"{{"data":{data},"from":{from}}}"#),
    };
    Some((event.clone(), RawValue::from_string(payload).ok()?))
}

/// An event whose argument is a JSON tree.
fn event(name: &str, payload: Value) -> Option<(String, Box<RawValue>)> {
    Some((
        name.to_owned(),
        serde_json::value::to_raw_value(&payload).ok()?,
    ))
}

/// Translates one native frame (as the edge encoded it) of type `kind`. Frames without a
/// meaning in the dialect (`pong`, `welcome`) give an empty delivery.
pub fn deliver(dialect: &Dialect, kind: &str, frame: &str) -> Delivery {
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

    #[test]
    fn events_become_native_requests() {
        let d = Dialect::default();
        assert_eq!(classify(&d, "join-room"), Some(Request::Join));
        assert_eq!(
            classify(&d, "ice-candidate"),
            Some(Request::Signal(SignalKind::Candidate))
        );
        assert_eq!(classify(&d, "nope"), None);
        assert_eq!(room_of(&json!("r1")).unwrap(), "r1");
        assert_eq!(room_of(&json!(42)).unwrap(), "42");
        assert_eq!(room_of(&json!(["r2", "x"])).unwrap(), "r2");
        assert_eq!(room_of(&json!({})).unwrap_err().code, ErrorCode::BadField);
        let auth = Auth::from_payload(Some(&json!({"token": "t", "meta": {"n": 1}})));
        let join: Value = serde_json::from_str(&join("r", &auth, 7)).unwrap();
        assert_eq!(
            join,
            json!({"type": "join", "room": "r", "ref": 7, "token": "t", "meta": {"n": 1}})
        );
        let payload = json!({"to": "b", "from": "forged", "sdp": "v=0"});
        let (object, to) = signal_target(&payload).unwrap();
        let frame: Value =
            serde_json::from_str(&signal("r", to, SignalKind::Offer, object, 3)).unwrap();
        assert_eq!(frame["data"], json!({"to": "b", "sdp": "v=0"}));
        assert_eq!(frame["kind"], "offer");
        assert_eq!(
            signal_target(&json!({"sdp": 1})).unwrap_err().code,
            ErrorCode::BadField
        );
        assert!(signal_target(&json!("b")).is_err());
    }

    /// The event of a delivery, its argument as a tree.
    fn ev(delivery: &Delivery) -> Option<(String, Value)> {
        let (name, raw) = delivery.event.as_ref()?;
        Some((name.clone(), serde_json::from_str(raw.get()).unwrap()))
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
