//! A direct-mapped memo of where guest frames live in host memory: a shortcut around lookups
//! whose answer changes only when the host moves a backing page (then its owner forgets the
//! frame), like a VMM's gfn-to-pfn cache.

use crate::addr::{Gpa, Hpa, PageSize, PAGE_BYTES};

/// Guest frame -> host 4 KiB page, with `V` remembered beside it, one entry per slot (picked
/// by a hash of the frame number).
#[derive(Clone, Debug)]
pub struct FrameMemo<V> {
    /// (guest frame number or `u64::MAX` when empty, host page, extra).
    /// A power of two of them, so the top bits of a hash pick the slot (a division would cost
    /// tens of cycles on every lookup of a software walk).
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
        // Fibonacci hashing: the frame number times 2^64 / phi, its top bits. Page-table
        // frames come at near-regular strides (one per 512 frames a program faults in), which
        // a plain mask would pile into a few slots.
        let bits = self.slots.len().trailing_zeros();
        let hash = gpa.frame().number().wrapping_mul(0x9E37_79B9_7F4A_7C15).checked_shr(64 - bits);
        hash.and_then(|slot| usize::try_from(slot).ok()).unwrap_or(0)
    }

    /// The host address of `gpa` and what was remembered with it, if its frame is in the memo.
    #[inline]
    pub fn get(&self, gpa: Gpa) -> Option<(Hpa, V)> {
        let (frame, page, extra) = self.slots[self.slot(gpa)];
        (frame == gpa.frame().number()).then(|| (Hpa::new(page | gpa.page_offset(PageSize::Size4K)), extra))
    }

    /// Forgets `gpa`'s frame (its backing moved).
    pub fn forget(&mut self, gpa: Gpa) {
        let slot = self.slot(gpa);
        if self.slots[slot].0 == gpa.frame().number() {
            self.slots[slot].0 = u64::MAX;
        }
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

    fn page(frame: u64) -> Gpa {
        Gpa::new(frame << 12)
    }

    /// How many of `frames`, remembered in turn, the memo still holds.
    fn kept(memo: &mut FrameMemo<()>, frames: &[u64]) -> usize {
        for &frame in frames {
            memo.remember(page(frame), Hpa::new(frame << 13), ());
        }
        frames.iter().filter(|&&frame| memo.get(page(frame)).is_some()).count()
    }

    #[test]
    fn remembers_one_frame_per_slot() {
        let mut memo = FrameMemo::new(4, ());
        assert_eq!(memo.get(Gpa::new(0x1234)), None);
        memo.remember(Gpa::new(0x1000), Hpa::new(0x9_9000), ());
        assert_eq!(memo.get(Gpa::new(0x1234)), Some((Hpa::new(0x9_9234), ())));
        // The frame remembered last is always found; five frames cannot all stay in four slots.
        for frame in 2..6 {
            memo.remember(page(frame), Hpa::new(frame << 20), ());
            assert_eq!(memo.get(Gpa::new((frame << 12) + 8)), Some((Hpa::new((frame << 20) + 8), ())));
        }
        assert!((1..6).filter(|&frame| memo.get(page(frame)).is_some()).count() <= 4);
    }

    #[test]
    fn slot_count_rounds_up_to_a_power_of_two() {
        let memo = FrameMemo::new(5, 0u8);
        assert_eq!(memo.slots.len(), 8);
        let mut one = FrameMemo::new(0, ());
        assert_eq!(one.slots.len(), 1);
        assert_eq!(kept(&mut one, &[7, 9]), 1);
    }

    #[test]
    fn frames_at_a_power_of_two_stride_do_not_share_a_slot() {
        // Page-table frames a program faults in come about 513 frames apart, so ones 1,022
        // apart lie 2^19 frames apart, plus a few: a mask of the low bits puts them all in
        // one slot.
        let frames: Vec<u64> = (0..64).map(|k| k * (1 << 19) + k % 3).collect();
        assert!(kept(&mut FrameMemo::new(1024, ()), &frames) >= 60);
        let spread: Vec<u64> = (0..512).map(|k| 5 + k * 513).collect();
        assert!(kept(&mut FrameMemo::new(1024, ()), &spread) >= 480);
    }
}
