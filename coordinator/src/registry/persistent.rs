//! Building the registry's persistent maps from a snapshot without half-empty nodes.
//!
//! A snapshot lists a map's entries in key order, and a B-tree filled in key order splits
//! every full leaf in two halves of which the left one is never added to again: the tree
//! ends with its leaves half full. Filled in an order that jumps around the keys, as joins
//! fill the live registry, leaves end about two-thirds full. So a decoded map takes its
//! entries in such an order: a replica restored or caught up from a snapshot holds its
//! records in as little memory as one that applied the joins.

use std::fmt;
use std::marker::PhantomData;

use imbl::OrdMap;
use serde::de::{Deserializer, MapAccess, Visitor};

/// The step between the entries taken one after the other: a prime, so that for any number
/// of entries not a multiple of it, stepping by it visits every entry once.
const STEP: usize = 7_919;

/// `entries` as a map, inserted in an order that spreads over the keys when they are in
/// strictly increasing order (as a snapshot writes them); otherwise inserted in turn, so that
/// of two equal keys the later entry wins, as in a `BTreeMap`.
pub fn spread<K: Ord + Clone, V: Clone>(entries: Vec<(K, V)>) -> OrdMap<K, V> {
    if !entries.windows(2).all(|w| w[0].0 < w[1].0) {
        return entries.into_iter().collect();
    }
    let n = entries.len();
    let mut slots: Vec<Option<(K, V)>> = entries.into_iter().map(Some).collect();
    let mut map = OrdMap::new();
    // A step sharing a factor with n would revisit entries: then one at a time, in order.
    let step = if n.is_multiple_of(STEP) { 1 } else { STEP };
    let mut i = 0;
    for _ in 0..n {
        if let Some((k, v)) = slots[i].take() {
            map.insert(k, v);
        }
        i = (i + step) % n;
    }
    map
}

/// Deserialises a map (as a `BTreeMap` is written) into an [`OrdMap`] built by [`spread`].
pub fn deserialize_spread<'de, D, K, V>(deserializer: D) -> Result<OrdMap<K, V>, D::Error>
where
    D: Deserializer<'de>,
    K: serde::Deserialize<'de> + Ord + Clone,
    V: serde::Deserialize<'de> + Clone,
{
    struct Entries<K, V>(PhantomData<(K, V)>);

    impl<'de, K: serde::Deserialize<'de>, V: serde::Deserialize<'de>> Visitor<'de> for Entries<K, V> {
        type Value = Vec<(K, V)>;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a map")
        }

        fn visit_map<A: MapAccess<'de>>(self, mut access: A) -> Result<Self::Value, A::Error> {
            // The size hint is the decoder's guess; capped so that a wrong one costs little.
            let mut entries = Vec::with_capacity(access.size_hint().unwrap_or(0).min(1 << 16));
            while let Some(entry) = access.next_entry()? {
                entries.push(entry);
            }
            Ok(entries)
        }
    }

    let entries = deserializer.deserialize_map(Entries(PhantomData))?;
    Ok(spread(entries))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_entry_is_inserted_once_whatever_the_count() {
        for n in [0, 1, 2, 3, STEP - 1, STEP, STEP + 1, 2 * STEP, 20_000] {
            let entries: Vec<(usize, usize)> = (0..n).map(|i| (i, i * 2)).collect();
            let map = spread(entries);
            assert_eq!(map.len(), n, "n = {n}");
            assert!(map.iter().all(|(k, v)| *v == k * 2));
        }
    }

    #[test]
    fn a_later_duplicate_key_wins_as_in_a_json_object() {
        let json = r#"{"a":1,"b":2,"a":3}"#;
        let mut de = serde_json::Deserializer::from_str(json);
        let map: OrdMap<String, u32> = deserialize_spread(&mut de).unwrap();
        assert_eq!(map.len(), 2);
        assert_eq!(map.get("a"), Some(&3));
        assert_eq!(map.get("b"), Some(&2));
    }
}
