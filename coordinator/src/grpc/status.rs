//! The one place where the service's errors become gRPC statuses. Internal details are
//! logged, never sent to the caller.

use tonic::Status;

use super::convert::ConvertError;
use crate::error::CoordinatorError;

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
            ServiceError::Coordinator(c) => super::status_from(c),
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
