//! Every kind of bad input gets its documented answer, and a well-behaved client on the same
//! node is unaffected throughout.

use crate::support::{self, Client, Node};
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{CloseCode, Data, OpCode};

/// A well-behaved pair that keeps signalling between bad inputs.
struct Bystanders {
    x: Client,
    y: Client,
    n: u64,
}

impl Bystanders {
    async fn new(node: &Node) -> Self {
        let mut x = Client::connect(&node.ws_url()).await;
        let mut y = Client::connect(&node.ws_url()).await;
        x.join("calm").await;
        y.join("calm").await;
        x.expect("peer-joined").await;
        Self { x, y, n: 0 }
    }

    /// A signal each way arrives intact.
    async fn check(&mut self) {
        self.n += 1;
        let n = self.n;
        self.x
            .send(json!({"type": "signal", "room": "calm", "to": self.y.peer_id, "kind": "custom", "data": {"n": n}}))
            .await;
        let got = self.y.expect("signal").await;
        assert_eq!(
            (got["from"].as_str(), &got["data"]),
            (Some(self.x.peer_id.as_str()), &json!({"n": n}))
        );
        self.y
            .send(json!({"type": "signal", "room": "calm", "to": self.x.peer_id, "kind": "custom", "data": {"n": n}}))
            .await;
        assert_eq!(self.x.expect("signal").await["data"], json!({"n": n}));
    }
}

#[tokio::test]
async fn bad_frames_get_errors_and_the_connection_stays_usable() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(dir.path(), &["--max-meta-bytes", "256"]);
    let mut calm = Bystanders::new(&node).await;
    let mut bad = Client::connect(&node.ws_url()).await;
    bad.join("mess").await;

    let long_room = "r".repeat(129);
    let big_meta = json!({"blob": "m".repeat(300)});
    let cases: Vec<(String, &str)> = vec![
        ("{not json".into(), "bad-json"),
        ("[1,2,3]".into(), "bad-json"),
        ("\"just a string\"".into(), "bad-json"),
        ("".into(), "bad-json"),
        (
            r#"{"type":"join","room":"a","room":"b"}"#.into(),
            "bad-json",
        ),
        (
            json!({"type": "teleport", "ref": 9}).to_string(),
            "unknown-type",
        ),
        (json!({"room": "x"}).to_string(), "bad-field"),
        (json!({"type": 42}).to_string(), "bad-field"),
        (json!({"type": "join"}).to_string(), "bad-field"),
        (json!({"type": "join", "room": 17}).to_string(), "bad-field"),
        (
            json!({"type": "join", "room": ["a"]}).to_string(),
            "bad-field",
        ),
        (
            json!({"type": "join", "room": ""}).to_string(),
            "invalid-room",
        ),
        (
            json!({"type": "join", "room": long_room}).to_string(),
            "invalid-room",
        ),
        (
            json!({"type": "join", "room": "bell\u{7}"}).to_string(),
            "invalid-room",
        ),
        (
            json!({"type": "join", "room": "ok", "meta": big_meta}).to_string(),
            "invalid-meta",
        ),
        (
            json!({"type": "join", "room": "ok", "meta": "name"}).to_string(),
            "invalid-meta",
        ),
        (
            json!({"type": "signal", "room": "mess", "kind": "offer", "data": {}}).to_string(),
            "bad-field",
        ),
        (
            json!({"type": "signal", "room": "mess", "to": 5, "kind": "offer", "data": {}})
                .to_string(),
            "bad-field",
        ),
        (
            json!({"type": "signal", "room": "mess", "to": "p", "kind": "poke", "data": {}})
                .to_string(),
            "bad-field",
        ),
        (
            json!({"type": "signal", "room": "mess", "to": "p", "kind": "offer"}).to_string(),
            "bad-field",
        ),
        (
            json!({"type": "leave", "room": "never-joined"}).to_string(),
            "not-in-room",
        ),
        (
            json!({"type": "ping", "ref": {"deep": true}}).to_string(),
            "bad-field",
        ),
        (
            json!({"type": "ping", "ref": "r".repeat(100)}).to_string(),
            "bad-field",
        ),
    ];
    for (frame, code) in &cases {
        bad.send_raw(Message::text(frame.clone())).await;
        let e = bad.expect("error").await;
        assert_eq!(e["code"], *code, "frame {frame:?} → {e}");
        assert!(!e["message"].as_str().unwrap().is_empty());
        bad.assert_usable().await;
        calm.check().await;
    }

    // The ref comes back with errors.
    bad.send(json!({"type": "join", "ref": "j7"})).await;
    let e = bad.expect("error").await;
    assert_eq!(
        (e["code"].as_str(), e["ref"].as_str()),
        (Some("bad-field"), Some("j7"))
    );

    // Binary frames are refused with an error, not a close.
    bad.send_raw(Message::binary(vec![0u8, 159, 146, 150]))
        .await;
    assert_eq!(bad.expect("error").await["code"], "binary-unsupported");
    bad.assert_usable().await;
    calm.check().await;

    let (_, body) = node.get("/metrics").await;
    assert!(
        support::metric(&body, r#"heliograph_edge_errors_total{code="bad-json"}"#).unwrap() >= 5.0
    );
    assert!(
        support::metric(
            &body,
            r#"heliograph_edge_messages_received_total{ingress="ws",type="invalid"}"#
        )
        .unwrap()
            >= 10.0
    );
}

#[tokio::test]
async fn oversized_frame_closes_with_1009() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(dir.path(), &[]);
    let mut calm = Bystanders::new(&node).await;
    let mut bad = Client::connect(&node.ws_url()).await;
    bad.join("calm").await;
    calm.x.expect("peer-joined").await;
    calm.y.expect("peer-joined").await;
    let huge = json!({"type": "signal", "room": "calm", "to": calm.x.peer_id, "kind": "offer", "data": "x".repeat(70 * 1024)});
    bad.send(huge).await;
    assert_eq!(bad.expect_close().await, CloseCode::Size);
    // The others see it leave and carry on.
    assert_eq!(
        calm.x.expect("peer-left").await["peer_id"],
        bad.peer_id.as_str()
    );
    assert_eq!(
        calm.y.expect("peer-left").await["peer_id"],
        bad.peer_id.as_str()
    );
    calm.check().await;
    // Just under the cap is fine.
    let mut ok = Client::connect(&node.ws_url()).await;
    ok.send(json!({"type": "ping", "pad": "x".repeat(60 * 1024)}))
        .await;
    ok.expect("pong").await;
}

#[tokio::test]
async fn invalid_utf8_closes_with_1007() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(dir.path(), &[]);
    let mut calm = Bystanders::new(&node).await;
    let mut bad = Client::connect(&node.ws_url()).await;
    let payload = b"{\"type\":\"ping\",\"x\":\"\xff\xfe\"}".to_vec();
    bad.send_raw(Message::Frame(Frame::message(
        payload,
        OpCode::Data(Data::Text),
        true,
    )))
    .await;
    assert_eq!(bad.expect_close().await, CloseCode::Invalid);
    calm.check().await;
}
