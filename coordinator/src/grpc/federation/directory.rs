//! Which other region homes which room, as this replica has heard from those regions.
//!
//! Every region's group is the authority on the rooms it homes; the directory is what this
//! replica knows of the others', fed by its `Federate` stream from each region (a full list
//! when the stream opens, then each room created and emptied there). It is soft state: a
//! replica that restarts re-reads it from the streams. A name homed in two regions at once
//! (created in both before either heard of the other) belongs to the older creation, ties to
//! the region whose name sorts first, so that every replica of every region agrees.

use std::collections::{BTreeMap, HashMap};
use std::sync::{PoisonError, RwLock};

use crate::metrics;
use crate::registry::{Region, RoomId};

/// One region's claim to a room: when its group created it (unix ms, that leader's clock).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Claim {
    pub created_at_ms: u64,
}

#[derive(Default)]
pub struct Directory {
    rooms: RwLock<HashMap<RoomId, BTreeMap<Region, Claim>>>,
}

impl Directory {
    /// Replaces everything known of `region` with `homes` (its stream opened again).
    pub fn replace(&self, region: &Region, homes: impl IntoIterator<Item = (RoomId, Claim)>) {
        let mut rooms = self.rooms.write().unwrap_or_else(PoisonError::into_inner);
        rooms.retain(|_, claims| {
            claims.remove(region);
            !claims.is_empty()
        });
        for (room, claim) in homes {
            rooms.entry(room).or_default().insert(region.clone(), claim);
        }
    }

    pub fn created(&self, region: &Region, room: RoomId, claim: Claim) {
        let mut rooms = self.rooms.write().unwrap_or_else(PoisonError::into_inner);
        rooms.entry(room).or_default().insert(region.clone(), claim);
    }

    pub fn emptied(&self, region: &Region, room: &RoomId) {
        let mut rooms = self.rooms.write().unwrap_or_else(PoisonError::into_inner);
        if let Some(claims) = rooms.get_mut(room) {
            claims.remove(region);
            if claims.is_empty() {
                rooms.remove(room);
            }
        }
    }

    /// Forgets a region no longer federated with this one.
    pub fn forget(&self, region: &Region) {
        self.replace(region, std::iter::empty());
    }

    /// The other region that homes `room` and its claim, if any (the winning one when
    /// several claim it). Counted as a directory lookup, and a hit when found.
    pub fn lookup(&self, room: &RoomId) -> Option<(Region, Claim)> {
        let found = self.winner(room);
        metrics::directory_lookup(found.is_some());
        found
    }

    /// As [`Self::lookup`], uncounted.
    pub fn winner(&self, room: &RoomId) -> Option<(Region, Claim)> {
        let rooms = self.rooms.read().unwrap_or_else(PoisonError::into_inner);
        rooms.get(room).and_then(|claims| {
            claims
                .iter()
                .min_by_key(|(region, claim)| (**claim, (*region).clone()))
                .map(|(region, claim)| (region.clone(), *claim))
        })
    }

    /// How many rooms `region` homes, as far as this replica knows.
    pub fn rooms_of(&self, region: &Region) -> u64 {
        let rooms = self.rooms.read().unwrap_or_else(PoisonError::into_inner);
        rooms.values().filter(|c| c.contains_key(region)).count() as u64
    }
}

/// Whether a room this group created at `local` loses to another region's claim: the older
/// creation wins, ties go to the region whose name sorts first.
pub fn loses_to(local: (u64, &Region), other: (u64, &Region)) -> bool {
    other < local
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(s: &str) -> Region {
        Region::new(s).unwrap()
    }
    fn room(s: &str) -> RoomId {
        RoomId::new(s).unwrap()
    }

    #[test]
    fn the_older_claim_wins_and_a_reconnect_replaces_a_region() {
        let d = Directory::default();
        d.created(&r("eu"), room("x"), Claim { created_at_ms: 20 });
        d.created(&r("ap"), room("x"), Claim { created_at_ms: 10 });
        assert_eq!(d.lookup(&room("x")).unwrap().0, r("ap"));
        d.replace(&r("ap"), []);
        assert_eq!(d.lookup(&room("x")).unwrap().0, r("eu"));
        d.emptied(&r("eu"), &room("x"));
        assert!(d.lookup(&room("x")).is_none());
        assert!(loses_to((5, &r("us")), (5, &r("eu"))));
        assert!(!loses_to((4, &r("us")), (5, &r("eu"))));
    }
}
