//! A direct-mapped memo of where guest frames live in host memory: a shortcut around lookups
//! whose answer never changes once found (backings are never taken back, nested tables only
//! gain mappings), like a VMM's gfn-to-pfn cache.

use crate::addr::{Gpa, Hpa, PageSize, PAGE_BYTES};

/// Guest frame -> host 4 KiB page, with `V` remembered beside it, one entry per slot
/// (frame number mod slots).
#[derive(Clone, Debug)]
pub struct FrameMemo<V> {
    /// (guest frame number or `u64::MAX` when empty, host page, extra).
    /// A power of two of them, so a mask picks the slot (a division would cost tens of cycles
    /// on every lookup of a software walk).
    slots: Vec<(u64, u64, V)>,
}

impl<V: Copy> FrameMemo<V> {
    /// An empty memo of `entries` slots, rounded up to a power of two; `empty` fills the
    /// unused extras.
    pub fn new(entries: usize, empty: V) -> Self {
        let entries = entries.max(1).next_power_of_two();
        Self { slots: vec![(u64::MAX, 0, empty); entries] }
    }

    #[inline]
    fn slot(&self, gpa: Gpa) -> usize {
        usize::try_from(gpa.frame().number() & (self.slots.len() as u64 - 1)).unwrap_or(0)
    }

    /// The host address of `gpa` and what was remembered with it, if its frame is in the memo.
    #[inline]
    pub fn get(&self, gpa: Gpa) -> Option<(Hpa, V)> {
        let (frame, page, extra) = self.slots[self.slot(gpa)];
        (frame == gpa.frame().number()).then(|| (Hpa::new(page | gpa.page_offset(PageSize::Size4K)), extra))
    }

    /// Remembers that `gpa`'s frame lives at `hpa`'s 4 KiB page.
    #[inline]
    pub fn remember(&mut self, gpa: Gpa, hpa: Hpa, extra: V) {
        let slot = self.slot(gpa);
        self.slots[slot] = (gpa.frame().number(), hpa.as_u64() & !(PAGE_BYTES - 1), extra);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remembers_one_frame_per_slot() {
        let mut memo = FrameMemo::new(4, ());
        assert_eq!(memo.get(Gpa::new(0x1234)), None);
        memo.remember(Gpa::new(0x1000), Hpa::new(0x9_9000), ());
        assert_eq!(memo.get(Gpa::new(0x1234)), Some((Hpa::new(0x9_9234), ())));
        // Frame 5 shares frame 1's slot and replaces it.
        memo.remember(Gpa::new(0x5000), Hpa::new(0x7_7000), ());
        assert_eq!(memo.get(Gpa::new(0x1234)), None);
        assert_eq!(memo.get(Gpa::new(0x5008)), Some((Hpa::new(0x7_7008), ())));
    }

    #[test]
    fn slot_count_rounds_up_to_a_power_of_two() {
        // Five entries become eight slots: frames 1 and 5 both stay, frame 9 replaces 1.
        let mut memo = FrameMemo::new(5, 0u8);
        memo.remember(Gpa::new(0x1000), Hpa::new(0x1_1000), 1);
        memo.remember(Gpa::new(0x5000), Hpa::new(0x5_5000), 5);
        assert_eq!(memo.get(Gpa::new(0x1000)), Some((Hpa::new(0x1_1000), 1)));
        memo.remember(Gpa::new(0x9000), Hpa::new(0x9_9000), 9);
        assert_eq!(memo.get(Gpa::new(0x1000)), None);
        assert_eq!(memo.get(Gpa::new(0x5010)), Some((Hpa::new(0x5_5010), 5)));
    }
}
