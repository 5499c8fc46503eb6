//! Region-homed rooms with real processes: one coordinator group per region, each told the
//! others' gateways, edges in every region. A room lives in the group of the region where
//! it was created; what crosses regions is asserted from the replicas' metrics.

use std::collections::HashSet;

use heliograph_testkit::http::metric;
use heliograph_testkit::replica::Replica;
use heliograph_testkit::wait::{DEADLINE, until};
use serde_json::{Value, json};

use crate::support::resumable::Session;
use crate::support::{Client, Cluster, REGION_REPLICA_ARGS, Spec, wait_homes_known};

const RAFT_CROSS: &str = r#"heliograph_coordinator_raft_messages_total{scope="cross_region"}"#;
const RAFT_LOCAL: &str = r#"heliograph_coordinator_raft_messages_total{scope="region"}"#;

fn region_requests(text: &str, op: &str) -> f64 {
    metric(
        text,
        &format!(r#"heliograph_coordinator_region_requests_total{{op="{op}",outcome="sent"}}"#),
    )
    .unwrap_or(0.0)
}

/// Requests of every kind this replica passed to another region's group.
fn all_region_requests(text: &str) -> f64 {
    [
        "join",
        "leave",
        "get_room",
        "remove",
        "close",
        "disconnect",
        "detach",
        "rebind",
    ]
    .iter()
    .map(|op| region_requests(text, op))
    .sum()
}

/// Regions us, eu and ap, region-homed, with a replica and an edge (`<region>-a`) each.
async fn three_regions() -> Cluster {
    Cluster::start(Spec {
        replicas: &[(1, "us"), (2, "eu"), (3, "ap")],
        edges: &[("us-a", "us"), ("eu-a", "eu"), ("ap-a", "ap")],
        replica_args: REGION_REPLICA_ARGS,
        homed: true,
        ..Spec::default()
    })
    .await
}

/// Joins one client per edge to `room`, in order, after the members in `clients`; returns
/// them all once each has seen every other member exactly once (in `joined` or as
/// `peer-joined`).
async fn room_on(
    cluster: &Cluster,
    mut clients: Vec<Client>,
    edges: &[&str],
    room: &str,
) -> Vec<Client> {
    let already = clients.len();
    for e in edges {
        let mut c = Client::connect(&cluster.edge(e).node.ws_url()).await;
        let joined = c.join(room).await;
        let before: HashSet<String> = clients.iter().map(|c| c.peer_id.clone()).collect();
        let listed: HashSet<String> = joined["peers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["id"].as_str().unwrap().to_owned())
            .collect();
        assert_eq!(
            listed, before,
            "`joined` lists the members before it: {joined}"
        );
        clients.push(c);
    }
    let ids: Vec<String> = clients.iter().map(|c| c.peer_id.clone()).collect();
    for (i, c) in clients.iter_mut().enumerate() {
        let mut later: HashSet<&str> = ids[(i + 1).max(already)..]
            .iter()
            .map(String::as_str)
            .collect();
        while !later.is_empty() {
            let v = c.expect("peer-joined").await;
            assert!(later.remove(v["peer"]["id"].as_str().unwrap()), "{v}");
        }
    }
    clients
}

/// Every ordered pair signals once; each signal arrives exactly once, from its sender.
async fn all_pairs_signal(clients: &mut [Client], room: &str) {
    let ids: Vec<String> = clients.iter().map(|c| c.peer_id.clone()).collect();
    for (i, c) in clients.iter_mut().enumerate() {
        for (j, to) in ids.iter().enumerate() {
            if i != j {
                c.send(json!({"type": "signal", "room": room, "to": to, "kind": "custom", "data": {"n": i}}))
                    .await;
            }
        }
    }
    for (j, c) in clients.iter_mut().enumerate() {
        let mut from = HashSet::new();
        for _ in 0..ids.len() - 1 {
            let s: Value = c.expect("signal").await;
            let sender = s["from"].as_str().unwrap().to_owned();
            let i = ids.iter().position(|id| *id == sender).unwrap();
            assert_eq!(s["data"]["n"], i, "`from` is the sender: {s}");
            assert!(from.insert(sender), "a signal to {j} arrived twice");
        }
        // Nothing else was queued before the pong (no duplicate).
        c.assert_pong("after-signals").await;
    }
}

async fn leave(c: &mut Client, room: &str) {
    c.send(json!({"type": "leave", "room": room})).await;
    c.expect("left").await;
}

async fn scrape_all<'a>(replicas: impl Iterator<Item = &'a Replica>) -> Vec<String> {
    let mut out = Vec::new();
    for r in replicas {
        out.push(r.scrape().await);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_room_created_in_ap_is_homed_there_and_its_joins_never_leave_ap() {
    let cluster = Cluster::start(Spec {
        replicas: &[(1, "us"), (2, "eu"), (3, "ap"), (4, "ap")],
        edges: &[("us-a", "us"), ("eu-a", "eu"), ("ap-a", "ap")],
        replica_args: REGION_REPLICA_ARGS,
        homed: true,
        ..Spec::default()
    })
    .await;
    let ap = || cluster.replicas.iter().filter(|r| r.region == "ap");
    let before = scrape_all(ap()).await;

    let mut a = Client::connect(&cluster.edge("ap-a").node.ws_url()).await;
    a.join("made-in-ap").await;
    let mut b = Client::connect(&cluster.edge("ap-a").node.ws_url()).await;
    let joined = b.join("made-in-ap").await;
    assert_eq!(joined["peers"][0]["id"], a.peer_id.as_str(), "{joined}");
    a.expect("peer-joined").await;
    leave(&mut b, "made-in-ap").await;
    a.expect("peer-left").await;

    let after = scrape_all(ap()).await;
    for (b, a) in before.iter().zip(&after) {
        assert_eq!(metric(a, RAFT_CROSS), Some(0.0), "no Raft message left ap");
        assert_eq!(
            all_region_requests(a),
            all_region_requests(b),
            "no request left ap"
        );
    }
    let local: f64 = after
        .iter()
        .map(|t| metric(t, RAFT_LOCAL).unwrap_or(0.0))
        .sum();
    assert!(local > 0.0, "ap's group replicates inside ap");

    // The other regions learn the home afterwards, and send their joins there.
    wait_homes_known(&cluster, "ap", 1).await;
    let mut c = Client::connect(&cluster.edge("eu-a").node.ws_url()).await;
    let joined = c.join("made-in-ap").await;
    assert_eq!(joined["peers"][0]["id"], a.peer_id.as_str(), "{joined}");
    let eu = cluster.replicas.iter().find(|r| r.region == "eu").unwrap();
    assert_eq!(region_requests(&eu.scrape().await, "join"), 1.0);
    a.expect("peer-joined").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_in_three_regions_of_a_room_homed_in_us_see_each_other_and_signal_exactly_once() {
    let cluster = three_regions().await;
    let mut first = Client::connect(&cluster.edge("us-a").node.ws_url()).await;
    first.join("made-in-us").await;
    wait_homes_known(&cluster, "us", 1).await;
    let mut clients = room_on(
        &cluster,
        vec![first],
        &["eu-a", "ap-a", "us-a"],
        "made-in-us",
    )
    .await;
    all_pairs_signal(&mut clients, "made-in-us").await;

    // The room lives in us: the other regions passed their joins there.
    for region in ["eu", "ap"] {
        let r = cluster
            .replicas
            .iter()
            .find(|r| r.region == region)
            .unwrap();
        assert_eq!(region_requests(&r.scrape().await, "join"), 1.0, "{region}");
    }

    // A leave from ap and a disconnect in eu reach everyone else.
    // clients: us, eu, ap, us.
    let ap_id = clients[2].peer_id.clone();
    leave(&mut clients[2], "made-in-us").await;
    for i in [0, 1, 3] {
        let v = clients[i].expect("peer-left").await;
        assert_eq!(v["peer_id"], ap_id.as_str(), "{v}");
    }
    let eu = clients.remove(1);
    let eu_id = eu.peer_id.clone();
    drop(eu);
    for i in [0, 2] {
        let v = clients[i].expect("peer-left").await;
        assert_eq!(v["peer_id"], eu_id.as_str(), "{v}");
    }
}

/// One join of a new room on `url`: whether it was answered `joined`, and when it was sent.
async fn one_join(url: &str, room: &str) -> (tokio::time::Instant, Result<(), String>) {
    let sent = tokio::time::Instant::now();
    let mut c = Client::connect(url).await;
    c.send(json!({"type": "join", "room": room})).await;
    let answer = c.recv().await;
    let result = if answer["type"] == "joined" {
        Ok(())
    } else {
        Err(answer.to_string())
    };
    (sent, result)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_eus_leader_stalls_eus_joins_for_at_most_three_seconds_and_no_one_elses() {
    let mut cluster = Cluster::start(Spec {
        replicas: &[(1, "us"), (2, "eu"), (3, "eu"), (4, "eu"), (5, "ap")],
        edges: &[("us-a", "us"), ("eu-a", "eu"), ("ap-a", "ap")],
        replica_args: REGION_REPLICA_ARGS,
        homed: true,
        ..Spec::default()
    })
    .await;
    // Joins every 50 ms in each region, each to a new room, for a bounded time.
    const ROUNDS: usize = 120;
    const KILL_AT: usize = 20;
    let urls: Vec<(String, String)> = ["us", "eu", "ap"]
        .iter()
        .map(|r| {
            (
                (*r).to_owned(),
                cluster.edge(&format!("{r}-a")).node.ws_url(),
            )
        })
        .collect();
    let mut streams = Vec::new();
    for (region, url) in urls {
        streams.push(tokio::spawn(async move {
            let mut answers = Vec::new();
            let mut tick = tokio::time::interval(std::time::Duration::from_millis(50));
            for i in 0..ROUNDS {
                tick.tick().await;
                answers.push(one_join(&url, &format!("{region}-stream-{i}")).await);
            }
            (region, answers)
        }));
    }
    // Replica 2 was bootstrapped: it leads eu's group, and eu-a is attached to it.
    let started = tokio::time::Instant::now();
    tokio::time::sleep_until(started + std::time::Duration::from_millis(50 * KILL_AT as u64)).await;
    let killed_at = tokio::time::Instant::now();
    cluster.replica_mut(2).kill();
    for stream in streams {
        let (region, answers) = stream.await.unwrap();
        let errors: Vec<_> = answers.iter().filter(|(_, r)| r.is_err()).collect();
        if region == "eu" {
            // Every join was answered; the failed ones were sent within 3 s of the kill, and
            // the joins after them succeed.
            for (sent, r) in &errors {
                let after = sent.saturating_duration_since(killed_at);
                assert!(
                    after < std::time::Duration::from_secs(3),
                    "a join {after:?} after the kill failed: {r:?}"
                );
            }
            let last = answers.last().unwrap();
            assert!(last.1.is_ok(), "eu joins again: {:?}", last.1);
        } else {
            assert!(errors.is_empty(), "{region}: {errors:?}");
        }
    }
}

/// The `heliograph_registry_rooms` gauge of `r`: rooms its group homes.
async fn rooms_homed(r: &Replica) -> u64 {
    metric(&r.scrape().await, "heliograph_registry_rooms").unwrap_or(0.0) as u64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_region_cut_off_serves_its_own_rooms_refuses_others_fast_and_converges_after() {
    let cluster = Cluster::start(Spec {
        replicas: &[(1, "us"), (2, "eu"), (3, "ap")],
        edges: &[
            ("us-a", "us"),
            ("eu-a", "eu"),
            ("ap-a", "ap"),
            ("ap-b", "ap"),
        ],
        replica_args: REGION_REPLICA_ARGS,
        homed: true,
        ..Spec::default()
    })
    .await;
    let url = |e: &str| cluster.edge(e).node.ws_url();
    let mut u = Client::connect(&url("us-a")).await;
    u.join("us-room").await;
    let mut a1 = Client::connect(&url("ap-a")).await;
    a1.join("ap-room").await;
    wait_homes_known(&cluster, "us", 1).await;
    wait_homes_known(&cluster, "ap", 1).await;

    cluster.partition("ap");
    let ap = cluster.replicas.iter().find(|r| r.region == "ap").unwrap();
    until(DEADLINE, "ap to lose the other regions", || {
        let s = cluster.admin.status(&ap.api).unwrap();
        let down = s["regions"]
            .as_array()
            .unwrap()
            .iter()
            .all(|r| r["connected"] == false);
        std::future::ready(down.then_some(()))
    })
    .await
    .unwrap();

    // ap's own rooms: joins, new rooms and signals all succeed.
    let mut members = Vec::new();
    for i in 0..8 {
        let mut c = Client::connect(&url(if i % 2 == 0 { "ap-a" } else { "ap-b" })).await;
        c.join("ap-room").await;
        a1.expect("peer-joined").await;
        c.join(&format!("ap-new-{i}")).await;
        members.push(c);
    }
    for c in &mut members {
        c.send(json!({"type": "signal", "room": "ap-room", "to": a1.peer_id, "kind": "custom", "data": {}}))
            .await;
    }
    for _ in 0..members.len() {
        a1.expect("signal").await;
    }
    a1.assert_pong("after-partition-signals").await;

    // A room homed in the unreachable region: `unavailable` within 2 s.
    let mut x = Client::connect(&url("ap-a")).await;
    let sent = std::time::Instant::now();
    x.send(json!({"type": "join", "room": "us-room"})).await;
    let answer = x.recv().await;
    assert_eq!(answer["code"], "unavailable", "{answer}");
    assert!(
        sent.elapsed() < std::time::Duration::from_secs(2),
        "{:?}",
        sent.elapsed()
    );

    cluster.heal("ap");
    // Converged within 10 s: every region follows every other again and knows all of ap's
    // rooms (1 + 8 new ones), and the join refused during the cut now succeeds.
    let homed_in_ap = rooms_homed(ap).await;
    assert_eq!(homed_in_ap, 9);
    let within = std::time::Duration::from_secs(10);
    for r in cluster.replicas.iter().filter(|r| r.region != "ap") {
        until(within, "the other regions to know ap's rooms again", || {
            let s = cluster.admin.status(&r.api).unwrap();
            let ok = s["regions"].as_array().unwrap().iter().all(|x| {
                x["connected"] == true && (x["region"] != "ap" || x["rooms"] == homed_in_ap)
            });
            std::future::ready(ok.then_some(()))
        })
        .await
        .unwrap();
    }
    until(within, "a join from ap to us-room after healing", || {
        let url = url("ap-a");
        async move {
            let mut c = Client::connect(&url).await;
            c.send(json!({"type": "join", "room": "us-room"})).await;
            let v = c.recv().await;
            (v["type"] == "joined").then_some((c, v))
        }
    })
    .await
    .map(|(_, v)| assert_eq!(v["peers"][0]["id"], u.peer_id.as_str(), "{v}"))
    .unwrap();
    u.expect("peer-joined").await;
}

/// Reads `peer-joined` frames until `ids` have each been announced once; then nothing else.
async fn expect_joined_once(c: &mut Client, ids: &[&str]) {
    let mut left: HashSet<&str> = ids.iter().copied().collect();
    while !left.is_empty() {
        let v = c.expect("peer-joined").await;
        let id = v["peer"]["id"].as_str().unwrap().to_owned();
        assert!(left.remove(id.as_str()), "announced twice or unknown: {v}");
    }
    c.assert_pong("after-peer-joined").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_name_created_on_both_sides_of_a_partition_ends_as_one_room_with_everyone() {
    let cluster = three_regions().await;
    let url = |e: &str| cluster.edge(e).node.ws_url();
    cluster.partition("ap");
    // eu creates the room first, so eu's is the older and keeps the name.
    let mut e1 = Client::connect(&url("eu-a")).await;
    e1.join("twin").await;
    let mut e2 = Client::connect(&url("eu-a")).await;
    e2.join("twin").await;
    e1.expect("peer-joined").await;
    let mut a1 = Client::connect(&url("ap-a")).await;
    a1.join("twin").await;
    let mut a2 = Client::connect(&url("ap-a")).await;
    a2.join("twin").await;
    a1.expect("peer-joined").await;
    let ap = cluster.replicas.iter().find(|r| r.region == "ap").unwrap();
    assert_eq!(rooms_homed(ap).await, 1, "ap made its own room meanwhile");

    cluster.heal("ap");
    let (a1_id, a2_id) = (a1.peer_id.clone(), a2.peer_id.clone());
    let (e1_id, e2_id) = (e1.peer_id.clone(), e2.peer_id.clone());
    for c in [&mut e1, &mut e2] {
        expect_joined_once(c, &[&a1_id, &a2_id]).await;
    }
    for c in [&mut a1, &mut a2] {
        expect_joined_once(c, &[&e1_id, &e2_id]).await;
    }
    // One room, in eu; the members signal across.
    until(
        std::time::Duration::from_secs(10),
        "ap's room to be gone",
        || async { (rooms_homed(ap).await == 0).then_some(()) },
    )
    .await
    .unwrap();
    let eu = cluster.replicas.iter().find(|r| r.region == "eu").unwrap();
    assert_eq!(rooms_homed(eu).await, 1);
    assert_eq!(
        metric(
            &ap.scrape().await,
            "heliograph_coordinator_homing_conflicts_total"
        ),
        Some(1.0)
    );
    let mut clients = vec![e1, e2, a1, a2];
    all_pairs_signal(&mut clients, "twin").await;
    // A newcomer from us sees the four.
    wait_homes_known(&cluster, "eu", 1).await;
    let mut u = Client::connect(&url("us-a")).await;
    let joined = u.join("twin").await;
    assert_eq!(joined["peers"].as_array().unwrap().len(), 4, "{joined}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_whose_edge_in_another_region_dies_leaves_after_the_grace_period() {
    let mut cluster = Cluster::start(Spec {
        replicas: &[(1, "us"), (2, "eu")],
        edges: &[("us-a", "us"), ("eu-a", "eu")],
        replica_args: REGION_REPLICA_ARGS,
        edge_args: &["--lease-ms", "1000"],
        homed: true,
        ..Spec::default()
    })
    .await;
    let mut u = Client::connect(&cluster.edge("us-a").node.ws_url()).await;
    u.join("r").await;
    wait_homes_known(&cluster, "us", 1).await;
    let mut e = Client::connect(&cluster.edge("eu-a").node.ws_url()).await;
    e.join("r").await;
    u.expect("peer-joined").await;
    // The edge dies with its socket: eu's group sees its lease run out, and us's group
    // (which homes the room) learns it from eu and applies its own grace rules.
    let started = std::time::Instant::now();
    cluster.edge_mut("eu-a").node.kill();
    let left = u.expect("peer-left").await;
    assert_eq!(left["peer_id"], e.peer_id.as_str(), "{left}");
    assert_eq!(left["reason"], "expired", "{left}");
    // Lease (1 s) + one check (1 s) + grace (0.5 s) + commits, with room to spare.
    assert!(
        started.elapsed() < std::time::Duration::from_secs(6),
        "{:?}",
        started.elapsed()
    );
    drop(e);
}

/// A client and the members it knows of in one room, from `joined`, `peer-joined` and
/// `peer-left` (a second `peer-joined` for a known member fails the test).
struct Tracked {
    c: Client,
    known: HashSet<String>,
}

impl Tracked {
    async fn join(url: &str, room: &str) -> Tracked {
        let mut c = Client::connect(url).await;
        let joined = c.join(room).await;
        let known = joined["peers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["id"].as_str().unwrap().to_owned())
            .collect();
        Tracked { c, known }
    }

    /// Reads room notices into `known` until it equals `expected`, for at most `within`.
    async fn until_knows(
        &mut self,
        expected: &HashSet<String>,
        within: std::time::Duration,
    ) -> bool {
        let deadline = tokio::time::Instant::now() + within;
        while &self.known != expected {
            let Ok(v) = tokio::time::timeout_at(deadline, self.c.recv()).await else {
                return false;
            };
            match v["type"].as_str() {
                Some("peer-joined") => {
                    let id = v["peer"]["id"].as_str().unwrap().to_owned();
                    assert!(self.known.insert(id), "announced twice: {v}");
                }
                Some("peer-left") => {
                    self.known.remove(v["peer_id"].as_str().unwrap());
                }
                _ => panic!("unexpected {v}"),
            }
        }
        // Nothing more (e.g. a second announcement) was queued.
        self.c.assert_pong("settled").await;
        true
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn joins_on_both_sides_while_a_doubly_created_room_merges_are_each_announced_once() {
    let cluster = three_regions().await;
    let url = |e: &str| cluster.edge(e).node.ws_url();
    cluster.partition("ap");
    let mut clients = vec![
        Tracked::join(&url("eu-a"), "busy").await,
        Tracked::join(&url("ap-a"), "busy").await,
    ];
    cluster.heal("ap");
    // Joins on every side while the two rooms become one.
    for i in 0..6 {
        let edge = ["ap-a", "eu-a", "us-a"][i % 3];
        clients.push(Tracked::join(&url(edge), "busy").await);
    }
    let ids: Vec<String> = clients.iter().map(|t| t.c.peer_id.clone()).collect();
    let mut failures = Vec::new();
    for (i, t) in clients.iter_mut().enumerate() {
        let expected: HashSet<String> = ids
            .iter()
            .enumerate()
            .filter(|(j, _)| *j != i)
            .map(|(_, id)| id.clone())
            .collect();
        if !t
            .until_knows(&expected, std::time::Duration::from_secs(10))
            .await
        {
            let missing: Vec<usize> = (0..ids.len())
                .filter(|j| *j != i && !t.known.contains(&ids[*j]))
                .collect();
            failures.push(format!("client {i} never heard of clients {missing:?}"));
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
    let ap = cluster.replicas.iter().find(|r| r.region == "ap").unwrap();
    until(
        std::time::Duration::from_secs(10),
        "one room left",
        || async { (rooms_homed(ap).await == 0).then_some(()) },
    )
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_api_of_any_region_shows_kicks_and_messages_a_room_homed_in_another() {
    const KEY: &str = "homed-key-0123456789abcdefghij";
    let dir = tempfile::tempdir().unwrap();
    let key_file = dir.path().join("app.key");
    std::fs::write(&key_file, format!("{KEY}\n")).unwrap();
    let key_arg = format!("app={}", key_file.display());
    let replica_args: Vec<&str> = REGION_REPLICA_ARGS
        .iter()
        .copied()
        .chain(["--api-key-file", &key_arg])
        .collect();
    let cluster = Cluster::start(Spec {
        replicas: &[(1, "us"), (2, "eu"), (3, "ap")],
        edges: &[("us-a", "us"), ("eu-a", "eu"), ("ap-a", "ap")],
        replica_args: &replica_args,
        homed: true,
        ..Spec::default()
    })
    .await;
    let url = |e: &str| cluster.edge(e).node.ws_url();
    let mut u = Client::connect(&url("us-a")).await;
    u.join("r").await;
    wait_homes_known(&cluster, "us", 1).await;
    let mut a = Client::connect(&url("ap-a")).await;
    a.join("r").await;
    u.expect("peer-joined").await;

    // eu's API answers for a room homed in us, with members in us and ap.
    let eu = cluster.replicas.iter().find(|r| r.region == "eu").unwrap();
    let call = |method: &'static str, path: String, body: Value| {
        let addr = eu.metrics.clone();
        async move {
            let auth = format!("Bearer {KEY}");
            let body = if body.is_null() {
                Vec::new()
            } else {
                body.to_string().into_bytes()
            };
            let (status, text) = heliograph_testkit::http::request(
                &addr,
                method,
                &path,
                &[
                    ("authorization", &auth),
                    ("content-type", "application/json"),
                ],
                &body,
            )
            .await;
            (
                status,
                serde_json::from_str::<Value>(&text).unwrap_or(Value::Null),
            )
        }
    };
    let (status, room) = call("GET", "/api/v1/rooms/r".into(), Value::Null).await;
    assert_eq!(status, 200, "{room}");
    let mut regions: Vec<&str> = room["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["region"].as_str().unwrap())
        .collect();
    regions.sort_unstable();
    assert_eq!(regions, ["ap", "us"], "{room}");

    // A message from eu's API reaches the member on ap's edge.
    let (status, sent) = call(
        "POST",
        "/api/v1/rooms/r/messages".into(),
        json!({"data": {"hello": "ap"}, "to": a.peer_id}),
    )
    .await;
    assert_eq!((status, &sent["recipients"]), (202, &json!(1)), "{sent}");
    let m = a.expect("message").await;
    assert_eq!(m["data"]["hello"], "ap", "{m}");

    // A kick through eu's API: us's group removes the member, everyone hears of it.
    let (status, _) = call(
        "DELETE",
        format!("/api/v1/rooms/r/peers/{}", a.peer_id),
        Value::Null,
    )
    .await;
    assert!((200..300).contains(&status), "{status}");
    let left = u.expect("peer-left").await;
    assert_eq!(left["reason"], "removed", "{left}");
    let (status, missing) = call("GET", "/api/v1/rooms/nowhere".into(), Value::Null).await;
    assert_eq!(status, 404, "{missing}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_resumes_in_a_room_homed_in_another_region_and_keeps_signalling() {
    let cluster = Cluster::start(Spec {
        replicas: &[(1, "us"), (2, "eu")],
        edges: &[("us-a", "us"), ("eu-a", "eu")],
        redis: &["eu"],
        replica_args: REGION_REPLICA_ARGS,
        homed: true,
        ..Spec::default()
    })
    .await;
    let mut us = Client::connect(&cluster.edge("us-a").node.ws_url()).await;
    us.join("homed-in-us").await;
    wait_homes_known(&cluster, "us", 1).await;
    let eu_url = cluster.edge("eu-a").node.ws_url();
    let mut eu = Session::connect(&eu_url).await;
    eu.send(json!({"type": "join", "room": "homed-in-us"}))
        .await;
    eu.expect("joined").await;
    us.expect("peer-joined").await;

    // The socket is lost; the session resumes on its edge, which reads the room from its
    // home (us) and rebinds the peer there. eu's own group does not know the peer (none of
    // its rooms is homed in eu): that is no reason to refuse the resume.
    let (peer, token, last_seq) = eu.drop_connection();
    let (mut eu, _replay, resumed) = Session::resume(&eu_url, peer.clone(), token, last_seq).await;
    assert_eq!(resumed["peer_id"], peer.as_str());

    us.send(json!({"type": "signal", "room": "homed-in-us", "to": peer, "kind": "custom", "data": {"n": 1}}))
        .await;
    let s = eu.expect("signal").await;
    assert_eq!(s["from"], us.peer_id.as_str(), "{s}");
    eu.send(json!({"type": "signal", "room": "homed-in-us", "to": us.peer_id, "kind": "custom", "data": {"n": 2}}))
        .await;
    let s = us.expect("signal").await;
    assert_eq!(s["from"], peer.as_str(), "{s}");
    // The member never left: nothing but that signal reached the other one.
    us.assert_pong("after-resume").await;
}
