//! The node's life: restart on the same data dir, graceful shutdown, config errors, metrics.

use std::process::Command;
use std::time::Duration;

use crate::support::{self, Client, DEADLINE, Node, metric};
use heliograph_testkit::process;
use serde_json::json;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

#[tokio::test]
async fn killed_node_restarts_cleanly_on_the_same_data_dir() {
    let dir = tempfile::tempdir().unwrap();
    // A single-threaded runtime (what an edge on one core runs) before the kill, the
    // multi-threaded one after.
    let mut node = Node::start(dir.path(), &["--worker-threads", "1"]);
    let listen = node.addr.clone();
    let mut a = Client::connect(&node.ws_url()).await;
    let mut b = Client::connect(&node.ws_url()).await;
    a.join("standup").await;
    b.join("standup").await;
    a.expect("peer-joined").await;
    a.join("other").await;
    node.kill();

    let data_dir = node.data_dir.clone();
    let node = Node::start_on(dir.path(), &data_dir, &listen, &[]);
    let (status, _) = node.get("/readyz").await;
    assert_eq!(status, 200);
    let mut c = Client::connect(&node.ws_url()).await;
    let joined = c.join("standup").await;
    assert_eq!(
        joined["peers"],
        json!([]),
        "members of the dead process are not present"
    );
    assert_eq!(c.join("other").await["peers"], json!([]));
    // The registry keeps working after the restart.
    let mut d = Client::connect(&node.ws_url()).await;
    assert_eq!(
        d.join("standup").await["peers"][0]["id"],
        c.peer_id.as_str()
    );
    drop((a, b));
}

#[tokio::test]
async fn sigterm_closes_sockets_with_1001_and_exits_zero() {
    let dir = tempfile::tempdir().unwrap();
    let mut node = Node::start(
        dir.path(),
        &[
            "--shutdown-grace-ms",
            "3000",
            "--drain-window-ms",
            "500",
            // The drain on a single-threaded runtime (the other tests run multi-threaded).
            "--worker-threads",
            "1",
        ],
    );
    let mut a = Client::connect(&node.ws_url()).await;
    let mut b = Client::connect(&node.ws_url()).await;
    a.join("r").await;
    b.join("r").await;
    node.signal("TERM");
    assert_eq!(a.expect_close().await, CloseCode::Away);
    assert_eq!(b.expect_close().await, CloseCode::Away);
    assert_eq!(node.wait_exit(Duration::from_secs(5)), Some(0));
    assert!(node.log().contains("edge stopped"));
}

#[tokio::test]
async fn health_and_readiness() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(dir.path(), &[]);
    assert_eq!(node.get("/healthz").await.0, 200);
    assert_eq!(node.get("/readyz").await.0, 200);
    let (status, page) = node.get("/").await;
    assert_eq!(status, 200);
    assert!(page.contains("Heliograph"));
}

#[test]
fn invalid_config_exits_non_zero_with_one_line() {
    let cases: [&[&str]; 5] = [
        &[
            "--ping-interval-ms",
            "1000",
            "--keepalive-timeout-ms",
            "500",
        ],
        &["--worker-threads", "5000"],
        &["--region", ""],
        &["--max-frame-bytes", "10"],
        &["--ice-server", "http://not-ice"],
    ];
    for args in cases {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_heliograph-edge"));
        cmd.args(args).args(["--listen", "127.0.0.1:0"]);
        let out = process::run(cmd, DEADLINE).unwrap();
        assert_eq!(out.status.code(), Some(64), "{args:?}");
        let stderr = String::from_utf8(out.stderr).unwrap();
        assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
        assert!(stderr.contains("invalid configuration"), "{stderr}");
    }
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_heliograph-edge"));
    cmd.args(["--listen", "not-an-address"]);
    let out = process::run(cmd, DEADLINE).unwrap();
    assert_ne!(out.status.code(), Some(0));
}

#[tokio::test]
async fn metrics_report_connections_messages_latency_and_errors() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(dir.path(), &[]);
    let mut a = Client::connect(&node.ws_url()).await;
    let mut b = Client::connect(&node.ws_url()).await;
    a.join("m").await;
    b.join("m").await;
    a.expect("peer-joined").await;
    for i in 0..5 {
        a.send(json!({"type": "signal", "room": "m", "to": b.peer_id, "kind": "offer", "data": i}))
            .await;
        b.expect("signal").await;
    }
    a.send(json!({"type": "nonsense"})).await;
    a.expect("error").await;

    let (status, body) = node.get("/metrics").await;
    assert_eq!(status, 200);
    assert_eq!(
        metric(&body, r#"heliograph_edge_connections_open{ingress="ws"}"#),
        Some(2.0)
    );
    assert_eq!(
        metric(
            &body,
            r#"heliograph_edge_connections_accepted_total{ingress="ws"}"#
        ),
        Some(2.0)
    );
    assert_eq!(
        metric(
            &body,
            r#"heliograph_edge_messages_received_total{ingress="ws",type="signal"}"#
        ),
        Some(5.0)
    );
    assert_eq!(
        metric(
            &body,
            r#"heliograph_edge_messages_received_total{ingress="ws",type="join"}"#
        ),
        Some(2.0)
    );
    assert_eq!(
        metric(
            &body,
            r#"heliograph_edge_messages_sent_total{ingress="ws",type="signal"}"#
        ),
        Some(5.0)
    );
    assert_eq!(
        metric(
            &body,
            r#"heliograph_edge_messages_sent_total{ingress="ws",type="welcome"}"#
        ),
        Some(2.0)
    );
    assert_eq!(
        metric(
            &body,
            r#"heliograph_edge_messages_sent_total{ingress="ws",type="peer-joined"}"#
        ),
        Some(1.0)
    );
    assert_eq!(
        metric(
            &body,
            r#"heliograph_edge_signal_relay_seconds_count{path="local"}"#
        ),
        Some(5.0)
    );
    assert!(
        body.contains(r#"heliograph_edge_signal_relay_seconds_bucket{path="local",le="0.001"}"#)
    );
    assert_eq!(
        metric(
            &body,
            r#"heliograph_edge_errors_total{code="unknown-type"}"#
        ),
        Some(1.0)
    );
    assert_eq!(
        metric(&body, "heliograph_edge_join_duration_seconds_count"),
        Some(2.0)
    );

    drop(b);
    support::wait_for("the closed connection to be counted", || async {
        let (_, body) = node.get("/metrics").await;
        (metric(&body, r#"heliograph_edge_connections_open{ingress="ws"}"#) == Some(1.0))
            .then_some(())
    })
    .await;
}

/// `--snapshot-after-entries` sets when the embedded registry snapshots: after a handful of
/// entries with a small value, not within them at the default; the node restarts from it.
#[tokio::test]
async fn the_embedded_registry_snapshots_at_the_configured_interval() {
    async fn built(node: &Node) -> f64 {
        let (_, body) = node.get("/metrics").await;
        metric(&body, "heliograph_raft_snapshots_built_total").unwrap_or(0.0)
    }
    let dir = tempfile::tempdir().unwrap();
    let mut small = Node::start(dir.path(), &["--snapshot-after-entries", "10"]);
    let default_dir = tempfile::tempdir().unwrap();
    let default = Node::start(default_dir.path(), &[]);
    for node in [&small, &default] {
        let mut c = Client::connect(&node.ws_url()).await;
        for i in 0..30 {
            c.join(&format!("room-{i}")).await;
        }
    }
    support::wait_for("a snapshot after 10 entries", || async {
        (built(&small).await >= 1.0).then_some(())
    })
    .await;
    assert_eq!(built(&default).await, 0.0, "the default is 10,000 entries");

    small.kill();
    let (data_dir, listen) = (small.data_dir.clone(), small.addr.clone());
    let node = Node::start_on(
        dir.path(),
        &data_dir,
        &listen,
        &["--snapshot-after-entries", "10"],
    );
    let mut c = Client::connect(&node.ws_url()).await;
    assert_eq!(c.join("room-0").await["peers"], json!([]));
}
