//! The coordinator's integration tests in one test binary: in-process replicas behind real
//! gRPC (`cluster`, `registry_service`, `transport_security`) and clusters of the real
//! binary started through the test kit (`processes`).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

mod cluster;
mod config_file;
mod processes;
mod registry_service;
mod transport_security;
