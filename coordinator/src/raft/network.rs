//! Raft RPCs to peer replicas over gRPC.
//!
//! One lazily connected tonic `Channel` per peer is cached and shared by every client openraft
//! creates for it, so replication streams, votes and snapshots reuse one HTTP/2 connection and
//! its reconnect backoff (over mutual TLS when configured). Each call carries the cluster
//! secret and this replica's cluster id;
//! openraft's `RPCOption` bounds each call.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use heliograph_proto::raft::v1::RaftBytes;
use heliograph_proto::raft::v1::raft_client::RaftClient;
use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable,
};
use openraft::network::RPCOption;
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::{RaftNetwork, RaftNetworkFactory};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tonic::metadata::MetadataValue;
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;
use tonic::{Code, Request, Status};

use super::identity::Identity;
use super::node::NodeInfo;
use super::types::{NodeId, TypeConfig};
use crate::transport::metadata::CLUSTER_HEADER;
use crate::transport::{ClusterSecret, MAX_RAFT_MESSAGE_BYTES, dial, tls};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// Detects a dead peer on an idle connection sooner than TCP would.
const KEEP_ALIVE_INTERVAL: Duration = Duration::from_secs(5);

type Client = RaftClient<InterceptedService<Channel, Credentials>>;

/// Adds the cluster secret and cluster id to every outgoing Raft RPC.
#[derive(Clone)]
pub struct Credentials {
    secret: Option<ClusterSecret>,
    identity: Arc<Identity>,
}

impl Interceptor for Credentials {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        if let Some(secret) = &self.secret {
            secret.attach(&mut request);
        }
        if let Some(cluster) = self.identity.cluster_id()
            && let Ok(v) = MetadataValue::try_from(cluster)
        {
            request.metadata_mut().insert(CLUSTER_HEADER, v);
        }
        Ok(request)
    }
}

/// Creates clients for peers, sharing one channel per peer address.
#[derive(Clone)]
pub struct GrpcNetwork {
    credentials: Credentials,
    /// This replica's region: Raft messages to members of other regions are counted apart.
    region: String,
    channels: Arc<Mutex<HashMap<NodeId, (String, Channel)>>>,
}

impl GrpcNetwork {
    /// Without a secret (the embedded single replica, which never sends) calls go out bare.
    pub fn new(secret: Option<ClusterSecret>, identity: Arc<Identity>, region: String) -> Self {
        Self {
            credentials: Credentials { secret, identity },
            region,
            channels: Arc::default(),
        }
    }

    fn channel(&self, target: NodeId, addr: &str) -> Result<Channel, String> {
        let mut channels = self.channels.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some((cached_addr, channel)) = channels.get(&target)
            && cached_addr == addr
        {
            return Ok(channel.clone());
        }
        let tls = self
            .credentials
            .secret
            .as_ref()
            .and_then(ClusterSecret::tls);
        let channel = tls::endpoint(dial::resolve(addr), tls)
            .map_err(|e| format!("bad raft address {addr:?} for node {target}: {e}"))?
            .connect_timeout(CONNECT_TIMEOUT)
            .http2_keep_alive_interval(KEEP_ALIVE_INTERVAL)
            .connect_lazy();
        channels.insert(target, (addr.to_owned(), channel.clone()));
        Ok(channel)
    }
}

impl RaftNetworkFactory<TypeConfig> for GrpcNetwork {
    type Network = PeerClient;

    async fn new_client(&mut self, target: NodeId, node: &NodeInfo) -> Self::Network {
        let client = self.channel(target, &node.raft_addr).map(|ch| {
            RaftClient::with_interceptor(ch, self.credentials.clone())
                .max_decoding_message_size(MAX_RAFT_MESSAGE_BYTES)
                .max_encoding_message_size(MAX_RAFT_MESSAGE_BYTES)
        });
        let cross_region = node.region != self.region;
        PeerClient {
            target,
            client,
            cross_region,
        }
    }
}

/// Sends Raft RPCs to one peer.
pub struct PeerClient {
    target: NodeId,
    /// `Err` holds why the peer's address is unusable.
    client: Result<Client, String>,
    /// The peer is in another region.
    cross_region: bool,
}

type RpcResult<T, E> = Result<T, RPCError<NodeId, NodeInfo, E>>;

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct TransportError(String);

impl PeerClient {
    async fn call<Req, Resp, E>(
        &mut self,
        method: Method,
        request: &Req,
        data: Vec<u8>,
        option: &RPCOption,
    ) -> RpcResult<Resp, E>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let client = match &mut self.client {
            Ok(c) => c,
            Err(reason) => {
                return Err(RPCError::Unreachable(Unreachable::new(&TransportError(
                    reason.clone(),
                ))));
            }
        };
        crate::metrics::raft_message(self.cross_region);
        let json =
            serde_json::to_vec(request).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        let mut req = Request::new(RaftBytes { json, data });
        let ttl = option.hard_ttl();
        req.set_timeout(ttl);
        let sent = match method {
            Method::AppendEntries => client.append_entries(req).await,
            Method::Vote => client.vote(req).await,
            Method::InstallSnapshot => client.install_snapshot(req).await,
        };
        let reply = sent.map_err(|status| status_error(&status))?.into_inner();
        let result: Result<Resp, E> = serde_json::from_slice(&reply.json)
            .map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        result.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }
}

#[derive(Clone, Copy)]
enum Method {
    AppendEntries,
    Vote,
    InstallSnapshot,
}

/// A peer that cannot be reached is `Unreachable` (openraft backs off); anything else is a
/// network error, retried at once.
fn status_error<E: std::error::Error>(status: &Status) -> RPCError<NodeId, NodeInfo, E> {
    let e = TransportError(format!("{:?}: {}", status.code(), status.message()));
    match status.code() {
        Code::Unavailable | Code::Unauthenticated | Code::FailedPrecondition => {
            RPCError::Unreachable(Unreachable::new(&e))
        }
        _ => RPCError::Network(NetworkError::new(&e)),
    }
}

impl RaftNetwork<TypeConfig> for PeerClient {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<AppendEntriesResponse<NodeId>, RaftError<NodeId>> {
        self.call(Method::AppendEntries, &rpc, Vec::new(), &option)
            .await
    }

    async fn install_snapshot(
        &mut self,
        mut rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<InstallSnapshotResponse<NodeId>, RaftError<NodeId, InstallSnapshotError>> {
        // The chunk travels raw beside the JSON (see `RaftBytes.data`).
        let data = std::mem::take(&mut rpc.data);
        self.call(Method::InstallSnapshot, &rpc, data, &option)
            .await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> RpcResult<VoteResponse<NodeId>, RaftError<NodeId>> {
        self.call(Method::Vote, &rpc, Vec::new(), &option).await
    }
}
