//! Boundaries of a public endpoint: join tokens, origins, limits, slow consumers, TURN.

use std::process::Command;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::support::{self, Client, Node, http_get, metric};
use base64::Engine as _;
use futures_util::SinkExt;
use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

const SECRET: &str = "an-hs256-secret-of-at-least-32-bytes!";

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn token(claims: Value, key: &str) -> String {
    encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(key.as_bytes()),
    )
    .unwrap()
}

async fn join_with(c: &mut Client, room: &str, token: Option<&str>) -> Value {
    let mut req = json!({"type": "join", "room": room, "meta": {"identity": "spoofed", "n": 1}});
    if let Some(t) = token {
        req["token"] = json!(t);
    }
    c.send(req).await;
    c.recv().await
}

#[tokio::test]
async fn join_tokens_admit_only_what_they_name() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(dir.path(), &["--join-token-secret", SECRET]);
    let mut a = Client::connect(&node.ws_url()).await;

    let missing = join_with(&mut a, "a", None).await;
    assert_eq!(missing["code"], "token-required");

    let wrong_room = token(
        json!({"sub": "alice", "exp": now() + 60, "room": "b"}),
        SECRET,
    );
    assert_eq!(
        join_with(&mut a, "a", Some(&wrong_room)).await["code"],
        "token-wrong-room"
    );

    let expired = token(
        json!({"sub": "alice", "exp": now() - 3600, "room": "a"}),
        SECRET,
    );
    assert_eq!(
        join_with(&mut a, "a", Some(&expired)).await["code"],
        "token-expired"
    );

    let forged = token(
        json!({"sub": "alice", "exp": now() + 60, "room": "a"}),
        "some-other-secret-that-is-32-bytes!!",
    );
    assert_eq!(
        join_with(&mut a, "a", Some(&forged)).await["code"],
        "token-invalid-signature"
    );

    let b64 = |v: Value| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string());
    let none = format!(
        "{}.{}.",
        b64(json!({"alg": "none", "typ": "JWT"})),
        b64(json!({"sub": "alice", "exp": now() + 60, "room": "a"}))
    );
    assert_eq!(
        join_with(&mut a, "a", Some(&none)).await["code"],
        "token-algorithm-refused"
    );
    assert_eq!(
        join_with(&mut a, "a", Some("not.a.jwt")).await["code"],
        "token-malformed"
    );

    // A valid token admits, and its subject is the identity others see.
    let valid = token(
        json!({"sub": "alice", "exp": now() + 60, "room": "a"}),
        SECRET,
    );
    let joined = join_with(&mut a, "a", Some(&valid)).await;
    assert_eq!(joined["type"], "joined", "{joined}");
    let mut b = Client::connect(&node.ws_url()).await;
    let tb = token(
        json!({"sub": "bob", "exp": now() + 60, "room_prefix": "a", "publish": false}),
        SECRET,
    );
    let joined = join_with(&mut b, "a", Some(&tb)).await;
    assert_eq!(
        joined["peers"][0]["meta"],
        json!({"identity": "alice", "n": 1})
    );
    // Bob may receive but not send.
    a.expect("peer-joined").await;
    b.send(json!({"type": "signal", "room": "a", "to": a.peer_id, "kind": "offer", "data": {}}))
        .await;
    assert_eq!(b.expect("error").await["code"], "forbidden");
    a.send(json!({"type": "signal", "room": "a", "to": b.peer_id, "kind": "offer", "data": {}}))
        .await;
    assert_eq!(b.expect("signal").await["from"], a.peer_id.as_str());

    let (_, body) = node.get("/metrics").await;
    for code in [
        "token-required",
        "token-wrong-room",
        "token-expired",
        "token-invalid-signature",
        "token-algorithm-refused",
        "forbidden",
    ] {
        assert_eq!(
            metric(
                &body,
                &format!(r#"heliograph_edge_errors_total{{code="{code}"}}"#)
            ),
            Some(1.0),
            "{code}"
        );
    }
}

#[tokio::test]
async fn origins_off_the_list_are_refused_at_the_upgrade() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(dir.path(), &["--allowed-origin", "https://app.example.com"]);
    let attempt = |origin: Option<&'static str>| {
        let url = node.ws_url();
        async move {
            let mut req =
                tokio_tungstenite::tungstenite::ClientRequestBuilder::new(url.parse().unwrap());
            if let Some(o) = origin {
                req = req.with_header("Origin", o);
            }
            match tokio_tungstenite::connect_async(req).await {
                Ok(_) => 101,
                Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => resp.status().as_u16(),
                Err(e) => panic!("{e}"),
            }
        }
    };
    assert_eq!(attempt(Some("https://app.example.com")).await, 101);
    assert_eq!(attempt(Some("https://evil.example.net")).await, 403);
    assert_eq!(
        attempt(None).await,
        101,
        "non-browser clients send no Origin"
    );
    let (_, body) = node.get("/metrics").await;
    assert_eq!(
        metric(
            &body,
            r#"heliograph_edge_connections_refused_total{reason="origin"}"#
        ),
        Some(1.0)
    );
}

#[tokio::test]
async fn each_limit_answers_as_documented_and_others_are_unaffected() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(
        dir.path(),
        &[
            "--max-rooms-per-connection",
            "2",
            "--max-room-size",
            "2",
            "--max-connections-per-ip",
            "4",
            "--rate-limit-per-second",
            "20",
            "--rate-limit-burst",
            "20",
        ],
    );
    let mut calm = Client::connect(&node.ws_url()).await;
    let mut other = Client::connect(&node.ws_url()).await;
    calm.join("calm").await;
    other.join("calm").await;
    calm.expect("peer-joined").await;

    // Rooms per connection.
    let mut c = Client::connect(&node.ws_url()).await;
    c.join("r1").await;
    c.join("r2").await;
    c.send(json!({"type": "join", "room": "r3"})).await;
    assert_eq!(c.expect("error").await["code"], "too-many-rooms");
    // Peers per room: "calm" already holds 2.
    c.send(json!({"type": "join", "room": "calm"})).await;
    assert_eq!(c.expect("error").await["code"], "too-many-rooms");
    c.send(json!({"type": "leave", "room": "r2"})).await;
    c.expect("left").await;
    c.send(json!({"type": "join", "room": "calm"})).await;
    assert_eq!(c.expect("error").await["code"], "room-full");

    // Messages per second: a burst of 60 pings gets 20 pongs and one rate-limited error.
    let mut flood = Client::connect(&node.ws_url()).await;
    for _ in 0..60 {
        flood
            .ws
            .feed(Message::text(json!({"type": "ping"}).to_string()))
            .await
            .unwrap();
    }
    flood.ws.flush().await.unwrap();
    let mut pongs = 0;
    let mut limited = 0;
    while pongs + limited < 21 {
        match flood.recv().await["type"].as_str().unwrap() {
            "pong" => pongs += 1,
            "error" => limited += 1,
            t => panic!("{t}"),
        }
    }
    assert!(
        (20..=21).contains(&pongs) && limited == 1,
        "pongs {pongs}, limited {limited}"
    );

    // Connections per source address: 4 from 127.0.0.1 are open (calm, other, c, flood).
    let url = node.ws_url();
    let refused = tokio_tungstenite::connect_async(url.as_str())
        .await
        .unwrap_err();
    assert!(matches!(refused, tokio_tungstenite::tungstenite::Error::Http(r) if r.status() == 429));
    drop(flood);
    support::wait_for("the flood connection's slot to be released", || async {
        let (_, body) = node.get("/metrics").await;
        (metric(&body, r#"heliograph_edge_connections_open{ingress="ws"}"#) == Some(3.0))
            .then_some(())
    })
    .await;

    // The well-behaved pair never noticed.
    calm.send(
        json!({"type": "signal", "room": "calm", "to": other.peer_id, "kind": "offer", "data": 1}),
    )
    .await;
    assert_eq!(other.expect("signal").await["data"], 1);
    let (_, body) = node.get("/metrics").await;
    assert_eq!(
        metric(
            &body,
            r#"heliograph_edge_connections_refused_total{reason="address_limit"}"#
        ),
        Some(1.0)
    );
    assert_eq!(
        metric(
            &body,
            r#"heliograph_edge_errors_total{code="too-many-rooms"}"#
        ),
        Some(2.0)
    );
    assert_eq!(
        metric(&body, r#"heliograph_edge_errors_total{code="room-full"}"#),
        Some(1.0)
    );
}

#[tokio::test]
async fn edge_wide_connection_limit_answers_503() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(dir.path(), &["--max-connections", "2"]);
    let _a = Client::connect(&node.ws_url()).await;
    let _b = Client::connect(&node.ws_url()).await;
    let refused = tokio_tungstenite::connect_async(node.ws_url())
        .await
        .unwrap_err();
    assert!(matches!(refused, tokio_tungstenite::tungstenite::Error::Http(r) if r.status() == 503));
    assert_eq!(http_get(&node.addr, "/healthz").await.0, 200);
}

fn rss_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kb: u64 = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .unwrap()
        .parse()
        .unwrap();
    kb * 1024
}

#[tokio::test]
async fn a_client_that_does_not_read_is_cut_off_and_memory_stays_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(
        dir.path(),
        &[
            "--rate-limit-per-second",
            "1000000",
            "--rate-limit-burst",
            "1000000",
            "--outbox-messages",
            "256",
            "--write-timeout-ms",
            "300",
            "--detach-grace-ms",
            "300",
        ],
    );
    let mut reader = Client::connect(&node.ws_url()).await;
    let mut sink = Client::connect(&node.ws_url()).await;
    reader.join("r").await;
    sink.join("r").await;
    reader.expect("peer-joined").await;
    let before = rss_bytes(node.pid());

    // The sink sends 100k signals addressed to itself and never reads: its outbox fills and
    // it is cut off. Its peer in the room reads normally and only sees it leave.
    let sink_id = sink.peer_id.clone();
    let sender = tokio::spawn(async move {
        let payload = "x".repeat(300);
        for i in 0..100_000u32 {
            let frame = json!({"type": "signal", "room": "r", "to": sink_id, "kind": "custom", "data": {"i": i, "p": payload}});
            if sink
                .ws
                .feed(Message::text(frame.to_string()))
                .await
                .is_err()
            {
                return i;
            }
            if i % 64 == 0 && sink.ws.flush().await.is_err() {
                return i;
            }
        }
        let _ = sink.ws.flush().await;
        100_000
    });
    // Cut off, it may still resume (and read what it missed); it does not.
    let left = reader.expect("peer-left").await;
    assert_eq!(left["reason"], "expired");
    let sent = sender.await.unwrap();
    assert!(
        sent > 256,
        "the sink got {sent} signals out before it was cut off"
    );
    let after = rss_bytes(node.pid());
    assert!(
        after.saturating_sub(before) < 64 * 1024 * 1024,
        "edge RSS grew from {before} to {after} bytes"
    );
    let (_, body) = node.get("/metrics").await;
    assert_eq!(
        metric(
            &body,
            r#"heliograph_edge_connections_closed_total{ingress="ws",reason="slow_consumer"}"#
        ),
        Some(1.0)
    );
    reader.assert_usable().await;
}

#[tokio::test]
async fn turn_credentials_validate_with_an_independent_hmac() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(
        dir.path(),
        &[
            "--turn-secret",
            "coturn-static-auth-secret",
            "--turn-url",
            "turn:turn.eu.example.org:3478?transport=udp",
            "--turn-url",
            "turns:turn.eu.example.org:5349",
            "--turn-ttl-secs",
            "600",
            "--ice-server",
            "stun:stun.example.org:3478",
        ],
    );
    let c = Client::connect(&node.ws_url()).await;
    let servers = c.welcome["ice_servers"].as_array().unwrap();
    assert_eq!(servers[0]["urls"], json!(["stun:stun.example.org:3478"]));
    let turn = &servers[1];
    assert_eq!(
        turn["urls"],
        json!([
            "turn:turn.eu.example.org:3478?transport=udp",
            "turns:turn.eu.example.org:5349"
        ])
    );
    let username = turn["username"].as_str().unwrap();
    let (expiry, peer) = username.split_once(':').unwrap();
    assert_eq!(peer, c.peer_id);
    let expiry: u64 = expiry.parse().unwrap();
    assert!((now() + 590..=now() + 610).contains(&expiry));
    // Python's hmac module is an implementation independent of the edge's.
    let out = Command::new("python3")
        .args([
            "-c",
            "import base64,hashlib,hmac,sys; print(base64.b64encode(hmac.new(sys.argv[1].encode(), sys.argv[2].encode(), hashlib.sha1).digest()).decode())",
            "coturn-static-auth-secret",
            username,
        ])
        .output()
        .unwrap();
    assert!(out.status.success());
    assert_eq!(
        turn["credential"].as_str().unwrap(),
        String::from_utf8(out.stdout).unwrap().trim()
    );
}

#[tokio::test]
async fn oversized_frames_close_1009_for_the_sender_only() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(
        dir.path(),
        &["--max-frame-bytes", "1024", "--max-meta-bytes", "512"],
    );
    let mut ok = Client::connect(&node.ws_url()).await;
    let mut big = Client::connect(&node.ws_url()).await;
    big.send(json!({"type": "ping", "pad": "x".repeat(2000)}))
        .await;
    assert_eq!(big.expect_close().await, CloseCode::Size);
    ok.assert_usable().await;
}
