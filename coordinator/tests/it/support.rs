//! In-process replicas for the coordinator's tests: each serves its Raft and API services on
//! port-0 listeners (or given addresses) in this test process.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use heliograph_coordinator::raft::NodeInfo;
use heliograph_coordinator::transport::ClusterSecret;
use heliograph_coordinator::{Replica, ReplicaConfig, ReplicaOptions, server};
use tempfile::TempDir;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub const SECRET: &str = "test-cluster-secret-0123456789";

pub fn secret() -> ClusterSecret {
    ClusterSecret::new(SECRET).unwrap()
}

pub struct Node {
    pub replica: Replica,
    pub raft: SocketAddr,
    pub api: SocketAddr,
    stop: CancellationToken,
    server: JoinHandle<()>,
    _dir: Option<TempDir>,
}

impl Node {
    /// Starts replica `id` in `dir`, on the given addresses (port 0 picks fresh ones).
    pub async fn start(
        id: u64,
        dir: &Path,
        raft: SocketAddr,
        api: SocketAddr,
        secret: ClusterSecret,
        options: ReplicaOptions,
    ) -> Self {
        let raft_listener = TcpListener::bind(raft).await.unwrap();
        let api_listener = TcpListener::bind(api).await.unwrap();
        let raft = raft_listener.local_addr().unwrap();
        let api = api_listener.local_addr().unwrap();
        let replica = Replica::open_replica_with(
            ReplicaConfig {
                node_id: id,
                data_dir: dir.to_path_buf(),
                raft_addr: raft,
                api_addr: api.to_string(),
                region: format!("region-{id}"),
                grace: Duration::from_secs(10),
                secret: secret.clone(),
            },
            options,
        )
        .await
        .unwrap();
        let stop = CancellationToken::new();
        let server = tokio::spawn({
            let (replica, stop) = (replica.clone(), stop.clone());
            async move {
                server::serve(replica, secret, raft_listener, api_listener, stop)
                    .await
                    .unwrap();
            }
        });
        Self {
            replica,
            raft,
            api,
            stop,
            server,
            _dir: None,
        }
    }

    /// Starts replica `id` with default options in a temporary directory of its own, on
    /// port-0 listeners.
    pub async fn start_in_tempdir(id: u64, secret: ClusterSecret) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut node = Self::start(
            id,
            dir.path(),
            any_port(),
            any_port(),
            secret,
            ReplicaOptions::default(),
        )
        .await;
        node._dir = Some(dir);
        node
    }

    pub fn info(&self) -> NodeInfo {
        NodeInfo {
            raft_addr: self.raft.to_string(),
            api_addr: self.api.to_string(),
            region: self.replica.region().to_owned(),
        }
    }

    pub async fn stop(self) {
        self.stop.cancel();
        self.server.await.unwrap();
        self.replica.shutdown().await;
    }
}

pub fn any_port() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}
