//! Heliograph's coordinator: the room registry, replicated with Raft.
//!
//! - [`registry`]: the pure domain (edges, rooms, peers, commands, events); no transport.
//! - [`raft`]: the registry as an openraft replica (durable log store, state machine, network).
//! - [`embedded`]: a replica run inside another process (the single-node default), with the
//!   handle that edges use to change and watch the registry.
//! - [`metrics`]: metric names and how they are recorded.
//! - [`error`]: the errors this crate returns.

#![forbid(unsafe_code)]

pub mod embedded;
pub mod error;
pub mod grpc;
pub mod metrics;
pub mod raft;
pub mod registry;

pub use embedded::{EmbeddedConfig, EmbeddedCoordinator};
pub use error::CoordinatorError;
