//! Peers that leave, vanish without a close frame, or go silent are reported `peer-left`
//! (the last two once the grace period for a resume is over).

use std::time::{Duration, Instant};

use crate::support::{self, Client, Node};
use serde_json::json;

/// Small keepalive so that the deadline is short: pings every 100 ms, dead after 600 ms; a
/// peer whose socket is gone keeps its place 500 ms for a resume.
const KEEPALIVE: [&str; 6] = [
    "--ping-interval-ms",
    "100",
    "--keepalive-timeout-ms",
    "600",
    "--detach-grace-ms",
    "500",
];
const GRACE: Duration = Duration::from_millis(500);

async fn pair(node: &Node, room: &str) -> (Client, Client) {
    let mut a = Client::connect(&node.ws_url()).await;
    let mut b = Client::connect(&node.ws_url()).await;
    a.join(room).await;
    b.join(room).await;
    a.expect("peer-joined").await;
    (a, b)
}

#[tokio::test]
async fn leave_produces_peer_left() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(dir.path(), &KEEPALIVE);
    let (mut a, mut b) = pair(&node, "r").await;
    b.send(json!({"type": "leave", "room": "r"})).await;
    b.expect("left").await;
    let pl = a.expect("peer-left").await;
    assert_eq!(pl["peer_id"], b.peer_id.as_str());
    assert_eq!(pl["room"], "r");
    assert_eq!(pl["reason"], "left");
}

#[tokio::test]
async fn abrupt_tcp_drop_produces_peer_left() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(dir.path(), &KEEPALIVE);
    let (mut a, b) = pair(&node, "r").await;
    let gone = b.peer_id.clone();
    // Reset the TCP connection: no close frame, no FIN handshake.
    #[allow(deprecated)]
    match b.ws.get_ref() {
        tokio_tungstenite::MaybeTlsStream::Plain(tcp) => {
            tcp.set_linger(Some(Duration::ZERO)).unwrap()
        }
        _ => unreachable!(),
    }
    let started = Instant::now();
    drop(b);
    let pl = a.expect("peer-left").await;
    assert_eq!(pl["peer_id"], gone.as_str());
    // It could have resumed within the grace period; it did not.
    assert_eq!(pl["reason"], "expired");
    let waited = started.elapsed();
    assert!(waited >= GRACE, "only after the grace period: {waited:?}");
    assert!(
        waited < GRACE + Duration::from_millis(1_500),
        "soon after it: {waited:?}"
    );
}

#[tokio::test]
async fn silent_peer_is_reaped_by_keepalive() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(dir.path(), &KEEPALIVE);
    let (mut a, b) = pair(&node, "r").await;
    // B's socket stays open but B never reads again, so it never answers a ping.
    let silent = b;
    let started = Instant::now();
    let pl = a.expect("peer-left").await;
    assert_eq!(pl["peer_id"], silent.peer_id.as_str());
    let waited = started.elapsed();
    assert_eq!(pl["reason"], "expired");
    assert!(
        waited >= Duration::from_millis(500) + GRACE,
        "reaped only after the deadline and the grace period: {waited:?}"
    );
    assert!(
        waited < Duration::from_millis(600 + 100 + 1_000) + GRACE,
        "reaped soon after them: {waited:?}"
    );
    // A, which answers pings, is kept.
    a.assert_usable().await;
    let (_, body) = node.get("/metrics").await;
    assert_eq!(
        support::metric(
            &body,
            r#"heliograph_edge_connections_closed_total{ingress="ws",reason="keepalive_timeout"}"#
        ),
        Some(1.0)
    );
    drop(silent);
}

#[tokio::test]
async fn empty_rooms_disappear() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(dir.path(), &KEEPALIVE);
    let (mut a, mut b) = pair(&node, "r").await;
    a.send(json!({"type": "leave", "room": "r"})).await;
    a.expect("left").await;
    b.expect("peer-left").await;
    b.send(json!({"type": "leave", "room": "r"})).await;
    b.expect("left").await;
    // A newcomer finds the room empty.
    let mut c = Client::connect(&node.ws_url()).await;
    assert_eq!(c.join("r").await["peers"], json!([]));
    let (_, body) = node.get("/metrics").await;
    assert_eq!(
        support::metric(&body, "heliograph_edge_rooms_tracked"),
        Some(1.0)
    );
}
