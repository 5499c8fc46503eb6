//! Wall-clock time in milliseconds since the Unix epoch.
//!
//! Only the leader's batcher stamps commands with it, and snapshot ids carry it; the registry
//! itself never reads a clock, so every replica applies the same times.

use std::time::{SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch; 0 for a clock set before it, which never panics.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}
