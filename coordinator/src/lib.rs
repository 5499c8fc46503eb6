//! Heliograph's coordinator: the room registry, replicated with Raft.
//!
//! - [`registry`]: the pure domain (edges, rooms, peers, commands, events); no transport.
//! - [`embedded`]: a replica run inside another process (the single-node default), with the
//!   handle that edges use to change and watch the registry.
//! - [`error`]: the errors this crate returns.

#![forbid(unsafe_code)]

pub mod embedded;
pub mod error;
pub mod registry;

pub use embedded::{EmbeddedConfig, EmbeddedCoordinator};
pub use error::CoordinatorError;
