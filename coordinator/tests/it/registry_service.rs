//! The edge-facing service over real gRPC on 127.0.0.1:0, backed by an embedded replica.

use std::net::SocketAddr;
use std::time::Duration;

use heliograph_coordinator::grpc::proto::{
    self, EdgeToReplica, ReplicaToEdge, edge_to_replica, registry_client::RegistryClient,
    replica_to_edge, room_event,
};
use heliograph_coordinator::grpc::registry_service::registry_server;
use heliograph_coordinator::transport::ClusterSecret;
use heliograph_coordinator::{EmbeddedConfig, Replica};
use tokio::sync::mpsc;
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;
use tonic::{Code, Request, Streaming};

const SECRET: &str = "test-cluster-secret-0123456789";
const DEADLINE: Duration = Duration::from_secs(10);

struct Served {
    addr: SocketAddr,
    stop: CancellationToken,
    server: tokio::task::JoinHandle<()>,
    replica: Replica,
    _dir: tempfile::TempDir,
}

impl Served {
    async fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut config = EmbeddedConfig::new(dir.path().join("replica"));
        config.grace = Duration::from_millis(200);
        let replica = Replica::open(config).await.unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = CancellationToken::new();
        let service = registry_server(replica.clone(), ClusterSecret::new(SECRET).unwrap());
        let shutdown = stop.clone();
        let server = tokio::spawn(async move {
            tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming_shutdown(TcpListenerStream::new(listener), async move {
                    shutdown.cancelled().await
                })
                .await
                .unwrap();
        });
        Self {
            addr,
            stop,
            server,
            replica,
            _dir: dir,
        }
    }

    async fn client(&self) -> RegistryClient<Channel> {
        RegistryClient::connect(format!("http://{}", self.addr))
            .await
            .unwrap()
    }

    async fn stop(self) {
        self.stop.cancel();
        self.server.await.unwrap();
        self.replica.shutdown().await;
    }
}

fn authed<T>(message: T) -> Request<T> {
    let mut r = Request::new(message);
    ClusterSecret::new(SECRET).unwrap().attach(&mut r);
    r
}

async fn register(c: &mut RegistryClient<Channel>, edge: &str) {
    let r = c
        .register_edge(authed(proto::RegisterEdgeRequest {
            edge_id: edge.into(),
            region: "eu".into(),
            address: "127.0.0.1:1".into(),
            incarnation: 1,
            lease_ms: 60_000,
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.rejected, 0);
}

async fn link(
    c: &mut RegistryClient<Channel>,
    edge: &str,
) -> (mpsc::Sender<EdgeToReplica>, Streaming<ReplicaToEdge>) {
    let (tx, rx) = mpsc::channel(16);
    tx.send(EdgeToReplica {
        msg: Some(edge_to_replica::Msg::Hello(proto::LinkHello {
            edge_id: edge.into(),
            incarnation: 1,
        })),
    })
    .await
    .unwrap();
    let inbound = c
        .link(authed(ReceiverStream::new(rx)))
        .await
        .unwrap()
        .into_inner();
    (tx, inbound)
}

async fn next(inbound: &mut Streaming<ReplicaToEdge>) -> replica_to_edge::Msg {
    tokio::time::timeout(DEADLINE, inbound.message())
        .await
        .expect("no link message before the deadline")
        .unwrap()
        .expect("link ended")
        .msg
        .unwrap()
}

async fn join(
    c: &mut RegistryClient<Channel>,
    room: &str,
    peer: &str,
    edge: &str,
) -> proto::JoinResponse {
    c.join(authed(proto::JoinRequest {
        room: room.into(),
        peer_id: peer.into(),
        edge_id: edge.into(),
        meta_json: "{}".into(),
        max_members: 0,
        attempt: 0,
        deadline_ms: 0,
        edge_region: String::new(),
        ..Default::default()
    }))
    .await
    .unwrap()
    .into_inner()
}

#[tokio::test]
async fn register_join_leave_and_watch_events() {
    let s = Served::start().await;
    let mut c = s.client().await;
    register(&mut c, "e1").await;
    register(&mut c, "e2").await;
    let (tx1, mut in1) = link(&mut c, "e1").await;
    // `link` returns once the replica has registered the link (it reads `hello` first).
    let (tx2, mut in2) = link(&mut c, "e2").await;

    let j = join(&mut c, "r", "a", "e1").await;
    assert_eq!((j.rejected, j.members.len()), (0, 1));
    // e1 hears its own peer's join, with the member list at that epoch.
    let replica_to_edge::Msg::Event(e) = next(&mut in1).await else {
        panic!()
    };
    assert!(matches!(e.kind, Some(room_event::Kind::Joined(ref m)) if m.peer_id == "a"));
    assert_eq!(e.members.len(), 1);

    join(&mut c, "r", "b", "e2").await;
    for inbound in [&mut in1, &mut in2] {
        let replica_to_edge::Msg::Event(e) = next(inbound).await else {
            panic!()
        };
        assert!(matches!(e.kind, Some(room_event::Kind::Joined(ref m)) if m.peer_id == "b"));
    }

    // A signal from e1 to a peer on e2 goes down e2's link, frame untouched.
    tx1.send(EdgeToReplica {
        msg: Some(edge_to_replica::Msg::Signal(proto::RelayedSignal {
            to_edge: "e2".into(),
            to_peer: "b".into(),
            room: "r".into(),
            frame: b"{\"type\":\"signal\"}".to_vec(),
            sent_at_us: 1,
            ..Default::default()
        })),
    })
    .await
    .unwrap();
    let replica_to_edge::Msg::Signal(sig) = next(&mut in2).await else {
        panic!()
    };
    assert_eq!(
        (sig.to_peer.as_str(), sig.frame.as_slice()),
        ("b", &b"{\"type\":\"signal\"}"[..])
    );

    let l = c
        .leave(authed(proto::LeaveRequest {
            room: "r".into(),
            peer_id: "a".into(),
            attempt: 0,
            deadline_ms: 0,
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(l.rejected, 0);
    for inbound in [&mut in1, &mut in2] {
        let replica_to_edge::Msg::Event(e) = next(inbound).await else {
            panic!()
        };
        assert!(
            matches!(e.kind, Some(room_event::Kind::Left(ref p)) if p.peer_id == "a" && p.reason == "left")
        );
    }
    // Leaving twice is a rejection, not an error.
    let again = c
        .leave(authed(proto::LeaveRequest {
            room: "r".into(),
            peer_id: "a".into(),
            attempt: 0,
            deadline_ms: 0,
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(again.rejected, proto::Rejection::NotInRoom as i32);

    let room = c
        .get_room(authed(proto::GetRoomRequest { room: "r".into() }))
        .await
        .unwrap()
        .into_inner();
    assert!(room.found);
    assert_eq!(room.members.len(), 1);
    assert_eq!(
        s.replica
            .edge(&"e1".to_owned().try_into().unwrap())
            .unwrap()
            .replica,
        s.replica.node_id()
    );
    drop((tx1, tx2));
    s.stop().await;
}

#[tokio::test]
async fn missing_or_wrong_secret_is_unauthenticated() {
    let s = Served::start().await;
    let mut c = s.client().await;
    let err = c
        .list_rooms(Request::new(proto::ListRoomsRequest {}))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    let mut wrong = Request::new(proto::GetRoomRequest { room: "r".into() });
    ClusterSecret::new("another-secret-0123456789")
        .unwrap()
        .attach(&mut wrong);
    assert_eq!(
        c.get_room(wrong).await.unwrap_err().code(),
        Code::Unauthenticated
    );
    let (_tx, rx) = mpsc::channel::<EdgeToReplica>(1);
    let err = c
        .link(Request::new(ReceiverStream::new(rx)))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    s.stop().await;
}

#[tokio::test]
async fn invalid_ids_are_invalid_arguments() {
    let s = Served::start().await;
    let mut c = s.client().await;
    let err = c
        .register_edge(authed(proto::RegisterEdgeRequest {
            edge_id: String::new(),
            region: "eu".into(),
            ..Default::default()
        }))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("edge_id"), "{}", err.message());
    let err = c
        .join(authed(proto::JoinRequest {
            room: "x".repeat(1_000),
            peer_id: "p".into(),
            edge_id: "e".into(),
            ..Default::default()
        }))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    let err = c
        .get_room(authed(proto::GetRoomRequest {
            room: "a\nb".into(),
        }))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    // A link that does not start with hello is refused.
    let (tx, rx) = mpsc::channel(1);
    tx.send(EdgeToReplica {
        msg: Some(edge_to_replica::Msg::Signal(proto::RelayedSignal::default())),
    })
    .await
    .unwrap();
    let err = c.link(authed(ReceiverStream::new(rx))).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    s.stop().await;
}

#[tokio::test]
async fn peers_rebind_together_and_rooms_read_together() {
    let s = Served::start().await;
    let mut c = s.client().await;
    register(&mut c, "e1").await;
    register(&mut c, "e2").await;
    join(&mut c, "r", "a", "e1").await;
    join(&mut c, "r", "b", "e1").await;
    join(&mut c, "q", "c", "e1").await;
    for peer in ["a", "b", "c"] {
        let d = c
            .detach(authed(proto::DetachRequest {
                peer_id: peer.into(),
            }))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(d.rejected, 0);
    }
    let (tx2, mut in2) = link(&mut c, "e2").await;
    let answer = c
        .rebind_many(authed(proto::RebindManyRequest {
            peer_ids: vec!["a".into(), "nobody".into(), "c".into()],
            edge_id: "e2".into(),
            edge_region: String::new(),
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        answer.rejected,
        vec![
            proto::Rejection::None as i32,
            proto::Rejection::UnknownPeer as i32,
            proto::Rejection::None as i32
        ]
    );
    // e2 now has members in both rooms and hears each move.
    let mut moved = Vec::new();
    for _ in 0..2 {
        let replica_to_edge::Msg::Event(e) = next(&mut in2).await else {
            panic!()
        };
        let Some(room_event::Kind::Moved(m)) = e.kind else {
            panic!("expected a move, got {:?}", e.kind)
        };
        moved.push((e.room, m.peer_id, m.edge_id));
    }
    moved.sort();
    assert_eq!(
        moved,
        vec![
            ("q".into(), "c".into(), "e2".into()),
            ("r".into(), "a".into(), "e2".into())
        ]
    );

    let rooms = c
        .get_rooms(authed(proto::GetRoomsRequest {
            rooms: vec!["r".into(), "empty".into(), "q".into()],
        }))
        .await
        .unwrap()
        .into_inner()
        .rooms;
    assert_eq!(rooms.len(), 3);
    let on = |room: &proto::GetRoomResponse, peer: &str| {
        room.members
            .iter()
            .find(|m| m.peer_id == peer)
            .map(|m| m.edge_id.clone())
    };
    assert!(rooms[0].found && rooms[2].found && !rooms[1].found);
    assert_eq!(on(&rooms[0], "a").as_deref(), Some("e2"));
    assert_eq!(on(&rooms[0], "b").as_deref(), Some("e1"));
    assert_eq!(on(&rooms[2], "c").as_deref(), Some("e2"));
    // Each answer is the one GetRoom gives.
    let single = c
        .get_room(authed(proto::GetRoomRequest { room: "r".into() }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(single, rooms[0]);

    // Too many items, or one bad id, refuse the whole call.
    let err = c
        .get_rooms(authed(proto::GetRoomsRequest {
            rooms: vec!["r".into(); 1025],
        }))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    let err = c
        .rebind_many(authed(proto::RebindManyRequest {
            peer_ids: vec!["a".into(), "bad\nid".into()],
            edge_id: "e2".into(),
            edge_region: String::new(),
        }))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("peer_ids"), "{}", err.message());
    let err = c
        .rebind_many(Request::new(proto::RebindManyRequest::default()))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    drop(tx2);
    s.stop().await;
}
