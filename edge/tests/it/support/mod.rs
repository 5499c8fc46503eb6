//! What the edge's integration tests share beyond the test kit: an in-process coordinator
//! replica (it needs the coordinator crate's internals, which the kit does not know), the
//! resumable session client, and queries of Redis and replica metrics.

pub mod resumable;
pub mod sio;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use heliograph_testkit::CLUSTER_SECRET;
pub use heliograph_testkit::cluster::{Cluster, Spec};
pub use heliograph_testkit::edge::Node;
pub use heliograph_testkit::http::{get as http_get, metric};
use heliograph_testkit::redis::Redis;
use heliograph_testkit::replica::Replica;
pub use heliograph_testkit::wait::{DEADLINE, wait_for};
pub use heliograph_testkit::ws::Client;
use serde_json::json;

/// One masked client text frame's bytes, as a client writes it on the wire (mask zero: the
/// payload is as written; under 126 bytes).
pub fn masked_text(payload: &str) -> Vec<u8> {
    let bytes = payload.as_bytes();
    assert!(bytes.len() < 126);
    let mut frame = vec![0x81, 0x80 | bytes.len() as u8, 0, 0, 0, 0];
    frame.extend_from_slice(bytes);
    frame
}

/// `serve` flags of the replicas of the region tests' clusters: detached peers keep their
/// place for half a second.
pub const REGION_REPLICA_ARGS: &[&str] = &["--grace-ms", "500"];

/// Waits until every replica of `cluster` outside `region` knows that `region` homes at least
/// `rooms` rooms (its `status` lists them under `regions`).
pub async fn wait_homes_known(cluster: &Cluster, region: &str, rooms: u64) {
    for r in cluster.replicas.iter().filter(|r| r.region != region) {
        heliograph_testkit::wait::until(
            DEADLINE,
            "the other regions to learn the rooms' homes",
            || {
                let status = cluster.admin.status(&r.api).unwrap();
                let known = status["regions"].as_array().is_some_and(|rs| {
                    rs.iter()
                        .any(|x| x["region"] == region && x["rooms"].as_u64() >= Some(rooms))
                });
                std::future::ready(known.then_some(()))
            },
        )
        .await
        .unwrap();
    }
}

/// A coordinator replica served in the test process: an embedded single replica behind the
/// edge-facing gRPC service on 127.0.0.1:0 (until the coordinator binary exists).
pub struct TestCoordinator {
    pub url: String,
    addr: std::net::SocketAddr,
    dir: PathBuf,
    grace: Duration,
    pub replica: heliograph_coordinator::Replica,
    stop: tokio_util::sync::CancellationToken,
    server: Option<tokio::task::JoinHandle<()>>,
}

impl TestCoordinator {
    /// `grace`: how long detached peers keep their place.
    pub async fn start(dir: &Path, grace: Duration) -> TestCoordinator {
        Self::start_on(dir, grace, "127.0.0.1:0").await
    }

    /// Stops the service and the replica, and starts them again on the same port and data.
    /// `while_down` runs in between.
    pub async fn restart<F: std::future::Future<Output = ()>>(
        self,
        while_down: impl FnOnce() -> F,
    ) -> TestCoordinator {
        let (dir, grace, addr) = (self.dir.clone(), self.grace, self.addr);
        self.stop().await;
        while_down().await;
        Self::start_on(&dir, grace, &addr.to_string()).await
    }

    async fn start_on(dir: &Path, grace: Duration, listen: &str) -> TestCoordinator {
        use heliograph_coordinator::grpc::proto::registry_server::RegistryServer;
        use heliograph_coordinator::grpc::registry_service::RegistryService;
        use heliograph_coordinator::transport::ClusterSecret;
        let mut config = heliograph_coordinator::EmbeddedConfig::new(dir.join("replica"));
        config.grace = grace;
        let replica = heliograph_coordinator::Replica::open(config).await.unwrap();
        let listener = tokio::net::TcpListener::bind(listen).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let url = format!("http://{addr}");
        let stop = tokio_util::sync::CancellationToken::new();
        // The service's token closes the edges' links, which graceful shutdown waits for.
        let service = RegistryServer::new(RegistryService::new(
            replica.clone(),
            ClusterSecret::new(CLUSTER_SECRET).unwrap(),
            stop.clone(),
        ));
        let shutdown = stop.clone();
        let server = tokio::spawn(async move {
            tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming_shutdown(
                    tokio_stream::wrappers::TcpListenerStream::new(listener),
                    shutdown.cancelled_owned(),
                )
                .await
                .unwrap();
        });
        TestCoordinator {
            url,
            addr,
            dir: dir.to_owned(),
            grace,
            replica,
            stop,
            server: Some(server),
        }
    }

    /// Flags that point an edge at this coordinator.
    pub fn edge_args(&self) -> Vec<String> {
        vec![
            "--coordinator".into(),
            self.url.clone(),
            "--cluster-secret".into(),
            CLUSTER_SECRET.into(),
        ]
    }

    pub async fn stop(mut self) {
        self.stop.cancel();
        if let Some(s) = self.server.take() {
            let _ = s.await;
        }
        self.replica.shutdown().await;
    }
}

/// Once both edges are ready, two clients, one on each, meet in room `call`, exchange an offer
/// and an answer (each with the server-stamped `from`), and nothing else is queued for either.
pub async fn meet_and_signal(edge_a: &Node, edge_b: &Node) -> (Client, Client) {
    edge_a.wait_ready().await;
    edge_b.wait_ready().await;
    let mut a = Client::connect(&edge_a.ws_url()).await;
    let mut b = Client::connect(&edge_b.ws_url()).await;
    assert_eq!(a.join("call").await["peers"], json!([]));
    let joined = b.join("call").await;
    assert_eq!(joined["peers"][0]["id"], a.peer_id.as_str());
    let pj = a.expect("peer-joined").await;
    assert_eq!(pj["peer"]["id"], b.peer_id.as_str());

    a.send(json!({"type": "signal", "room": "call", "to": b.peer_id, "kind": "offer", "data": {"sdp": "o"}}))
        .await;
    let got = b.expect("signal").await;
    assert_eq!(got["from"], a.peer_id.as_str());
    assert_eq!(got["data"], json!({"sdp": "o"}));
    b.send(json!({"type": "signal", "room": "call", "to": a.peer_id, "kind": "answer", "data": {"sdp": "a"}}))
        .await;
    let got = a.expect("signal").await;
    assert_eq!(got["from"], b.peer_id.as_str());
    assert_eq!(got["kind"], "answer");
    // Exactly once.
    a.assert_pong("a1").await;
    b.assert_pong("b1").await;
    (a, b)
}

/// One region `us`: a replica, a Redis and edges `us-a` and `us-b`.
pub async fn us_region() -> Cluster {
    Cluster::start(Spec {
        replicas: &[(1, "us")],
        edges: &[("us-a", "us"), ("us-b", "us")],
        redis: &["us"],
        replica_args: REGION_REPLICA_ARGS,
        ..Spec::default()
    })
    .await
}

/// Regions `us` (edges `us-a`, `us-b`) and `eu` (edge `eu-a`), a replica each, and a Redis
/// in each of `redis`.
pub async fn us_and_eu(redis: &[&str]) -> Cluster {
    Cluster::start(Spec {
        replicas: &[(1, "us"), (2, "eu")],
        edges: &[("us-a", "us"), ("us-b", "us"), ("eu-a", "eu")],
        redis,
        replica_args: REGION_REPLICA_ARGS,
        ..Spec::default()
    })
    .await
}

/// Session queries of a test's Redis.
pub trait SessionStore {
    /// Whether Redis holds a resumable session for `peer`.
    async fn has_session(&self, peer: &str) -> bool;
}

impl SessionStore for Redis {
    async fn has_session(&self, peer: &str) -> bool {
        let Ok(client) = redis::Client::open(self.url()) else {
            return false;
        };
        let Ok(mut conn) = client.get_multiplexed_async_connection().await else {
            return false;
        };
        redis::cmd("EXISTS")
            .arg(format!("heliograph:s:{peer}"))
            .query_async::<i64>(&mut conn)
            .await
            .is_ok_and(|n| n == 1)
    }
}

/// The cross-region and relay counters of one replica.
pub async fn replica_counters(r: &Replica) -> HashMap<&'static str, f64> {
    let text = r.scrape().await;
    [
        (
            "local",
            r#"heliograph_coordinator_relayed_signals_total{route="local"}"#,
        ),
        (
            "forwarded",
            r#"heliograph_coordinator_relayed_signals_total{route="forwarded"}"#,
        ),
        (
            "cross_region",
            r#"heliograph_coordinator_relayed_signals_total{route="cross_region"}"#,
        ),
        (
            "in",
            r#"heliograph_coordinator_cross_region_streams_messages_total{direction="in"}"#,
        ),
        (
            "out",
            r#"heliograph_coordinator_cross_region_streams_messages_total{direction="out"}"#,
        ),
    ]
    .into_iter()
    .map(|(k, s)| (k, metric(&text, s).unwrap_or(0.0)))
    .collect()
}
