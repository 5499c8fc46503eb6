//! gRPC plumbing shared by the coordinator's services and clients.

pub mod auth;
