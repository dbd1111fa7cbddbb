//! A small set-associative LRU map, the storage of the paging-structure caches and the nested
//! TLB.

use crate::tlb::sets::{make_most_recent, SetLayout};

/// `sets` x `ways` slots of `(key, value)`, each set most recently used first.
#[derive(Clone, Debug)]
pub struct LruSets<K, V> {
    layout: SetLayout,
    slots: Vec<Option<(K, V)>>,
}

impl<K: Copy + Eq, V: Copy> LruSets<K, V> {
    /// `entries` slots, `ways`-way (at least one set of one way).
    pub fn new(entries: usize, ways: usize) -> Self {
        let ways = ways.max(1);
        let layout = SetLayout::new(entries / ways, ways);
        Self { layout, slots: vec![None; layout.slots()] }
    }

    fn set(&mut self, hint: u64) -> &mut [Option<(K, V)>] {
        let first = self.layout.first_slot(hint);
        &mut self.slots[first..first + self.layout.ways()]
    }

    /// The value for `key`, which lives in set `hint mod sets`; a hit becomes most recent.
    #[inline]
    pub fn get(&mut self, hint: u64, key: K) -> Option<V> {
        let set = self.set(hint);
        let way = set.iter().position(|slot| matches!(slot, Some((k, _)) if *k == key))?;
        let found = set[way];
        if way > 0 {
            make_most_recent(set, way, found);
        }
        found.map(|(_, value)| value)
    }

    /// Stores `key -> value` as most recent, replacing an entry for the same key or the
    /// least recently used one.
    pub fn insert(&mut self, hint: u64, key: K, value: V) {
        let set = self.set(hint);
        // Entries come first, empties last: one pass finds the key or the first empty slot.
        let victim = set.iter().position(|slot| slot.is_none_or(|(k, _)| k == key)).unwrap_or(set.len() - 1);
        make_most_recent(set, victim, Some((key, value)));
    }

    /// Keeps only the entries `keep` accepts.
    pub fn retain(&mut self, mut keep: impl FnMut(&K, &V) -> bool) {
        for slot in &mut self.slots {
            if slot.is_some_and(|(k, v)| !keep(&k, &v)) {
                *slot = None;
            }
        }
        // Close the gaps so every set stays most-recent-first with empties last.
        for set in self.slots.chunks_mut(self.layout.ways()) {
            let mut kept = 0;
            for way in 0..set.len() {
                if let Some(entry) = set[way].take() {
                    set[kept] = Some(entry);
                    kept += 1;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lru_replacement_and_retain() {
        let mut cache = LruSets::<u64, u32>::new(2, 2);
        cache.insert(0, 1, 10);
        cache.insert(0, 2, 20);
        assert_eq!(cache.get(0, 1), Some(10));
        cache.insert(0, 3, 30);
        assert_eq!(cache.get(0, 2), None);
        assert_eq!(cache.get(0, 3), Some(30));
        cache.retain(|k, _| *k != 3);
        assert_eq!(cache.get(0, 3), None);
        assert_eq!(cache.get(0, 1), Some(10));
    }
}
