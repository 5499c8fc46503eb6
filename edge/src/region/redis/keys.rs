//! The region's Redis key space. Per peer (all with the session TTL):
//! `heliograph:s:<peer>` (hash: owner, rooms, seq), `heliograph:w:<peer>` (list: replay
//! window), `heliograph:m:<peer>` (list: pending signals, as bus envelopes); per edge, the
//! pub/sub channel `heliograph:edge:<edge>`, which only that edge reads.

use heliograph_coordinator::registry::EdgeId;

/// Prefix of every edge's channel; the edge id follows.
pub(super) const CHANNEL_PREFIX: &str = "heliograph:edge:";

/// The channel `edge` subscribes to.
pub(super) fn channel(edge: &EdgeId) -> String {
    format!("{CHANNEL_PREFIX}{edge}")
}

pub(super) fn session_key(peer: &str) -> String {
    format!("heliograph:s:{peer}")
}
pub(super) fn window_key(peer: &str) -> String {
    format!("heliograph:w:{peer}")
}
pub(super) fn pending_key(peer: &str) -> String {
    format!("heliograph:m:{peer}")
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn keys_and_channels_are_stable() {
        // Every edge of a region, old and new, must agree on these names.
        let edge = EdgeId::new("edge-b").unwrap();
        assert_eq!(channel(&edge), "heliograph:edge:edge-b");
        assert_eq!(session_key("p1"), "heliograph:s:p1");
        assert_eq!(window_key("p1"), "heliograph:w:p1");
        assert_eq!(pending_key("p1"), "heliograph:m:p1");
    }
}
