//! Abuse limits that are not part of the protocol decoder: a per-connection message rate
//! (token bucket) and connection counts per source IP and per edge.
//!
//! The connection limiter hands out a guard per accepted socket; dropping the guard (when the
//! session ends, however it ends) gives the slot back, so the counts cannot leak.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

/// A token bucket: `burst` messages at once, refilled at `per_second`.
#[derive(Debug)]
pub struct RateLimiter {
    per_second: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl RateLimiter {
    pub fn new(per_second: u32, burst: u32) -> Self {
        Self {
            per_second: f64::from(per_second),
            burst: f64::from(burst.max(1)),
            tokens: f64::from(burst.max(1)),
            last: Instant::now(),
        }
    }

    /// `per_minute` requests a minute, a burst of as many.
    pub fn per_minute(per_minute: u32) -> Self {
        let burst = f64::from(per_minute.max(1));
        Self {
            per_second: burst / 60.0,
            burst,
            tokens: burst,
            last: Instant::now(),
        }
    }

    /// Takes one token; `false` when the connection is over its rate.
    pub fn allow(&mut self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * self.per_second).min(self.burst);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// Why a new connection is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectionRefusal {
    /// The edge holds its maximum number of connections.
    EdgeFull,
    /// This source address holds its maximum number of connections.
    TooManyFromAddress,
}

#[derive(Debug, Default)]
struct Counts {
    total: usize,
    per_ip: HashMap<IpAddr, usize>,
}

/// Counts open connections per edge and per source address.
#[derive(Debug, Clone)]
pub struct ConnectionLimiter {
    max_total: usize,
    max_per_ip: usize,
    counts: Arc<Mutex<Counts>>,
}

/// One admitted connection; its slot is released on drop.
#[derive(Debug)]
pub struct ConnectionSlot {
    ip: IpAddr,
    counts: Arc<Mutex<Counts>>,
}

impl ConnectionLimiter {
    pub fn new(max_total: usize, max_per_ip: usize) -> Self {
        Self {
            max_total,
            max_per_ip,
            counts: Arc::default(),
        }
    }

    pub fn acquire(&self, ip: IpAddr) -> Result<ConnectionSlot, ConnectionRefusal> {
        let mut counts = self.counts.lock().unwrap_or_else(PoisonError::into_inner);
        if counts.total >= self.max_total {
            return Err(ConnectionRefusal::EdgeFull);
        }
        let from_ip = counts.per_ip.get(&ip).copied().unwrap_or(0);
        if from_ip >= self.max_per_ip {
            return Err(ConnectionRefusal::TooManyFromAddress);
        }
        counts.total += 1;
        counts.per_ip.insert(ip, from_ip + 1);
        Ok(ConnectionSlot {
            ip,
            counts: Arc::clone(&self.counts),
        })
    }

    /// Connections open now (the tests' view of the counts).
    #[cfg(test)]
    fn open(&self) -> usize {
        self.counts
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .total
    }
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        let mut counts = self.counts.lock().unwrap_or_else(PoisonError::into_inner);
        counts.total = counts.total.saturating_sub(1);
        if let Some(n) = counts.per_ip.get_mut(&self.ip) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                counts.per_ip.remove(&self.ip);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn bucket_allows_burst_then_rate() {
        let mut r = RateLimiter::new(10, 5);
        let t0 = Instant::now();
        assert_eq!((0..8).filter(|_| r.allow(t0)).count(), 5);
        // 100 ms later one more token has been refilled.
        assert!(r.allow(t0 + Duration::from_millis(100)));
        assert!(!r.allow(t0 + Duration::from_millis(100)));
        // Never more than the burst, however long the pause.
        let later = t0 + Duration::from_secs(60);
        assert_eq!((0..8).filter(|_| r.allow(later)).count(), 5);
    }

    #[test]
    fn per_minute_allows_the_minute_at_once_then_refills() {
        let mut r = RateLimiter::per_minute(3);
        let t0 = Instant::now();
        assert_eq!((0..5).filter(|_| r.allow(t0)).count(), 3);
        assert!(!r.allow(t0 + Duration::from_secs(19)));
        assert!(r.allow(t0 + Duration::from_secs(21)));
    }

    #[test]
    fn slots_are_counted_and_released() {
        let l = ConnectionLimiter::new(3, 2);
        let a: IpAddr = "127.0.0.2".parse().unwrap();
        let b: IpAddr = "127.0.0.3".parse().unwrap();
        let s1 = l.acquire(a).unwrap();
        let _s2 = l.acquire(a).unwrap();
        assert_eq!(
            l.acquire(a).unwrap_err(),
            ConnectionRefusal::TooManyFromAddress
        );
        let _s3 = l.acquire(b).unwrap();
        assert_eq!(l.acquire(b).unwrap_err(), ConnectionRefusal::EdgeFull);
        drop(s1);
        assert_eq!(l.open(), 2);
        assert!(l.acquire(b).is_ok());
    }
}
