//! Fuzzes the client frame decoder: any text must decode or fail without panicking, and the
//! server frames built from what it decoded (or the `error` frame for what it refused) must be
//! valid JSON objects.

#![no_main]

use heliograph_coordinator::registry::{PeerId, RoomId};
use heliograph_edge::protocol::{
    ClientMessage, DecodeLimits, PeerInfo, ServerMessage, decode, encode, encode_cursor,
    encode_error, encode_signal, ref_raw,
};
use libfuzzer_sys::fuzz_target;
use serde_json::value::RawValue;

const LIMITS: DecodeLimits = DecodeLimits {
    max_meta_bytes: 1024,
    max_contact_hashes: 16,
};

fn assert_json_object(frame: &str) {
    let value: serde_json::Value = match serde_json::from_str(frame) {
        Ok(v) => v,
        Err(e) => panic!("the edge would send invalid JSON ({e}): {frame}"),
    };
    assert!(value.is_object(), "not a JSON object: {frame}");
    assert!(
        value.get("type").is_some_and(|t| t.is_string()),
        "no type: {frame}"
    );
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let request = match decode(text, &LIMITS) {
        Ok(r) => r,
        Err(e) => {
            assert_json_object(&encode_error(&e));
            return;
        }
    };
    let reference = ref_raw(request.reference.as_ref());
    let frames: Vec<String> = match &request.message {
        ClientMessage::Join { room, meta, .. } => {
            let meta = meta.unwrap_or(RawValue::NULL);
            let peer = || PeerInfo {
                id: "p1",
                meta,
                region: "eu",
            };
            vec![
                encode(&ServerMessage::Joined {
                    room: room.as_str(),
                    peers: vec![peer()],
                    reference,
                }),
                encode(&ServerMessage::PeerJoined {
                    room: room.as_str(),
                    peer: peer(),
                }),
            ]
        }
        ClientMessage::Leave { room } => vec![
            encode(&ServerMessage::Left {
                room: room.as_str(),
                reference,
            }),
            encode(&ServerMessage::PeerLeft {
                room: room.as_str(),
                peer_id: "p1",
                reason: "left",
            }),
        ],
        ClientMessage::Signal {
            room,
            to,
            kind,
            data,
        } => {
            // Checked ids build; the data is written verbatim, as the relay writes it.
            let room = RoomId::new(room.to_string()).expect("a decoded room is a room id");
            let from = PeerId::new(to.to_string()).expect("a decoded `to` is a peer id");
            vec![encode_signal(&room, &from, *kind, data)]
        }
        ClientMessage::Ping => vec![encode(&ServerMessage::Pong { reference })],
        // A page whose cursor names the last room asked after (the prefix is the client's).
        ClientMessage::ListRooms(query) => vec![encode(&ServerMessage::Rooms {
            items: Vec::new(),
            next: query.after.as_ref().map(encode_cursor),
            partial: false,
            unreachable: vec![query.prefix.as_str()],
            reference,
        })],
        ClientMessage::Resume { token, .. } => vec![encode(&ServerMessage::Error {
            code: "resume-failed",
            message: token,
            reference,
            room: None,
        })],
        ClientMessage::Contacts { publish, .. } => {
            let mut frames = vec![encode(&ServerMessage::ContactsSet { reference })];
            frames.extend(publish.iter().map(|h| {
                encode(&ServerMessage::Contact {
                    hash: h.as_str(),
                    online: true,
                    peer: "p1",
                    region: Some("eu"),
                })
            }));
            frames
        }
        ClientMessage::Invite { to, room, data } => vec![encode(&ServerMessage::Invite {
            from: to.as_str(),
            room: room.as_str(),
            data: *data,
        })],
    };
    for frame in &frames {
        assert_json_object(frame);
    }
});
