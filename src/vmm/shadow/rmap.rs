//! The reverse map: which leaf shadow entries map each guest frame, so the frame can be
//! write-protected when it becomes a shadowed table. Most frames are mapped once, so the
//! first entry is kept in a word per guest frame (an array by frame number, as KVM keeps one
//! per memory slot, stored sparsely), and only further ones in a list.

use rustc_hash::FxHashMap;

use crate::addr::{Gfn, Hpa};
use crate::memory::sparse_words::SparseWords;

/// Leaf shadow entries by guest frame. Entries may go stale (their shadow page zapped or
/// rewritten); users check an entry still maps the frame before acting on it.
#[derive(Default)]
pub struct ReverseMap {
    /// The first entry's address by guest frame number, 0 for none (shadow entries live in
    /// shadow tables, never in frame 0).
    first: SparseWords,
    more: FxHashMap<Gfn, Vec<Hpa>>,
}

impl ReverseMap {
    /// Records that the shadow entry at `spte` maps `gfn`.
    pub fn add(&mut self, gfn: Gfn, spte: Hpa) {
        match self.first.read(gfn.number()) {
            0 => self.first.write(gfn.number(), spte.as_u64()),
            existing if existing == spte.as_u64() => {}
            _ => {
                let list = self.more.entry(gfn).or_default();
                if !list.contains(&spte) {
                    list.push(spte);
                }
            }
        }
    }

    /// Removes and returns every entry recorded for `gfn`.
    pub fn take(&mut self, gfn: Gfn) -> Vec<Hpa> {
        let first = self.first.read(gfn.number());
        if first == 0 {
            return Vec::new();
        }
        self.first.write(gfn.number(), 0);
        let mut all = vec![Hpa::new(first)];
        all.extend(self.more.remove(&gfn).unwrap_or_default());
        all
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_each_entry_once() {
        let mut rmap = ReverseMap::default();
        let gfn = Gfn::new(7);
        rmap.add(gfn, Hpa::new(0x1000));
        rmap.add(gfn, Hpa::new(0x1000));
        rmap.add(gfn, Hpa::new(0x2008));
        rmap.add(gfn, Hpa::new(0x2008));
        assert_eq!(rmap.take(gfn), vec![Hpa::new(0x1000), Hpa::new(0x2008)]);
        assert!(rmap.take(gfn).is_empty());
        assert!(rmap.take(Gfn::new(8)).is_empty());
    }
}
