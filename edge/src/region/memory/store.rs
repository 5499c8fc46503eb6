//! Sessions of this process, for an edge without `--redis`: a peer can resume on this edge
//! (after its socket dropped) but not on another process.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::Instant;

use heliograph_coordinator::registry::PeerId;

use crate::session::{Owner, Restored, StoreLimits, StoredRoom};
use crate::signal::Envelope;

/// Why a signal for a peer without a socket here could not be kept for it; either way its
/// sender must be told `expired`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Deposit {
    /// The pending buffer is full.
    Full,
    /// The peer has no session (it ended for good).
    NoSession,
}

#[derive(Debug, Default)]
struct Record {
    /// The socket serving the peer; `None` while detached.
    owner: Option<Owner>,
    /// Since when the peer has had no socket.
    detached_at: Option<Instant>,
    rooms: Vec<StoredRoom>,
    seq: u64,
    window: Vec<String>,
    pending: VecDeque<Envelope>,
}

pub struct MemoryStore {
    limits: StoreLimits,
    records: Mutex<HashMap<PeerId, Record>>,
}

impl MemoryStore {
    pub fn new(limits: StoreLimits) -> Self {
        Self {
            limits,
            records: Mutex::new(HashMap::new()),
        }
    }

    fn records(&self) -> std::sync::MutexGuard<'_, HashMap<PeerId, Record>> {
        // Every update below completes before anything that could panic.
        self.records.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn open(&self, peer: &PeerId, owner: &Owner) {
        let record = Record {
            owner: Some(owner.clone()),
            ..Record::default()
        };
        self.records().insert(peer.clone(), record);
    }

    pub fn save_rooms(&self, peer: &PeerId, owner: &Owner, rooms: &[StoredRoom]) {
        if let Some(r) = self.records().get_mut(peer)
            && r.owner.as_ref() == Some(owner)
        {
            r.rooms = rooms.to_vec();
        }
    }

    pub fn detach(
        &self,
        peer: &PeerId,
        owner: &Owner,
        seq: u64,
        window: Vec<String>,
        unsent: Vec<Envelope>,
    ) -> bool {
        let mut records = self.records();
        let Some(r) = records
            .get_mut(peer)
            .filter(|r| r.owner.as_ref() == Some(owner))
        else {
            return false;
        };
        r.owner = None;
        r.detached_at = Some(Instant::now());
        r.seq = seq;
        r.window = window;
        for e in unsent.into_iter().rev() {
            r.pending.push_front(e);
        }
        true
    }

    pub fn resume(&self, peer: &PeerId, owner: &Owner) -> Option<Restored> {
        let mut records = self.records();
        let r = records.get_mut(peer)?;
        r.owner = Some(owner.clone());
        r.detached_at = None;
        Some(Restored {
            rooms: r.rooms.clone(),
            seq: r.seq,
            window: std::mem::take(&mut r.window),
            pending: r.pending.drain(..).collect(),
        })
    }

    pub fn end(&self, peer: &PeerId, owner: Option<&Owner>) -> Vec<Envelope> {
        let mut records = self.records();
        if owner.is_some_and(|o| {
            records
                .get(peer)
                .is_some_and(|r| r.owner.as_ref() != Some(o))
        }) {
            return Vec::new();
        }
        records
            .remove(peer)
            .map(|r| r.pending.into())
            .unwrap_or_default()
    }

    /// Keeps a signal for a detached peer until it resumes; gives it back when it cannot.
    pub fn deposit(&self, envelope: Envelope) -> Result<(), (Deposit, Box<Envelope>)> {
        let mut records = self.records();
        let Some(r) = PeerId::new(envelope.to_peer.clone())
            .ok()
            .and_then(|p| records.get_mut(&p))
        else {
            return Err((Deposit::NoSession, Box::new(envelope)));
        };
        if r.pending.len() >= self.limits.pending {
            return Err((Deposit::Full, Box::new(envelope)));
        }
        r.pending.push_back(envelope);
        Ok(())
    }

    /// Forgets sessions detached for longer than the TTL; returns their pending signals.
    pub fn purge(&self) -> Vec<Envelope> {
        let mut records = self.records();
        let ttl = self.limits.ttl;
        let stale: Vec<PeerId> = records
            .iter()
            .filter(|(_, r)| r.detached_at.is_some_and(|t| t.elapsed() > ttl))
            .map(|(p, _)| p.clone())
            .collect();
        stale
            .iter()
            .filter_map(|p| records.remove(p))
            .flat_map(|r| r.pending)
            .collect()
    }

    /// Signals waiting in pending buffers, for the gauge.
    pub fn pending_total(&self) -> usize {
        self.records().values().map(|r| r.pending.len()).sum()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::time::Duration;

    use super::*;

    fn envelope(to: &str, n: u32) -> Envelope {
        Envelope {
            to_edge: heliograph_coordinator::registry::EdgeId::new("e").unwrap(),
            to_peer: to.into(),
            room: "r".into(),
            frame: format!("{{\"n\":{n}}}"),
            sent_at_us: 0,
            from_region: "eu".into(),
            from_peer: "s".into(),
            reference: String::new(),
        }
    }

    #[test]
    fn pending_signals_are_bounded_and_handed_over_on_resume() {
        let store = MemoryStore::new(StoreLimits {
            ttl: Duration::from_secs(60),
            pending: 2,
        });
        let p = PeerId::new("p").unwrap();
        let edge = heliograph_coordinator::registry::EdgeId::new("e").unwrap();
        let (first, second) = (Owner::new(&edge), Owner::new(&edge));
        let outcome = |r: Result<(), (Deposit, Box<Envelope>)>| r.err().map(|(d, _)| d);
        assert_eq!(
            outcome(store.deposit(envelope("p", 0))),
            Some(Deposit::NoSession)
        );
        store.open(&p, &first);
        assert!(store.detach(&p, &first, 7, vec!["{\"seq\":7}".into()], Vec::new()));
        assert!(
            !store.detach(&p, &first, 7, Vec::new(), Vec::new()),
            "already detached"
        );
        assert_eq!(outcome(store.deposit(envelope("p", 1))), None);
        assert_eq!(outcome(store.deposit(envelope("p", 2))), None);
        assert_eq!(
            outcome(store.deposit(envelope("p", 3))),
            Some(Deposit::Full)
        );
        let r = store.resume(&p, &second).unwrap();
        assert!(
            !store.detach(&p, &first, 9, Vec::new(), Vec::new()),
            "the old socket lost its claim"
        );
        assert_eq!(r.seq, 7);
        assert_eq!(r.window, vec!["{\"seq\":7}".to_owned()]);
        assert_eq!(r.pending, vec![envelope("p", 1), envelope("p", 2)]);
        assert!(store.end(&p, Some(&first)).is_empty());
        assert!(store.end(&p, Some(&second)).is_empty());
        assert!(store.resume(&p, &first).is_none(), "ended for good");
    }
}
