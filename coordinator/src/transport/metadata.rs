//! Names of the gRPC metadata keys the cluster's calls carry, besides `authorization`.

/// The sender's cluster id on every Raft RPC; a replica refuses RPCs from another cluster.
pub const CLUSTER_HEADER: &str = "x-heliograph-cluster";

/// The leader's API address on a `FAILED_PRECONDITION` from a follower, so that admin clients
/// can retry there.
pub const LEADER_API_HEADER: &str = "x-heliograph-leader-api";

/// Marks a write already forwarded once, so that it is never forwarded again.
pub const FORWARDED: &str = "x-heliograph-forwarded";

/// On a request a replica passes to the group of another region (the room's home, or every
/// region for a peer's detach, rebind or disconnect): the sending replica's region. The
/// receiver executes it in its own group and never passes it to a third region.
pub const FROM_REGION: &str = "x-heliograph-from-region";
