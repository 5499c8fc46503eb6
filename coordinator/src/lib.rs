//! Heliograph's coordinator: the room registry, replicated with Raft.
//!
//! - [`registry`]: the pure domain (edges, rooms, peers, commands, events); no transport.
//! - [`raft`]: the registry as an openraft replica (durable log store, state machine, network).
//! - [`embedded`]: the replica handle: the single-node default embedded in an edge, or a
//!   member of a multi-replica cluster; edges use it to change and watch the registry.
//! - [`grpc`]: the Raft, admin and registry services, and the admin client.
//! - [`server`]: serves a replica's services on its two listeners.
//! - [`http`]: health, readiness and metrics over HTTP.
//! - [`metrics`]: metric names and how they are recorded.
//! - [`error`]: the errors this crate returns.
//! - [`dial`]: address rewrites for reaching other replicas.

#![forbid(unsafe_code)]

pub mod clock;
pub mod embedded;
pub mod error;
pub mod grpc;
pub mod http;
pub mod metrics;
pub mod raft;
pub mod registry;
pub mod server;
pub mod transport;

pub use embedded::{EmbeddedConfig, EmbeddedCoordinator, Replica, ReplicaConfig, ReplicaOptions};
pub use error::CoordinatorError;
