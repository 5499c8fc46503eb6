//! Cluster administration over gRPC: bootstrap, add and remove replicas, the other regions'
//! gateways, status, snapshots on request.
//!
//! Membership changes run on the leader; a follower answers `FAILED_PRECONDITION` with the
//! leader's API address in `x-heliograph-leader-api` and the client retries there.

use heliograph_proto::admin::v1 as pb;
use heliograph_proto::admin::v1::admin_server::{Admin, AdminServer};
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::{Request, Response, Status};

use super::admin_client::{self, AdminCall};
use super::registry_service::RegistryService;
use super::status::status_from;
use crate::raft::NodeInfo;
use crate::registry::{Command, Region};
use crate::replica::{ClusterStatus, Replica};
use crate::transport::ClusterSecret;

pub struct AdminService {
    replica: Replica,
    registry: RegistryService,
    secret: ClusterSecret,
}

/// How long `status` waits for another region's group.
const REGION_STATUS_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

/// The admin service of `replica` (and of its `registry` service's federation), refusing
/// calls without `secret`.
pub fn admin_server(
    replica: Replica,
    registry: RegistryService,
    secret: &ClusterSecret,
) -> InterceptedService<AdminServer<AdminService>, impl Interceptor + Clone + use<>> {
    let service = AdminService {
        replica,
        registry,
        secret: secret.clone(),
    };
    AdminServer::with_interceptor(service, secret.interceptor())
}

impl AdminService {
    /// This replica's status; unless `local`, with each other region's group as one of its
    /// gateways sees it (asked concurrently, each within [`REGION_STATUS_TIMEOUT`]).
    async fn full_status(&self, local: bool) -> Response<pb::StatusResponse> {
        let mut response = self.status();
        if local {
            return response;
        }
        let mut asks = tokio::task::JoinSet::new();
        for (i, r) in response.get_ref().regions.iter().enumerate() {
            let gateways = r.gateways.clone();
            let secret = self.secret.clone();
            asks.spawn(async move {
                let mut error = String::from("no gateway answered");
                for addr in &gateways {
                    let call = admin_client::call(addr, Some(&secret), AdminCall::LocalStatus);
                    match tokio::time::timeout(REGION_STATUS_TIMEOUT, call).await {
                        Ok(Ok(status)) => return (i, Some(status), String::new()),
                        Ok(Err(e)) => error = e.to_string(),
                        Err(_) => error = format!("{addr} did not answer in time"),
                    }
                }
                (i, None, error)
            });
        }
        while let Some(answer) = asks.join_next().await {
            let Ok((i, group, error)) = answer else {
                continue;
            };
            if let Some(r) = response.get_mut().regions.get_mut(i) {
                r.group = group;
                r.error = error;
            }
        }
        response
    }

    fn status(&self) -> Response<pb::StatusResponse> {
        let mut status = to_proto(self.replica.status());
        status.region = self.replica.region().to_owned();
        status.regions = self
            .registry
            .regions_status()
            .into_iter()
            .map(|(region, gateways, connected, rooms)| pb::RegionStatus {
                region: region.to_string(),
                gateways,
                connected,
                rooms,
                group: None,
                error: String::new(),
            })
            .collect();
        Response::new(status)
    }
}

pub fn to_proto(s: ClusterStatus) -> pb::StatusResponse {
    pb::StatusResponse {
        region: String::new(),
        regions: Vec::new(),
        node_id: s.node_id,
        cluster_id: s.cluster_id,
        state: s.state,
        leader: s.leader,
        leader_api: s.leader_api,
        term: s.term,
        last_log_index: s.last_log_index,
        commit_index: s.commit_index,
        applied_index: s.applied_index,
        snapshot_index: s.snapshot_index,
        snapshots_installed: s.snapshots_installed,
        members: s
            .members
            .into_iter()
            .map(|m| pb::Member {
                id: m.id,
                voter: m.voter,
                raft_addr: m.node.raft_addr,
                api_addr: m.node.api_addr,
                region: m.node.region,
            })
            .collect(),
    }
}

#[tonic::async_trait]
impl Admin for AdminService {
    async fn bootstrap(
        &self,
        _: Request<pb::BootstrapRequest>,
    ) -> Result<Response<pb::StatusResponse>, Status> {
        self.replica.bootstrap().await.map_err(status_from)?;
        Ok(self.status())
    }

    async fn add_member(
        &self,
        request: Request<pb::AddMemberRequest>,
    ) -> Result<Response<pb::StatusResponse>, Status> {
        let r = request.into_inner();
        if r.id == 0 || r.raft_addr.is_empty() || r.api_addr.is_empty() {
            return Err(Status::invalid_argument(
                "a member needs an id above 0, a raft address and an api address",
            ));
        }
        let node = NodeInfo {
            raft_addr: r.raft_addr,
            api_addr: r.api_addr,
            region: r.region,
        };
        self.replica
            .add_member(r.id, node, r.learner_only)
            .await
            .map_err(status_from)?;
        Ok(self.status())
    }

    async fn remove_member(
        &self,
        request: Request<pb::RemoveMemberRequest>,
    ) -> Result<Response<pb::StatusResponse>, Status> {
        self.replica
            .remove_member(request.into_inner().id)
            .await
            .map_err(status_from)?;
        Ok(self.status())
    }

    async fn set_region(
        &self,
        request: Request<pb::SetRegionRequest>,
    ) -> Result<Response<pb::StatusResponse>, Status> {
        let r = request.into_inner();
        let region =
            Region::new(r.region).map_err(|e| Status::invalid_argument(format!("region: {e}")))?;
        if region.as_str() == self.replica.region() {
            return Err(Status::invalid_argument(
                "that is this replica's own region; name another region",
            ));
        }
        if let Some(bad) = r
            .gateways
            .iter()
            .find(|g| g.trim().is_empty() || g.contains('/'))
        {
            return Err(Status::invalid_argument(format!(
                "gateway {bad:?} is not host:port"
            )));
        }
        self.replica
            .execute(Command::SetRegion {
                region,
                gateways: r.gateways,
            })
            .await
            .map_err(status_from)?;
        Ok(self.status())
    }

    async fn snapshot(
        &self,
        _: Request<pb::SnapshotRequest>,
    ) -> Result<Response<pb::SnapshotResponse>, Status> {
        let built = self.replica.snapshot().await.map_err(status_from)?;
        Ok(Response::new(pb::SnapshotResponse {
            index: built.index,
            bytes: built.bytes,
            build_ms: u64::try_from(built.build.as_millis()).unwrap_or(u64::MAX),
        }))
    }

    async fn status(
        &self,
        request: Request<pb::StatusRequest>,
    ) -> Result<Response<pb::StatusResponse>, Status> {
        Ok(self.full_status(request.get_ref().local).await)
    }
}
