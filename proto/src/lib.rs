//! Generated protobuf and gRPC code for Heliograph's cluster traffic.
//!
//! `registry` is the edge-facing API of a coordinator replica: edges register, keep a lease,
//! change room membership and watch the room events of the rooms their peers are in.
//! `raft` carries Raft RPCs between replicas; `admin` manages cluster membership.

#![allow(clippy::all, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

pub mod registry {
    pub mod v1 {
        tonic::include_proto!("heliograph.registry.v1");
    }
}

pub mod raft {
    pub mod v1 {
        tonic::include_proto!("heliograph.raft.v1");
    }
}

pub mod admin {
    pub mod v1 {
        tonic::include_proto!("heliograph.admin.v1");
    }
}
