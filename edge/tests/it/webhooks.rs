//! Webhooks with real processes: three replicas (one region), two edges, a receiver on a
//! real socket. Every event arrives, each exactly once after de-duplication by id, signed,
//! through refused attempts, an edge killed with SIGKILL and the leader killed. An `https://`
//! receiver with a private CA is reached when the coordinator is given that CA
//! (`--webhook-ca`), and never without it.

use std::collections::HashMap;
use std::time::Duration;

use heliograph_testkit::http::metric;
use heliograph_testkit::wait::until;
use heliograph_testkit::webhook::{Policy, Received, Receiver};
use hmac::{Hmac, Mac};
use serde_json::{Value, json};
use sha2::Sha256;

use crate::support::{Client, Cluster, Spec};

const SECRET: &str = "webhook-secret-0123456789";

/// Verifies a request the way docs/WEBHOOKS.md tells receivers to.
fn verify(r: &Received) -> bool {
    let (Some(ts), Some(sig)) = (
        r.headers.get("x-heliograph-timestamp"),
        r.headers.get("x-heliograph-signature"),
    ) else {
        return false;
    };
    let Some(hex_sig) = sig.strip_prefix("v1=") else {
        return false;
    };
    let Ok(expected) = hex::decode(hex_sig) else {
        return false;
    };
    let mut mac = Hmac::<Sha256>::new_from_slice(SECRET.as_bytes()).unwrap();
    mac.update(ts.as_bytes());
    mac.update(b".");
    mac.update(r.body.as_bytes());
    mac.verify_slice(&expected).is_ok()
}

/// The events received and accepted, de-duplicated by id: id → body.
fn delivered(receiver: &Receiver) -> HashMap<String, Value> {
    let mut out = HashMap::new();
    for r in receiver.received() {
        assert!(verify(&r), "a signature does not verify: {r:?}");
        let v: Value = serde_json::from_str(&r.body).unwrap();
        assert_eq!(
            r.headers.get("x-heliograph-event-id").map(String::as_str),
            v["id"].as_str()
        );
        if let Some(previous) = out.insert(v["id"].as_str().unwrap().to_owned(), v.clone()) {
            assert_eq!(previous, v, "the same id always carries the same event");
        }
    }
    out
}

fn count(events: &HashMap<String, Value>, event: &str, peer: &str) -> usize {
    events
        .values()
        .filter(|v| v["event"] == event && v["data"]["peer_id"] == peer)
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_event_arrives_once_through_refusals_a_killed_edge_and_a_killed_leader() {
    let receiver = Receiver::start(Policy::FailFirst(3)).await;
    let dir = tempfile::tempdir().unwrap();
    let secret_file = dir.path().join("hook.secret");
    std::fs::write(&secret_file, SECRET).unwrap();
    let hook = format!("hook={}", receiver.url());
    let secret = format!("hook={}", secret_file.display());
    let replica_args = [
        "--grace-ms",
        "500",
        "--webhook",
        &hook,
        "--webhook-secret-file",
        &secret,
        "--webhook-backoff-min-ms",
        "50",
        "--webhook-backoff-max-ms",
        "400",
        "--webhook-timeout-ms",
        "1000",
    ];
    let mut cluster = Cluster::start(Spec {
        replicas: &[(1, "us"), (2, "us"), (3, "us")],
        edges: &[("a", "us"), ("b", "us")],
        replica_args: &replica_args,
        edge_args: &["--lease-ms", "1000"],
        ..Spec::default()
    })
    .await;
    let mut alice = Client::connect(&cluster.edge("a").node.ws_url()).await;
    let mut bob = Client::connect(&cluster.edge("b").node.ws_url()).await;
    alice.join("w").await;
    bob.join("w").await;
    alice.expect("peer-joined").await;
    let (alice_id, bob_id) = (alice.peer_id.clone(), bob.peer_id.clone());

    // (a) The first three attempts were refused: both joins still arrive.
    until(Duration::from_secs(10), "both joins delivered", || {
        let events = delivered(&receiver);
        let done = count(&events, "peer_joined", &bob_id) == 1;
        async move { done.then_some(()) }
    })
    .await
    .unwrap();
    assert!(receiver.received().iter().filter(|r| !r.accepted).count() >= 3);

    // (c) The leader is killed; a join and a leave follow under the next one.
    let leader = cluster.leader();
    cluster.replica_mut(leader).kill();
    let mut carol = Client::connect(&cluster.edge("a").node.ws_url()).await;
    // During the election a join is answered `unavailable` (and left undone): retry it.
    let mut joined = false;
    for _ in 0..10 {
        carol.send(json!({"type": "join", "room": "w"})).await;
        let answer = carol.recv().await;
        if answer["type"] == "joined" {
            joined = true;
            break;
        }
        assert_eq!(answer["code"], "unavailable", "{answer}");
    }
    assert!(joined, "carol could not join after the election");
    let carol_id = carol.peer_id.clone();
    carol.send(json!({"type": "leave", "room": "w"})).await;
    for _ in 0..5 {
        if carol.recv().await["type"] == "left" {
            break;
        }
    }

    // (b) Bob's edge is killed: his `peer_left` comes when the registry expires him.
    cluster.edge_mut("b").node.kill();
    alice.send(json!({"type": "leave", "room": "w"})).await;

    let events = until(Duration::from_secs(20), "every event delivered", || {
        let events = delivered(&receiver);
        let done = count(&events, "peer_left", &bob_id) == 1
            && count(&events, "peer_left", &alice_id) == 1
            && count(&events, "peer_left", &carol_id) == 1
            && events.values().any(|v| v["event"] == "room_finished");
        async move { done.then_some(events) }
    })
    .await
    .unwrap();
    for peer in [&alice_id, &bob_id, &carol_id] {
        assert_eq!(count(&events, "peer_joined", peer), 1, "{events:#?}");
        assert_eq!(count(&events, "peer_left", peer), 1, "{events:#?}");
    }
    let reason = |peer: &str| {
        events
            .values()
            .find(|v| v["event"] == "peer_left" && v["data"]["peer_id"] == peer)
            .map(|v| v["data"]["reason"].clone())
            .unwrap()
    };
    assert_eq!(reason(&alice_id), "left");
    assert_eq!(reason(&carol_id), "left");
    assert_eq!(reason(&bob_id), "expired");
    let rooms: Vec<&Value> = events
        .values()
        .filter(|v| v["event"] == "room_started" || v["event"] == "room_finished")
        .collect();
    assert_eq!(rooms.len(), 2, "{rooms:#?}");
    for v in events.values() {
        assert!(
            v["timestamp_ms"].as_u64().unwrap() > 1_600_000_000_000,
            "{v}"
        );
    }
}

/// One replica whose only webhook endpoint is `receiver`, with `extra` flags, and one edge;
/// a peer joins room `t` there. The cluster and that peer's id.
async fn one_join(receiver: &Receiver, dir: &std::path::Path, extra: &[&str]) -> (Cluster, String) {
    let secret_file = dir.join("hook.secret");
    std::fs::write(&secret_file, SECRET).unwrap();
    let hook = format!("hook={}", receiver.url());
    let secret = format!("hook={}", secret_file.display());
    let mut replica_args = vec![
        "--webhook",
        &hook,
        "--webhook-secret-file",
        &secret,
        "--webhook-backoff-min-ms",
        "20",
        "--webhook-backoff-max-ms",
        "50",
        "--webhook-max-attempts",
        "3",
        "--webhook-timeout-ms",
        "1000",
    ];
    replica_args.extend_from_slice(extra);
    let cluster = Cluster::start(Spec {
        replicas: &[(1, "us")],
        edges: &[("a", "us")],
        replica_args: &replica_args,
        ..Spec::default()
    })
    .await;
    let mut client = Client::connect(&cluster.edge("a").node.ws_url()).await;
    client.join("t").await;
    let peer = client.peer_id.clone();
    (cluster, peer)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_https_receiver_is_reached_with_its_ca_and_never_without_it() {
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let trusted = Receiver::start_tls(Policy::Accept, dir_a.path()).await;
    let untrusted = Receiver::start_tls(Policy::Accept, dir_b.path()).await;
    assert!(trusted.url().starts_with("https://127.0.0.1:"));
    let ca = trusted.ca.clone().unwrap().display().to_string();
    let (with_ca, alice) = one_join(&trusted, dir_a.path(), &["--webhook-ca", &ca]).await;
    let (without_ca, _) = one_join(&untrusted, dir_b.path(), &[]).await;

    // With the CA: `peer_joined` arrives over TLS, signed (`delivered` verifies each request).
    until(
        Duration::from_secs(10),
        "peer_joined delivered over https",
        || {
            let done = count(&delivered(&trusted), "peer_joined", &alice) == 1;
            async move { done.then_some(()) }
        },
    )
    .await
    .unwrap();
    assert_eq!(trusted.handshakes_failed(), 0);
    let replica = with_ca.replica(1);
    until(Duration::from_secs(5), "the delivery counted", || async {
        let text = replica.scrape().await;
        (metric(&text, "heliograph_coordinator_webhooks_delivered_total") >= Some(1.0))
            .then_some(())
    })
    .await
    .unwrap();

    // Without it: the handshake fails (the CA is not the platform's), every attempt is counted
    // as retried and then failed, and nothing reaches the receiver.
    let replica = without_ca.replica(1);
    let text = until(Duration::from_secs(10), "the events given up", || async {
        let text = replica.scrape().await;
        // room_started and peer_joined, three attempts each.
        (metric(&text, "heliograph_coordinator_webhooks_failed_total") >= Some(2.0)).then_some(text)
    })
    .await
    .unwrap();
    assert!(
        metric(&text, "heliograph_coordinator_webhooks_retried_total") >= Some(4.0),
        "{text}"
    );
    assert_eq!(
        metric(&text, "heliograph_coordinator_webhooks_delivered_total").unwrap_or(0.0),
        0.0
    );
    assert!(
        untrusted.received().is_empty(),
        "{:?}",
        untrusted.received()
    );
    assert!(
        untrusted.handshakes_failed() >= 6,
        "{}",
        untrusted.handshakes_failed()
    );
}
