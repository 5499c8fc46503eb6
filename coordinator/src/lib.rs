//! Heliograph's coordinator: the room registry, replicated with Raft.
//!
//! Modules, from the bottom up; each may import only the ones listed under it:
//!
//! - `clock`: wall-clock milliseconds ([`clock::now_ms`]). Imports nothing.
//! - `error`: [`CoordinatorError`], the error the crate returns. Imports nothing.
//! - [`metrics`]: metric names and how they are recorded. Imports nothing.
//! - [`config_file`]: the `--config` TOML file of both binaries, merged under their flags and
//!   environment, and `--print-config`. Imports nothing.
//! - [`telemetry`]: logs (text or JSON) and OTLP traces of both binaries, and the W3C trace
//!   context carried between processes. Imports nothing.
//! - [`transport`]: how processes reach each other: the cluster secret, mutual TLS, dial
//!   rewrites, message-size limits, metadata keys. Imports nothing.
//! - [`registry`]: the pure domain (edges, rooms, peers, commands, events). Imports nothing:
//!   no transport, no Raft, no clock.
//! - [`raft`]: the registry as an openraft replica (types, log store, state machine, network to
//!   peers, the data directory's identity). Imports `registry`, `transport`, `clock`,
//!   `metrics`.
//! - `replica`: the [`Replica`] handle (the single-node default embedded in an edge, or a
//!   member of a cluster), its batcher, sweeper and membership changes. Imports `raft` and
//!   everything `raft` may.
//! - [`grpc`]: the registry, admin and Raft services, and the admin client. Imports `replica`
//!   and everything under it.
//! - [`http_client`]: a small HTTP/1.1 client, `http://` and `https://` (webhook delivery, the
//!   `rooms` subcommands).
//!   Imports nothing.
//! - [`webhooks`]: the leader's delivery of the replicated webhook outbox. Imports `replica`,
//!   `registry`, `http_client`, `metrics`.
//! - [`api`]: the server API (HTTP/JSON under `/api/v1/`). Imports `grpc` and everything
//!   under it.
//! - [`server`] and [`http`]: serve a replica's gRPC listeners and its health, readiness and
//!   metrics endpoint. Import `grpc`, `replica`, `transport` and `metrics`.
//!
//! Nothing imports upwards, so the modules form no circle.

#![forbid(unsafe_code)]

pub mod api;
pub mod clock;
pub mod config_file;
mod error;
pub mod grpc;
pub mod http;
pub mod http_client;
pub mod metrics;
pub mod raft;
pub mod registry;
mod replica;
pub mod server;
pub mod telemetry;
pub mod transport;
pub mod webhooks;

pub use error::{ConfigError, CoordinatorError};
pub use replica::{
    ClusterStatus, EmbeddedConfig, MemberStatus, Replica, ReplicaConfig, ReplicaOptions,
};
