//! Raft networking for a replica without peers: every peer is unreachable.
//!
//! A single replica never needs to send an RPC; this keeps openraft's contract until the gRPC
//! network for multi-replica clusters replaces it.

use std::io;

use openraft::error::{InstallSnapshotError, RPCError, RaftError, Unreachable};
use openraft::network::RPCOption;
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::{BasicNode, RaftNetwork, RaftNetworkFactory};

use super::{NodeId, TypeConfig};

/// Hands out clients that cannot reach anyone.
#[derive(Debug, Clone, Default)]
pub struct NoPeers;

/// A client for a peer this replica has no way to reach.
#[derive(Debug)]
pub struct Unconnected {
    target: NodeId,
}

impl Unconnected {
    fn error<E: std::error::Error>(&self) -> RPCError<NodeId, BasicNode, E> {
        let reason = io::Error::new(
            io::ErrorKind::NotConnected,
            format!("no network to reach node {}", self.target),
        );
        RPCError::Unreachable(Unreachable::new(&reason))
    }
}

impl RaftNetworkFactory<TypeConfig> for NoPeers {
    type Network = Unconnected;

    async fn new_client(&mut self, target: NodeId, _node: &BasicNode) -> Self::Network {
        Unconnected { target }
    }
}

impl RaftNetwork<TypeConfig> for Unconnected {
    async fn append_entries(
        &mut self,
        _rpc: AppendEntriesRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        Err(self.error())
    }

    async fn install_snapshot(
        &mut self,
        _rpc: InstallSnapshotRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<NodeId>,
        RPCError<NodeId, BasicNode, RaftError<NodeId, InstallSnapshotError>>,
    > {
        Err(self.error())
    }

    async fn vote(
        &mut self,
        _rpc: VoteRequest<NodeId>,
        _option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        Err(self.error())
    }
}
