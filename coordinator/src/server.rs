//! Serves a replica: the Raft service on its own listener, and the edge-facing registry and
//! admin services on the API listener. The caller owns the listeners (bind port 0 in tests) and
//! the shutdown token; nothing here reads signals. With a TLS identity on the secret, both
//! listeners require client certificates from the cluster CA.

use std::sync::Arc;

use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tokio_util::sync::CancellationToken;

use crate::grpc::admin_service::admin_server;
use crate::grpc::proto::registry_server::RegistryServer;
use crate::grpc::raft_service::raft_server;
use crate::grpc::registry_service::RegistryService;
use crate::replica::Replica;
use crate::transport::{ClusterSecret, tls};

#[derive(Debug, thiserror::Error)]
#[error("the {listener} listener failed: {source}")]
pub struct ServeError {
    listener: &'static str,
    source: tonic::transport::Error,
}

/// Serves until `shutdown` is cancelled and both servers have drained their connections.
pub async fn serve(
    replica: Replica,
    secret: ClusterSecret,
    raft_listener: TcpListener,
    api_listener: TcpListener,
    shutdown: CancellationToken,
) -> Result<(), ServeError> {
    // Link streams stay open until the service is told to stop; without this token the
    // API server's graceful shutdown would wait for every edge to hang up.
    let registry = RegistryService::new(replica.clone(), secret.clone(), shutdown.clone());
    serve_with(
        replica,
        secret,
        registry,
        raft_listener,
        api_listener,
        shutdown,
    )
    .await
}

/// [`serve`] with a registry service the caller built (on the same `shutdown`), so that the
/// server API shares its links and relay.
pub async fn serve_with(
    replica: Replica,
    secret: ClusterSecret,
    registry: RegistryService,
    raft_listener: TcpListener,
    api_listener: TcpListener,
    shutdown: CancellationToken,
) -> Result<(), ServeError> {
    let builder =
        |listener| tls::server(secret.tls()).map_err(|source| ServeError { listener, source });
    let raft = builder("raft")?
        .add_service(raft_server(
            replica.raft().clone(),
            Arc::clone(replica.identity()),
            &secret,
        ))
        .serve_with_incoming_shutdown(nodelay(raft_listener), shutdown.clone().cancelled_owned());
    let api = builder("api")?
        .add_service(admin_server(replica, registry.clone(), &secret))
        .add_service(RegistryServer::new(registry))
        .serve_with_incoming_shutdown(nodelay(api_listener), shutdown.cancelled_owned());
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

/// Accepted connections with Nagle off. tonic sets TCP_NODELAY only on listeners it binds
/// itself; without it a small relayed signal or event can wait for the peer's delayed ACK
/// (~40 ms) behind another unacknowledged one.
fn nodelay(
    listener: TcpListener,
) -> impl tokio_stream::Stream<Item = std::io::Result<tokio::net::TcpStream>> {
    use tokio_stream::StreamExt;
    TcpListenerStream::new(listener).map(|accepted| {
        accepted.inspect(|stream| {
            if let Err(e) = stream.set_nodelay(true) {
                tracing::debug!(error = %e, "cannot set TCP_NODELAY");
            }
        })
    })
}
