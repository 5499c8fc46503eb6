//! Generated protobuf and gRPC code for Heliograph's cluster traffic.
//!
//! `registry` is the edge-facing API of a coordinator replica: edges register, keep a lease,
//! change room membership and watch the room events of the rooms their peers are in.

#![allow(clippy::all, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

pub mod registry {
    pub mod v1 {
        tonic::include_proto!("heliograph.registry.v1");
    }
}
