//! The peer-facing Raft service: hands other replicas' RPCs to openraft.
//!
//! Served on its own listener, behind the cluster secret. A request from another cluster (its
//! `x-heliograph-cluster` id differs from the one this data directory is bound to) is refused,
//! and an unbound directory binds itself to the first cluster that reaches it: that is how a
//! joining replica learns its cluster id. A sender that is not a replica of the cluster is
//! refused (see the `raft_guard` module). Malformed bytes are the caller's fault,
//! never a panic.

use std::sync::Arc;

use heliograph_proto::raft::v1::RaftBytes;
use heliograph_proto::raft::v1::raft_server::{Raft as RaftRpc, RaftServer};
use openraft::raft::{AppendEntriesRequest, InstallSnapshotRequest, VoteRequest};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::{Request, Response, Status};

use super::raft_guard::{RpcKind, admit};
use crate::raft::identity::Identity;
use crate::raft::{NodeId, Raft, TypeConfig};
use crate::transport::metadata::CLUSTER_HEADER;
use crate::transport::{ClusterSecret, MAX_RAFT_MESSAGE_BYTES};

pub struct RaftService {
    raft: Raft,
    identity: Arc<Identity>,
}

/// The Raft service handing calls to `raft`, checking callers against the cluster `identity`
/// binds, and refusing calls without `secret`.
pub fn raft_server(
    raft: Raft,
    identity: Arc<Identity>,
    secret: &ClusterSecret,
) -> InterceptedService<RaftServer<RaftService>, impl Interceptor + Clone + use<>> {
    let service = RaftService { raft, identity };
    InterceptedService::new(
        RaftServer::new(service)
            .max_decoding_message_size(MAX_RAFT_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_RAFT_MESSAGE_BYTES),
        secret.interceptor(),
    )
}

impl RaftService {
    /// Checks the caller's cluster and decodes its request.
    fn accept<T: DeserializeOwned>(&self, request: &Request<RaftBytes>) -> Result<T, Status> {
        let cluster = request
            .metadata()
            .get(CLUSTER_HEADER)
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| Status::failed_precondition("the caller sent no cluster id"))?;
        self.identity
            .adopt(cluster)
            .map_err(|e| Status::failed_precondition(e.to_string()))?;
        serde_json::from_slice(&request.get_ref().json)
            .map_err(|e| Status::invalid_argument(format!("malformed raft message: {e}")))
    }
}

fn reply<T: Serialize, E: Serialize>(result: &Result<T, E>) -> Result<Response<RaftBytes>, Status> {
    let json = serde_json::to_vec(result)
        .map_err(|e| Status::internal(format!("cannot encode the raft reply: {e}")))?;
    Ok(Response::new(RaftBytes {
        json,
        data: Vec::new(),
    }))
}

#[tonic::async_trait]
impl RaftRpc for RaftService {
    async fn append_entries(
        &self,
        request: Request<RaftBytes>,
    ) -> Result<Response<RaftBytes>, Status> {
        let rpc: AppendEntriesRequest<TypeConfig> = self.accept(&request)?;
        admit(&self.raft, &rpc.vote, RpcKind::Replication)?;
        reply(&self.raft.append_entries(rpc).await)
    }

    async fn vote(&self, request: Request<RaftBytes>) -> Result<Response<RaftBytes>, Status> {
        let rpc: VoteRequest<NodeId> = self.accept(&request)?;
        admit(&self.raft, &rpc.vote, RpcKind::Vote)?;
        reply(&self.raft.vote(rpc).await)
    }

    async fn install_snapshot(
        &self,
        mut request: Request<RaftBytes>,
    ) -> Result<Response<RaftBytes>, Status> {
        let data = std::mem::take(&mut request.get_mut().data);
        let mut rpc: InstallSnapshotRequest<TypeConfig> = self.accept(&request)?;
        // The chunk comes raw beside the JSON (a sender of an earlier version puts it in the
        // JSON, and sends no raw bytes).
        if rpc.data.is_empty() {
            rpc.data = data;
        }
        admit(&self.raft, &rpc.vote, RpcKind::Replication)?;
        reply(&self.raft.install_snapshot(rpc).await)
    }
}
