//! Two peers meet in a room and exchange an offer, an answer and candidates; outsiders
//! cannot reach them and cannot spoof `from`.

use crate::support::{Client, Node};
use serde_json::json;

#[tokio::test]
async fn two_peers_join_and_exchange_offer_answer_candidates() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(dir.path(), &[]);

    let mut a = Client::connect(&node.ws_url()).await;
    let mut b = Client::connect(&node.ws_url()).await;
    for c in [&a, &b] {
        let w = &c.welcome;
        assert_eq!(w["peer_id"].as_str().unwrap().len(), 32, "128-bit peer ids");
        assert!(!w["resume_token"].as_str().unwrap().is_empty());
        assert_eq!(w["region"], "local");
        assert!(w["edge"].as_str().is_some());
        assert!(w["ice_servers"].is_array());
    }
    assert_ne!(a.peer_id, b.peer_id);

    a.send(json!({"type": "join", "room": "call", "meta": {"name": "alice"}, "ref": 1}))
        .await;
    let joined = a.expect("joined").await;
    assert_eq!(joined["room"], "call");
    assert_eq!(joined["ref"], 1);
    assert_eq!(joined["peers"], json!([]));

    b.send(json!({"type": "join", "room": "call", "meta": {"name": "bob"}}))
        .await;
    let joined = b.expect("joined").await;
    let peers = joined["peers"].as_array().unwrap();
    assert_eq!(peers.len(), 1);
    assert_eq!(peers[0]["id"], a.peer_id.as_str());
    assert_eq!(peers[0]["meta"], json!({"name": "alice"}));
    assert_eq!(peers[0]["region"], "local");

    let pj = a.expect("peer-joined").await;
    assert_eq!(pj["room"], "call");
    assert_eq!(pj["peer"]["id"], b.peer_id.as_str());
    assert_eq!(pj["peer"]["meta"], json!({"name": "bob"}));

    let offer = json!({"type": "offer", "sdp": "v=0\r\no=- 4611731400430051336 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n"});
    a.send(
        json!({"type": "signal", "room": "call", "to": b.peer_id, "kind": "offer", "data": offer}),
    )
    .await;
    let got = b.expect("signal").await;
    assert_eq!(got["from"], a.peer_id.as_str());
    assert_eq!(got["kind"], "offer");
    assert_eq!(got["room"], "call");
    assert_eq!(got["data"], offer);

    let answer = json!({"type": "answer", "sdp": "v=0\r\n…ünïcode\u{1F600}"});
    b.send(json!({"type": "signal", "room": "call", "to": a.peer_id, "kind": "answer", "data": answer}))
        .await;
    let got = a.expect("signal").await;
    assert_eq!(got["from"], b.peer_id.as_str());
    assert_eq!(got["kind"], "answer");
    assert_eq!(got["data"], answer);

    for i in 0..3 {
        let cand = json!({"candidate": format!("candidate:{i} 1 udp 2122260223 127.0.0.1 5{i}000 typ host"), "sdpMid": "0", "sdpMLineIndex": 0});
        a.send(json!({"type": "signal", "room": "call", "to": b.peer_id, "kind": "candidate", "data": cand}))
            .await;
        let c2 = json!({"candidate": format!("candidate:{i} 1 udp 1 127.0.0.1 6{i}000 typ host"), "sdpMid": "0", "sdpMLineIndex": 0});
        b.send(json!({"type": "signal", "room": "call", "to": a.peer_id, "kind": "candidate", "data": c2}))
            .await;
        let got = b.expect("signal").await;
        assert_eq!(
            (got["from"].as_str(), got["kind"].as_str()),
            (Some(a.peer_id.as_str()), Some("candidate"))
        );
        assert_eq!(got["data"], cand);
        let got = a.expect("signal").await;
        assert_eq!(got["from"], b.peer_id.as_str());
        assert_eq!(got["data"], c2);
    }
}

#[tokio::test]
async fn outsiders_cannot_signal_and_from_cannot_be_spoofed() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(dir.path(), &[]);
    let mut a = Client::connect(&node.ws_url()).await;
    let mut b = Client::connect(&node.ws_url()).await;
    let mut c = Client::connect(&node.ws_url()).await;
    a.join("r1").await;
    b.join("r1").await;
    a.expect("peer-joined").await;
    c.join("r2").await;

    // C names room r1, which it is not in.
    c.send(json!({"type": "signal", "room": "r1", "to": a.peer_id, "kind": "offer", "data": {}, "ref": "x1"}))
        .await;
    let e = c.expect("error").await;
    assert_eq!(
        (e["code"].as_str(), e["ref"].as_str()),
        (Some("not-in-room"), Some("x1"))
    );

    // C names its own room, but A is not in it.
    c.send(json!({"type": "signal", "room": "r2", "to": a.peer_id, "kind": "offer", "data": {}, "ref": "x2"}))
        .await;
    let e = c.expect("error").await;
    assert_eq!(
        (e["code"].as_str(), e["ref"].as_str()),
        (Some("unknown-peer"), Some("x2"))
    );

    // A peer id that does not exist at all.
    a.send(json!({"type": "signal", "room": "r1", "to": "0123456789abcdef0123456789abcdef", "kind": "offer", "data": {}}))
        .await;
    assert_eq!(a.expect("error").await["code"], "unknown-peer");

    // Spoofing `from`: the server stamps the real sender.
    b.send(json!({"type": "signal", "room": "r1", "to": a.peer_id, "from": c.peer_id, "kind": "custom", "data": {"n": 1}}))
        .await;
    let got = a.expect("signal").await;
    assert_eq!(got["from"], b.peer_id.as_str());

    // Neither A nor B received anything from C; both still answer.
    a.assert_usable().await;
    b.assert_usable().await;
}

#[tokio::test]
async fn rejoining_is_idempotent_and_leave_is_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(dir.path(), &[]);
    let mut a = Client::connect(&node.ws_url()).await;
    let mut b = Client::connect(&node.ws_url()).await;
    a.join("r").await;
    b.join("r").await;
    a.expect("peer-joined").await;
    // Joining again answers with the current members and tells nobody.
    let again = a.join("r").await;
    assert_eq!(again["peers"][0]["id"], b.peer_id.as_str());
    b.assert_usable().await;

    a.send(json!({"type": "leave", "room": "r", "ref": "bye"}))
        .await;
    assert_eq!(a.expect("left").await["ref"], "bye");
    a.send(json!({"type": "leave", "room": "r"})).await;
    assert_eq!(a.expect("error").await["code"], "not-in-room");
    a.send(json!({"type": "signal", "room": "r", "to": b.peer_id, "kind": "offer", "data": 1}))
        .await;
    assert_eq!(a.expect("error").await["code"], "not-in-room");
}
