//! The generated protobuf types and gRPC stubs of the edge-facing API.

pub use heliograph_proto::registry::v1::*;
