//! The TLB hierarchy of a vCPU.

use serde::Serialize;

use crate::addr::{Gva, Hpa, PageSize};
use crate::tlb::array::{page_number, TlbArray, TlbEntry, TlbTag};

/// How the TLBs are arranged.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TlbConfig {
    /// A modern core's hierarchy: L1 iTLB (4K: 128 entries 8-way; 2M: 8, fully associative),
    /// L1 dTLB (4K: 64 entries 4-way; 2M: 32 4-way; 1G: 4 fully associative), and a unified
    /// L2 (4K and 2M: 1536 entries 12-way; 1G: 16 entries 4-way) — Intel Ice Lake's sizes.
    Hierarchy,
    /// Exactly one unified LRU level of `entries` entries, `ways`-way (entries / ways sets,
    /// set = page number mod sets, where a page of any size is one entry numbered by its
    /// size), as a unified second-level TLB holds 4 KiB and 2 MiB pages side by side. With
    /// `split_large`, large pages are split into 4 KiB entries instead (a TLB that holds 4 KiB
    /// pages only). Results can be checked exactly against any LRU model.
    Single {
        /// Total entries.
        entries: usize,
        /// Associativity.
        ways: usize,
        /// Large pages are cached as the 4 KiB pieces the accesses touch.
        split_large: bool,
    },
}

/// Arrays holding one level's entries, one array per page size it caches.
#[derive(Clone, Debug, Default)]
struct Level {
    k4: Option<TlbArray>,
    m2: Option<TlbArray>,
    g1: Option<TlbArray>,
    /// The 2 MiB entries live in the 4 KiB array (a unified STLB).
    m2_in_k4: bool,
    /// The 1 GiB entries live there too (the single exact level).
    g1_in_k4: bool,
}

impl Level {
    fn array(&mut self, size: PageSize) -> Option<&mut TlbArray> {
        match size {
            PageSize::Size4K => self.k4.as_mut(),
            PageSize::Size2M if self.m2_in_k4 => self.k4.as_mut(),
            PageSize::Size2M => self.m2.as_mut(),
            PageSize::Size1G if self.g1_in_k4 => self.k4.as_mut(),
            PageSize::Size1G => self.g1.as_mut(),
        }
    }

    fn lookup(&mut self, va: Gva, tag: TlbTag) -> Option<TlbEntry> {
        for size in [PageSize::Size4K, PageSize::Size2M, PageSize::Size1G] {
            if let Some(array) = self.array(size) {
                if let Some(entry) = array.lookup(va, size, tag) {
                    return Some(entry);
                }
            }
        }
        None
    }

    /// Inserts `entry`, splitting it into the largest size this level holds if needed; with
    /// `absent`, the caller knows the level does not hold it (see [`TlbArray::insert_absent`]).
    fn insert(&mut self, entry: TlbEntry, va: Gva, absent: bool) {
        let mut fitted = entry;
        for size in [PageSize::Size1G, PageSize::Size2M, PageSize::Size4K] {
            if size > entry.size {
                continue;
            }
            if self.array(size).is_some() {
                fitted = split(entry, va, size);
                break;
            }
        }
        match self.array(fitted.size) {
            Some(array) if absent => array.insert_absent(fitted),
            Some(array) => array.insert(fitted),
            None => {}
        }
    }

    fn retain(&mut self, keep: &mut impl FnMut(&TlbEntry) -> bool) {
        for array in [&mut self.k4, &mut self.m2, &mut self.g1].into_iter().flatten() {
            array.retain(&mut *keep);
        }
    }

    fn remove_page(&mut self, va: Gva, hit: &mut impl FnMut(&TlbEntry) -> bool) {
        for size in [PageSize::Size4K, PageSize::Size2M, PageSize::Size1G] {
            if let Some(array) = self.array(size) {
                array.remove_page(va, size, &mut *hit);
            }
        }
    }

    fn occupancy(&self) -> usize {
        [&self.k4, &self.m2, &self.g1].into_iter().flatten().map(TlbArray::occupancy).sum()
    }
}

/// The part of `entry` (a page of `entry.size`) that covers `va`, as a page of `size`.
fn split(entry: TlbEntry, va: Gva, size: PageSize) -> TlbEntry {
    if size == entry.size {
        return entry;
    }
    let offset = va.page_offset(entry.size) & !(size.bytes() - 1);
    TlbEntry { vpn: page_number(va, size), size, page: Hpa::new(entry.page.as_u64() | offset), ..entry }
}

/// Where a lookup hit.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct TlbHit {
    /// The entry.
    pub entry: TlbEntry,
    /// 1 for the first level, 2 for the second.
    pub level: u8,
}

/// Hit and miss counts by level.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default, Serialize)]
pub struct TlbLevelStats {
    /// Lookups that hit in an L1 TLB (or in the single level of `TlbConfig::Single`).
    pub l1_hits: u64,
    /// Lookups that missed L1 and hit L2.
    pub l2_hits: u64,
    /// Lookups that missed everywhere.
    pub misses: u64,
}

/// A vCPU's TLBs.
#[derive(Clone, Debug)]
pub struct Tlb {
    l1i: Level,
    l1d: Level,
    l2: Level,
    /// Only the unified level exists (`TlbConfig::Single`): its hits count as L1 hits.
    single: bool,
    stats: TlbLevelStats,
}

impl Tlb {
    /// Builds the TLBs `config` describes.
    pub fn new(config: TlbConfig) -> Self {
        let array = |entries: usize, ways: usize| Some(TlbArray::new(entries / ways, ways));
        match config {
            TlbConfig::Hierarchy => Self {
                l1i: Level { k4: array(128, 8), m2: array(8, 8), ..Level::default() },
                l1d: Level { k4: array(64, 4), m2: array(32, 4), g1: array(4, 4), ..Level::default() },
                l2: Level { k4: array(1536, 12), g1: array(16, 4), m2_in_k4: true, ..Level::default() },
                single: false,
                stats: TlbLevelStats::default(),
            },
            TlbConfig::Single { entries, ways, split_large } => Self {
                l1i: Level::default(),
                l1d: Level::default(),
                l2: Level {
                    k4: array(entries, ways),
                    m2_in_k4: !split_large,
                    g1_in_k4: !split_large,
                    ..Level::default()
                },
                single: true,
                stats: TlbLevelStats::default(),
            },
        }
    }

    /// The entry a lookup of `va` would hit if that hit changes nothing: the most recently
    /// used 4 KiB entry of its set in the first array searched (the L1 of its side, or the
    /// single level), which a hit leaves in place. A look without effects;
    /// [`Tlb::count_unchanged_hit`] then counts it as the L1 hit it is.
    #[inline(always)]
    pub fn unchanged_hit(&self, va: Gva, fetch: bool, tag: TlbTag) -> Option<TlbEntry> {
        let first = if self.single {
            &self.l2
        } else if fetch {
            &self.l1i
        } else {
            &self.l1d
        };
        first.k4.as_ref()?.most_recent(va, PageSize::Size4K, tag)
    }

    /// Counts a lookup [`Tlb::unchanged_hit`] answered.
    #[inline]
    pub fn count_unchanged_hit(&mut self) {
        self.stats.l1_hits += 1;
    }

    /// Looks up the translation of `va`; a fetch uses the iTLB, data the dTLB. An L2 hit is
    /// copied into L1. Counts the lookup.
    #[inline]
    pub fn lookup(&mut self, va: Gva, fetch: bool, tag: TlbTag) -> Option<TlbHit> {
        if let Some(entry) = self.unchanged_hit(va, fetch, tag) {
            self.count_unchanged_hit();
            return Some(TlbHit { entry, level: 1 });
        }
        self.lookup_arrays(va, fetch, tag)
    }

    /// A lookup through the arrays themselves.
    fn lookup_arrays(&mut self, va: Gva, fetch: bool, tag: TlbTag) -> Option<TlbHit> {
        let l1 = if fetch { &mut self.l1i } else { &mut self.l1d };
        if let Some(entry) = l1.lookup(va, tag) {
            self.stats.l1_hits += 1;
            return Some(TlbHit { entry, level: 1 });
        }
        if let Some(entry) = self.l2.lookup(va, tag) {
            if self.single {
                self.stats.l1_hits += 1;
                return Some(TlbHit { entry, level: 1 });
            }
            // The L1 lookup just missed: the L1 does not hold the page.
            l1.insert(entry, va, true);
            self.stats.l2_hits += 1;
            return Some(TlbHit { entry, level: 2 });
        }
        self.stats.misses += 1;
        None
    }

    /// Fills both levels with a translation a walk produced for `va`.
    pub fn insert(&mut self, entry: TlbEntry, va: Gva, fetch: bool) {
        self.fill(entry, va, fetch, false);
    }

    /// [`Tlb::insert`] after a lookup of `va` under the entry's tag on the `fetch` side missed,
    /// or its entry was dropped, with nothing inserted since: neither level holds the page,
    /// so a full set needs no search for it.
    pub fn insert_after_miss(&mut self, entry: TlbEntry, va: Gva, fetch: bool) {
        self.fill(entry, va, fetch, true);
    }

    fn fill(&mut self, entry: TlbEntry, va: Gva, fetch: bool, absent: bool) {
        self.l2.insert(entry, va, absent);
        let l1 = if fetch { &mut self.l1i } else { &mut self.l1d };
        l1.insert(entry, va, absent);
    }

    /// Drops any entry that translates `va` under `tag`, and global entries for it in every
    /// PCID of the VPID (INVLPG, SDM Vol. 3A §4.10.4.1).
    pub fn invlpg(&mut self, va: Gva, tag: TlbTag) {
        self.remove_page(va, |e| e.tag.vpid == tag.vpid && (e.global || e.tag.pcid == tag.pcid));
    }

    /// Drops `tag`'s non-global entries (a CR3 load without no-flush, with PCIDs on).
    pub fn flush_pcid(&mut self, tag: TlbTag) {
        self.retain(|e| e.global || e.tag != tag);
    }

    /// Drops every entry of the VPID, keeping global ones if `keep_global` (a CR3 load with
    /// PCIDs off keeps them; a CR4.PGE toggle or a VMM flush does not).
    pub fn flush_vpid(&mut self, vpid: u16, keep_global: bool) {
        self.retain(|e| e.tag.vpid != vpid || (keep_global && e.global));
    }

    /// Keeps only the entries whose VPID `keep` accepts (INVVPID all-context).
    pub fn retain_vpid(&mut self, mut keep: impl FnMut(u16) -> bool) {
        self.retain(|e| keep(e.tag.vpid));
    }

    /// Drops one entry that a walk must refresh (a write hit on a clean entry, or a hit the
    /// cached rights refuse).
    pub fn drop_entry(&mut self, va: Gva, tag: TlbTag) {
        self.remove_page(va, |e| e.matches(va, tag));
    }

    /// [`Tlb::drop_entry`] right after a lookup of `va` under `tag` on the `fetch` side missed
    /// and nothing was inserted since: that side's L1 and the L2 hold no entry for it, so only
    /// the other L1 can.
    pub fn drop_entry_after_miss(&mut self, va: Gva, fetch: bool, tag: TlbTag) {
        let other = if fetch { &mut self.l1d } else { &mut self.l1i };
        other.remove_page(va, &mut |e: &TlbEntry| e.matches(va, tag));
    }

    fn remove_page(&mut self, va: Gva, mut hit: impl FnMut(&TlbEntry) -> bool) {
        self.l1i.remove_page(va, &mut hit);
        self.l1d.remove_page(va, &mut hit);
        self.l2.remove_page(va, &mut hit);
    }

    fn retain(&mut self, mut keep: impl FnMut(&TlbEntry) -> bool) {
        self.l1i.retain(&mut keep);
        self.l1d.retain(&mut keep);
        self.l2.retain(&mut keep);
    }

    /// Zeroes the hit and miss counts.
    pub fn reset_stats(&mut self) {
        self.stats = TlbLevelStats::default();
    }

    /// Hit and miss counts so far.
    pub fn stats(&self) -> TlbLevelStats {
        self.stats
    }

    /// Valid entries across all levels.
    pub fn occupancy(&self) -> usize {
        self.l1i.occupancy() + self.l1d.occupancy() + self.l2.occupancy()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::paging::Rights;

    fn entry(va: u64, size: PageSize, tag: TlbTag, global: bool) -> TlbEntry {
        let va = Gva::new_truncate(va);
        TlbEntry {
            vpn: page_number(va, size),
            tag,
            size,
            page: Hpa::new(0x4000_0000),
            rights: Rights::ALL,
            global,
            dirty: true,
        }
    }

    #[test]
    fn single_level_holds_a_large_page_as_one_entry() {
        let mut tlb = Tlb::new(TlbConfig::Single { entries: 8, ways: 2, split_large: false });
        let tag = TlbTag::default();
        let va = Gva::new_truncate(0x20_3000);
        tlb.insert(entry(0x20_0000, PageSize::Size2M, tag, false), va, false);
        let hit = tlb.lookup(va, false, tag).expect("hit");
        assert_eq!(hit.entry.size, PageSize::Size2M);
        assert_eq!(hit.entry.translate(va), Hpa::new(0x4000_3000));
        // Every 4K page of the large page hits the one entry.
        assert!(tlb.lookup(Gva::new_truncate(0x3f_f000), false, tag).is_some());
        assert_eq!(tlb.occupancy(), 1);
    }

    #[test]
    fn single_level_splits_large_pages_into_4k_entries_when_asked() {
        let mut tlb = Tlb::new(TlbConfig::Single { entries: 8, ways: 2, split_large: true });
        let tag = TlbTag::default();
        let va = Gva::new_truncate(0x20_3000);
        tlb.insert(entry(0x20_0000, PageSize::Size2M, tag, false), va, false);
        let hit = tlb.lookup(va, false, tag).expect("hit");
        assert_eq!(hit.entry.size, PageSize::Size4K);
        assert_eq!(hit.entry.translate(va), Hpa::new(0x4000_3000));
        // A neighbouring 4K page of the same large page was not cached.
        assert!(tlb.lookup(Gva::new_truncate(0x20_4000), false, tag).is_none());
        assert_eq!(tlb.stats(), TlbLevelStats { l1_hits: 1, l2_hits: 0, misses: 1 });
    }

    #[test]
    fn hierarchy_refills_l1_from_l2_and_flushes_by_rule() {
        let mut tlb = Tlb::new(TlbConfig::Hierarchy);
        let a = TlbTag { vpid: 0, pcid: 1 };
        let va = Gva::new_truncate(0x7000);
        tlb.insert(entry(0x7000, PageSize::Size4K, a, false), va, false);
        assert_eq!(tlb.lookup(va, false, a).map(|h| h.level), Some(1));
        // The fetch side has only the L2 copy.
        assert_eq!(tlb.lookup(va, true, a).map(|h| h.level), Some(2));
        assert_eq!(tlb.lookup(va, true, a).map(|h| h.level), Some(1));
        tlb.flush_pcid(a);
        assert!(tlb.lookup(va, false, a).is_none());

        let g = Gva::new_truncate(0xffff_8000_0000_0000);
        tlb.insert(entry(g.as_u64(), PageSize::Size2M, a, true), g, false);
        tlb.flush_pcid(a);
        tlb.flush_vpid(0, true);
        assert!(tlb.lookup(g, false, TlbTag { vpid: 0, pcid: 9 }).is_some());
        tlb.invlpg(g, TlbTag { vpid: 0, pcid: 9 });
        assert!(tlb.lookup(g, false, a).is_none());
        assert_eq!(tlb.occupancy(), 0);
    }

    /// The shortcuts must be invisible: a TLB taking them (hits that change nothing, the
    /// invalidation of a fault after a miss) and one that always searches its arrays agree on
    /// every result, every count and every entry, over random mixes of lookups (mostly
    /// repeats), fills, invalidations and flushes.
    #[test]
    fn hits_on_most_recent_entries_change_nothing_observable() {
        use crate::workload::rng::Rng;
        for (seed, config) in [
            (1, TlbConfig::Hierarchy),
            (2, TlbConfig::Single { entries: 16, ways: 4, split_large: false }),
            (3, TlbConfig::Hierarchy),
        ] {
            let mut rng = Rng::new(seed);
            let mut shortcut = Tlb::new(config);
            let mut searched = Tlb::new(config);
            let mut last_va = Gva::new_truncate(0);
            let mut repeats = 0;
            for step in 0..200_000 {
                let tag = TlbTag { vpid: 0, pcid: u16::from(rng.below(16) == 0) };
                let va = if rng.below(4) > 0 {
                    Gva::new_truncate(last_va.as_u64() ^ (rng.below(64) << 3))
                } else {
                    Gva::new_truncate(rng.below(64) << 12 | rng.below(2) << 21)
                };
                last_va = va;
                let fetch = rng.below(3) == 0;
                match rng.below(100) {
                    0..=79 => {
                        repeats += u32::from(shortcut.unchanged_hit(va, fetch, tag).is_some());
                        let a = shortcut.lookup(va, fetch, tag);
                        let b = searched.lookup_arrays(va, fetch, tag);
                        assert_eq!(a, b, "seed {seed} step {step}: lookup of {va:?}");
                        // A fault after the miss: the shortcut searches only the other side.
                        if a.is_none() && rng.below(2) == 0 {
                            shortcut.drop_entry_after_miss(va, fetch, tag);
                            searched.drop_entry(va, tag);
                        }
                    }
                    80..=95 => {
                        let size = if rng.below(8) == 0 { PageSize::Size2M } else { PageSize::Size4K };
                        let e = entry(va.as_u64(), size, tag, rng.below(8) == 0);
                        shortcut.insert(e, va, fetch);
                        searched.insert(e, va, fetch);
                    }
                    96..=97 => {
                        shortcut.invlpg(va, tag);
                        searched.invlpg(va, tag);
                    }
                    98 => {
                        shortcut.flush_pcid(tag);
                        searched.flush_pcid(tag);
                    }
                    _ => {
                        shortcut.drop_entry(va, tag);
                        searched.drop_entry(va, tag);
                    }
                }
                if step % 1000 == 0 {
                    let arrays = [&shortcut.l1i, &shortcut.l1d, &shortcut.l2]
                        .into_iter()
                        .flat_map(|level| [&level.k4, &level.m2, &level.g1])
                        .flatten();
                    for array in arrays {
                        assert!(array.counts_agree(), "seed {seed} step {step}: counts by size drifted");
                    }
                }
            }
            assert_eq!(shortcut.stats(), searched.stats(), "seed {seed}");
            assert!(repeats > 20_000, "seed {seed}: only {repeats} lookups took the shortcut");
            for level in
                [(&shortcut.l1i, &searched.l1i), (&shortcut.l1d, &searched.l1d), (&shortcut.l2, &searched.l2)]
            {
                for (a, b) in
                    [(&level.0.k4, &level.1.k4), (&level.0.m2, &level.1.m2), (&level.0.g1, &level.1.g1)]
                {
                    assert_eq!(format!("{a:?}"), format!("{b:?}"), "seed {seed}: arrays differ");
                }
            }
        }
    }
}
