//! Placeholder for the edge-facing registry service (written separately; this stub only keeps
//! the binary's wiring compiling until it lands). Every call is `UNIMPLEMENTED`.

use heliograph_proto::registry::v1 as pb;
use heliograph_proto::registry::v1::registry_server::{Registry, RegistryServer};
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::{Request, Response, Status};

use crate::embedded::EmbeddedCoordinator;
use crate::grpc::auth::ClusterSecret;

pub struct RegistryStub {
    _replica: EmbeddedCoordinator,
}

/// The edge-facing service of `replica`, refusing calls without `secret`.
pub fn registry_server(
    replica: EmbeddedCoordinator,
    secret: ClusterSecret,
) -> InterceptedService<RegistryServer<RegistryStub>, impl Interceptor + Clone + use<>> {
    RegistryServer::with_interceptor(RegistryStub { _replica: replica }, secret.interceptor())
}

fn unimplemented<T>() -> Result<Response<T>, Status> {
    Err(Status::unimplemented(
        "the registry API is not available yet",
    ))
}

#[tonic::async_trait]
impl Registry for RegistryStub {
    type WatchStream = tokio_stream::Empty<Result<pb::RoomEvent, Status>>;

    async fn register_edge(
        &self,
        _: Request<pb::RegisterEdgeRequest>,
    ) -> Result<Response<pb::RegisterEdgeResponse>, Status> {
        unimplemented()
    }
    async fn renew_lease(
        &self,
        _: Request<pb::RenewLeaseRequest>,
    ) -> Result<Response<pb::RenewLeaseResponse>, Status> {
        unimplemented()
    }
    async fn release_edge(
        &self,
        _: Request<pb::ReleaseEdgeRequest>,
    ) -> Result<Response<pb::ReleaseEdgeResponse>, Status> {
        unimplemented()
    }
    async fn join(
        &self,
        _: Request<pb::JoinRequest>,
    ) -> Result<Response<pb::JoinResponse>, Status> {
        unimplemented()
    }
    async fn leave(
        &self,
        _: Request<pb::LeaveRequest>,
    ) -> Result<Response<pb::LeaveResponse>, Status> {
        unimplemented()
    }
    async fn disconnect(
        &self,
        _: Request<pb::DisconnectRequest>,
    ) -> Result<Response<pb::DisconnectResponse>, Status> {
        unimplemented()
    }
    async fn get_room(
        &self,
        _: Request<pb::GetRoomRequest>,
    ) -> Result<Response<pb::GetRoomResponse>, Status> {
        unimplemented()
    }
    async fn list_rooms(
        &self,
        _: Request<pb::ListRoomsRequest>,
    ) -> Result<Response<pb::ListRoomsResponse>, Status> {
        unimplemented()
    }
    async fn watch(
        &self,
        _: Request<pb::WatchRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        unimplemented()
    }
}
