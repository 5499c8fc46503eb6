//! Indexes derived from the registry's records, so that periodic work looks at the few peers
//! it concerns instead of walking every peer under the state lock: the sweeper asks every
//! 250 ms when the next detached peer's grace ends, and the federation liveness round asks
//! every second which members sit on other regions' edges. At a million members each walk
//! held the lock for tens of milliseconds, and every join waiting to be applied with it.
//!
//! An index is kept in step with the records by every change, but it is not part of the
//! state's value: it is never serialised (a decoded state rebuilds it,
//! [`super::RegistryState::share_ids`]) nor compared.

use std::collections::BTreeSet;

use super::ids::PeerId;

/// Detached peers by the time they were detached: `(since, peer)` is in it exactly while the
/// peer's `detached_since_ms` is `Some(since)` (entered when it is detached, taken out when it
/// is attached again, removed, or swept).
#[derive(Debug, Clone, Default)]
pub(super) struct DetachedIndex(BTreeSet<(u64, PeerId)>);

impl DetachedIndex {
    pub(super) fn insert(&mut self, since: u64, peer: PeerId) {
        self.0.insert((since, peer));
    }

    pub(super) fn remove(&mut self, since: u64, peer: &PeerId) {
        self.0.remove(&(since, peer.clone()));
    }

    /// The earliest detach time.
    pub(super) fn earliest(&self) -> Option<u64> {
        self.0.first().map(|(since, _)| *since)
    }

    /// Takes out every entry detached at or before `cutoff`, in `(since, peer)` order.
    pub(super) fn take_until(&mut self, cutoff: u64) -> Vec<(u64, PeerId)> {
        let mut out = Vec::new();
        // Bounded by the index's size: each turn removes an entry.
        while self.0.first().is_some_and(|(since, _)| *since <= cutoff) {
            if let Some(entry) = self.0.pop_first() {
                out.push(entry);
            }
        }
        out
    }

    pub(super) fn clear(&mut self) {
        self.0.clear();
    }

    #[cfg(test)]
    pub(super) fn entries(&self) -> Vec<(u64, PeerId)> {
        self.0.iter().cloned().collect()
    }
}

/// Peers that joined or last moved through another region's edge (a join or rebind naming a
/// `remote_region`): the peers whose edge is not registered here. A peer leaves the set when
/// it is removed or moves to an edge of this group.
#[derive(Debug, Clone, Default)]
pub(super) struct RemotePeers(BTreeSet<PeerId>);

impl RemotePeers {
    pub(super) fn insert(&mut self, peer: PeerId) {
        self.0.insert(peer);
    }

    pub(super) fn remove(&mut self, peer: &PeerId) {
        self.0.remove(peer);
    }

    pub(super) fn iter(&self) -> impl Iterator<Item = &PeerId> {
        self.0.iter()
    }

    pub(super) fn clear(&mut self) {
        self.0.clear();
    }

    #[cfg(test)]
    pub(super) fn entries(&self) -> Vec<PeerId> {
        self.0.iter().cloned().collect()
    }
}

/// Indexes are derived: two states with the same records are equal (the registry's own
/// tests check that an index kept in step equals one rebuilt from the records).
macro_rules! derived_eq {
    ($($t:ty),*) => {$(
        impl PartialEq for $t {
            fn eq(&self, _: &Self) -> bool {
                true
            }
        }
        impl Eq for $t {}
    )*};
}
derived_eq!(DetachedIndex, RemotePeers);

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(s: &str) -> PeerId {
        PeerId::try_from(s.to_owned()).unwrap()
    }

    #[test]
    fn take_until_takes_the_due_entries_in_order() {
        let mut index = DetachedIndex::default();
        index.insert(30, peer("c"));
        index.insert(10, peer("b"));
        index.insert(10, peer("a"));
        assert_eq!(index.earliest(), Some(10));
        assert_eq!(index.take_until(9), vec![]);
        assert_eq!(index.take_until(20), vec![(10, peer("a")), (10, peer("b"))]);
        assert_eq!(index.earliest(), Some(30));
        assert_eq!(index.take_until(u64::MAX), vec![(30, peer("c"))]);
        assert_eq!(index.earliest(), None);
    }
}
