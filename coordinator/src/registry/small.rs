//! Sorted vectors for the registry's per-peer and per-room collections. A peer is in a few
//! rooms and most rooms have a few members, where a `BTreeMap`'s first node alone costs
//! 300–550 bytes whatever it holds (measured at a million members: most of a member's cost).
//! A lookup is a binary search, an insert or removal shifts the entries after it: for a room
//! of n members that is the O(n) its join already pays to answer with the member list.
//!
//! They serialise as `BTreeMap` and `BTreeSet` do (a map, a sequence, in key order), so
//! snapshots written before them and after them read the same either way.

use std::borrow::Borrow;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use serde::de::{Deserialize, Deserializer};
use serde::ser::{Serialize, SerializeMap, SerializeSeq, Serializer};

/// Up to this many entries a vector grows by one slot at a time (a room of two holds two).
const EXACT_UP_TO: usize = 8;

fn reserve_one<T>(v: &mut Vec<T>) {
    if v.len() < EXACT_UP_TO {
        v.reserve_exact(1);
    } else {
        v.reserve(1);
    }
}

fn shrink_after_remove<T>(v: &mut Vec<T>) {
    if v.capacity() > 2 * v.len() + EXACT_UP_TO {
        v.shrink_to_fit();
    }
}

/// A map as a vector sorted by key, without duplicate keys.
#[derive(Clone, PartialEq, Eq)]
pub struct SmallMap<K, V>(Vec<(K, V)>);

impl<K, V> Default for SmallMap<K, V> {
    fn default() -> Self {
        Self(Vec::new())
    }
}

impl<K: fmt::Debug, V: fmt::Debug> fmt::Debug for SmallMap<K, V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map()
            .entries(self.0.iter().map(|(k, v)| (k, v)))
            .finish()
    }
}

impl<K: Ord, V> SmallMap<K, V> {
    pub fn new() -> Self {
        Self::default()
    }

    fn find<Q>(&self, key: &Q) -> Result<usize, usize>
    where
        K: Borrow<Q>,
        Q: Ord + ?Sized,
    {
        self.0.binary_search_by(|(k, _)| k.borrow().cmp(key))
    }

    pub fn get<Q>(&self, key: &Q) -> Option<&V>
    where
        K: Borrow<Q>,
        Q: Ord + ?Sized,
    {
        self.find(key).ok().map(|i| &self.0[i].1)
    }

    pub fn get_mut<Q>(&mut self, key: &Q) -> Option<&mut V>
    where
        K: Borrow<Q>,
        Q: Ord + ?Sized,
    {
        self.find(key).ok().map(|i| &mut self.0[i].1)
    }

    pub fn contains_key<Q>(&self, key: &Q) -> bool
    where
        K: Borrow<Q>,
        Q: Ord + ?Sized,
    {
        self.find(key).is_ok()
    }

    /// Inserts or replaces; returns the value replaced.
    pub fn insert(&mut self, key: K, value: V) -> Option<V> {
        match self.find(&key) {
            Ok(i) => Some(std::mem::replace(&mut self.0[i].1, value)),
            Err(i) => {
                reserve_one(&mut self.0);
                self.0.insert(i, (key, value));
                None
            }
        }
    }

    pub fn remove<Q>(&mut self, key: &Q) -> Option<V>
    where
        K: Borrow<Q>,
        Q: Ord + ?Sized,
    {
        let i = self.find(key).ok()?;
        let (_, v) = self.0.remove(i);
        shrink_after_remove(&mut self.0);
        Some(v)
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Entries in key order.
    pub fn iter(&self) -> impl Iterator<Item = (&K, &V)> {
        self.0.iter().map(|(k, v)| (k, v))
    }

    pub fn keys(&self) -> impl Iterator<Item = &K> {
        self.0.iter().map(|(k, _)| k)
    }

    /// Values in key order.
    pub fn values(&self) -> impl Iterator<Item = &V> {
        self.0.iter().map(|(_, v)| v)
    }

    /// Removes every entry and gives the memory back.
    pub fn clear(&mut self) {
        self.0 = Vec::new();
    }

    /// Replaces each key with an equal one (e.g. one sharing another's storage).
    pub fn replace_keys(&mut self, mut equal: impl FnMut(&K) -> K) {
        for (k, _) in &mut self.0 {
            let new = equal(k);
            debug_assert!(new == *k, "replace_keys changed a key");
            *k = new;
        }
    }
}

impl<K: Ord, V> FromIterator<(K, V)> for SmallMap<K, V> {
    /// Later entries win over earlier ones with the same key, as for `BTreeMap`.
    fn from_iter<I: IntoIterator<Item = (K, V)>>(iter: I) -> Self {
        let sorted: BTreeMap<K, V> = iter.into_iter().collect();
        let mut v: Vec<(K, V)> = Vec::with_capacity(sorted.len());
        v.extend(sorted);
        Self(v)
    }
}

impl<K: Serialize, V: Serialize> Serialize for SmallMap<K, V> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(self.0.len()))?;
        for (k, v) in &self.0 {
            map.serialize_entry(k, v)?;
        }
        map.end()
    }
}

impl<'de, K: Ord + Deserialize<'de>, V: Deserialize<'de>> Deserialize<'de> for SmallMap<K, V> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Ok(BTreeMap::<K, V>::deserialize(deserializer)?
            .into_iter()
            .collect())
    }
}

/// A set as a sorted vector without duplicates.
#[derive(Clone, PartialEq, Eq)]
pub struct SmallSet<T>(Vec<T>);

impl<T> Default for SmallSet<T> {
    fn default() -> Self {
        Self(Vec::new())
    }
}

impl<T: fmt::Debug> fmt::Debug for SmallSet<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set().entries(self.0.iter()).finish()
    }
}

impl<T: Ord> SmallSet<T> {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn contains<Q>(&self, value: &Q) -> bool
    where
        T: Borrow<Q>,
        Q: Ord + ?Sized,
    {
        self.0.binary_search_by(|t| t.borrow().cmp(value)).is_ok()
    }

    /// Whether it was not there yet.
    pub fn insert(&mut self, value: T) -> bool {
        match self.0.binary_search(&value) {
            Ok(_) => false,
            Err(i) => {
                reserve_one(&mut self.0);
                self.0.insert(i, value);
                true
            }
        }
    }

    /// Whether it was there.
    pub fn remove<Q>(&mut self, value: &Q) -> bool
    where
        T: Borrow<Q>,
        Q: Ord + ?Sized,
    {
        match self.0.binary_search_by(|t| t.borrow().cmp(value)) {
            Ok(i) => {
                self.0.remove(i);
                shrink_after_remove(&mut self.0);
                true
            }
            Err(_) => false,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Values in order.
    pub fn iter(&self) -> std::slice::Iter<'_, T> {
        self.0.iter()
    }

    /// Replaces each value with an equal one (e.g. one sharing another's storage).
    pub fn replace_each(&mut self, mut equal: impl FnMut(&T) -> T) {
        for t in &mut self.0 {
            let new = equal(t);
            debug_assert!(new == *t, "replace_each changed a value");
            *t = new;
        }
    }
}

impl<T: Ord> FromIterator<T> for SmallSet<T> {
    fn from_iter<I: IntoIterator<Item = T>>(iter: I) -> Self {
        let sorted: BTreeSet<T> = iter.into_iter().collect();
        let mut v = Vec::with_capacity(sorted.len());
        v.extend(sorted);
        Self(v)
    }
}

impl<T: Serialize> Serialize for SmallSet<T> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut seq = serializer.serialize_seq(Some(self.0.len()))?;
        for t in &self.0 {
            seq.serialize_element(t)?;
        }
        seq.end()
    }
}

impl<'de, T: Ord + Deserialize<'de>> Deserialize<'de> for SmallSet<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Ok(BTreeSet::<T>::deserialize(deserializer)?
            .into_iter()
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn map_keeps_key_order_and_replaces() {
        let mut m = SmallMap::new();
        assert_eq!(m.insert("b".to_owned(), 2), None);
        assert_eq!(m.insert("a".to_owned(), 1), None);
        assert_eq!(m.insert("c".to_owned(), 3), None);
        assert_eq!(m.insert("b".to_owned(), 20), Some(2));
        assert_eq!(m.keys().collect::<Vec<_>>(), ["a", "b", "c"]);
        assert_eq!(m.get("b"), Some(&20));
        assert!(m.contains_key("c"));
        assert_eq!(m.remove("a"), Some(1));
        assert_eq!(m.remove("a"), None);
        assert_eq!(m.len(), 2);
        if let Some(v) = m.get_mut("c") {
            *v = 30;
        }
        assert_eq!(m.values().copied().collect::<Vec<_>>(), [20, 30]);
        m.clear();
        assert!(m.is_empty());
        assert_eq!(m.0.capacity(), 0);
    }

    #[test]
    fn set_inserts_once() {
        let mut s = SmallSet::new();
        assert!(s.insert(3));
        assert!(s.insert(1));
        assert!(!s.insert(3));
        assert_eq!(s.iter().copied().collect::<Vec<_>>(), [1, 3]);
        assert!(s.remove(&1));
        assert!(!s.remove(&1));
        assert!(!s.is_empty());
    }

    #[test]
    fn same_json_as_the_btree_collections_both_ways() {
        let tree: BTreeMap<String, u64> = [("z".into(), 1), ("a".into(), 2)].into();
        let small: SmallMap<String, u64> = tree.clone().into_iter().collect();
        let json = serde_json::to_string(&tree).unwrap();
        assert_eq!(serde_json::to_string(&small).unwrap(), json);
        assert_eq!(
            serde_json::from_str::<SmallMap<String, u64>>(&json).unwrap(),
            small
        );

        let set: BTreeSet<String> = ["y".into(), "b".into()].into();
        let small: SmallSet<String> = set.clone().into_iter().collect();
        let json = serde_json::to_string(&set).unwrap();
        assert_eq!(serde_json::to_string(&small).unwrap(), json);
        assert_eq!(
            serde_json::from_str::<SmallSet<String>>(&json).unwrap(),
            small
        );
    }

    #[test]
    fn small_vectors_hold_no_spare_slots() {
        let mut m = SmallMap::new();
        m.insert(1, ());
        m.insert(2, ());
        assert_eq!(m.0.capacity(), 2);
    }
}
