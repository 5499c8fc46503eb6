//! What the region backend hands back to the edge: signals for local targets, signals whose
//! senders must be told `expired`, and signals the bus could not carry (the coordinator path).
//! Callbacks rather than a reference to the router, so the backend knows nothing above it.

use std::sync::Arc;

use crate::signal::Envelope;

/// Takes one signal.
pub type Hook = Arc<dyn Fn(Envelope) + Send + Sync>;

/// Where the backend hands signals.
#[derive(Clone)]
pub struct Hooks {
    /// A signal read from this edge's channel, for a local target.
    pub inbound: Hook,
    /// A signal that cannot be kept for its target: its sender is told `expired`.
    pub expired: Hook,
    /// A signal the bus could not carry: it takes the coordinator path.
    pub fallback: Hook,
}
