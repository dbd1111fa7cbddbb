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
    /// Every set as a list, most recent first: the definition of LRU, with nothing shared with
    /// the code under test.
    struct Model {
        sets: Vec<Vec<(u64, u32)>>,
        ways: usize,
    }

    impl Model {
        fn get(&mut self, key: u64) -> Option<u32> {
            let index = usize::try_from(key % self.sets.len() as u64).unwrap_or(0);
            let set = &mut self.sets[index];
            let at = set.iter().position(|(k, _)| *k == key)?;
            let entry = set.remove(at);
            set.insert(0, entry);
            Some(entry.1)
        }

        fn insert(&mut self, key: u64, value: u32) {
            let (ways, index) = (self.ways, usize::try_from(key % self.sets.len() as u64).unwrap_or(0));
            let set = &mut self.sets[index];
            set.retain(|(k, _)| *k != key);
            set.insert(0, (key, value));
            set.truncate(ways);
        }
    }

    #[test]
    fn agrees_with_a_list_model_of_lru() {
        for (entries, ways) in [(32, 4), (4, 4), (12, 4), (7, 1)] {
            let sets = entries / ways;
            let mut cache = LruSets::<u64, u32>::new(entries, ways);
            let mut model = Model { sets: vec![Vec::new(); sets], ways };
            let mut x = 0x9e37_79b9_7f4a_7c15u64;
            for step in 0..20_000u32 {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let key = x % (entries as u64 * 3);
                match x >> 60 {
                    0..=6 => assert_eq!(cache.get(key, key), model.get(key), "{entries}/{ways} step {step}"),
                    7..=14 => {
                        cache.insert(key, key, step);
                        model.insert(key, step);
                    }
                    _ => {
                        let drop = key % 5;
                        cache.retain(|k, _| k % 5 != drop);
                        model.sets.iter_mut().for_each(|s| s.retain(|(k, _)| k % 5 != drop));
                    }
                }
            }
        }
    }
}
