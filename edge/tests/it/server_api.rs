//! The coordinator's server API (`/api/v1/`) with real processes: two regions, clients on
//! edges in both, every operation through a replica of one region (and its CLI), API keys.

use std::path::Path;
use std::time::{Duration, Instant};

use heliograph_testkit::http::request;
use serde_json::{Value, json};

use crate::support::{CLUSTER_SECRET, Client, Cluster, Spec};

const OLD_KEY: &str = "old-key-0123456789abcdefghijkl";
const NEW_KEY: &str = "new-key-0123456789abcdefghijkl";

/// Writes both keys to files in `dir` and returns the replicas' flags naming them.
fn key_args(dir: &Path) -> Vec<String> {
    let mut args = Vec::new();
    for (name, key) in [("old", OLD_KEY), ("new", NEW_KEY)] {
        let path = dir.join(format!("{name}.key"));
        std::fs::write(&path, format!("{key}\n")).unwrap();
        args.push("--api-key-file".to_owned());
        args.push(format!("{name}={}", path.display()));
    }
    args
}

async fn api(addr: &str, key: &str, method: &str, path: &str, body: Value) -> (u16, Value) {
    let auth = format!("Bearer {key}");
    let body = if body.is_null() {
        Vec::new()
    } else {
        body.to_string().into_bytes()
    };
    let (status, text) = request(
        addr,
        method,
        path,
        &[
            ("authorization", &auth),
            ("content-type", "application/json"),
        ],
        &body,
    )
    .await;
    let v =
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{method} {path}: {e}: {text:?}"));
    (status, v)
}

/// Reads frames until one of type `ty` arrives; returns it and how long that took.
async fn frame_of(c: &mut Client, ty: &str) -> (Value, Duration) {
    let started = Instant::now();
    for _ in 0..20 {
        let v = c.recv().await;
        if v["type"] == ty {
            return (v, started.elapsed());
        }
    }
    panic!("no {ty} frame");
}

async fn two_regions(dir: &Path) -> Cluster {
    let keys = key_args(dir);
    let mut replica_args: Vec<&str> = vec!["--grace-ms", "500"];
    replica_args.extend(keys.iter().map(String::as_str));
    Cluster::start(Spec {
        replicas: &[(1, "us"), (2, "eu")],
        edges: &[("us-a", "us"), ("eu-a", "eu")],
        replica_args: &replica_args,
        ..Spec::default()
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_show_kick_close_and_send_across_two_regions() {
    let keys_dir = tempfile::tempdir().unwrap();
    let cluster = two_regions(keys_dir.path()).await;
    // Every call goes to the replica in `us`; bob is connected in `eu`.
    let us = cluster.replica(1).metrics.clone();
    let mut alice = Client::connect(&cluster.edge("us-a").node.ws_url()).await;
    let mut bob = Client::connect(&cluster.edge("eu-a").node.ws_url()).await;
    let mut carol = Client::connect(&cluster.edge("us-a").node.ws_url()).await;
    for (c, name) in [
        (&mut alice, "alice"),
        (&mut bob, "bob"),
        (&mut carol, "carol"),
    ] {
        c.send(json!({"type": "join", "room": "call", "meta": {"name": name}}))
            .await;
        frame_of(c, "joined").await;
    }
    for room in ["extra-1", "extra-2"] {
        alice.send(json!({"type": "join", "room": room})).await;
        frame_of(&mut alice, "joined").await;
    }

    // Keys: a wrong key, the cluster secret and no key at all are refused.
    for key in ["wrong-key-0123456789abcdefghij", CLUSTER_SECRET] {
        let (status, v) = api(&us, key, "GET", "/api/v1/rooms", Value::Null).await;
        assert_eq!(
            (status, &v["error"]["code"]),
            (401, &json!("unauthorized")),
            "{v}"
        );
    }
    let (status, _) = request(&us, "GET", "/api/v1/rooms", &[], b"").await;
    assert_eq!(status, 401);

    // List, paged: both keys work (rotation).
    let (status, page1) = api(&us, OLD_KEY, "GET", "/api/v1/rooms?limit=2", Value::Null).await;
    assert_eq!(status, 200, "{page1}");
    assert_eq!(
        page1["rooms"][0],
        json!({"room": "call", "members": 3, "regions": ["eu", "us"]})
    );
    let cursor = page1["next_cursor"].as_str().unwrap();
    let (_, page2) = api(
        &us,
        NEW_KEY,
        "GET",
        &format!("/api/v1/rooms?limit=2&cursor={cursor}"),
        Value::Null,
    )
    .await;
    assert_eq!(page2["rooms"][0]["room"], "extra-2", "{page2}");
    assert!(page2.get("next_cursor").is_none(), "{page2}");

    // Show.
    let (status, room) = api(&us, OLD_KEY, "GET", "/api/v1/rooms/call", Value::Null).await;
    assert_eq!(status, 200, "{room}");
    let members = room["members"].as_array().unwrap();
    assert_eq!(members.len(), 3);
    let bob_row = members
        .iter()
        .find(|m| m["peer_id"] == bob.peer_id.as_str())
        .unwrap();
    assert_eq!(bob_row["meta"], json!({"name": "bob"}));
    assert_eq!(
        (&bob_row["region"], &bob_row["edge"]),
        (&json!("eu"), &json!("eu-a"))
    );
    assert!(
        bob_row["joined_at_ms"].as_u64().unwrap() > 1_600_000_000_000,
        "{bob_row}"
    );

    // Send: to everyone, then to bob alone (in the other region).
    let (status, v) = api(
        &us,
        OLD_KEY,
        "POST",
        "/api/v1/rooms/call/messages",
        json!({"data": {"text": "hello all"}}),
    )
    .await;
    assert_eq!((status, &v["recipients"]), (202, &json!(3)), "{v}");
    for c in [&mut alice, &mut bob, &mut carol] {
        let (m, _) = frame_of(c, "message").await;
        assert_eq!(
            (&m["from"], &m["room"]),
            (&json!("server"), &json!("call")),
            "{m}"
        );
        assert_eq!(m["data"], json!({"text": "hello all"}));
    }
    let (status, _) = api(
        &us,
        OLD_KEY,
        "POST",
        "/api/v1/rooms/call/messages",
        json!({"data": "only bob", "to": bob.peer_id}),
    )
    .await;
    assert_eq!(status, 202);
    let (m, _) = frame_of(&mut bob, "message").await;
    assert_eq!(m["data"], "only bob");
    // Nothing more for alice than the `peer-joined`s queued before: the next message is the
    // kick's `peer-left`, checked below.

    // Kick bob (connected in eu) through the replica in us: the others see `peer-left`
    // with reason `removed` within a second; bob gets `error removed`.
    let kicked_at = Instant::now();
    let (status, v) = api(
        &us,
        NEW_KEY,
        "DELETE",
        &format!("/api/v1/rooms/call/peers/{}", bob.peer_id),
        Value::Null,
    )
    .await;
    assert_eq!(status, 200, "{v}");
    for c in [&mut alice, &mut carol] {
        let (left, _) = frame_of(c, "peer-left").await;
        assert_eq!(
            left,
            json!({"seq": left["seq"], "type": "peer-left", "room": "call", "peer_id": bob.peer_id, "reason": "removed"})
        );
    }
    let within = kicked_at.elapsed();
    assert!(
        within < Duration::from_secs(1),
        "peer-left after {within:?}"
    );
    let (err, _) = frame_of(&mut bob, "error").await;
    assert_eq!(
        (&err["code"], &err["room"]),
        (&json!("removed"), &json!("call")),
        "{err}"
    );
    bob.assert_usable().await;
    // Kicking again: the peer is not there.
    let (status, v) = api(
        &us,
        OLD_KEY,
        "DELETE",
        &format!("/api/v1/rooms/call/peers/{}", bob.peer_id),
        Value::Null,
    )
    .await;
    assert_eq!((status, &v["error"]["code"]), (404, &json!("unknown-peer")));

    // The CLI, against the replica in eu: show, then close.
    let key_file = keys_dir.path().join("old.key");
    let eu = format!("http://{}", cluster.replica(2).metrics);
    let cli = |op: &[&str]| {
        let mut args = vec![
            "rooms",
            "--server",
            &eu,
            "--api-key-file",
            key_file.to_str().unwrap(),
        ];
        args.extend_from_slice(op);
        cluster.admin.run(&args)
    };
    let shown = cli(&["show", "call"]).unwrap();
    assert_eq!(shown["members"].as_array().unwrap().len(), 2, "{shown}");
    let listed = cli(&["list", "--limit", "1"]).unwrap();
    assert_eq!(listed["rooms"][0]["room"], "call");
    cli(&[
        "send",
        "call",
        "--data",
        r#"{"n":1}"#,
        "--to",
        &carol.peer_id,
    ])
    .unwrap();
    assert_eq!(
        frame_of(&mut carol, "message").await.0["data"],
        json!({"n": 1})
    );
    cli(&["close", "call"]).unwrap();
    for c in [&mut alice, &mut carol] {
        let (err, _) = frame_of(c, "error").await;
        assert_eq!(
            (&err["code"], &err["room"]),
            (&json!("room-closed"), &json!("call")),
            "{err}"
        );
    }
    let gone = cli(&["show", "call"]).unwrap_err().to_string();
    assert!(gone.contains("unknown-room"), "{gone}");
    let (status, _) = api(&us, OLD_KEY, "GET", "/api/v1/rooms/call", Value::Null).await;
    assert_eq!(status, 404);
}

/// Bad input gets a documented 4xx JSON error, never a crash or a 5xx.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_documented_errors() {
    let keys_dir = tempfile::tempdir().unwrap();
    let keys = key_args(keys_dir.path());
    let mut replica_args: Vec<&str> = vec!["--api-max-body-bytes", "2048"];
    replica_args.extend(keys.iter().map(String::as_str));
    let cluster = Cluster::start(Spec {
        replicas: &[(1, "us")],
        edges: &[("us-a", "us")],
        replica_args: &replica_args,
        ..Spec::default()
    })
    .await;
    let addr = cluster.replica(1).metrics.clone();
    let mut alice = Client::connect(&cluster.edge("us-a").node.ws_url()).await;
    alice.join("room").await;
    let auth = format!("Bearer {OLD_KEY}");
    let post = |path: &'static str, body: Vec<u8>| {
        let addr = addr.clone();
        let auth = auth.clone();
        async move {
            let (status, text) =
                request(&addr, "POST", path, &[("authorization", &auth)], &body).await;
            let v: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text:?}"));
            (status, v["error"]["code"].as_str().unwrap_or("").to_owned())
        }
    };
    let cases: Vec<(&'static str, Vec<u8>, u16, &str)> = vec![
        (
            "/api/v1/rooms/room/messages",
            b"{not json".to_vec(),
            400,
            "bad-json",
        ),
        (
            "/api/v1/rooms/room/messages",
            b"[1,2]".to_vec(),
            400,
            "bad-field",
        ),
        (
            "/api/v1/rooms/room/messages",
            br#"{"to":"x"}"#.to_vec(),
            400,
            "bad-field",
        ),
        (
            "/api/v1/rooms/room/messages",
            br#"{"data":1,"extra":2}"#.to_vec(),
            400,
            "bad-field",
        ),
        (
            "/api/v1/rooms/room/messages",
            br#"{"data":"\ud800"}"#.to_vec(),
            400,
            "bad-json",
        ),
        (
            "/api/v1/rooms/room/messages",
            br#"{"data":1e999}"#.to_vec(),
            400,
            "bad-json",
        ),
        (
            "/api/v1/rooms/room/messages",
            vec![b' '; 4096],
            413,
            "body-too-large",
        ),
        (
            "/api/v1/rooms/nowhere/messages",
            br#"{"data":1}"#.to_vec(),
            404,
            "unknown-room",
        ),
        (
            "/api/v1/rooms/room/messages",
            br#"{"data":1,"to":"nobody"}"#.to_vec(),
            404,
            "unknown-peer",
        ),
        ("/api/v1/nothing-here", Vec::new(), 404, "not-found"),
        ("/api/v1/rooms", Vec::new(), 405, "method-not-allowed"),
    ];
    for (path, body, status, code) in cases {
        let got = post(path, body.clone()).await;
        assert_eq!(
            got,
            (status, code.to_owned()),
            "POST {path} {}",
            String::from_utf8_lossy(&body)
        );
    }
    for (method, path, status, code) in [
        ("GET", "/api/v1/rooms/nowhere", 404, "unknown-room"),
        ("DELETE", "/api/v1/rooms/nowhere", 404, "unknown-room"),
        (
            "DELETE",
            "/api/v1/rooms/nowhere/peers/p",
            404,
            "unknown-room",
        ),
        (
            "DELETE",
            "/api/v1/rooms/room/peers/nobody",
            404,
            "unknown-peer",
        ),
        ("GET", "/api/v1/rooms?limit=0", 400, "bad-field"),
        ("GET", "/api/v1/rooms?limit=abc", 400, "bad-field"),
        ("GET", "/api/v1/rooms?cursor=zz", 400, "bad-cursor"),
        ("GET", "/api/v1/rooms/%01", 400, "invalid-room"),
    ] {
        let (got, v) = api(&addr, OLD_KEY, method, path, Value::Null).await;
        assert_eq!(
            (got, v["error"]["code"].as_str().unwrap()),
            (status, code),
            "{method} {path}: {v}"
        );
    }
    // Missing and malformed keys.
    for auth in ["", "Basic abc", "Bearer ", "Bearer wrong"] {
        let headers: Vec<(&str, &str)> = if auth.is_empty() {
            vec![]
        } else {
            vec![("authorization", auth)]
        };
        let (status, text) = request(&addr, "GET", "/api/v1/rooms", &headers, b"").await;
        let v: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(
            (status, &v["error"]["code"]),
            (401, &json!("unauthorized")),
            "{auth:?}"
        );
    }
    alice.assert_usable().await;
    let metrics = cluster.replica(1).scrape().await;
    assert!(
        metrics.contains(r#"heliograph_coordinator_api_requests_total{operation="POST /api/v1/rooms/{room}/messages",status="400"}"#),
        "{metrics}"
    );
}
