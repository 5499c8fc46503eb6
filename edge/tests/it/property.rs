//! Property test: random and mutated frames sent to a live connection never crash the edge,
//! never close the connection, and are each answered with a well-formed frame; a bystander
//! pair keeps working throughout.

use crate::support::{Client, Node};
use proptest::prelude::*;
use proptest::strategy::ValueTree;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

/// Server message types a client may ever see.
const SERVER_TYPES: [&str; 8] = [
    "welcome",
    "joined",
    "peer-joined",
    "left",
    "peer-left",
    "signal",
    "pong",
    "error",
];

/// A node for one test; dropped (and so killed) when the test ends.
fn node() -> (tempfile::TempDir, Node) {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(
        dir.path(),
        &[
            "--rate-limit-per-second",
            "100000",
            "--rate-limit-burst",
            "100000",
        ],
    );
    (dir, node)
}

fn valid_frames() -> Vec<String> {
    vec![
        json!({"type": "join", "room": "fuzz", "meta": {"n": 1}, "ref": 1}).to_string(),
        json!({"type": "leave", "room": "fuzz"}).to_string(),
        json!({"type": "signal", "room": "fuzz", "to": "0123456789abcdef0123456789abcdef", "kind": "offer", "data": {"sdp": "v=0"}}).to_string(),
        json!({"type": "ping", "ref": "p"}).to_string(),
        json!({"type": "resume", "token": "t", "last_seq": 3}).to_string(),
    ]
}

/// A frame: a valid one, a mutated valid one, or arbitrary text.
fn frame() -> impl Strategy<Value = String> {
    let valid = prop::sample::select(valid_frames());
    let mutated = (
        prop::sample::select(valid_frames()),
        any::<usize>(),
        any::<u8>(),
        0..4u8,
    )
        .prop_map(|(f, pos, byte, op)| {
            let mut bytes = f.into_bytes();
            let i = pos % bytes.len();
            match op {
                0 => bytes.truncate(i),
                1 => bytes[i] = byte & 0x7f,
                2 => {
                    bytes.remove(i);
                }
                _ => bytes.insert(i, byte & 0x7f),
            }
            // Keep it text: invalid UTF-8 has its own test (close 1007).
            String::from_utf8_lossy(&bytes).into_owned()
        });
    let typed = (
        prop::sample::select(vec!["join", "leave", "signal", "ping", "resume", "x"]),
        prop::sample::select(vec![json!(null), json!(1), json!("fuzz"), json!([1]), json!({"a": {}}), json!(""), json!("r".repeat(200))]),
        prop::sample::select(vec!["room", "to", "kind", "data", "meta", "ref", "token", "last_seq"]),
    )
        .prop_map(|(ty, value, field)| {
            let mut v = json!({"type": ty, "room": "fuzz", "to": "0123456789abcdef0123456789abcdef", "kind": "candidate", "data": 1});
            v[field] = value;
            v.to_string()
        });
    prop_oneof![valid, mutated, typed, ".{0,64}"]
}

#[test]
fn random_frames_are_answered_and_never_break_the_connection() {
    let (_dir, node) = node();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let config = ProptestConfig {
        cases: 48,
        failure_persistence: None,
        ..ProptestConfig::default()
    };
    let mut runner = proptest::test_runner::TestRunner::new(config);
    let result = runner.run(&prop::collection::vec(frame(), 1..24), |frames| {
        rt.block_on(async {
            let mut c = Client::connect(&node.ws_url()).await;
            for f in &frames {
                c.send_raw(Message::text(f.clone())).await;
            }
            c.send(json!({"type": "ping", "ref": "end-of-case"})).await;
            loop {
                let v: Value = c.recv().await;
                let ty = v["type"].as_str().unwrap_or_default().to_owned();
                assert!(SERVER_TYPES.contains(&ty.as_str()), "unexpected frame {v}");
                if ty == "error" {
                    assert!(v["code"].as_str().is_some_and(|c| !c.is_empty()), "{v}");
                }
                if ty == "pong" && v["ref"] == "end-of-case" {
                    break;
                }
            }
        });
        Ok(())
    });
    if let Err(e) = result {
        panic!("{e}");
    }
}

#[tokio::test]
async fn bystanders_are_unaffected_by_a_fuzzing_neighbour() {
    let (_dir, node) = node();
    let mut x = Client::connect(&node.ws_url()).await;
    let mut y = Client::connect(&node.ws_url()).await;
    x.join("bystanders").await;
    y.join("bystanders").await;
    x.expect("peer-joined").await;
    let mut runner = proptest::test_runner::TestRunner::deterministic();
    let strategy = prop::collection::vec(frame(), 200);
    let frames = strategy.new_tree(&mut runner).unwrap().current();
    let mut noisy = Client::connect(&node.ws_url()).await;
    for (i, f) in frames.iter().enumerate() {
        noisy.send_raw(Message::text(f.clone())).await;
        if i % 20 == 0 {
            x.send(json!({"type": "signal", "room": "bystanders", "to": y.peer_id, "kind": "custom", "data": i})).await;
            assert_eq!(y.expect("signal").await["data"], i);
        }
    }
    noisy.assert_usable_after_noise().await;
}
