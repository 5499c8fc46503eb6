//! How replicas, edges and the admin CLI reach each other: the cluster secret, optional mutual
//! TLS, dial rewrites, message-size limits and the metadata keys every call may carry.
//!
//! Shared by the Raft network and the gRPC services alike, so that neither has to import the
//! other. Imports nothing from the rest of the crate.

mod auth;
pub mod dial;
mod limits;
pub mod liveness;
pub mod metadata;
pub mod tls;

pub use auth::{ClusterSecret, MIN_SECRET_BYTES, SecretError};
pub use limits::MAX_RAFT_MESSAGE_BYTES;
pub use tls::{MutualTls, TlsError};
