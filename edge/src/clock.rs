//! Wall-clock time as the edge stamps it on relayed signals and tokens.
//!
//! Relayed signals carry the sender edge's wall clock (µs since the Unix epoch) so that the
//! receiving edge can record the relay latency; edges' clocks are assumed close (NTP).

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Microseconds since the Unix epoch, to stamp relayed signals.
pub fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// Milliseconds since the Unix epoch (an edge's incarnation).
pub fn now_ms() -> u64 {
    now_us() / 1_000
}

/// Seconds since the Unix epoch, for token expiry.
pub fn now_unix() -> u64 {
    now_us() / 1_000_000
}

/// The sender's read time as a local `Instant` (a sender clock ahead of ours counts as no
/// delay).
pub fn sent_at(sent_at_us: u64) -> Option<Instant> {
    let now_us = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .ok()
        .and_then(|d| u64::try_from(d.as_micros()).ok())?;
    Instant::now().checked_sub(Duration::from_micros(now_us.saturating_sub(sent_at_us)))
}
