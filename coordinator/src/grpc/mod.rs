//! The gRPC services of a replica, and the admin client.
//!
//! - [`proto`]: the generated types and stubs of the edge-facing API.
//! - [`convert`]: protobuf ↔ registry types (ids validated here, nowhere else).
//! - [`registry_service`]: the edge-facing registry API (on the API listener).
//! - [`admin_client`]: the admin client the CLI and tests use, following the leader.
//! - `admin_service`: cluster membership and status (on the API listener).
//! - `raft_service`: Raft RPCs from peer replicas (its own listener).
//! - `raft_guard`: only members and learners of the cluster may send Raft RPCs.
//! - `status`: the one place the crate's errors become `tonic::Status`.
//! - `fanout`: turns room events into per-edge `Link` messages.
//! - `links`: the edges linked to this replica.
//! - `relay`: where a signal between edges goes next (local link or one other replica).
//! - `leader`: cached clients that forward writes from a follower to the leader.
//! - [`federation`]: region-homed rooms: where a room's requests go, the directory of the
//!   other regions' rooms, and the streams between regions.

pub mod admin_client;
pub(crate) mod admin_service;
pub mod convert;
mod fanout;
pub mod federation;
mod leader;
mod links;
pub mod proto;
mod raft_guard;
pub(crate) mod raft_service;
pub mod registry_service;
mod relay;
mod status;
