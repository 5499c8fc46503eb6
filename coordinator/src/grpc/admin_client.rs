//! A client of the admin service that follows the leader: membership changes answered with
//! `FAILED_PRECONDITION` and a leader address are retried there.

use std::time::Duration;

use heliograph_proto::admin::v1 as pb;
use heliograph_proto::admin::v1::admin_client::AdminClient;
use tonic::transport::Channel;
use tonic::{Code, Status};

use crate::transport::metadata::LEADER_API_HEADER;
use crate::transport::{ClusterSecret, tls};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// Adding a member waits for it to catch up, which can take a while.
const CALL_TIMEOUT: Duration = Duration::from_secs(90);
/// Leader changes followed per call; more means the cluster is electing in a loop.
const MAX_REDIRECTS: usize = 3;

#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("cannot reach {addr}: {reason}")]
    Connect { addr: String, reason: String },
    #[error("{addr} answered {code:?}: {message}")]
    Refused {
        addr: String,
        code: Code,
        message: String,
    },
    #[error("gave up after following the leader {MAX_REDIRECTS} times")]
    TooManyRedirects,
}

impl AdminError {
    /// The gRPC code of a refusal, if the call reached a replica.
    pub fn code(&self) -> Option<Code> {
        match self {
            Self::Refused { code, .. } => Some(*code),
            _ => None,
        }
    }
}

/// Adds the secret, when there is one, to each call.
type Attach =
    Box<dyn FnMut(tonic::Request<()>) -> Result<tonic::Request<()>, Status> + Send + Sync>;
type Client = AdminClient<tonic::service::interceptor::InterceptedService<Channel, Attach>>;

async fn connect(addr: &str, secret: Option<&ClusterSecret>) -> Result<Client, AdminError> {
    let connect_error = |reason: String| AdminError::Connect {
        addr: addr.to_owned(),
        reason,
    };
    let channel = tls::endpoint(addr, secret.and_then(ClusterSecret::tls))
        .map_err(|e| connect_error(tls::error_chain(&e)))?
        .connect_timeout(CONNECT_TIMEOUT)
        .timeout(CALL_TIMEOUT)
        .connect()
        .await
        .map_err(|e| connect_error(tls::error_chain(&e)))?;
    let secret = secret.cloned();
    let attach: Attach = Box::new(move |mut request| {
        if let Some(s) = &secret {
            s.attach(&mut request);
        }
        Ok(request)
    });
    Ok(AdminClient::with_interceptor(channel, attach))
}

/// Which admin call to make.
#[derive(Debug, Clone)]
pub enum AdminCall {
    Bootstrap,
    Add(pb::AddMemberRequest),
    Remove(pb::RemoveMemberRequest),
    SetRegion(pb::SetRegionRequest),
    /// This replica's view, with the other regions' groups as their gateways see them.
    Status,
    /// This replica's view of its own group only.
    LocalStatus,
}

/// Makes `call` at `addr`, following the leader for membership changes. `secret` is optional so
/// that tests can check that calls without it are refused.
pub async fn call(
    addr: &str,
    secret: Option<&ClusterSecret>,
    call: AdminCall,
) -> Result<pb::StatusResponse, AdminError> {
    let mut addr = addr.to_owned();
    for _ in 0..=MAX_REDIRECTS {
        let mut client = connect(&addr, secret).await?;
        let result = match call.clone() {
            AdminCall::Bootstrap => client.bootstrap(pb::BootstrapRequest {}).await,
            AdminCall::Add(r) => client.add_member(r).await,
            AdminCall::Remove(r) => client.remove_member(r).await,
            AdminCall::SetRegion(r) => client.set_region(r).await,
            AdminCall::Status => client.status(pb::StatusRequest { local: false }).await,
            AdminCall::LocalStatus => client.status(pb::StatusRequest { local: true }).await,
        };
        match result {
            Ok(response) => return Ok(response.into_inner()),
            Err(status) => {
                let leader = status
                    .metadata()
                    .get(LEADER_API_HEADER)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned);
                match leader {
                    Some(leader) if status.code() == Code::FailedPrecondition && leader != addr => {
                        addr = leader;
                    }
                    _ => {
                        return Err(AdminError::Refused {
                            addr,
                            code: status.code(),
                            message: status.message().to_owned(),
                        });
                    }
                }
            }
        }
    }
    Err(AdminError::TooManyRedirects)
}

/// Asks the replica at `addr` to build a snapshot now; answers once it is on disk.
pub async fn snapshot(
    addr: &str,
    secret: Option<&ClusterSecret>,
) -> Result<pb::SnapshotResponse, AdminError> {
    let mut client = connect(addr, secret).await?;
    client
        .snapshot(pb::SnapshotRequest {})
        .await
        .map(tonic::Response::into_inner)
        .map_err(|status| AdminError::Refused {
            addr: addr.to_owned(),
            code: status.code(),
            message: status.message().to_owned(),
        })
}

/// A snapshot's report as the JSON the CLI prints.
pub fn snapshot_json(s: &pb::SnapshotResponse) -> serde_json::Value {
    serde_json::json!({"index": s.index, "bytes": s.bytes, "build_ms": s.build_ms})
}

/// The status as the JSON the CLI prints.
pub fn status_json(s: &pb::StatusResponse) -> serde_json::Value {
    let members: Vec<_> = s
        .members
        .iter()
        .map(|m| {
            serde_json::json!({
                "id": m.id,
                "voter": m.voter,
                "raft_addr": m.raft_addr,
                "api_addr": m.api_addr,
                "region": m.region,
            })
        })
        .collect();
    let regions: Vec<_> = s
        .regions
        .iter()
        .map(|r| {
            serde_json::json!({
                "region": r.region,
                "gateways": r.gateways,
                "connected": r.connected,
                "rooms": r.rooms,
                "group": r.group.as_ref().map(status_json),
                "error": (!r.error.is_empty()).then_some(&r.error),
            })
        })
        .collect();
    serde_json::json!({
        "node_id": s.node_id,
        "cluster_id": s.cluster_id,
        "state": s.state,
        "leader": s.leader,
        "leader_api": s.leader_api,
        "term": s.term,
        "last_log_index": s.last_log_index,
        "commit_index": s.commit_index,
        "applied_index": s.applied_index,
        "snapshot_index": s.snapshot_index,
        "snapshots_installed": s.snapshots_installed,
        "members": members,
        "region": s.region,
        "regions": regions,
    })
}
