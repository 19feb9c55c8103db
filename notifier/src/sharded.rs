//! A hash map split into [`SHARDS`] maps by the key's hash, for the
//! engine's largest tables (pipes, armed timers, the rule index's cache).
//!
//! A `HashMap` grows by doubling and moves every entry when it does: at
//! 57,000 pipes that one insert took 30-280 ms on the evaluation thread
//! (measured in the notify bench, 2 cores under an ingest stream), and
//! every subscription's records, another tenant's failures included, waited
//! for it. Split in 64, a growth moves a 64th of the entries: the pause
//! shrinks by the same factor, the total work stays the same.

use std::borrow::Borrow;
use std::fmt;
use std::hash::{BuildHasher, Hash};

use crate::model::FastMap;

/// Shards of a [`ShardedMap`] (a power of two).
pub(crate) const SHARDS: usize = 64;

pub(crate) struct ShardedMap<K, V> {
    shards: Box<[FastMap<K, V>]>,
    /// Picks the shard; the shards hash with their own (random) seeds.
    pick: foldhash::fast::RandomState,
    len: usize,
}

impl<K, V> Default for ShardedMap<K, V> {
    fn default() -> Self {
        ShardedMap {
            shards: (0..SHARDS).map(|_| FastMap::default()).collect(),
            pick: foldhash::fast::RandomState::default(),
            len: 0,
        }
    }
}

impl<K, V> fmt::Debug for ShardedMap<K, V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ShardedMap")
            .field("len", &self.len)
            .finish()
    }
}

impl<K: Hash + Eq, V> ShardedMap<K, V> {
    fn shard<Q: Hash + ?Sized>(&self, k: &Q) -> usize {
        // The high bits: the shards' own tables use the low ones.
        (self.pick.hash_one(k) >> (64 - SHARDS.trailing_zeros())) as usize
    }

    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Entries the shards have room for.
    pub(crate) fn capacity(&self) -> usize {
        self.shards.iter().map(|s| s.capacity()).sum()
    }

    pub(crate) fn get<Q>(&self, k: &Q) -> Option<&V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.shards[self.shard(k)].get(k)
    }

    pub(crate) fn get_mut<Q>(&mut self, k: &Q) -> Option<&mut V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let i = self.shard(k);
        self.shards[i].get_mut(k)
    }

    pub(crate) fn contains_key<Q>(&self, k: &Q) -> bool
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.get(k).is_some()
    }

    pub(crate) fn insert(&mut self, k: K, v: V) -> Option<V> {
        let i = self.shard(&k);
        let old = self.shards[i].insert(k, v);
        if old.is_none() {
            self.len += 1;
        }
        old
    }

    pub(crate) fn remove<Q>(&mut self, k: &Q) -> Option<V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let i = self.shard(k);
        let old = self.shards[i].remove(k);
        if old.is_some() {
            self.len -= 1;
        }
        old
    }

    pub(crate) fn retain(&mut self, mut keep: impl FnMut(&K, &mut V) -> bool) {
        for s in self.shards.iter_mut() {
            s.retain(&mut keep);
        }
        self.len = self.shards.iter().map(|s| s.len()).sum();
    }

    /// Empties the map, keeping the shards' room.
    pub(crate) fn clear(&mut self) {
        for s in self.shards.iter_mut() {
            s.clear();
        }
        self.len = 0;
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = (&K, &V)> {
        self.shards.iter().flat_map(|s| s.iter())
    }

    pub(crate) fn keys(&self) -> impl Iterator<Item = &K> {
        self.iter().map(|(k, _)| k)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[test]
    fn behaves_as_one_map() {
        let mut m: ShardedMap<String, u32> = ShardedMap::default();
        let mut r: HashMap<String, u32> = HashMap::new();
        for i in 0..5_000u32 {
            let k = format!("k{}", i % 3_001);
            assert_eq!(m.insert(k.clone(), i), r.insert(k, i));
            if i % 7 == 0 {
                let gone = format!("k{}", i / 2);
                assert_eq!(m.remove(gone.as_str()), r.remove(&gone));
            }
            assert_eq!(m.len(), r.len());
        }
        for (k, v) in &r {
            assert_eq!(m.get(k.as_str()), Some(v));
            assert!(m.contains_key(k.as_str()));
        }
        assert_eq!(m.get("absent"), None);
        *m.get_mut("k1").unwrap() += 1;
        *r.get_mut("k1").unwrap() += 1;
        m.retain(|_, v| *v % 2 == 0);
        r.retain(|_, v| *v % 2 == 0);
        assert_eq!(m.len(), r.len());
        let mut got: Vec<(String, u32)> = m.iter().map(|(k, v)| (k.clone(), *v)).collect();
        let mut want: Vec<(String, u32)> = r.into_iter().collect();
        got.sort();
        want.sort();
        assert_eq!(got, want);
        assert_eq!(m.keys().count(), m.len());
        assert!(m.capacity() >= m.len());
        // Spread over the shards, not piled in one.
        assert!(m.shards.iter().filter(|s| !s.is_empty()).count() > SHARDS / 2);
        m.clear();
        assert!(m.len() == 0 && m.iter().next().is_none());
    }
}
