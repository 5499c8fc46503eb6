//! In-process clusters: several replicas in this test process, each serving its Raft and API
//! services on port-0 listeners with its own temporary data directory.

use std::time::{Duration, Instant};

use heliograph_coordinator::grpc::admin_client::{self, AdminCall};
use heliograph_coordinator::registry::{Command, Outcome};
use heliograph_coordinator::{CoordinatorError, Replica, ReplicaConfig, ReplicaOptions};
use heliograph_proto::raft::v1::RaftBytes;
use heliograph_proto::raft::v1::raft_client::RaftClient;
use tempfile::TempDir;

use crate::support::{Node, any_port, secret};
use tokio_util::sync::CancellationToken;

const WAIT: Duration = Duration::from_secs(15);
fn snapshot_options(snapshot: Option<u64>) -> ReplicaOptions {
    ReplicaOptions {
        expected_cluster_id: None,
        snapshot_after_entries: snapshot,
        ..ReplicaOptions::default()
    }
}

/// Starts `n` replicas, bootstraps the first and adds the others as voters.
async fn cluster(n: u64, dirs: &[TempDir], snapshot: Option<u64>) -> Vec<Node> {
    let mut nodes = Vec::new();
    for id in 1..=n {
        let dir = dirs[usize::try_from(id - 1).unwrap()].path();
        nodes.push(
            Node::start(
                id,
                dir,
                any_port(),
                any_port(),
                secret(),
                snapshot_options(snapshot),
            )
            .await,
        );
    }
    nodes[0].replica.bootstrap().await.unwrap();
    for node in &nodes[1..] {
        nodes[0]
            .replica
            .add_member(node.replica.node_id(), node.info(), false)
            .await
            .unwrap();
    }
    nodes
}

fn dirs(n: usize) -> Vec<TempDir> {
    (0..n).map(|_| tempfile::tempdir().unwrap()).collect()
}

async fn wait_for_leader(nodes: &[&Node]) -> u64 {
    let first = &nodes[0].replica;
    let m = first
        .raft()
        .wait(Some(WAIT))
        .metrics(|m| m.current_leader.is_some(), "a leader is known")
        .await
        .unwrap();
    let leader = m.current_leader.unwrap();
    for node in nodes {
        node.replica
            .raft()
            .wait(Some(WAIT))
            .metrics(
                |m| m.current_leader == Some(leader),
                "every replica knows the leader",
            )
            .await
            .unwrap();
    }
    leader
}

/// Waits until every replica has applied as much as the leader has.
async fn wait_converged(nodes: &[&Node], leader: &Node) {
    let target = leader.replica.raft().metrics().borrow().last_applied;
    for node in nodes {
        node.replica
            .raft()
            .wait(Some(WAIT))
            .metrics(
                |m| m.last_applied >= target,
                "applied as much as the leader",
            )
            .await
            .unwrap();
    }
}

fn id<T: TryFrom<String>>(s: &str) -> T
where
    T::Error: std::fmt::Debug,
{
    T::try_from(s.to_owned()).unwrap()
}

fn register(edge: &str) -> Command {
    Command::RegisterEdge {
        edge: id(edge),
        region: id("eu"),
        address: "127.0.0.1:1".into(),
        incarnation: 1,
        lease_ms: 600_000,
        resumable_sessions: true,
        replica: 1,
    }
}

fn join(room: &str, peer: &str) -> Command {
    Command::Join {
        room: id(room),
        peer: id(peer),
        edge: id("e1"),
        meta: "{}".into(),
        max_members: None,
        attempt: 0,
        deadline_ms: 0,
        remote_region: None,
        listing: Default::default(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_replicate_joins_and_followers_redirect() {
    let d = dirs(3);
    let nodes = cluster(3, &d, None).await;
    let all: Vec<&Node> = nodes.iter().collect();
    let leader_id = wait_for_leader(&all).await;
    let leader = nodes
        .iter()
        .find(|n| n.replica.node_id() == leader_id)
        .unwrap();
    leader.replica.execute(register("e1")).await.unwrap();

    const JOINS: usize = 2_000;
    const TASKS: usize = 256;
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for t in 0..TASKS {
        let r = leader.replica.clone();
        tasks.spawn(async move {
            for n in (t..JOINS).step_by(TASKS) {
                let outcome = r
                    .execute(join(&format!("room-{}", n % 50), &format!("p{n}")))
                    .await;
                assert!(matches!(outcome, Ok(Outcome::Joined { .. })), "{outcome:?}");
            }
        });
    }
    while let Some(done) = tasks.join_next().await {
        done.unwrap();
    }
    let elapsed = started.elapsed();
    eprintln!(
        "{JOINS} joins from {TASKS} tasks on a 3-replica cluster in {elapsed:?} ({:.0}/s)",
        JOINS as f64 / elapsed.as_secs_f64()
    );

    wait_converged(&all, leader).await;
    let expected = leader.replica.state_snapshot();
    let total: u32 = leader.replica.rooms().iter().map(|r| r.members).sum();
    assert_eq!(total as usize, JOINS);
    for node in &nodes {
        assert_eq!(
            node.replica.state_snapshot(),
            expected,
            "node {}",
            node.replica.node_id()
        );
        assert!(node.replica.is_ready());
        assert_eq!(node.replica.leader_api_addr(), Some(leader.api.to_string()));
    }

    let follower = nodes
        .iter()
        .find(|n| n.replica.node_id() != leader_id)
        .unwrap();
    match follower.replica.execute(join("room-x", "px")).await {
        Err(CoordinatorError::NotLeader { leader_api }) => {
            assert_eq!(leader_api, Some(leader.api.to_string()));
        }
        other => panic!("a follower accepted a write: {other:?}"),
    }
    // Admin calls sent to a follower reach the leader.
    let status = admin_client::call(
        &follower.api.to_string(),
        Some(&secret()),
        AdminCall::Remove(heliograph_proto::admin::v1::RemoveMemberRequest { id: 99 }),
    )
    .await;
    assert!(status.is_ok(), "{status:?}");

    for node in nodes {
        node.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_loss_during_a_write_storm_keeps_every_acknowledged_join() {
    let d = dirs(3);
    let mut nodes = cluster(3, &d, None).await;
    let all: Vec<&Node> = nodes.iter().collect();
    let leader_id = wait_for_leader(&all).await;
    let leader_at = nodes
        .iter()
        .position(|n| n.replica.node_id() == leader_id)
        .unwrap();
    nodes[leader_at]
        .replica
        .execute(register("e1"))
        .await
        .unwrap();

    // Writers keep proposing to whoever leads; each remembers the joins acknowledged to it.
    let replicas: Vec<Replica> = nodes.iter().map(|n| n.replica.clone()).collect();
    let stop = CancellationToken::new();
    let mut writers = tokio::task::JoinSet::new();
    for w in 0..16 {
        let (replicas, stop) = (replicas.clone(), stop.clone());
        writers.spawn(async move {
            let mut acked = Vec::new();
            let mut n = 0;
            while !stop.is_cancelled() && n < 100_000 {
                let peer = format!("w{w}-{n}");
                n += 1;
                for r in &replicas {
                    if let Ok(Outcome::Joined { .. }) =
                        r.execute(join(&format!("room-{w}"), &peer)).await
                    {
                        acked.push(peer.clone());
                        break;
                    }
                }
                tokio::task::yield_now().await;
            }
            acked
        });
    }
    // Let the storm get going, measured in commits rather than time.
    nodes[leader_at]
        .replica
        .raft()
        .wait(Some(WAIT))
        .metrics(
            |m| m.last_applied.is_some_and(|l| l.index > 50),
            "writes are flowing",
        )
        .await
        .unwrap();
    let old = nodes.remove(leader_at);
    let stopped_at = Instant::now();
    old.stop().await;
    let survivors: Vec<&Node> = nodes.iter().collect();
    let new_leader = survivors[0]
        .replica
        .raft()
        .wait(Some(WAIT))
        .metrics(
            |m| m.current_leader.is_some_and(|l| l != leader_id),
            "a new leader is elected",
        )
        .await
        .unwrap()
        .current_leader
        .unwrap();
    eprintln!("new leader {new_leader} after {:?}", stopped_at.elapsed());
    assert!(stopped_at.elapsed() < Duration::from_secs(5));
    let leader = nodes
        .iter()
        .find(|n| n.replica.node_id() == new_leader)
        .unwrap();
    leader
        .replica
        .raft()
        .wait(Some(WAIT))
        .metrics(
            |m| {
                m.last_applied
                    .is_some_and(|l| l.leader_id.term > 1 && l.index > 100)
            },
            "writes continue",
        )
        .await
        .unwrap();
    stop.cancel();
    let mut acked = Vec::new();
    while let Some(done) = writers.join_next().await {
        acked.extend(done.unwrap());
    }
    wait_converged(&survivors, leader).await;
    let state = leader.replica.state_snapshot();
    assert_eq!(
        nodes[0].replica.state_snapshot(),
        nodes[1].replica.state_snapshot()
    );
    for peer in &acked {
        assert!(
            state.is_detached(&id(peer)).is_some(),
            "acknowledged join of {peer} was lost"
        );
    }
    eprintln!("{} joins acknowledged across the failover", acked.len());
    for node in nodes {
        node.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_that_missed_many_entries_catches_up_by_snapshot() {
    const SNAPSHOT_AFTER: u64 = 50;
    let d = dirs(3);
    let mut nodes = cluster(3, &d, Some(SNAPSHOT_AFTER)).await;
    let all: Vec<&Node> = nodes.iter().collect();
    let leader_id = wait_for_leader(&all).await;
    let lagging_at = nodes
        .iter()
        .position(|n| n.replica.node_id() != leader_id)
        .unwrap();
    let lagging = nodes.remove(lagging_at);
    let (lag_id, lag_raft, lag_api) = (lagging.replica.node_id(), lagging.raft, lagging.api);
    lagging.stop().await;

    let leader = nodes
        .iter()
        .find(|n| n.replica.node_id() == leader_id)
        .unwrap();
    leader.replica.execute(register("e1")).await.unwrap();
    // One entry per join (sequential), well past the threshold and the entries kept after it.
    for n in 0..(SNAPSHOT_AFTER * 4) {
        leader
            .replica
            .execute(join("r", &format!("p{n}")))
            .await
            .unwrap();
    }
    leader
        .replica
        .raft()
        .wait(Some(WAIT))
        .metrics(
            |m| m.purged.is_some_and(|p| p.index > 10),
            "the leader purged its log",
        )
        .await
        .unwrap();

    let back = Node::start(
        lag_id,
        d[lagging_at].path(),
        lag_raft,
        lag_api,
        secret(),
        snapshot_options(Some(SNAPSHOT_AFTER)),
    )
    .await;
    nodes.push(back);
    let all: Vec<&Node> = nodes.iter().collect();
    let leader = nodes
        .iter()
        .find(|n| n.replica.node_id() == leader_id)
        .unwrap();
    wait_converged(&all, leader).await;
    let back = nodes.last().unwrap();
    let status = back.replica.status();
    assert!(status.snapshots_installed >= 1, "{status:?}");
    assert_eq!(
        back.replica.state_snapshot(),
        leader.replica.state_snapshot()
    );
    for node in nodes {
        node.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_without_the_secret_or_with_garbage_are_refused() {
    let d = dirs(1);
    let nodes = cluster(1, &d, None).await;
    let node = &nodes[0];
    let refused = admin_client::call(&node.api.to_string(), None, AdminCall::Status).await;
    assert_eq!(
        refused.unwrap_err().code(),
        Some(tonic::Code::Unauthenticated)
    );

    let mut raft = RaftClient::connect(format!("http://{}", node.raft))
        .await
        .unwrap();
    let bare = raft
        .vote(RaftBytes {
            json: b"{}".to_vec(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(bare.code(), tonic::Code::Unauthenticated);

    let mut request = tonic::Request::new(RaftBytes {
        json: b"not json".to_vec(),
        ..Default::default()
    });
    secret().attach(&mut request);
    let cluster = node.replica.status().cluster_id.unwrap();
    request
        .metadata_mut()
        .insert("x-heliograph-cluster", cluster.parse().unwrap());
    let garbage = raft.append_entries(request).await.unwrap_err();
    assert_eq!(garbage.code(), tonic::Code::InvalidArgument);

    let mut request = tonic::Request::new(RaftBytes {
        json: b"{}".to_vec(),
        ..Default::default()
    });
    secret().attach(&mut request);
    request
        .metadata_mut()
        .insert("x-heliograph-cluster", "another-cluster".parse().unwrap());
    let foreign = raft.vote(request).await.unwrap_err();
    assert_eq!(foreign.code(), tonic::Code::FailedPrecondition);
    for node in nodes {
        node.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_data_dir_of_another_node_or_cluster_is_refused() {
    let d = dirs(1);
    let nodes = cluster(1, &d, None).await;
    let cluster_id = nodes[0].replica.status().cluster_id.unwrap();
    for node in nodes {
        node.stop().await;
    }
    let config = |node_id| ReplicaConfig {
        node_id,
        data_dir: d[0].path().to_path_buf(),
        raft_addr: any_port(),
        api_addr: "127.0.0.1:1".into(),
        region: "eu".into(),
        grace: Duration::from_secs(1),
        secret: secret(),
    };
    let other_node = Replica::open_replica(config(2)).await;
    assert!(
        matches!(other_node, Err(CoordinatorError::DataDir { ref reason, .. }) if reason.contains("node 1")),
        "{:?}",
        other_node.err()
    );
    let other_cluster = Replica::open_replica_with(
        config(1),
        ReplicaOptions {
            expected_cluster_id: Some("0000".into()),
            snapshot_after_entries: None,
            ..ReplicaOptions::default()
        },
    )
    .await;
    assert!(
        matches!(other_cluster, Err(CoordinatorError::DataDir { ref reason, .. }) if reason.contains("cluster")),
        "{:?}",
        other_cluster.err()
    );
    let same = Replica::open_replica_with(
        config(1),
        ReplicaOptions {
            expected_cluster_id: Some(cluster_id),
            snapshot_after_entries: None,
            ..ReplicaOptions::default()
        },
    )
    .await
    .unwrap();
    same.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rebinds_sent_together_to_a_follower_reach_the_leader_and_each_is_answered() {
    use heliograph_coordinator::grpc::proto;
    use heliograph_coordinator::grpc::proto::registry_client::RegistryClient;

    let d = dirs(3);
    let nodes = cluster(3, &d, None).await;
    let all: Vec<&Node> = nodes.iter().collect();
    let leader_id = wait_for_leader(&all).await;
    let leader = all
        .iter()
        .find(|n| n.replica.node_id() == leader_id)
        .unwrap();
    let follower = all
        .iter()
        .find(|n| n.replica.node_id() != leader_id)
        .unwrap();
    leader.replica.execute(register("e1")).await.unwrap();
    let mut e2 = register("e2");
    if let Command::RegisterEdge { edge, .. } = &mut e2 {
        *edge = id("e2");
    }
    leader.replica.execute(e2).await.unwrap();
    for peer in ["a", "b"] {
        leader.replica.execute(join("r", peer)).await.unwrap();
        let detach = Command::Detach { peer: id(peer) };
        leader.replica.execute(detach).await.unwrap();
    }

    let mut client = RegistryClient::connect(format!("http://{}", follower.api))
        .await
        .unwrap();
    let mut request = tonic::Request::new(proto::RebindManyRequest {
        peer_ids: vec!["a".into(), "nobody".into(), "b".into()],
        edge_id: "e2".into(),
        edge_region: String::new(),
    });
    secret().attach(&mut request);
    let answer = client.rebind_many(request).await.unwrap().into_inner();
    assert_eq!(
        answer.rejected,
        vec![
            proto::Rejection::None as i32,
            proto::Rejection::UnknownPeer as i32,
            proto::Rejection::None as i32
        ]
    );
    wait_converged(&all, leader).await;
    for node in &nodes {
        let room = node.replica.room(&id("r")).unwrap();
        assert!(
            room.members.iter().all(|m| m.edge.as_str() == "e2"),
            "node {}: {:?}",
            node.replica.node_id(),
            room.members
        );
    }
    for node in nodes {
        node.stop().await;
    }
}
