//! The load generator's integration tests in one test binary: its scenarios at tiny sizes
//! against real edges (`smoke`), a real region (`failover`), the multi-region simulation
//! (`regions`), a faulted cluster (`chaos`) and a replica group filled through the registry
//! API (`registry_scale`), all started through the test kit.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod chaos;
mod failover;
mod regions;
mod registry_scale;
mod smoke;
mod webhooks;

/// The load generator under test.
const LOADTEST: &str = env!("CARGO_BIN_EXE_heliograph-loadtest");
