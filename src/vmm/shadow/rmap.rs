//! The reverse map: which leaf shadow entries map each guest frame, so the frame can be
//! write-protected when it becomes a shadowed table. Most frames are mapped once, so the
//! first entry is kept inline and only further ones in a list (memory grows by about one
//! hash slot per page, not one allocation).

use rustc_hash::FxHashMap;

use crate::addr::{Gfn, Hpa};

/// Leaf shadow entries by guest frame. Entries may go stale (their shadow page zapped or
/// rewritten); users check an entry still maps the frame before acting on it.
#[derive(Default)]
pub struct ReverseMap {
    first: FxHashMap<Gfn, Hpa>,
    more: FxHashMap<Gfn, Vec<Hpa>>,
}

impl ReverseMap {
    /// Records that the shadow entry at `spte` maps `gfn`.
    pub fn add(&mut self, gfn: Gfn, spte: Hpa) {
        match self.first.get(&gfn) {
            None => {
                self.first.insert(gfn, spte);
            }
            Some(&existing) if existing == spte => {}
            Some(_) => {
                let list = self.more.entry(gfn).or_default();
                if !list.contains(&spte) {
                    list.push(spte);
                }
            }
        }
    }

    /// Removes and returns every entry recorded for `gfn`.
    pub fn take(&mut self, gfn: Gfn) -> Vec<Hpa> {
        let mut all: Vec<Hpa> = self.first.remove(&gfn).into_iter().collect();
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
    }
}
