//! Signals queued on the Redis bus and not yet handed over, per target and per sender.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard};

use crate::signal::Envelope;

/// Signals queued on the bus and not yet handed over, per target and per sender.
///
/// While a target has some, a newer signal for it must not take the in-process path, or it
/// would overtake them (e.g. the target resumed on this edge while they were queued). While
/// a sender has some, its session is not handed over to another edge yet, or what it sends
/// from there could overtake them.
#[derive(Debug, Default)]
pub struct InFlight {
    total: AtomicUsize,
    targets: Mutex<HashMap<String, usize>>,
    senders: Mutex<HashMap<String, usize>>,
}

fn lock(m: &Mutex<HashMap<String, usize>>) -> MutexGuard<'_, HashMap<String, usize>> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn bump(m: &Mutex<HashMap<String, usize>>, key: &str, up: bool) {
    if key.is_empty() {
        return;
    }
    let mut map = lock(m);
    if up {
        *map.entry(key.to_owned()).or_insert(0) += 1;
    } else if let Some(n) = map.get_mut(key) {
        *n -= 1;
        if *n == 0 {
            map.remove(key);
        }
    }
}

impl InFlight {
    pub fn add(&self, e: &Envelope) {
        bump(&self.targets, &e.to_peer, true);
        bump(&self.senders, &e.from_peer, true);
        self.total.fetch_add(1, Ordering::SeqCst);
    }

    pub fn done(&self, to: &str, from: &str) {
        bump(&self.targets, to, false);
        bump(&self.senders, from, false);
        self.total.fetch_sub(1, Ordering::SeqCst);
    }

    /// Whether signals for `peer` are still queued.
    pub fn busy(&self, peer: &str) -> bool {
        // Nothing queued at all is the common case, and costs no lock.
        self.total.load(Ordering::SeqCst) > 0 && lock(&self.targets).contains_key(peer)
    }

    /// Whether signals from `peer` are still queued.
    pub fn sending(&self, peer: &str) -> bool {
        self.total.load(Ordering::SeqCst) > 0 && lock(&self.senders).contains_key(peer)
    }
}
