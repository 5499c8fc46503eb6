//! Serves a replica: the Raft service on its own listener, and the edge-facing registry and
//! admin services on the API listener. The caller owns the listeners (bind port 0 in tests) and
//! the shutdown token; nothing here reads signals.

use tokio::net::{TcpListener, TcpStream};
use tokio_stream::wrappers::TcpListenerStream;
use tokio_stream::{Stream, StreamExt};
use tokio_util::sync::CancellationToken;
use tonic::transport::Server;

use crate::embedded::EmbeddedCoordinator;
use crate::grpc::admin_service::admin_server;
use crate::grpc::auth::ClusterSecret;
use crate::grpc::proto::registry_server::RegistryServer;
use crate::grpc::raft_service::raft_server;
use crate::grpc::registry_service::RegistryService;

#[derive(Debug, thiserror::Error)]
#[error("the {listener} listener failed: {source}")]
pub struct ServeError {
    listener: &'static str,
    source: tonic::transport::Error,
}

/// Accepted connections with Nagle's algorithm off. Raft appends, their acknowledgements, link
/// events and write replies are small messages on long-lived streams; with Nagle on, each
/// can wait for the peer's delayed ACK (40 ms), which would cap commits at ~25 per second per
/// stream. (tonic only sets this for listeners it binds itself.)
fn no_delay(listener: TcpListener) -> impl Stream<Item = std::io::Result<TcpStream>> {
    TcpListenerStream::new(listener).map(|accepted| {
        if let Ok(stream) = &accepted {
            let _ = stream.set_nodelay(true);
        }
        accepted
    })
}

/// Serves until `shutdown` is cancelled and both servers have drained their connections.
pub async fn serve(
    replica: EmbeddedCoordinator,
    secret: ClusterSecret,
    raft_listener: TcpListener,
    api_listener: TcpListener,
    shutdown: CancellationToken,
) -> Result<(), ServeError> {
    let raft = Server::builder()
        .add_service(raft_server(&replica, &secret))
        .serve_with_incoming_shutdown(no_delay(raft_listener), shutdown.clone().cancelled_owned());
    let api = Server::builder()
        .add_service(admin_server(replica.clone(), &secret))
        // Link streams stay open until the service is told to stop; without this token the
        // API server's graceful shutdown would wait for every edge to hang up.
        .add_service(RegistryServer::new(RegistryService::new(
            replica,
            secret,
            shutdown.clone(),
        )))
        .serve_with_incoming_shutdown(no_delay(api_listener), shutdown.cancelled_owned());
    let (raft, api) = tokio::join!(raft, api);
    raft.map_err(|source| ServeError {
        listener: "raft",
        source,
    })?;
    api.map_err(|source| ServeError {
        listener: "api",
        source,
    })
}
