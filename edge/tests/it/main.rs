//! The edge's integration tests, one module per concern, in one test binary: real
//! `heliograph-edge` processes (and, for the cluster modules, coordinator replicas and Redis)
//! started through the test kit, and real WebSocket clients.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

mod bad_input;
mod client_address;
mod cluster;
mod config_file;
mod contacts;
mod departures;
mod discovery;
mod failover;
mod handshake;
mod homed;
mod lifecycle;
mod member_keys;
mod metrics_documented;
mod parking;
mod property;
mod redis_sentinel;
mod redis_tls;
mod regions;
mod remote_coordinator;
mod remote_mtls;
mod resume;
mod security;
mod server_api;
mod signaling;
mod socketio;
mod traces;
mod webhooks;
