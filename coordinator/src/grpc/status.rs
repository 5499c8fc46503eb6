//! The one place where the crate's errors become gRPC statuses: [`CoordinatorError`] (admin
//! service) and [`ServiceError`] (registry service). Internal details are logged, never sent to
//! the caller. Checks that refuse a call outright (the cluster secret, the Raft guard, a Raft
//! RPC from another cluster or with malformed bytes) answer with their status where they refuse.

use tonic::Status;
use tonic::metadata::MetadataValue;

use super::convert::ConvertError;
use crate::error::CoordinatorError;
use crate::transport::metadata::LEADER_API_HEADER;

#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error("invalid argument: {0}")]
    InvalidArgument(#[from] ConvertError),
    #[error(transparent)]
    Coordinator(#[from] CoordinatorError),
    /// The leader could not be reached to forward a write to.
    #[error("forwarding to the leader at {addr} failed: {status}")]
    Forward { addr: String, status: Status },
    /// A write that was already forwarded once reached a replica that does not lead.
    #[error("the leader moved while the write was forwarded")]
    LeaderMoved,
    #[error("the link must start with a hello message")]
    NoHello,
}

impl From<ServiceError> for Status {
    fn from(e: ServiceError) -> Status {
        match e {
            ServiceError::InvalidArgument(c) => Status::invalid_argument(c.to_string()),
            ServiceError::NoHello => Status::invalid_argument(e.to_string()),
            // The service forwards writes itself, so a `NotLeader` that reaches the caller
            // means there is no leader to forward to right now.
            ServiceError::Coordinator(CoordinatorError::NotLeader { .. }) => {
                Status::unavailable("the registry has no leader right now; retry")
            }
            ServiceError::Coordinator(c) => status_from(c),
            ServiceError::Forward { addr, status } => {
                tracing::warn!(%addr, %status, "forwarding a write to the leader failed");
                // An answer from the leader itself (e.g. invalid_argument) passes through;
                // a transport failure means "retry".
                match status.code() {
                    tonic::Code::Unknown | tonic::Code::Internal | tonic::Code::Cancelled => {
                        Status::unavailable("the leader could not be reached; retry")
                    }
                    _ => status,
                }
            }
            ServiceError::LeaderMoved => Status::unavailable(e.to_string()),
        }
    }
}

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
        e @ (CoordinatorError::DataDir { .. } | CoordinatorError::Config(_)) => {
            tracing::error!(error = %e, "internal coordinator error");
            Status::internal("internal coordinator error")
        }
    }
}
