//! A coordinator replica: the single-node default embedded in the edge process
//! ([`Replica::open`]), or one member of a multi-replica cluster ([`Replica::open_replica`]).
//!
//! Invariants: every change goes through the Raft log (durable before it is applied) and is
//! proposed by the leader's batcher, which stamps the time; reads come from the applied state
//! without a Raft round trip; every background task stops in [`Replica::shutdown`], after which
//! the data directory is released.
//!
//! - `config`: what the caller chooses (data directory, grace, cluster member settings).
//! - `handle`: the [`Replica`] handle: writes, reads, events and shutdown.
//! - `open`: opening a replica and starting its tasks; Raft timing.
//! - `batcher`: packs concurrent commands into one log entry, stamped with the leader's time.
//! - `background`: the lease/grace sweeper and the mirror of openraft's metrics.
//! - `cluster`: membership changes and the cluster status.
//!
//! Imports `raft`, `registry`, `transport`, `clock`, `metrics` and `error`; never `grpc`.

mod background;
mod batcher;
mod cluster;
mod config;
mod handle;
mod open;

pub use cluster::{ClusterStatus, MemberStatus};
pub use config::{EmbeddedConfig, ReplicaConfig, ReplicaOptions};
pub use handle::Replica;

#[cfg(test)]
mod tests;
