//! gRPC services and the plumbing they share.
//!
//! - [`auth`]: the cluster secret every call carries.
//! - [`tls`]: optional mutual TLS on every connection.
//! - [`raft_service`]: Raft RPCs from peer replicas (its own listener).
//! - [`raft_guard`]: only members and learners of the cluster may send Raft RPCs.
//! - [`admin_client`]: the admin client the CLI and tests use, following the leader.
//! - [`admin_service`]: cluster membership and status (on the API listener).
//! - [`registry_service`]: the edge-facing registry API (on the API listener).
//! - [`convert`]: protobuf ↔ registry types (ids validated here, nowhere else).
//! - [`status`]: the one place errors become `tonic::Status`.
//! - `fanout`: turns room events into per-edge `Link` messages.
//! - `links`: the edges linked to this replica.
//! - `relay`: where a signal between edges goes next (local link or one other replica).
//! - `leader`: cached clients that forward writes from a follower to the leader.

pub mod admin_client;
pub mod admin_service;
pub mod auth;
pub mod convert;
mod fanout;
mod leader;
mod links;
pub mod raft_guard;
pub mod raft_service;
pub mod registry_service;
mod relay;
pub mod status;
pub mod tls;

use tonic::Status;
use tonic::metadata::MetadataValue;

use crate::error::CoordinatorError;

/// Metadata key with the leader's API address on a `FAILED_PRECONDITION` from a follower.
pub const LEADER_API_HEADER: &str = "x-heliograph-leader-api";

/// The one mapping from the crate's errors to gRPC statuses. Storage and data-dir details stay
/// in the logs, not in replies.
pub fn status_from(error: CoordinatorError) -> Status {
    match error {
        CoordinatorError::NotLeader { leader_api } => {
            let mut status = Status::failed_precondition(format!(
                "not the leader; leader: {}",
                leader_api.as_deref().unwrap_or("unknown")
            ));
            if let Some(addr) = leader_api
                && let Ok(v) = MetadataValue::try_from(addr)
            {
                status.metadata_mut().insert(LEADER_API_HEADER, v);
            }
            status
        }
        CoordinatorError::Membership(m) => Status::failed_precondition(m),
        CoordinatorError::ShuttingDown => Status::unavailable("the replica is shutting down"),
        CoordinatorError::Unavailable(m) => Status::unavailable(m),
        e @ (CoordinatorError::DataDir { .. }
        | CoordinatorError::Storage(_)
        | CoordinatorError::Config(_)) => {
            tracing::error!(error = %e, "internal coordinator error");
            Status::internal("internal coordinator error")
        }
    }
}

/// The generated protobuf types and gRPC stubs of the edge-facing API.
pub use heliograph_proto::registry::v1 as proto;

/// Metadata key marking a write already forwarded once, so it is never forwarded again.
pub const FORWARDED: &str = "x-heliograph-forwarded";

/// Adds a scheme to a bare `host:port` address, as tonic endpoints need one.
pub fn endpoint_uri(addr: &str) -> String {
    if addr.contains("://") {
        addr.to_owned()
    } else {
        format!("http://{addr}")
    }
}
