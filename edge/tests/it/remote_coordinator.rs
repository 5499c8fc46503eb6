//! Two real edge processes on one coordinator (served in this process): peers on different
//! edges see each other, signal each other through the coordinator, and are told when the
//! other leaves or its edge dies.

use std::path::Path;
use std::time::Duration;

use crate::support::{self, Client, Node, TestCoordinator, meet_and_signal, wait_for};
use heliograph_coordinator::registry::RoomId;
use serde_json::json;

/// Small lease and grace, so that a dead edge's peers are gone within a second.
const LEASE_MS: &str = "300";
const GRACE: Duration = Duration::from_millis(300);

fn edge(dir: &Path, name: &str, coordinator: &TestCoordinator) -> Node {
    edge_with_lease(dir, name, coordinator, LEASE_MS)
}

fn edge_with_lease(dir: &Path, name: &str, coordinator: &TestCoordinator, lease_ms: &str) -> Node {
    let dir = dir.join(name);
    std::fs::create_dir_all(&dir).unwrap();
    let mut args = coordinator.edge_args();
    args.extend([
        "--lease-ms".into(),
        lease_ms.into(),
        "--edge-id".into(),
        name.into(),
    ]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    Node::start(&dir, &args)
}

#[tokio::test]
async fn peers_on_two_edges_meet_signal_and_part() {
    let dir = tempfile::tempdir().unwrap();
    let coordinator = TestCoordinator::start(dir.path(), GRACE).await;
    let mut edge_a = edge(dir.path(), "edge-a", &coordinator);
    let edge_b = edge(dir.path(), "edge-b", &coordinator);

    // A → B and B → A, through the coordinator, with the server-stamped `from`.
    let (mut a, mut b) = meet_and_signal(&edge_a, &edge_b).await;

    // B leaves: A is told; B comes back: A is told again.
    b.send(json!({"type": "leave", "room": "call"})).await;
    b.expect("left").await;
    let pl = a.expect("peer-left").await;
    assert_eq!(
        (pl["peer_id"].as_str(), pl["reason"].as_str()),
        (Some(b.peer_id.as_str()), Some("left"))
    );
    b.join("call").await;
    a.expect("peer-joined").await;

    let (_, metrics) = edge_b.get("/metrics").await;
    assert!(
        support::metric(
            &metrics,
            r#"heliograph_edge_signal_relay_seconds_count{path="coordinator"}"#
        )
        .is_some_and(|n| n >= 1.0),
        "{metrics}"
    );

    // Edge A dies without a word: after its lease and the grace period, B is told.
    let gone = a.peer_id.clone();
    edge_a.kill();
    let pl = b.expect("peer-left").await;
    assert_eq!(pl["peer_id"], gone.as_str());
    assert_eq!(pl["reason"], "expired");
    let room = RoomId::new("call").unwrap();
    wait_for("A's peer to leave the registry", || async {
        let view = coordinator.replica.room(&room)?;
        (view.members.len() == 1 && view.members[0].peer.as_str() == b.peer_id).then_some(())
    })
    .await;
    b.assert_usable().await;

    drop(edge_b);
    coordinator.stop().await;
}

#[tokio::test]
async fn edges_reconnect_and_resync_after_the_coordinator_restarts() {
    let dir = tempfile::tempdir().unwrap();
    // Lease and grace outlast the restart: nobody is removed meanwhile.
    let coordinator = TestCoordinator::start(dir.path(), Duration::from_secs(30)).await;
    let edge_a = edge_with_lease(dir.path(), "edge-a", &coordinator, "20000");
    let edge_b = edge_with_lease(dir.path(), "edge-b", &coordinator, "20000");
    edge_a.wait_ready().await;
    edge_b.wait_ready().await;
    let mut a = Client::connect(&edge_a.ws_url()).await;
    let mut b = Client::connect(&edge_b.ws_url()).await;
    a.join("r").await;
    b.join("r").await;
    a.expect("peer-joined").await;

    // C is on edge A too, and goes away while the coordinator is down.
    let mut c = Client::connect(&edge_a.ws_url()).await;
    c.join("r").await;
    a.expect("peer-joined").await;
    b.expect("peer-joined").await;
    let ghost = c.peer_id.clone();

    let coordinator = coordinator
        .restart(|| async {
            for node in [&edge_a, &edge_b] {
                wait_for("the edge to notice", || async {
                    (node.get("/readyz").await.0 == 503).then_some(())
                })
                .await;
            }
            drop(c);
            wait_for("edge A to fail to report C's departure", || async {
                edge_a
                    .log()
                    .contains("could not mark a peer detached")
                    .then_some(())
            })
            .await;
        })
        .await;
    edge_a.wait_ready().await;
    edge_b.wait_ready().await;
    // Edge A's resync finds C in the registry without a socket here and removes it.
    for peer in [&mut a, &mut b] {
        let pl = peer.expect("peer-left").await;
        assert_eq!(pl["peer_id"], ghost.as_str());
    }

    // Same peers, same room: signals flow again and departures are still reported.
    a.send(json!({"type": "signal", "room": "r", "to": b.peer_id, "kind": "offer", "data": 1}))
        .await;
    let got = b.expect("signal").await;
    assert_eq!(got["from"], a.peer_id.as_str());
    b.send(json!({"type": "leave", "room": "r"})).await;
    b.expect("left").await;
    let pl = a.expect("peer-left").await;
    assert_eq!(pl["peer_id"], b.peer_id.as_str());
    a.assert_pong("a").await;

    drop((edge_a, edge_b));
    coordinator.stop().await;
}

#[tokio::test]
async fn readiness_follows_the_coordinator() {
    let dir = tempfile::tempdir().unwrap();
    // Nothing listens here: the edge starts but is not ready.
    let unreachable = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let node_dir = dir.path().join("edge");
    std::fs::create_dir_all(&node_dir).unwrap();
    let url = format!("http://{unreachable}");
    let node = Node::start(
        &node_dir,
        &[
            "--coordinator",
            &url,
            "--cluster-secret",
            support::CLUSTER_SECRET,
        ],
    );
    assert_eq!(node.get("/readyz").await.0, 503);
    assert_eq!(node.get("/healthz").await.0, 200);
    // It still stops promptly and cleanly while retrying.
    let mut node = node;
    node.signal("TERM");
    assert_eq!(node.wait_exit(Duration::from_secs(5)), Some(0));
}
