//! Acceptance of the replicated coordinator: real `heliograph-coordinator` replicas and real
//! `heliograph-edge` processes on 127.0.0.1, real WebSocket clients. Replicas are killed,
//! restarted, added and removed while clients join; the registry is read back from every
//! replica through the edge-facing gRPC API.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use heliograph_coordinator::grpc::proto::{self, registry_client::RegistryClient};
use heliograph_coordinator::transport::ClusterSecret;
use heliograph_testkit::replica::voters;
use heliograph_testkit::wait::STARTUP;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

use crate::support::{self, Client, Cluster, Node, Spec, meet_and_signal};

const SECRET: &str = support::CLUSTER_SECRET;
/// Longer than any test: nobody expires unless a test kills an edge on purpose.
const LONG_MS: &str = "120000";
/// Joins one storm client makes before it opens a new connection (rooms per connection are
/// capped by the edge).
const ROOMS_PER_CONNECTION: usize = 8;

/// Three replicas of one region, the first bootstrapped, with `replica_args`; no edges yet.
async fn three_replicas(replica_args: &[&str]) -> Cluster {
    Cluster::start(Spec {
        replicas: &[(1, "local"), (2, "local"), (3, "local")],
        replica_args,
        ..Spec::default()
    })
    .await
}

/// What these tests do with a cluster beyond the kit's.
trait Replicated {
    /// An edge attached first to the replica listed first in `ids`.
    fn edge_at(&self, name: &str, ids: &[u64], lease_ms: &str) -> Node;
    /// The registry (room → members) of each live replica, read through its gRPC API.
    async fn views(&self) -> Vec<(u64, Registry)>;
    /// Asserts that every live replica holds the same registry, and returns it.
    async fn agreed_view(&self) -> Registry;
}

impl Replicated for Cluster {
    fn edge_at(&self, name: &str, ids: &[u64], lease_ms: &str) -> Node {
        self.edge_on(
            name,
            ids,
            &[
                "--edge-id",
                name,
                "--lease-ms",
                lease_ms,
                "--rate-limit-per-second",
                "1000000",
                "--rate-limit-burst",
                "1000000",
            ],
        )
    }

    async fn views(&self) -> Vec<(u64, Registry)> {
        let mut out = Vec::new();
        for r in self.replicas.iter().filter(|r| r.alive()) {
            out.push((r.id, registry_of(&r.url()).await));
        }
        out
    }

    async fn agreed_view(&self) -> Registry {
        self.wait_converged();
        let views = self.views().await;
        let (first_id, first) = &views[0];
        for (id, view) in &views[1..] {
            assert!(
                view == first,
                "replicas {first_id} and {id} disagree: {} vs {} rooms",
                first.len(),
                view.len()
            );
        }
        views.into_iter().next().unwrap().1
    }
}

/// Room → peer ids.
type Registry = BTreeMap<String, BTreeSet<String>>;

async fn registry_of(url: &str) -> Registry {
    let secret = ClusterSecret::new(SECRET).unwrap();
    let mut client = RegistryClient::connect(url.to_owned()).await.unwrap();
    fn request<T>(secret: &ClusterSecret, m: T) -> tonic::Request<T> {
        let mut r = tonic::Request::new(m);
        secret.attach(&mut r);
        r
    }
    let rooms = client
        .list_rooms(request(&secret, proto::ListRoomsRequest {}))
        .await
        .unwrap()
        .into_inner()
        .rooms;
    let mut out = Registry::new();
    for room in rooms {
        let view = client
            .get_room(request(
                &secret,
                proto::GetRoomRequest {
                    room: room.room.clone(),
                },
            ))
            .await
            .unwrap()
            .into_inner();
        if view.found {
            out.insert(
                room.room,
                view.members.into_iter().map(|m| m.peer_id).collect(),
            );
        }
    }
    out
}

/// What a storm of joins achieved.
#[derive(Default)]
struct StormResult {
    /// (room, peer) of every `joined` a client received.
    acked: Vec<(String, String)>,
    /// `error` replies and joins that got no answer in time.
    failed: usize,
    /// When each acknowledged join was sent.
    acked_sent_at: Vec<Instant>,
}

/// One client worker: joins fresh rooms one after the other until `stop` is set (or a bound
/// on count is hit), opening a new connection every few joins. Clients stay connected until
/// the worker's result is dropped, so their memberships stay.
async fn storm_worker(
    url: String,
    tag: String,
    stop: Arc<AtomicBool>,
) -> (StormResult, Vec<Client>) {
    const MAX_JOINS: usize = 2_000;
    const ANSWER_WITHIN: Duration = Duration::from_secs(8);
    let mut result = StormResult::default();
    let mut clients: Vec<Client> = Vec::new();
    for n in 0..MAX_JOINS {
        if stop.load(Ordering::SeqCst) {
            break;
        }
        if n % ROOMS_PER_CONNECTION == 0 {
            clients.push(Client::connect(&url).await);
        }
        let c = clients.last_mut().unwrap();
        let room = format!("{tag}-{n}");
        let sent = Instant::now();
        c.send(json!({"type": "join", "room": room, "ref": room}))
            .await;
        let answer = tokio::time::timeout(ANSWER_WITHIN, async {
            loop {
                let Some(Ok(Message::Text(t))) = c.ws.next().await else {
                    return None;
                };
                let v: Value = serde_json::from_str(&t).unwrap();
                let about_this = v["room"] == room.as_str() || v["ref"] == room.as_str();
                match v["type"].as_str() {
                    Some("joined") if about_this => return Some(true),
                    Some("error") if about_this => return Some(false),
                    // Late answers to earlier joins that timed out, and room events.
                    _ => continue,
                }
            }
        })
        .await;
        match answer {
            Ok(Some(true)) => {
                result.acked.push((room, c.peer_id.clone()));
                result.acked_sent_at.push(sent);
            }
            Ok(Some(false)) | Err(_) => {
                result.failed += 1;
                // Paces retries while the cluster fails over, as a real client would.
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            // The socket ended: the next join starts a new connection.
            Ok(None) => {
                result.failed += 1;
                clients.pop();
                clients.push(Client::connect(&url).await);
            }
        }
    }
    (result, clients)
}

type Storm = Vec<tokio::task::JoinHandle<(StormResult, Vec<Client>)>>;

fn start_storm(edges: &[&Node], per_edge: usize, stop: &Arc<AtomicBool>) -> Storm {
    let mut handles = Vec::new();
    for (e, edge) in edges.iter().enumerate() {
        for w in 0..per_edge {
            handles.push(tokio::spawn(storm_worker(
                edge.ws_url(),
                format!("storm-e{e}-w{w}"),
                Arc::clone(stop),
            )));
        }
    }
    handles
}

async fn finish_storm(storm: Storm, stop: &AtomicBool) -> (StormResult, Vec<Client>) {
    stop.store(true, Ordering::SeqCst);
    let mut all = StormResult::default();
    let mut clients = Vec::new();
    for h in storm {
        let (r, c) = h.await.unwrap();
        all.acked.extend(r.acked);
        all.acked_sent_at.extend(r.acked_sent_at);
        all.failed += r.failed;
        clients.extend(c);
    }
    (all, clients)
}

fn assert_acked_present(acked: &[(String, String)], view: &Registry) {
    let missing: Vec<_> = acked
        .iter()
        .filter(|(room, peer)| !view.get(room).is_some_and(|m| m.contains(peer)))
        .collect();
    assert!(
        missing.is_empty(),
        "{} of {} acknowledged joins are missing, e.g. {:?}",
        missing.len(),
        acked.len(),
        missing.first()
    );
}

/// Runs blocking cluster administration off the async runtime's worker.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peers_on_two_edges_of_three_replicas_meet_signal_and_part() {
    let cluster = three_replicas(&[]).await;
    // Attached to different replicas: signals cross between replicas.
    let edge_a = cluster.edge_at("edge-a", &[1, 2, 3], LONG_MS);
    let edge_b = cluster.edge_at("edge-b", &[2, 3, 1], LONG_MS);

    let (mut a, mut b) = meet_and_signal(&edge_a, &edge_b).await;

    b.send(json!({"type": "leave", "room": "call"})).await;
    b.expect("left").await;
    let pl = a.expect("peer-left").await;
    assert_eq!(pl["peer_id"], b.peer_id.as_str());
    assert_eq!(pl["reason"], "left");
    a.send(json!({"type": "leave", "room": "call"})).await;
    a.expect("left").await;
    b.assert_pong("b2").await;
    let view = cluster.agreed_view().await;
    assert!(view.get("call").is_none_or(BTreeSet::is_empty), "{view:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_joins_survive_killing_the_leader() {
    let mut cluster = three_replicas(&["--grace-ms", LONG_MS]).await;
    let leader = cluster.leader();
    let others: Vec<u64> = [1, 2, 3].into_iter().filter(|id| *id != leader).collect();
    // Edge A is attached to the leader that dies; edge B to a survivor.
    let edge_a = cluster.edge_at("edge-a", &[leader, others[0], others[1]], LONG_MS);
    let edge_b = cluster.edge_at("edge-b", &[others[0], others[1], leader], LONG_MS);
    edge_a.wait_ready().await;
    edge_b.wait_ready().await;

    let stop = Arc::new(AtomicBool::new(false));
    let storm = start_storm(&[&edge_a, &edge_b], 4, &stop);
    // Let joins flow on both edges before the kill.
    support::wait_for("joins to flow", || async {
        let (_, m) = edge_a.get("/metrics").await;
        let (_, n) = edge_b.get("/metrics").await;
        let joined = |t: &str| {
            support::metric(
                t,
                r#"heliograph_edge_messages_sent_total{ingress="ws",type="joined"}"#,
            )
            .unwrap_or(0.0)
        };
        (joined(&m) >= 20.0 && joined(&n) >= 20.0).then_some(())
    })
    .await;
    let killed_at = Instant::now();
    cluster.replica_mut(leader).kill();
    // A probe on each edge joins until it succeeds: the first success after the kill
    // measures how long joins were unavailable.
    let probe = |url: String, tag: &'static str| async move {
        let mut c = Client::connect(&url).await;
        for n in 0..1_000 {
            if n % ROOMS_PER_CONNECTION == ROOMS_PER_CONNECTION - 1 {
                c = Client::connect(&url).await;
            }
            let room = format!("{tag}-{n}");
            c.send(json!({"type": "join", "room": room, "ref": room}))
                .await;
            for _ in 0..100 {
                let v = c.recv().await;
                let about_this = v["room"] == room.as_str() || v["ref"] == room.as_str();
                match v["type"].as_str() {
                    Some("joined") if about_this => return (killed_at.elapsed(), room),
                    Some("error") if about_this => break,
                    _ => {}
                }
            }
        }
        panic!("joins never recovered");
    };
    let (first, room) = tokio::select! {
        r = probe(edge_b.ws_url(), "probe-b") => r,
        r = probe(edge_a.ws_url(), "probe-a") => r,
    };
    eprintln!("first join after the kill acknowledged after {first:?} ({room})");
    // Keep the storm going past the failover, then collect.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (result, _clients) = finish_storm(storm, &stop).await;
    let after_kill = result
        .acked_sent_at
        .iter()
        .filter(|t| **t > killed_at)
        .count();
    eprintln!(
        "storm: {} acknowledged ({} sent after the kill), {} failed",
        result.acked.len(),
        after_kill,
        result.failed
    );
    assert!(
        first <= Duration::from_secs(3),
        "joins were unavailable for {first:?} after the leader died"
    );
    assert!(after_kill > 0, "no storm join succeeded after the kill");
    let view = cluster.agreed_view().await;
    assert_eq!(cluster.views().await.len(), 2);
    assert_acked_present(&result.acked, &view);
    drop(edge_a);
    drop(edge_b);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_edges_peers_expire_for_the_other_edge() {
    let cluster = three_replicas(&["--grace-ms", "300"]).await;
    let mut edge_a = cluster.edge_at("edge-a", &[1, 2, 3], "1000");
    let edge_b = cluster.edge_at("edge-b", &[2, 3, 1], "1000");
    edge_a.wait_ready().await;
    edge_b.wait_ready().await;
    let mut a = Client::connect(&edge_a.ws_url()).await;
    let mut b = Client::connect(&edge_b.ws_url()).await;
    a.join("room").await;
    b.join("room").await;
    a.expect("peer-joined").await;

    let gone = a.peer_id.clone();
    let killed_at = Instant::now();
    edge_a.kill();
    let pl = b.expect("peer-left").await;
    eprintln!("peer-left after {:?}", killed_at.elapsed());
    assert_eq!(pl["peer_id"], gone.as_str());
    assert_eq!(pl["reason"], "expired");
    let view = cluster.agreed_view().await;
    assert_eq!(
        view.get("room"),
        Some(&BTreeSet::from([b.peer_id.clone()])),
        "{view:?}"
    );
    b.assert_usable().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_restart_keeps_the_registry_and_elects_a_leader() {
    let mut cluster = three_replicas(&["--grace-ms", LONG_MS]).await;
    let edge_a = cluster.edge_at("edge-a", &[1, 2, 3], LONG_MS);
    let edge_b = cluster.edge_at("edge-b", &[2, 3, 1], LONG_MS);
    edge_a.wait_ready().await;
    edge_b.wait_ready().await;
    let mut clients = Vec::new();
    for i in 0..12 {
        let edge = if i % 2 == 0 { &edge_a } else { &edge_b };
        let mut c = Client::connect(&edge.ws_url()).await;
        c.join(&format!("room-{}", i % 4)).await;
        clients.push(c);
    }
    let before = cluster.agreed_view().await;
    assert_eq!(before.values().map(BTreeSet::len).sum::<usize>(), 12);

    let cluster = blocking(move || {
        for r in &mut cluster.replicas {
            r.terminate();
        }
        for r in &mut cluster.replicas {
            r.restart();
        }
        cluster.leader();
        cluster
    })
    .await;
    let after = cluster.agreed_view().await;
    assert_eq!(after, before);
    // And the restarted cluster takes writes again (the edge may still be reconnecting).
    edge_a.wait_ready().await;
    let mut c = Client::connect(&edge_a.ws_url()).await;
    let deadline = Instant::now() + support::DEADLINE;
    loop {
        c.send(json!({"type": "join", "room": "after-restart"}))
            .await;
        if c.recv().await["type"] == "joined" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no join succeeded after the restart"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        cluster.agreed_view().await["after-restart"],
        BTreeSet::from([c.peer_id.clone()])
    );
    drop(clients);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grow_to_five_and_shrink_to_three_while_joins_continue() {
    let cluster = three_replicas(&["--grace-ms", LONG_MS]).await;
    let edge_a = cluster.edge_at("edge-a", &[1, 2, 3], LONG_MS);
    let edge_b = cluster.edge_at("edge-b", &[2, 3, 1], LONG_MS);
    edge_a.wait_ready().await;
    edge_b.wait_ready().await;
    let stop = Arc::new(AtomicBool::new(false));
    let storm = start_storm(&[&edge_a, &edge_b], 3, &stop);

    let cluster = blocking(move || {
        let mut cluster = cluster;
        cluster.grow(4, "local");
        cluster.grow(5, "local");
        cluster.wait_all(STARTUP, "five voters", |v| voters(v) == [1, 2, 3, 4, 5]);
        for id in [5, 4] {
            let api = &cluster.replica(3).api;
            cluster
                .admin
                .run(&["remove", "--api", api, "--id", &id.to_string()])
                .unwrap();
        }
        cluster.replica_mut(5).kill();
        cluster.replica_mut(4).kill();
        cluster.wait_all(STARTUP, "three voters", |v| {
            voters(v) == [1, 2, 3] && v["members"].as_array().map(Vec::len) == Some(3)
        });
        cluster
    })
    .await;
    let (result, _clients) = finish_storm(storm, &stop).await;
    eprintln!(
        "storm: {} acknowledged, {} failed",
        result.acked.len(),
        result.failed
    );
    assert_eq!(
        result.failed, 0,
        "joins failed during the membership changes"
    );
    assert!(
        result.acked.len() >= 20,
        "too few joins: {}",
        result.acked.len()
    );
    let view = cluster.agreed_view().await;
    assert_acked_present(&result.acked, &view);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lagging_replica_catches_up_by_snapshot() {
    const THRESHOLD: u64 = 20;
    let threshold = THRESHOLD.to_string();
    let mut cluster = three_replicas(&[
        "--grace-ms",
        LONG_MS,
        "--snapshot-after-entries",
        &threshold,
    ])
    .await;
    // Neither edge is attached to replica 3, which is stopped.
    let edge_a = cluster.edge_at("edge-a", &[1, 2], LONG_MS);
    let edge_b = cluster.edge_at("edge-b", &[2, 1], LONG_MS);
    edge_a.wait_ready().await;
    edge_b.wait_ready().await;
    cluster.wait_converged();
    cluster.replica_mut(3).terminate();
    let stopped_at = Instant::now();
    let behind = cluster.admin.status(&cluster.replica(1).api).unwrap()["commit_index"]
        .as_u64()
        .unwrap();

    // Sequential joins from two clients: each commits as (about) one entry of its own.
    let mut clients = Vec::new();
    let mut target = 0;
    let mut rounds = 0;
    for round in 0..200u64 {
        for (e, edge) in [&edge_a, &edge_b].into_iter().enumerate() {
            if round % ROOMS_PER_CONNECTION as u64 == 0 {
                clients.push((e, Client::connect(&edge.ws_url()).await));
            }
        }
        let n = clients.len();
        for (e, c) in &mut clients[n - 2..] {
            c.join(&format!("snap-{round}-{e}")).await;
        }
        rounds += 1;
        let status = cluster.admin.status(&cluster.replica(1).api).unwrap();
        let snapshot = status["snapshot_index"].as_u64().unwrap_or(0);
        target = status["commit_index"].as_u64().unwrap();
        if snapshot > behind + 2 * THRESHOLD && stopped_at.elapsed() > Duration::from_secs(2) {
            break;
        }
    }
    assert!(target > behind + 2 * THRESHOLD, "too few entries committed");

    let r3 = cluster.replica_mut(3);
    r3.restart();
    let metrics_addr = r3.metrics.clone();
    cluster.wait_all(STARTUP, "replica 3 caught up", |v| {
        v["applied_index"].as_u64() >= Some(target)
    });
    let status = cluster.admin.status(&cluster.replica(3).api).unwrap();
    assert!(
        status["snapshots_installed"].as_u64() >= Some(1),
        "replica 3 caught up without a snapshot: {status:#}"
    );
    let (code, metrics) = support::http_get(&metrics_addr, "/metrics").await;
    assert_eq!(code, 200);
    assert!(
        support::metric(&metrics, "heliograph_raft_snapshots_installed_total")
            .is_some_and(|n| n >= 1.0),
        "{metrics}"
    );
    let (code, _) = support::http_get(&metrics_addr, "/readyz").await;
    assert_eq!(code, 200);
    let view = cluster.agreed_view().await;
    let snap_rooms: Vec<_> = view
        .iter()
        .filter(|(k, _)| k.starts_with("snap-"))
        .collect();
    assert_eq!(snap_rooms.len(), 2 * rounds);
    assert!(snap_rooms.iter().all(|(_, m)| m.len() == 1));

    // An edge attached to the replica that jumped by snapshot sees the rooms as they are:
    // the members who joined while it was stopped, and the events that follow.
    let edge_c = cluster.edge_at("edge-c", &[3], LONG_MS);
    edge_c.wait_ready().await;
    let (_, first) = &mut clients[0];
    let first_peer = first.peer_id.clone();
    let mut late = Client::connect(&edge_c.ws_url()).await;
    let joined = late.join("snap-0-0").await;
    let members: Vec<&str> = joined["peers"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|m| m["id"].as_str())
        .collect();
    assert!(
        members.contains(&first_peer.as_str()),
        "joined on the caught-up replica misses a member from the gap: {joined}"
    );
    let (_, first) = &mut clients[0];
    first.expect("peer-joined").await;
    first
        .send(serde_json::json!({"type": "leave", "room": "snap-0-0"}))
        .await;
    first.expect("left").await;
    let left = late.expect("peer-left").await;
    assert_eq!(left["peer_id"], first_peer.as_str());
    drop(clients);
}

/// Runs `deploy/local-cluster.sh` with the binaries under test; `down` again on drop, so a
/// failed test leaves no processes behind.
struct LocalCluster {
    dir: tempfile::TempDir,
    offset: u16,
}

fn local_cluster(dir: &Path, offset: u16, command: &str) -> std::process::Output {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/local-cluster.sh");
    let bin_dir = heliograph_testkit::bin::path(heliograph_testkit::bin::COORDINATOR)
        .unwrap()
        .parent()
        .unwrap()
        .to_owned();
    Command::new("bash")
        .arg(script)
        .arg(command)
        .arg(dir)
        .env("HELIOGRAPH_BIN_DIR", bin_dir)
        .env("HELIOGRAPH_PORT_OFFSET", offset.to_string())
        .output()
        .unwrap()
}

impl LocalCluster {
    fn run(&self, command: &str) -> std::process::Output {
        local_cluster(self.dir.path(), self.offset, command)
    }
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        let _ = self.run("down");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_cluster_script_starts_reports_and_stops_the_cluster() {
    // Below the kernel's ephemeral range, where other tests' port-0 listeners live.
    let offset = 10_000 + u16::try_from(std::process::id() % 1_400).unwrap() * 10;
    let local = LocalCluster {
        dir: tempfile::tempdir().unwrap(),
        offset,
    };
    let dir = local.dir.path().to_owned();
    let out = blocking(move || local_cluster(&dir, offset, "up")).await;
    assert!(
        out.status.success(),
        "up failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    let out = local.run("status");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let mut pids = Vec::new();
    for name in [
        "edge-a",
        "edge-b",
        "coordinator-1",
        "coordinator-2",
        "coordinator-3",
    ] {
        let line = text
            .lines()
            .find(|l| l.starts_with(name))
            .unwrap_or_else(|| panic!("{name} missing from status:\n{text}"));
        assert!(line.ends_with("alive"), "{line}");
        pids.push(line.split_whitespace().nth(2).unwrap().to_owned());
    }
    let cluster: Value = serde_json::from_str(text.lines().last().unwrap()).unwrap();
    assert!(cluster["leader"].is_u64(), "{cluster:#}");
    assert_eq!(voters(&cluster), [1, 2, 3]);

    // Peers on the two edges meet.
    let edge = |port: u16| format!("ws://127.0.0.1:{}/ws", port + offset);
    let mut a = Client::connect(&edge(8101)).await;
    let mut b = Client::connect(&edge(8102)).await;
    a.join("local").await;
    let joined = b.join("local").await;
    assert_eq!(joined["peers"][0]["id"], a.peer_id.as_str());
    let (code, _) = support::http_get(&format!("127.0.0.1:{}", 7301 + offset), "/readyz").await;
    assert_eq!(code, 200);

    let out = local.run("down");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for pid in pids {
        let alive = Command::new("kill").args(["-0", &pid]).status().unwrap();
        assert!(!alive.success(), "pid {pid} is still running after down");
    }
}
