//! Idle sockets park (give their WebSocket buffers back) and wake for whatever comes next:
//! a signal to them, a request from them, keepalive; and a frame that arrives in pieces is
//! never lost to a park.

use std::time::Duration;

use futures_util::StreamExt;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::MaybeTlsStream;
use tokio_tungstenite::tungstenite::Message;

use crate::support::{Client, DEADLINE, Node, masked_text, metric};

/// Keepalive ticks every 100 ms: a socket quiet for a tick parks at the next.
const FAST_TICKS: [&str; 4] = [
    "--ping-interval-ms",
    "100",
    "--keepalive-timeout-ms",
    "30000",
];

async fn parked(node: &Node) -> f64 {
    let (_, body) = node.get("/metrics").await;
    metric(&body, "heliograph_edge_sockets_parked").unwrap_or(-1.0)
}

/// Waits until `n` sockets are parked.
async fn until_parked(node: &Node, n: f64) {
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while parked(node).await != n {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{n} sockets never parked (now {})",
            parked(node).await
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Reads `client` for `pings` keepalive pings (answered by the client library as it reads),
/// asserting that nothing else arrives.
async fn answer_pings(client: &mut Client, pings: usize) {
    let mut seen = 0;
    while seen < pings {
        let m = tokio::time::timeout(DEADLINE, client.ws.next())
            .await
            .expect("no ping before the deadline")
            .expect("socket ended")
            .expect("socket error");
        match m {
            Message::Ping(_) => seen += 1,
            Message::Pong(_) => {}
            other => panic!("expected only keepalive, got {other:?}"),
        }
    }
}

#[tokio::test]
async fn idle_sockets_park_and_wake_for_signals_requests_and_keepalive() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(dir.path(), &FAST_TICKS);
    let mut a = Client::connect(&node.ws_url()).await;
    let mut b = Client::connect(&node.ws_url()).await;
    a.join("idle").await;
    b.join("idle").await;
    a.expect("peer-joined").await;

    until_parked(&node, 2.0).await;
    // A signal to a parked peer, from a parked peer: both wake.
    a.send(json!({"type": "signal", "room": "idle", "to": b.peer_id, "kind": "offer", "data": {"sdp": "x"}}))
        .await;
    let signal = b.expect("signal").await;
    assert_eq!(signal["from"], a.peer_id.as_str());
    assert_eq!(signal["data"]["sdp"], "x");

    // Keepalive answered while parked: the socket wakes for the pong and parks again.
    until_parked(&node, 2.0).await;
    answer_pings(&mut b, 5).await;
    until_parked(&node, 2.0).await;

    // A request from a parked socket is served; the session's numbering went on unbroken.
    b.assert_usable().await;
    a.assert_usable().await;
    until_parked(&node, 2.0).await;
    b.send(json!({"type": "leave", "room": "idle"})).await;
    b.expect("left").await;
    a.expect("peer-left").await;
}

#[tokio::test]
async fn a_frame_in_pieces_across_ticks_is_not_lost_to_a_park() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(dir.path(), &FAST_TICKS);
    let client = Client::connect(&node.ws_url()).await;
    until_parked(&node, 1.0).await;

    // The raw connection under the client: the frame is written in two pieces, with the
    // server's keepalive ticks in between.
    let MaybeTlsStream::Plain(mut tcp) = client.ws.into_inner() else {
        panic!("plain connection expected");
    };
    let frame = masked_text(r#"{"type":"ping","ref":"pieces"}"#);
    let (head, tail) = frame.split_at(9);
    tcp.write_all(head).await.unwrap();
    // Three server pings (unmasked, empty: 0x89 0x00) prove three ticks went by with half a
    // frame in the WebSocket's buffer.
    let mut pings = 0;
    let mut byte = [0u8; 2];
    while pings < 3 {
        tokio::time::timeout(DEADLINE, tcp.read_exact(&mut byte))
            .await
            .expect("no keepalive ping")
            .unwrap();
        assert_eq!(
            byte,
            [0x89, 0x00],
            "only pings come before the frame is whole"
        );
        pings += 1;
    }
    assert_eq!(
        parked(&node).await,
        0.0,
        "a socket holding half a frame parked"
    );
    tcp.write_all(tail).await.unwrap();

    // The answer: an unmasked text frame `pong` for `pieces` (pings may come first).
    loop {
        let mut head = [0u8; 2];
        tokio::time::timeout(DEADLINE, tcp.read_exact(&mut head))
            .await
            .expect("no answer to the frame")
            .unwrap();
        if head == [0x89, 0x00] {
            continue;
        }
        assert_eq!(head[0], 0x81, "a text frame");
        let len = usize::from(head[1]);
        assert!(len < 126, "a short frame");
        let mut payload = vec![0u8; len];
        tcp.read_exact(&mut payload).await.unwrap();
        let pong: serde_json::Value = serde_json::from_slice(&payload).unwrap();
        assert_eq!(pong["type"], "pong", "{pong}");
        assert_eq!(pong["ref"], "pieces");
        break;
    }
}

/// A runtime thread about to sleep gives the allocator's freed memory back (edge/alloc), at
/// most once a second: an edge that has just gone idle counts a collection, and keeps
/// collecting as it wakes and sleeps again after its sockets have parked.
#[tokio::test]
async fn an_idle_edge_collects_the_allocators_heap_when_it_sleeps() {
    const COLLECTIONS: &str = "heliograph_edge_allocator_collections_total";
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(dir.path(), &FAST_TICKS);
    let first = node.wait_metric(COLLECTIONS, |v| v >= 1.0).await;
    let mut clients = Vec::new();
    for _ in 0..20 {
        let mut c = Client::connect(&node.ws_url()).await;
        c.join("quiet").await;
        clients.push(c);
    }
    until_parked(&node, 20.0).await;
    node.wait_metric(COLLECTIONS, |v| v > first).await;
}
