//! The state machine's snapshots: a build reads the state at the index its copy was taken,
//! whatever is applied while it encodes; and snapshots written by earlier versions load.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use openraft::storage::RaftStateMachine;
use openraft::{CommittedLeaderId, Entry, EntryPayload, RaftSnapshotBuilder};
use tokio::sync::broadcast;

use super::{Payload, StateMachineStore};
use crate::raft::types::{Batch, LogId};
use crate::registry::{Command, Listing, ListingQuery, PeerId, RegistryState, RoomId, Stamped};

fn id<T: TryFrom<String>>(s: &str) -> T
where
    T::Error: std::fmt::Debug,
{
    T::try_from(s.to_owned()).unwrap()
}

fn log_id(index: u64) -> LogId {
    LogId::new(CommittedLeaderId::new(1, 1), index)
}

fn register(edge: &str) -> Command {
    Command::RegisterEdge {
        edge: id(edge),
        region: id("eu"),
        address: "127.0.0.1:1".into(),
        incarnation: 1,
        lease_ms: 60_000,
        resumable_sessions: true,
        replica: 1,
    }
}

fn join(room: &str, peer: &str, attempt: u64) -> Command {
    Command::Join {
        room: id(room),
        peer: id(peer),
        edge: id("e1"),
        meta: format!("{{\"peer\":\"{peer}\"}}"),
        max_members: None,
        attempt,
        deadline_ms: 0,
        remote_region: None,
        listing: Listing {
            public: room.ends_with('0'),
            meta: None,
        },
    }
}

fn leave(room: &str, peer: &str) -> Command {
    Command::Leave {
        room: id(room),
        peer: id(peer),
        attempt: 0,
        deadline_ms: 0,
    }
}

/// Applies `commands` to `sm` as one entry each, from log index `first` on, and to the
/// reference state `expected` (built on its own, sharing nothing with the state machine's).
async fn apply(
    sm: &mut StateMachineStore,
    expected: &mut RegistryState,
    first: u64,
    commands: Vec<Command>,
) -> u64 {
    let mut index = first;
    let mut entries = Vec::new();
    for command in commands {
        let stamped = Stamped {
            at_ms: 1_000 + index,
            command,
        };
        expected.apply(&stamped);
        entries.push(Entry::<super::TypeConfig> {
            log_id: log_id(index),
            payload: EntryPayload::Normal(Batch(vec![stamped])),
        });
        index += 1;
    }
    sm.apply(entries).await.unwrap();
    index
}

#[tokio::test]
async fn a_snapshot_built_while_joins_apply_holds_the_state_at_its_index() {
    let dir = tempfile::tempdir().unwrap();
    let (events, _) = broadcast::channel(1 << 16);
    let mut sm = StateMachineStore::open(dir.path(), events).unwrap();
    let mut expected = RegistryState::default();

    // 2,000 members in 500 rooms: enough for the maps to be trees of several levels.
    let mut commands = vec![register("e1")];
    for i in 0..2_000u64 {
        commands.push(join(
            &format!("room-{}", i % 500),
            &format!("peer-{i}"),
            i + 1,
        ));
    }
    let next = apply(&mut sm, &mut expected, 1, commands).await;
    let at_copy = log_id(next - 1);
    let snapshot_state = expected.clone();
    let snapshot_json = serde_json::to_string(&snapshot_state).unwrap();

    let mut builder = sm.get_snapshot_builder().await;

    // Changes to records the copy shares, while the copy waits to be encoded: members leave
    // (some rooms empty), others join existing rooms and new ones, a peer joins a second
    // room, and the edge goes down (every peer is detached).
    let mut later = Vec::new();
    for i in (0..2_000u64).step_by(3) {
        later.push(leave(&format!("room-{}", i % 500), &format!("peer-{i}")));
    }
    for i in 2_000..2_600u64 {
        later.push(join(
            &format!("room-{}", i % 700),
            &format!("peer-{i}"),
            i + 1,
        ));
    }
    later.push(join("room-1", "peer-2", 9_999));
    later.push(Command::ReleaseEdge {
        edge: id("e1"),
        incarnation: 1,
    });
    let end = apply(&mut sm, &mut expected, next, later).await;

    let snapshot = builder.build_snapshot().await.unwrap();
    assert_eq!(snapshot.meta.last_log_id, Some(at_copy));
    let payload: Payload = serde_json::from_slice(snapshot.snapshot.get_ref()).unwrap();
    assert_eq!(payload.applied.last_applied, Some(at_copy));
    assert_eq!(payload.applied.registry, snapshot_state);
    assert_eq!(
        serde_json::to_string(&payload.applied.registry).unwrap(),
        snapshot_json
    );

    // The live state went on as if no snapshot had been taken.
    let live = sm.state();
    {
        let st = live.read().unwrap();
        assert_eq!(st.last_applied, Some(log_id(end - 1)));
        assert_eq!(st.registry, expected);
        assert_ne!(st.registry, snapshot_state);
        assert_eq!(st.registry.is_detached(&id::<PeerId>("peer-1")), Some(true));
    }

    // And the file on disk is that snapshot: a restart restores the state at its index.
    drop(sm);
    let (events, _) = broadcast::channel(16);
    let reopened = StateMachineStore::open(dir.path(), events).unwrap();
    let st = reopened.state();
    let st = st.read().unwrap();
    assert_eq!(st.last_applied, Some(at_copy));
    assert_eq!(st.registry, snapshot_state);
}

/// A snapshot in the layout earlier versions wrote (the registry's maps as JSON objects, the
/// public rooms as an array, fields added since absent from some records).
const EARLIER_SNAPSHOT: &str = r#"{"snapshot_id":"1-1-42-1764900000000","applied":{"last_applied":{"leader_id":{"term":1,"node_id":1},"index":42},"last_membership":{"log_id":null,"membership":{"configs":[],"nodes":{}}},"registry":{"edges":{"e1":{"region":"eu","address":"10.0.0.1:9000","incarnation":1,"lease_until_ms":20000,"down":false,"replica":1,"lease_ms":10000},"e0":{"region":"eu","address":"10.0.0.2:9000","incarnation":3,"lease_until_ms":5000,"down":true}},"rooms":{"lobby0":{"epoch":3,"created_at_ms":1000,"members":{"p1":"{}","p2":"{\"n\":2}"},"joined_at":{"p1":1000,"p2":1001},"listing_meta":"{\"title\":\"Lobby\"}"},"r2":{"epoch":2,"members":{"p1":"{}"}}},"peers":{"p1":{"edge":"e1","region":"eu","rooms":["lobby0","r2"],"detached_since_ms":null,"attempts":{"lobby0":7}},"p2":{"edge":"e1","region":"eu","rooms":["lobby0"],"detached_since_ms":1500,"attempts":{},"detached_remotely":false}},"next_epoch":3,"regions":{"ap":["gw.ap:7001"]},"public":["lobby0"]}}}"#;

#[tokio::test]
async fn a_snapshot_written_by_an_earlier_version_loads() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("snapshot.json"), EARLIER_SNAPSHOT).unwrap();
    let (events, _) = broadcast::channel(16);
    let mut sm = StateMachineStore::open(dir.path(), events).unwrap();
    {
        let st = sm.state();
        let st = st.read().unwrap();
        assert_eq!(st.last_applied, Some(log_id(42)));
        let r = &st.registry;
        let lobby = r.room(&id::<RoomId>("lobby0")).unwrap();
        assert_eq!(lobby.epoch, 3);
        let members: Vec<(&str, &str)> = lobby
            .members
            .iter()
            .map(|m| (m.peer.as_str(), m.meta.as_str()))
            .collect();
        assert_eq!(members, [("p1", "{}"), ("p2", "{\"n\":2}")]);
        assert_eq!(r.joined_at_ms(&id("lobby0"), &id("p2")), Some(1001));
        assert_eq!(r.created_at_ms(&id("r2")), Some(0));
        assert_eq!(r.room(&id::<RoomId>("r2")).unwrap().members.len(), 1);
        assert_eq!(r.is_detached(&id("p2")), Some(true));
        assert_eq!(r.is_detached(&id("p1")), Some(false));
        let listed = r.public_rooms(&ListingQuery {
            prefix: String::new(),
            after: None,
            limit: 10,
        });
        assert_eq!(listed.rooms.len(), 1);
        assert_eq!(
            listed.rooms[0].meta.as_deref(),
            Some("{\"title\":\"Lobby\"}")
        );
        // The derived index was rebuilt from the records: p2's grace ends 1,500 ms + grace.
        assert_eq!(r.next_sweep_due_ms(10_000, false), Some(11_500));
        assert_eq!(r.regions().len(), 1);
        assert_eq!(r.epoch(), 3);
    }

    // It encodes as it was read, but for the fields earlier versions did not write.
    let st = sm.state();
    let encoded = serde_json::to_value(&st.read().unwrap().registry).unwrap();
    let earlier: serde_json::Value = serde_json::from_str(EARLIER_SNAPSHOT).unwrap();
    let earlier = &earlier["applied"]["registry"];
    assert_eq!(encoded["rooms"]["lobby0"], earlier["rooms"]["lobby0"]);
    assert_eq!(encoded["peers"]["p2"], earlier["peers"]["p2"]);
    assert_eq!(encoded["public"], earlier["public"]);
    assert_eq!(encoded["edges"]["e1"], earlier["edges"]["e1"]);
    assert_eq!(encoded["regions"], earlier["regions"]);

    // And a snapshot built from it loads again into the same state.
    let mut builder = sm.get_snapshot_builder().await;
    let snapshot = builder.build_snapshot().await.unwrap();
    let payload: Payload = serde_json::from_slice(snapshot.snapshot.get_ref()).unwrap();
    assert_eq!(payload.applied.registry, st.read().unwrap().registry);
}
