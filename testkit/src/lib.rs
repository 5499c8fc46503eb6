//! Starts Heliograph's processes for tests and for the load generator's simulation, and talks
//! to them. Every child is killed when its guard drops; every wait polls a condition with a
//! deadline.
//!
//! - [`bin`]: where the workspace's binaries are (`target/<profile>/`).
//! - [`process`]: [`process::Proc`], a child killed on drop, its first stdout line (the address
//!   line the servers print) and its stop (SIGTERM, SIGKILL).
//! - [`ports`]: free ports. [`wait`]: waiting on a condition with a deadline.
//! - [`http`]: a minimal GET for health, readiness and Prometheus samples.
//! - [`redis`]: a real `redis-server`; [`redis_tls`]: one with TLS and an ACL user, as managed
//!   services run it. [`replica`]: `heliograph-coordinator` replicas and its
//!   admin CLI. [`edge`]: `heliograph-edge` processes.
//! - [`cluster`]: replicas, Redis and edges of one or more regions, formed and ready.
//! - [`cut`]: a TCP relay a test cuts and heals (the network between two regions).
//! - [`ws`]: a protocol client over a real WebSocket.
//!
//! The process layer is blocking (`std::process` and a reader thread per child): most callers
//! are plain `#[test]`s or set-up steps that must finish before anything else happens, and a
//! blocking child guard can kill in `Drop`. Async callers run it on `spawn_blocking`.
//!
//! `heliograph-loadtest`'s multi-region simulation is a normal dependent of this crate: it
//! starts the same replicas, Redis and edges, so it uses the same spawning and address
//! reading instead of a copy (the load generator is not published either). What it uses
//! returns errors; the helpers that only tests use fail the test (panic) instead.
//!
//! The kit knows the binaries only by their command lines and the lines they print; in-process
//! coordinators, which need the coordinator crate's internals, stay in the tests that use them.

pub mod bin;
pub mod cluster;
pub mod cut;
pub mod edge;
pub mod http;
pub mod ports;
pub mod process;
pub mod redis;
pub mod redis_tls;
pub mod replica;
pub mod wait;
pub mod webhook;
pub mod ws;

/// The cluster secret replicas, admin commands and edges of a test cluster share.
pub const CLUSTER_SECRET: &str = "edge-test-cluster-secret-0123";
/// The session secret every edge of a test cluster shares, so that each accepts the others'
/// resume tokens.
pub const SESSION_SECRET: &str = "test-session-secret-0123456789";
