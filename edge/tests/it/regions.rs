//! Regions, with real processes: Redis per region, coordinator replicas in several regions,
//! edges attached to their region's replica. Where each signal goes is asserted from the
//! edges' and replicas' metrics.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use crate::support::Client;
use crate::support::{
    self, Cluster, REGION_REPLICA_ARGS, SessionStore, Spec, replica_counters, us_region,
};
use serde_json::{Value, json};

const ROUTED_REGION: &str = r#"heliograph_edge_routing_decisions_total{path="region"}"#;
const ROUTED_CROSS: &str = r#"heliograph_edge_routing_decisions_total{path="cross_region"}"#;
const ROUTED_FALLBACK: &str =
    r#"heliograph_edge_routing_decisions_total{path="coordinator_fallback"}"#;

/// Leader in `ap` (replica 1, no signal traffic of its own); gateways in `us` and `eu`.
async fn two_regions_and_a_leader_elsewhere() -> Cluster {
    Cluster::start(Spec {
        replicas: &[(1, "ap"), (2, "us"), (3, "eu")],
        edges: &[
            ("us-a", "us"),
            ("us-b", "us"),
            ("eu-a", "eu"),
            ("eu-b", "eu"),
            ("ap-a", "ap"),
        ],
        redis: &["us", "eu"],
        replica_args: REGION_REPLICA_ARGS,
        ..Spec::default()
    })
    .await
}

/// Connects one client per named edge and puts them all in `room`; returns them once each
/// has seen every other join.
async fn room_on(cluster: &Cluster, edges: &[&str], room: &str) -> Vec<Client> {
    let mut clients = Vec::new();
    for e in edges {
        let mut c = Client::connect(&cluster.edge(e).node.ws_url()).await;
        c.join(room).await;
        clients.push(c);
    }
    let ids: Vec<String> = clients.iter().map(|c| c.peer_id.clone()).collect();
    // Joiner i saw the members before it in `joined`; it must see the later ones join.
    for (i, c) in clients.iter_mut().enumerate() {
        let mut later: HashSet<&str> = ids[i + 1..].iter().map(String::as_str).collect();
        while !later.is_empty() {
            let v = c.expect("peer-joined").await;
            assert!(later.remove(v["peer"]["id"].as_str().unwrap()), "{v}");
        }
    }
    clients
}

fn signal(room: &str, to: &str, n: usize) -> Value {
    json!({"type": "signal", "room": room, "to": to, "kind": "custom", "data": {"n": n}})
}

/// Every ordered pair among `clients` signals once; each signal must arrive exactly once,
/// stamped with its sender.
async fn all_pairs_signal(clients: &mut [Client], room: &str) {
    let ids: Vec<String> = clients.iter().map(|c| c.peer_id.clone()).collect();
    for (i, c) in clients.iter_mut().enumerate() {
        for (j, to) in ids.iter().enumerate() {
            if i != j {
                c.send(signal(room, to, i)).await;
            }
        }
    }
    for (j, c) in clients.iter_mut().enumerate() {
        let mut from: Vec<String> = Vec::new();
        for _ in 0..ids.len() - 1 {
            let s = c.expect("signal").await;
            let sender = s["from"].as_str().unwrap().to_owned();
            let i = ids.iter().position(|id| *id == sender).unwrap();
            assert_eq!(s["data"]["n"], i, "`from` must be the sender: {s}");
            from.push(sender);
        }
        from.sort();
        let mut expected: Vec<String> = ids
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != j)
            .map(|(_, id)| id.clone())
            .collect();
        expected.sort();
        assert_eq!(from, expected, "client {j} got each sender exactly once");
        c.assert_pong("done").await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_pair_of_four_edges_in_two_regions_signals_exactly_once() {
    let cluster = two_regions_and_a_leader_elsewhere().await;
    let mut clients = room_on(&cluster, &["us-a", "us-b", "eu-a", "eu-b"], "call").await;
    all_pairs_signal(&mut clients, "call").await;
    // Per sender: 1 same-region, 2 cross-region targets.
    for name in ["us-a", "us-b", "eu-a", "eu-b"] {
        let node = &cluster.edge(name).node;
        assert_eq!(node.metric(ROUTED_REGION).await, 1.0, "{name}");
        assert_eq!(node.metric(ROUTED_CROSS).await, 2.0, "{name}");
        assert_eq!(node.metric(ROUTED_FALLBACK).await, 0.0, "{name}");
    }
    let received = r#"heliograph_edge_signal_relay_seconds_count{path="cross_region"}"#;
    assert_eq!(cluster.edge("eu-b").node.metric(received).await, 2.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signals_within_a_region_never_touch_a_cross_region_stream() {
    let cluster = two_regions_and_a_leader_elsewhere().await;
    let mut us = room_on(&cluster, &["us-a", "us-b"], "us-room").await;
    let mut eu = room_on(&cluster, &["eu-a", "eu-b"], "eu-room").await;
    let mut before = Vec::new();
    for r in &cluster.replicas {
        before.push(replica_counters(r).await);
    }
    for round in 0..5 {
        all_pairs_signal(&mut us, "us-room").await;
        all_pairs_signal(&mut eu, "eu-room").await;
        let _ = round;
    }
    for (r, b) in cluster.replicas.iter().zip(&before) {
        let after = replica_counters(r).await;
        assert_eq!(
            &after, b,
            "replica {} ({}) carried same-region signals",
            r.id, r.region
        );
        assert_eq!(after["in"] + after["out"] + after["cross_region"], 0.0);
    }
    let received = r#"heliograph_edge_signal_relay_seconds_count{path="region"}"#;
    for name in ["us-a", "us-b", "eu-a", "eu-b"] {
        let node = &cluster.edge(name).node;
        assert_eq!(node.metric(ROUTED_REGION).await, 5.0, "{name}");
        assert_eq!(node.metric(ROUTED_CROSS).await, 0.0, "{name}");
        assert_eq!(node.metric(received).await, 5.0, "{name}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cross_region_signals_bypass_a_leader_that_is_not_a_gateway() {
    let cluster = two_regions_and_a_leader_elsewhere().await;
    let status = cluster.admin.status(&cluster.replica(2).api).unwrap();
    assert_eq!(status["leader"], 1, "the leader is the ap replica");
    let mut clients = room_on(&cluster, &["us-a", "eu-a"], "far").await;
    for _ in 0..10 {
        all_pairs_signal(&mut clients, "far").await;
    }
    let leader = replica_counters(cluster.replica(1)).await;
    assert!(
        leader.values().all(|v| *v == 0.0),
        "the leader carried cross-region signals: {leader:?}"
    );
    // Each gateway sent its region's 10 signals out once and took the other's 10 in once.
    for id in [2, 3] {
        let c = replica_counters(cluster.replica(id)).await;
        assert_eq!(
            (
                c["cross_region"],
                c["out"],
                c["in"],
                c["local"],
                c["forwarded"]
            ),
            (10.0, 10.0, 10.0, 10.0, 0.0),
            "replica {id}: {c:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn joins_and_leaves_in_any_of_three_regions_reach_every_member() {
    let cluster = two_regions_and_a_leader_elsewhere().await;
    let mut c = room_on(&cluster, &["us-a", "eu-a", "ap-a", "us-b"], "world").await;
    let ids: Vec<String> = c.iter().map(|c| c.peer_id.clone()).collect();
    // Each member in turn leaves and comes back; everyone else hears both, in order.
    for i in 0..c.len() {
        c[i].send(json!({"type": "leave", "room": "world"})).await;
        c[i].expect("left").await;
        for (j, other) in c.iter_mut().enumerate().filter(|(j, _)| *j != i) {
            let v = other.expect("peer-left").await;
            assert_eq!(v["peer_id"], ids[i].as_str(), "member {j}");
        }
        let joined = c[i].join("world").await;
        assert_eq!(joined["peers"].as_array().unwrap().len(), c.len() - 1);
        for (j, other) in c.iter_mut().enumerate().filter(|(j, _)| *j != i) {
            let v = other.expect("peer-joined").await;
            assert_eq!(v["peer"]["id"], ids[i].as_str(), "member {j}");
        }
    }
    for (i, client) in c.iter_mut().enumerate() {
        client.assert_pong(&format!("end-{i}")).await;
    }
}

/// Reads signals `0..count` from `client`; returns how many times each arrived.
async fn collect(mut client: Client, count: usize) -> (Client, HashMap<usize, usize>) {
    let mut seen: HashMap<usize, usize> = HashMap::new();
    while seen.len() < count {
        let s = client.expect("signal").await;
        *seen
            .entry(s["data"]["n"].as_u64().unwrap() as usize)
            .or_default() += 1;
    }
    client.assert_pong("collected").await;
    (client, seen)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "server bug: a signal Redis accepted for a subscriber when Redis is killed is lost \
            (no acknowledgement between edges on the bus); about one run in four; see \
            docs/ARCHITECTURE.md, 'Redis is a fast path, not a store'"]
async fn a_redis_outage_loses_no_signal_and_traffic_returns_to_redis() {
    let mut cluster = us_region().await;
    let mut clients = room_on(&cluster, &["us-a", "us-b"], "steady").await;
    let receiver = clients.pop().unwrap();
    let mut sender = clients.pop().unwrap();
    let to = receiver.peer_id.clone();

    const TOTAL: usize = 150;
    let collecting = tokio::spawn(collect(receiver, TOTAL));
    let mut killed = false;
    for n in 0..TOTAL {
        sender.send(signal("steady", &to, n)).await;
        if n == TOTAL / 3 {
            cluster.redis.get_mut("us").unwrap().kill();
            killed = true;
        }
        // Paced traffic, so that the outage falls in the middle of it.
        tokio::time::sleep(Duration::from_millis(4)).await;
    }
    assert!(killed);
    let (receiver, seen) = collecting.await.unwrap();
    let twice: Vec<_> = seen.iter().filter(|(_, k)| **k != 1).collect();
    assert!(
        twice.is_empty(),
        "signals not delivered exactly once: {twice:?}"
    );
    assert_eq!(seen.len(), TOTAL);
    let a = &cluster.edge("us-a").node;
    let region_before = a.metric(ROUTED_REGION).await;
    assert!(
        region_before >= 1.0,
        "Redis carried traffic before the outage"
    );
    assert!(
        a.metric(ROUTED_FALLBACK).await >= 1.0,
        "the coordinator carried the rest"
    );
    assert_eq!(a.metric("heliograph_edge_redis_up").await, 0.0);
    assert!(
        a.metric(r#"heliograph_edge_redis_errors_total{op="publish"}"#)
            .await
            + a.metric(r#"heliograph_edge_redis_errors_total{op="ping"}"#)
                .await
            >= 1.0
    );

    // Redis comes back on the same port: both edges switch back to it.
    cluster.redis.get_mut("us").unwrap().restart();
    cluster.wait_redis_up().await;
    // The restarted Redis is empty: the edges store their sessions in it again.
    let deadline = Instant::now() + support::DEADLINE;
    while !cluster.redis["us"].has_session(&to).await {
        assert!(Instant::now() < deadline, "sessions not stored again");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let a = &cluster.edge("us-a").node;
    let collecting = tokio::spawn(collect(receiver, 20));
    for n in 0..20 {
        sender.send(signal("steady", &to, n)).await;
    }
    // The receiver stays connected until the end: its departure would reach the sender.
    let (_receiver, seen) = collecting.await.unwrap();
    assert!(
        seen.values().all(|k| *k == 1) && seen.len() == 20,
        "{seen:?}"
    );
    a.wait_metric(ROUTED_REGION, |v| v >= region_before + 20.0)
        .await;
    sender.assert_pong("end").await;
}
