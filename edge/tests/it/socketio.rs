//! The Socket.IO ingress (`--socketio`) with official `socket.io-client`s on Node: the
//! dialect between Socket.IO clients, over WebSocket and long-polling; Socket.IO and native
//! peers in one room across two regions; join tokens from `auth`; bad input answered with the
//! error event while other clients carry on; the ingress label of the metrics.

use std::time::{SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
use serde_json::{Value, json};
use tempfile::TempDir;

use crate::support::sio::{SioClient, base_url, script};
use crate::support::{Client, Cluster, Node, REGION_REPLICA_ARGS, Spec};

const OPEN: &str = r#"heliograph_edge_connections_open{ingress="socketio"}"#;

fn start_edge(dir: &TempDir, extra: &[&str]) -> (Node, String) {
    let mut args = vec!["--socketio"];
    args.extend_from_slice(extra);
    let node = Node::start(dir.path(), &args);
    let base = base_url(&node.ws_url());
    (node, base)
}

#[tokio::test]
async fn an_unchanged_dialect_app_runs_against_the_edge() {
    let dir = tempfile::tempdir().unwrap();
    let (_edge, base) = start_edge(&dir, &[]);
    let out = tokio::process::Command::new("node")
        .arg(script("dialect-app.mjs"))
        .arg(&base)
        .output()
        .await
        .expect("run node");
    assert!(
        out.status.success(),
        "the dialect app failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test]
async fn socketio_clients_join_signal_leave_and_disconnect() {
    let dir = tempfile::tempdir().unwrap();
    let (edge, base) = start_edge(&dir, &[]);
    // One client upgrades to WebSocket (the default), the other stays on long-polling.
    let mut a = SioClient::connect(&base, json!({})).await;
    let mut b = SioClient::connect(&base, json!({"transports": ["polling"]})).await;
    assert_eq!(b.transport, "polling");
    edge.wait_metric(OPEN, |v| v == 2.0).await;

    let joined = a.emit_ack("join-room", json!("r1")).await;
    assert_eq!(joined, json!({"ok": true, "room": "r1", "users": []}));
    assert_eq!(a.expect("room-users").await, json!([]));
    b.emit("join-room", json!("r1")).await;
    assert_eq!(b.expect("room-users").await, json!([a.id]));
    assert_eq!(a.expect("user-joined").await, json!(b.id));

    // Payloads arrive unchanged, with `from` set by the edge (a forged one is replaced).
    let offer = json!({"to": a.id, "sdp": "v=0 offer", "from": "forged"});
    assert_eq!(b.emit_ack("offer", offer).await, json!({"ok": true}));
    assert_eq!(
        a.expect("offer").await,
        json!({"to": a.id, "sdp": "v=0 offer", "from": b.id})
    );
    a.emit("answer", json!({"to": b.id, "sdp": "v=0 answer"}))
        .await;
    assert_eq!(
        b.expect("answer").await,
        json!({"to": b.id, "sdp": "v=0 answer", "from": a.id})
    );
    for n in 0..3 {
        let candidate = json!({"candidate": format!("candidate:{n}"), "sdpMid": "0"});
        a.emit("ice-candidate", json!({"to": b.id, "candidate": candidate}))
            .await;
        b.emit("ice-candidate", json!({"to": a.id, "candidate": candidate}))
            .await;
    }
    for n in 0..3 {
        let at_b = b.expect("ice-candidate").await;
        assert_eq!(at_b["from"], json!(a.id));
        assert_eq!(at_b["candidate"]["candidate"], format!("candidate:{n}"));
        let at_a = a.expect("ice-candidate").await;
        assert_eq!(at_a["from"], json!(b.id));
        assert_eq!(at_a["candidate"]["candidate"], format!("candidate:{n}"));
    }

    assert_eq!(
        b.emit_ack("leave-room", json!("r1")).await,
        json!({"ok": true, "room": "r1"})
    );
    assert_eq!(a.expect("user-left").await, json!(b.id));
    b.emit("join-room", json!("r1")).await;
    assert_eq!(b.expect("room-users").await, json!([a.id]));
    assert_eq!(a.expect("user-joined").await, json!(b.id));
    let b_id = b.id.clone();
    b.disconnect().await;
    assert_eq!(a.expect("user-left").await, json!(b_id));
    edge.wait_metric(OPEN, |v| v == 1.0).await;
    a.disconnect().await;
    edge.wait_metric(OPEN, |v| v == 0.0).await;
    let accepted = edge
        .metric(r#"heliograph_edge_connections_accepted_total{ingress="socketio"}"#)
        .await;
    assert_eq!(accepted, 2.0);
    let received = edge
        .metric(r#"heliograph_edge_messages_received_total{ingress="socketio",type="signal"}"#)
        .await;
    assert_eq!(received, 8.0);
}

/// Regions `us` and `eu`, a replica each, one edge each, both serving Socket.IO.
async fn two_regions() -> Cluster {
    Cluster::start(Spec {
        replicas: &[(1, "us"), (2, "eu")],
        edges: &[("us-a", "us"), ("eu-a", "eu")],
        replica_args: REGION_REPLICA_ARGS,
        edge_args: &["--socketio"],
        ..Spec::default()
    })
    .await
}

#[tokio::test]
async fn socketio_and_native_peers_share_a_room_across_regions() {
    let cluster = two_regions().await;
    let mut native = Client::connect(&cluster.edge("eu-a").node.ws_url()).await;
    native.join("mixed").await;
    let us = base_url(&cluster.edge("us-a").node.ws_url());
    let mut sio = SioClient::connect(&us, json!({})).await;
    sio.emit("join-room", json!("mixed")).await;
    assert_eq!(sio.expect("room-users").await, json!([native.peer_id]));
    let joined = native.expect("peer-joined").await;
    assert_eq!(joined["peer"]["id"], json!(sio.id));
    assert_eq!(joined["peer"]["region"], "us");

    // Socket.IO → native: the event's payload (minus `from`) is the signal's `data`.
    let offer = json!({"to": native.peer_id, "type": "offer", "sdp": "v=0 o"});
    sio.emit("offer", offer.clone()).await;
    let s = native.expect("signal").await;
    assert_eq!(
        (&s["from"], &s["kind"], &s["data"], &s["room"]),
        (&json!(sio.id), &json!("offer"), &offer, &json!("mixed"))
    );
    let candidate = json!({"to": native.peer_id, "candidate": "candidate:1", "sdpMid": "0"});
    sio.emit("ice-candidate", candidate.clone()).await;
    let s = native.expect("signal").await;
    assert_eq!((&s["kind"], &s["data"]), (&json!("candidate"), &candidate));

    // Native → Socket.IO: the signal's `data` plus `from` is the event's payload.
    for (kind, event) in [
        ("answer", "answer"),
        ("candidate", "ice-candidate"),
        ("custom", "signal"),
    ] {
        native
            .send(
                json!({"type": "signal", "room": "mixed", "to": sio.id, "kind": kind,
                         "data": {"type": kind, "sdp": "v=0 a"}}),
            )
            .await;
        assert_eq!(
            sio.expect(event).await,
            json!({"type": kind, "sdp": "v=0 a", "from": native.peer_id})
        );
    }
    // A `data` that is no object arrives wrapped.
    native
        .send(json!({"type": "signal", "room": "mixed", "to": sio.id, "kind": "custom", "data": [1, 2]}))
        .await;
    assert_eq!(
        sio.expect("signal").await,
        json!({"data": [1, 2], "from": native.peer_id})
    );

    native.send(json!({"type": "leave", "room": "mixed"})).await;
    native.expect("left").await;
    assert_eq!(sio.expect("user-left").await, json!(native.peer_id));
    native.join("mixed").await;
    assert_eq!(sio.expect("user-joined").await, json!(native.peer_id));
    let sio_id = sio.id.clone();
    sio.disconnect().await;
    let left = native.expect("peer-left").await;
    assert_eq!(
        (&left["peer_id"], &left["reason"]),
        (&json!(sio_id), &json!("disconnected"))
    );
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

#[tokio::test]
async fn join_tokens_come_from_the_auth_payload() {
    let secret = "socketio-test-secret-of-at-least-32-bytes";
    let dir = tempfile::tempdir().unwrap();
    let (_edge, base) = start_edge(&dir, &["--join-token-secret", secret]);
    let token = encode(
        &Header::new(Algorithm::HS256),
        &json!({"sub": "alice", "exp": now() + 600, "room": "guarded"}),
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap();
    let mut with = SioClient::connect(&base, json!({"auth": {"token": token}})).await;
    let mut without = SioClient::connect(&base, json!({})).await;
    let refused = without.emit_ack("join-room", json!("guarded")).await;
    assert_eq!(
        (&refused["ok"], &refused["code"]),
        (&json!(false), &json!("token-required"))
    );
    assert_eq!(without.expect("error").await["code"], "token-required");
    let joined = with.emit_ack("join-room", json!("guarded")).await;
    assert_eq!(joined["ok"], true, "{joined}");
    // The token admits to its room only.
    let other = with.emit_ack("join-room", json!("elsewhere")).await;
    assert_eq!(other["code"], "token-wrong-room");
}

#[tokio::test]
async fn bad_input_gets_the_error_event_and_leaves_others_alone() {
    let dir = tempfile::tempdir().unwrap();
    let (edge, base) = start_edge(&dir, &["--max-frame-bytes", "8192"]);
    let mut bad = SioClient::connect(&base, json!({})).await;
    let mut a = SioClient::connect(&base, json!({})).await;
    let mut b = SioClient::connect(&base, json!({"transports": ["polling"]})).await;
    let outsider = SioClient::connect(&base, json!({})).await;

    // Before joining anything: a signal has no room to go in.
    let error = bad.emit_ack("offer", json!({"to": a.id, "sdp": "x"})).await;
    assert_eq!(error["code"], "not-in-room");
    assert_eq!(bad.expect("error").await["code"], "not-in-room");
    for c in [&mut a, &mut b, &mut bad] {
        c.emit_ack("join-room", json!("room")).await;
    }
    let cases: Vec<(&str, Value, &str)> = vec![
        ("no-such-event", json!({"x": 1}), "unknown-type"),
        ("offer", json!({"sdp": "no to"}), "bad-field"),
        ("offer", json!("just a string"), "bad-field"),
        ("answer", json!({"to": 42}), "bad-field"),
        // A peer that exists but shares no room, and one that does not exist.
        (
            "offer",
            json!({"to": outsider.id, "sdp": "x"}),
            "unknown-peer",
        ),
        (
            "ice-candidate",
            json!({"to": "nobody", "candidate": "c"}),
            "unknown-peer",
        ),
        (
            "offer",
            json!({"to": a.id, "sdp": "x".repeat(9000)}),
            "too-large",
        ),
        ("join-room", json!(""), "invalid-room"),
        ("join-room", json!({"room": "an object"}), "bad-field"),
        ("join-room", json!("x".repeat(200)), "invalid-room"),
        ("leave-room", json!("not-joined"), "not-in-room"),
    ];
    for (event, payload, code) in &cases {
        let ack = bad.emit_ack(event, payload.clone()).await;
        assert_eq!(
            (&ack["ok"], &ack["code"]),
            (&json!(false), &json!(code)),
            "{event} {payload}: {ack}"
        );
        let error = bad.expect("error").await;
        assert_eq!(error["code"], *code, "{event}: {error}");
        assert!(error["message"].as_str().is_some_and(|m| !m.is_empty()));
    }
    let errors = edge
        .metric(r#"heliograph_edge_errors_total{code="too-large"}"#)
        .await;
    assert_eq!(errors, 1.0);

    // The bad client's connection still works, and the others saw nothing of it.
    bad.emit("offer", json!({"to": a.id, "sdp": "fine"})).await;
    assert_eq!(a.expect("offer").await["from"], json!(bad.id));
    a.emit("offer", json!({"to": b.id, "sdp": "hello b"})).await;
    assert_eq!(b.expect("offer").await["sdp"], "hello b");
    assert!(a.held("error").is_empty() && b.held("error").is_empty());

    // Beyond the transport's own limit (4 × --max-frame-bytes) the connection is cut: only
    // that one.
    bad.emit("offer", json!({"to": a.id, "sdp": "x".repeat(40_000)}))
        .await;
    assert_ne!(bad.disconnected().await, "io client disconnect");
    assert_eq!(a.expect("user-left").await, json!(bad.id));
    b.emit("offer", json!({"to": a.id, "sdp": "still here"}))
        .await;
    assert_eq!(a.expect("offer").await["sdp"], "still here");
}

#[tokio::test]
async fn the_endpoint_is_off_without_the_flag() {
    let dir = tempfile::tempdir().unwrap();
    let edge = Node::start(dir.path(), &[]);
    let base = base_url(&edge.ws_url());
    let (_c, first) = SioClient::start(&base, json!({"transports": ["polling"]})).await;
    assert!(first.get("connect_error").is_some(), "{first}");
}

/// One HTTP/1.1 request (`Connection: close`): the status and the raw response.
async fn http(addr: &str, method: &str, path: &str, headers: &[(&str, &str)]) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = String::new();
    tokio::time::timeout(crate::support::DEADLINE, s.read_to_string(&mut out))
        .await
        .unwrap()
        .unwrap();
    let status = out[9..12].parse().unwrap();
    (status, out.to_ascii_lowercase())
}

#[tokio::test]
async fn long_polling_from_allowed_origins_gets_cors_headers() {
    let dir = tempfile::tempdir().unwrap();
    let (_edge, base) = start_edge(&dir, &["--allowed-origin", "https://app.example"]);
    let addr = base.trim_start_matches("http://");
    let path = "/socket.io/?EIO=4&transport=polling";
    let app = ("Origin", "https://app.example");
    let (status, resp) = http(
        addr,
        "OPTIONS",
        path,
        &[
            app,
            ("Access-Control-Request-Method", "POST"),
            ("Access-Control-Request-Headers", "content-type"),
        ],
    )
    .await;
    assert_eq!(status, 204, "{resp}");
    assert!(resp.contains("access-control-allow-origin: https://app.example"));
    assert!(resp.contains("access-control-allow-headers: content-type"));
    // The Engine.IO handshake, read cross-origin.
    let (status, resp) = http(addr, "GET", path, &[app]).await;
    assert_eq!(status, 200, "{resp}");
    assert!(resp.contains("access-control-allow-origin: https://app.example"));
    assert!(resp.contains("\"sid\""), "{resp}");
    // Other origins get no CORS headers (the browser withholds the answer), and their
    // Socket.IO connection is refused at admission.
    let evil = ("Origin", "https://evil.example");
    let (status, _) = http(addr, "OPTIONS", path, &[evil]).await;
    assert_eq!(status, 403);
    let (_, resp) = http(addr, "GET", path, &[evil]).await;
    assert!(!resp.contains("access-control-allow-origin"));
    let (_c, first) = SioClient::start(
        &base,
        json!({"extraHeaders": {"Origin": "https://evil.example"}, "transports": ["polling"]}),
    )
    .await;
    assert_eq!(first["connect_error"], "origin not allowed", "{first}");
    // Other paths are not touched.
    let (_, resp) = http(addr, "GET", "/healthz", &[app]).await;
    assert!(!resp.contains("access-control-allow-origin"));
}

#[tokio::test]
async fn a_draining_edge_closes_socketio_transports_so_clients_reconnect_elsewhere() {
    let cluster = Cluster::start(Spec {
        replicas: &[(1, "us")],
        edges: &[("us-a", "us"), ("us-b", "us")],
        redis: &["us"],
        replica_args: REGION_REPLICA_ARGS,
        edge_args: &["--socketio"],
        ..Spec::default()
    })
    .await;
    let mut native = Client::connect(&cluster.edge("us-b").node.ws_url()).await;
    native.join("drain").await;
    let a = base_url(&cluster.edge("us-a").node.ws_url());
    let mut sio = SioClient::connect(&a, json!({})).await;
    sio.emit_ack("join-room", json!("drain")).await;
    assert_eq!(
        native.expect("peer-joined").await["peer"]["id"],
        json!(sio.id)
    );

    cluster.edge("us-a").node.signal("TERM");
    // The transport closes (not the namespace): socket.io-client would reconnect by itself.
    assert_eq!(sio.disconnected().await, "transport close");
    let left = tokio::time::timeout(crate::support::DEADLINE, native.expect("peer-left")).await;
    let Ok(left) = left else {
        panic!(
            "no peer-left; us-a's log:\n{}",
            cluster.edge("us-a").node.log()
        );
    };
    assert_eq!(left["peer_id"], json!(sio.id));
}

#[tokio::test]
async fn a_flooding_client_is_rate_limited_alone() {
    let dir = tempfile::tempdir().unwrap();
    let (_edge, base) = start_edge(
        &dir,
        &["--rate-limit-per-second", "1", "--rate-limit-burst", "3"],
    );
    let mut flood = SioClient::connect(&base, json!({})).await;
    let mut b = SioClient::connect(&base, json!({})).await;
    let mut c = SioClient::connect(&base, json!({})).await;
    // Three events each: the burst.
    for s in [&mut flood, &mut b, &mut c] {
        s.emit_ack("join-room", json!("flood")).await;
    }
    let mut refused = 0;
    for n in 0..10 {
        let ack = flood.emit_ack("offer", json!({"to": b.id, "n": n})).await;
        if ack["code"] == "rate-limited" {
            refused += 1;
        }
    }
    assert!(refused >= 7, "{refused} of 10 refused");
    assert_eq!(flood.expect("error").await["code"], "rate-limited");
    c.emit("offer", json!({"to": b.id, "from-c": true})).await;
    let mut got = b.expect("offer").await;
    while got["from"] != json!(c.id) {
        got = b.expect("offer").await;
    }
    assert_eq!(got["from-c"], true);
}

#[tokio::test]
async fn server_api_messages_and_kicks_reach_socketio_clients() {
    use heliograph_testkit::http::request;
    let keys = tempfile::tempdir().unwrap();
    let key = "socketio-api-key-0123456789abcdef";
    let key_file = keys.path().join("app.key");
    std::fs::write(&key_file, key).unwrap();
    let key_arg = format!("app={}", key_file.display());
    let cluster = Cluster::start(Spec {
        replicas: &[(1, "us")],
        edges: &[("us-a", "us")],
        replica_args: &["--grace-ms", "500", "--api-key-file", &key_arg],
        edge_args: &["--socketio"],
        ..Spec::default()
    })
    .await;
    let base = base_url(&cluster.edge("us-a").node.ws_url());
    let mut sio = SioClient::connect(&base, json!({})).await;
    sio.emit_ack("join-room", json!("call")).await;
    let api = cluster.replica(1).metrics.clone();
    let auth = format!("Bearer {key}");
    let headers = [
        ("authorization", auth.as_str()),
        ("content-type", "application/json"),
    ];
    let body = json!({"data": {"text": "hello"}}).to_string();
    let (status, text) = request(
        &api,
        "POST",
        "/api/v1/rooms/call/messages",
        &headers,
        body.as_bytes(),
    )
    .await;
    assert_eq!(status, 202, "{text}");
    assert_eq!(
        sio.expect("server-message").await,
        json!({"room": "call", "from": "server", "data": {"text": "hello"}})
    );
    let path = format!("/api/v1/rooms/call/peers/{}", sio.id);
    let (status, text) = request(&api, "DELETE", &path, &headers, b"").await;
    assert!(status < 300, "{status} {text}");
    let removed = sio.expect("error").await;
    assert_eq!(
        (&removed["code"], &removed["room"]),
        (&json!("removed"), &json!("call"))
    );
}

#[tokio::test]
async fn a_client_gone_during_its_join_leaves_no_member_behind() {
    let dir = tempfile::tempdir().unwrap();
    let (edge, base) = start_edge(&dir, &[]);
    let mut native = Client::connect(&edge.ws_url()).await;
    native.join("ghost").await;
    for _ in 0..5 {
        let mut sio = SioClient::connect(&base, json!({})).await;
        sio.emit("join-room", json!("ghost")).await;
        sio.disconnect().await;
    }
    // Whatever each join reached, every one of them ends up gone from the room.
    crate::support::wait_for("the room holds the native peer alone", || {
        let url = edge.ws_url();
        async move {
            let mut probe = Client::connect(&url).await;
            let joined = probe.join("ghost").await;
            let peers = joined["peers"].as_array().map_or(0, Vec::len);
            probe.send(json!({"type": "leave", "room": "ghost"})).await;
            // (A ghost's `peer-left` may come first.)
            while probe.recv().await["type"] != "left" {}
            (peers == 1).then_some(())
        }
    })
    .await;
}
