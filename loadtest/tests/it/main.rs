//! The load generator's integration tests in one test binary: its scenarios at tiny sizes
//! against real edges (`smoke`), a real region (`failover`), the multi-region simulation
//! (`regions`) and a faulted cluster (`chaos`), all started through the test kit.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod chaos;
mod failover;
mod regions;
mod smoke;
mod webhooks;

/// The load generator under test.
const LOADTEST: &str = env!("CARGO_BIN_EXE_heliograph-loadtest");
