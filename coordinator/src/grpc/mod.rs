//! gRPC: the edge-facing registry service, its relay and fan-out, and what they share.
//!
//! - [`auth`]: the cluster secret every call carries.
//! - [`convert`]: protobuf ↔ registry types (ids validated here, nowhere else).
//! - [`status`]: the one place errors become `tonic::Status`.
//! - [`registry_service`]: the `Registry` service (writes, reads, `Link`, `Relay`).
//! - `fanout`: turns room events into per-edge `Link` messages.
//! - `links`: the edges linked to this replica.
//! - `relay`: where a signal between edges goes next (local link or one other replica).
//! - `leader`: cached clients that forward writes from a follower to the leader.

pub mod auth;
pub mod convert;
mod fanout;
mod leader;
mod links;
pub mod registry_service;
mod relay;
pub mod status;

/// The generated protobuf types and gRPC stubs of the edge-facing API.
pub use heliograph_proto::registry::v1 as proto;

/// Metadata key marking a write already forwarded once, so it is never forwarded again.
pub const FORWARDED: &str = "x-heliograph-forwarded";

/// Adds a scheme to a bare `host:port` address, as tonic endpoints need one.
pub fn endpoint_uri(addr: &str) -> String {
    if addr.contains("://") {
        addr.to_owned()
    } else {
        format!("http://{addr}")
    }
}
