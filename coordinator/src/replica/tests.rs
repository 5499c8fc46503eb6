//! Tests of the embedded replica: events, persistence across restarts (with and without a
//! snapshot), concurrent writers, lease expiry through the sweeper, and the data-dir lock.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;

use tokio::sync::broadcast::Receiver;

use std::time::{Duration, Instant};

use super::config::{DEFAULT_GRACE, EmbeddedConfig};
use super::handle::Replica;
use crate::error::CoordinatorError;
use crate::registry::{Command, Outcome, RoomEvent};
use crate::registry::{LeaveReason, RoomEventKind};

const WAIT: Duration = Duration::from_secs(10);

fn id<T: TryFrom<String>>(s: &str) -> T
where
    T::Error: std::fmt::Debug,
{
    T::try_from(s.to_owned()).unwrap()
}

async fn open(dir: &Path, grace: Duration) -> Replica {
    Replica::open(EmbeddedConfig {
        data_dir: dir.to_path_buf(),
        grace,
        snapshot_after_entries: None,
    })
    .await
    .unwrap()
}

async fn register(c: &Replica, edge: &str, lease_ms: u64) {
    let outcome = c
        .execute(Command::RegisterEdge {
            edge: id(edge),
            region: id("eu"),
            address: "127.0.0.1:1".into(),
            incarnation: 1,
            lease_ms,
            resumable_sessions: true,
            replica: 0,
        })
        .await
        .unwrap();
    assert_eq!(outcome, Outcome::Done);
}

async fn join(c: &Replica, room: &str, peer: &str, edge: &str) -> Outcome {
    c.execute(Command::Join {
        room: id(room),
        peer: id(peer),
        edge: id(edge),
        meta: "{}".into(),
        max_members: None,
        attempt: 0,
        deadline_ms: 0,
        remote_region: None,
        listing: Default::default(),
    })
    .await
    .unwrap()
}

async fn next_event(rx: &mut Receiver<RoomEvent>) -> RoomEvent {
    tokio::time::timeout(WAIT, rx.recv())
        .await
        .expect("no room event before the deadline")
        .unwrap()
}

fn members(c: &Replica, room: &str) -> Vec<String> {
    c.room(&id(room))
        .map(|v| v.members.iter().map(|m| m.peer.to_string()).collect())
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn joins_emit_events_and_survive_restart() {
    let dir = tempfile::tempdir().unwrap();
    let c = open(dir.path(), DEFAULT_GRACE).await;
    assert!(c.is_ready());
    let mut rx = c.subscribe();
    register(&c, "e1", 60_000).await;
    assert!(matches!(
        join(&c, "r", "a", "e1").await,
        Outcome::Joined { .. }
    ));
    let Outcome::Joined { members: m, .. } = join(&c, "r", "b", "e1").await else {
        panic!("second join refused");
    };
    assert_eq!(m.len(), 2);
    for peer in ["a", "b"] {
        let event = next_event(&mut rx).await;
        assert_eq!(event.room.as_str(), "r");
        assert!(matches!(&event.kind, RoomEventKind::Joined(m) if m.peer.as_str() == peer));
    }
    c.shutdown().await;
    c.shutdown().await;
    assert!(!c.is_ready());
    assert!(matches!(
        c.execute(Command::Sweep {
            grace_ms: 1,
            leases: true
        })
        .await,
        Err(CoordinatorError::ShuttingDown)
    ));

    let c = open(dir.path(), DEFAULT_GRACE).await;
    assert_eq!(members(&c, "r"), ["a", "b"]);
    // The restored registry keeps working: the edge is still registered.
    assert!(matches!(
        join(&c, "r", "c", "e1").await,
        Outcome::Joined { .. }
    ));
    assert_eq!(c.rooms().len(), 1);
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_restores_snapshot_then_replays_log() {
    let dir = tempfile::tempdir().unwrap();
    let c = open(dir.path(), DEFAULT_GRACE).await;
    register(&c, "e1", 60_000).await;
    join(&c, "r", "a", "e1").await;
    join(&c, "r", "b", "e1").await;

    let raft = c.inner.raft.clone();
    raft.trigger().snapshot().await.unwrap();
    let m = raft
        .wait(Some(WAIT))
        .metrics(
            |m| m.snapshot.is_some() && m.snapshot == m.last_applied,
            "snapshot covers everything applied",
        )
        .await
        .unwrap();
    let snapshot = m.snapshot.unwrap();
    // Without the purged entries, only the snapshot can bring them back.
    raft.trigger().purge_log(snapshot.index).await.unwrap();
    raft.wait(Some(WAIT))
        .purged(Some(snapshot), "log purged up to the snapshot")
        .await
        .unwrap();
    // An entry after the snapshot, to be replayed from the log.
    join(&c, "r", "c", "e1").await;
    c.shutdown().await;
    assert!(dir.path().join("snapshot.json").exists());

    let c = open(dir.path(), DEFAULT_GRACE).await;
    assert_eq!(members(&c, "r"), ["a", "b", "c"]);
    let m = c.inner.raft.metrics().borrow().clone();
    assert_eq!(m.purged, Some(snapshot));
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_joins_all_commit() {
    const TASKS: usize = 256;
    const JOINS: usize = 2_000;
    const ROOMS: usize = 100;
    let dir = tempfile::tempdir().unwrap();
    let c = open(dir.path(), DEFAULT_GRACE).await;
    register(&c, "e1", 60_000).await;

    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for t in 0..TASKS {
        let c = c.clone();
        tasks.spawn(async move {
            for n in (t..JOINS).step_by(TASKS) {
                let outcome =
                    join(&c, &format!("room-{}", n % ROOMS), &format!("p{n}"), "e1").await;
                assert!(matches!(outcome, Outcome::Joined { .. }), "{outcome:?}");
            }
        });
    }
    while let Some(done) = tasks.join_next().await {
        done.unwrap();
    }
    let elapsed = started.elapsed();
    eprintln!(
        "{JOINS} joins from {TASKS} tasks in {elapsed:?} ({:.0}/s)",
        JOINS as f64 / elapsed.as_secs_f64()
    );

    let rooms = c.rooms();
    assert_eq!(rooms.len(), ROOMS);
    let total: u32 = rooms.iter().map(|r| r.members).sum();
    assert_eq!(total as usize, JOINS);
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_lease_removes_peers_after_grace() {
    let dir = tempfile::tempdir().unwrap();
    let c = open(dir.path(), Duration::from_millis(300)).await;
    register(&c, "e1", 200).await;
    join(&c, "r", "a", "e1").await;
    join(&c, "r", "b", "e1").await;
    let mut rx = c.subscribe();

    let mut expired = Vec::new();
    while expired.len() < 2 {
        let event = next_event(&mut rx).await;
        if let RoomEventKind::Left { peer, reason, .. } = event.kind {
            assert_eq!(reason, LeaveReason::Expired);
            expired.push(peer.to_string());
        }
    }
    expired.sort();
    assert_eq!(expired, ["a", "b"]);
    assert!(c.room(&id("r")).is_none());
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn second_open_of_a_data_dir_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let c = open(dir.path(), DEFAULT_GRACE).await;
    let second = Replica::open(EmbeddedConfig::new(dir.path().to_path_buf())).await;
    match second {
        Err(CoordinatorError::DataDir { reason, .. }) => {
            assert!(reason.contains("already open"), "{reason}");
        }
        Err(other) => panic!("unexpected error: {other}"),
        Ok(_) => panic!("a second replica opened the same data directory"),
    }
    // Shutting down releases the directory.
    c.shutdown().await;
    let c = open(dir.path(), DEFAULT_GRACE).await;
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unusable_data_dir_is_a_data_dir_error() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("not-a-dir");
    std::fs::write(&file, b"x").unwrap();
    let result = Replica::open(EmbeddedConfig::new(file)).await;
    assert!(matches!(result, Err(CoordinatorError::DataDir { .. })));
}
