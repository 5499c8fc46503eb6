//! Public-room listings (discovery): what a listing asks for, one room as listed, a page of
//! them, and how the pages of several regions' groups merge into one.
//!
//! A room is listed only when its creating join made it public; a listing is read from a
//! group's applied state at request time, so it is as fresh as that replica.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::ids::{Region, RoomId};

/// Most rooms one listing page may hold (the protocol's `limit` is 1..=this).
pub const MAX_LISTING_LIMIT: usize = 100;
/// Longest `prefix` accepted, in bytes (a room id is at most as long).
pub const MAX_LISTING_PREFIX_BYTES: usize = super::ids::MAX_ROOM_ID_BYTES;

/// Which public rooms to list: ids starting with `prefix`, after `after` (exclusive), at
/// most `limit` of them, in id order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListingQuery {
    pub prefix: String,
    pub after: Option<RoomId>,
    pub limit: usize,
}

impl ListingQuery {
    /// Whether `room` comes after the cursor and matches the prefix.
    pub fn admits(&self, room: &RoomId) -> bool {
        room.as_str().starts_with(&self.prefix) && self.after.as_ref().is_none_or(|a| room > a)
    }
}

/// One public room as listed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoomListing {
    pub room: RoomId,
    /// Members now, detached members within their grace period included.
    pub members: u32,
    /// The distinct regions of the members' edges, sorted.
    pub regions: Vec<Region>,
    /// The JSON object the creating join gave as `room_meta`, if any.
    pub meta: Option<String>,
}

/// Up to a query's `limit` rooms in id order, and whether more match after the last one.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ListingPage {
    pub rooms: Vec<RoomListing>,
    pub more: bool,
}

/// Merges the pages of several groups (each sorted, each at most `limit` long) into one page
/// of at most `limit` rooms in id order. A name listed by two groups (the same room created
/// in two regions, for the moment until one moves into the other) is listed once: the entry
/// with more members (the one the move goes to holds every member before the other lets
/// them go), with the regions of both.
pub fn merge_pages(pages: impl IntoIterator<Item = ListingPage>, limit: usize) -> ListingPage {
    let mut merged: BTreeMap<RoomId, RoomListing> = BTreeMap::new();
    let mut more = false;
    for page in pages {
        more |= page.more;
        for room in page.rooms {
            match merged.get_mut(&room.room) {
                None => {
                    merged.insert(room.room.clone(), room);
                }
                Some(held) => {
                    let mut regions = std::mem::take(&mut held.regions);
                    regions.extend(room.regions.iter().cloned());
                    regions.sort();
                    regions.dedup();
                    if room.members > held.members {
                        *held = room;
                    }
                    held.regions = regions;
                }
            }
        }
    }
    if merged.len() > limit {
        more = true;
    }
    ListingPage {
        rooms: merged.into_values().take(limit).collect(),
        more,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn listing(room: &str, members: u32, regions: &[&str]) -> RoomListing {
        RoomListing {
            room: RoomId::new(room).unwrap(),
            members,
            regions: regions.iter().map(|r| Region::new(*r).unwrap()).collect(),
            meta: None,
        }
    }

    #[test]
    fn pages_merge_in_id_order_up_to_the_limit() {
        let us = ListingPage {
            rooms: vec![listing("a", 1, &["us"]), listing("c", 2, &["us"])],
            more: false,
        };
        let eu = ListingPage {
            rooms: vec![listing("b", 3, &["eu"]), listing("d", 1, &["eu"])],
            more: false,
        };
        let page = merge_pages([us.clone(), eu.clone()], 3);
        let ids: Vec<&str> = page.rooms.iter().map(|r| r.room.as_str()).collect();
        assert_eq!(ids, ["a", "b", "c"]);
        assert!(page.more, "`d` is left for the next page");
        let page = merge_pages([us, eu], 4);
        assert_eq!(page.rooms.len(), 4);
        assert!(!page.more);
    }

    #[test]
    fn a_region_with_more_makes_the_page_say_more() {
        let us = ListingPage {
            rooms: vec![listing("a", 1, &["us"])],
            more: true,
        };
        assert!(merge_pages([us, ListingPage::default()], 5).more);
    }

    #[test]
    fn a_name_in_two_groups_is_listed_once() {
        let us = ListingPage {
            rooms: vec![listing("x", 3, &["us", "eu"])],
            more: false,
        };
        let eu = ListingPage {
            rooms: vec![listing("x", 1, &["eu", "ap"])],
            more: false,
        };
        let page = merge_pages([eu, us], 10);
        assert_eq!(page.rooms, vec![listing("x", 3, &["ap", "eu", "us"])]);
    }

    #[test]
    fn the_query_admits_by_prefix_and_cursor() {
        let q = ListingQuery {
            prefix: "game-".into(),
            after: Some(RoomId::new("game-b").unwrap()),
            limit: 10,
        };
        assert!(q.admits(&RoomId::new("game-c").unwrap()));
        assert!(!q.admits(&RoomId::new("game-b").unwrap()));
        assert!(!q.admits(&RoomId::new("game-a").unwrap()));
        assert!(!q.admits(&RoomId::new("chat-z").unwrap()));
    }
}
