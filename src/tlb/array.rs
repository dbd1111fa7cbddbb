//! One set-associative TLB array with true-LRU replacement.

use crate::addr::{Gva, Hpa, PageSize};
use crate::paging::{Access, AccessKind, CpuState, Privilege, Rights};
use crate::tlb::sets::{make_most_recent, SetLayout};

/// What a TLB entry is tagged with besides the page number.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Default)]
pub struct TlbTag {
    /// The virtual-processor identifier (0 for the host / native).
    pub vpid: u16,
    /// The process-context identifier (0 without CR4.PCIDE).
    pub pcid: u16,
}

/// A cached translation of one page.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct TlbEntry {
    /// The virtual page number at the entry's page size (address >> size shift).
    pub vpn: u64,
    /// The VPID and PCID the entry was created under.
    pub tag: TlbTag,
    /// The page size the entry maps.
    pub size: PageSize,
    /// The first byte of the physical page.
    pub page: Hpa,
    /// The combined rights of the translation.
    pub rights: Rights,
    /// Global: matches any PCID of its VPID and survives CR3 loads.
    pub global: bool,
    /// Whether the leaf's D bit was set when the entry was filled.
    pub dirty: bool,
}

impl TlbEntry {
    /// Whether the entry translates `va` under `tag`.
    #[inline]
    pub fn matches(&self, va: Gva, tag: TlbTag) -> bool {
        self.vpn == page_number(va, self.size)
            && self.tag.vpid == tag.vpid
            && (self.global || self.tag.pcid == tag.pcid)
    }

    /// Whether the entry lets `access` complete without a walk: the rights allow it, and a
    /// write finds the dirty flag already set.
    #[inline]
    pub fn serves(&self, access: Access, cpu: &CpuState) -> bool {
        if access.privilege == Privilege::Supervisor {
            return self.rights.permit(access, cpu) && (self.dirty || !access.is_write());
        }
        // A user access, without branches on its kind (the hot case).
        self.user_kinds() & 1 << access.kind as u8 != 0
    }

    /// The kinds of user access the entry lets complete without a walk, one bit per
    /// [`AccessKind`] (`1 << kind as u8`).
    #[inline]
    pub fn user_kinds(&self) -> u8 {
        let r = self.rights;
        u8::from(r.user)
            * (1 << AccessKind::Read as u8
                | u8::from(r.writable && self.dirty) << AccessKind::Write as u8
                | u8::from(!r.no_execute) << AccessKind::Fetch as u8)
    }

    /// The physical address of `va` through this entry.
    #[inline]
    pub fn translate(&self, va: Gva) -> Hpa {
        Hpa::new(self.page.as_u64() | va.page_offset(self.size))
    }
}

/// The page number of `va` at page size `size`.
#[inline]
pub fn page_number(va: Gva, size: PageSize) -> u64 {
    va.vpn() >> (size.shift() - 12)
}

/// A set-associative array of `sets` x `ways` entries; each set is kept most-recent first.
#[derive(Clone, Debug)]
pub struct TlbArray {
    layout: SetLayout,
    /// Entries of set `s` live at `s * ways ..`, the first `len[s]` of them valid, MRU first.
    slots: Vec<Option<TlbEntry>>,
    /// Valid entries of each page size (4 KiB, 2 MiB, 1 GiB): a lookup or removal for a size
    /// the array holds none of is answered without searching (a unified array searched for 2
    /// MiB pages while it holds only 4 KiB ones, the usual case).
    held: [u32; 3],
}

/// The index of `size` in [`TlbArray::held`].
#[inline]
fn size_index(size: PageSize) -> usize {
    match size {
        PageSize::Size4K => 0,
        PageSize::Size2M => 1,
        PageSize::Size1G => 2,
    }
}

/// Keeps the entries of one set that `keep` accepts, in their order and packed at the front,
/// taking the others out of the counts by size.
fn compact(set: &mut [Option<TlbEntry>], held: &mut [u32; 3], mut keep: impl FnMut(&TlbEntry) -> bool) {
    let mut kept = 0;
    for way in 0..set.len() {
        if let Some(entry) = set[way] {
            if keep(&entry) {
                set[kept] = Some(entry);
                kept += 1;
            } else {
                held[size_index(entry.size)] -= 1;
            }
        }
    }
    for slot in &mut set[kept..] {
        *slot = None;
    }
}

impl TlbArray {
    /// An empty array. `sets` and `ways` must be at least 1.
    pub fn new(sets: usize, ways: usize) -> Self {
        let layout = SetLayout::new(sets, ways);
        Self { layout, slots: vec![None; layout.slots()], held: [0; 3] }
    }

    /// Number of entries.
    pub fn capacity(&self) -> usize {
        self.layout.slots()
    }

    /// The slots of the set `vpn` falls in.
    #[inline]
    fn set_of(&mut self, vpn: u64) -> &mut [Option<TlbEntry>] {
        let first = self.layout.first_slot(vpn);
        &mut self.slots[first..first + self.layout.ways()]
    }

    /// Looks `va` up as a page of `size`; on a hit the entry becomes most recently used.
    #[inline]
    pub fn lookup(&mut self, va: Gva, size: PageSize, tag: TlbTag) -> Option<TlbEntry> {
        if self.held[size_index(size)] == 0 {
            return None;
        }
        let vpn = page_number(va, size);
        let set = self.set_of(vpn);
        for way in 0..set.len() {
            match set[way] {
                Some(entry)
                    if entry.vpn == vpn
                        && entry.size == size
                        && entry.tag.vpid == tag.vpid
                        && (entry.global || entry.tag.pcid == tag.pcid) =>
                {
                    if way > 0 {
                        make_most_recent(set, way, Some(entry));
                    }
                    return Some(entry);
                }
                Some(_) => {}
                None => return None,
            }
        }
        None
    }

    /// The entry for `va` as a page of `size` if it is the most recently used of its set, the
    /// one case where a hit changes nothing.
    #[inline(always)]
    pub fn most_recent(&self, va: Gva, size: PageSize, tag: TlbTag) -> Option<TlbEntry> {
        let vpn = page_number(va, size);
        let entry = self.slots[self.layout.first_slot(vpn)]?;
        let hit = entry.vpn == vpn
            && entry.size == size
            && entry.tag.vpid == tag.vpid
            && (entry.global || entry.tag.pcid == tag.pcid);
        hit.then_some(entry)
    }

    /// Inserts an entry as most recently used, evicting the least recently used of its set,
    /// and replacing any entry for the same page and tag.
    pub fn insert(&mut self, entry: TlbEntry) {
        let set = self.set_of(entry.vpn);
        // Valid entries come first, so one pass finds the same page's entry or the first free
        // slot; a full set without the page gives up its least recently used entry, the last.
        let victim = set
            .iter()
            .position(|slot| {
                slot.is_none_or(|e| e.vpn == entry.vpn && e.size == entry.size && e.tag == entry.tag)
            })
            .unwrap_or(set.len() - 1);
        self.place(entry, victim);
    }

    /// [`TlbArray::insert`] of an entry the array does not hold (a fill after a lookup
    /// missed): a full set gives up its least recently used entry without a search.
    pub fn insert_absent(&mut self, entry: TlbEntry) {
        let set = self.set_of(entry.vpn);
        let last = set.len() - 1;
        let victim =
            if set[last].is_some() { last } else { set.iter().position(Option::is_none).unwrap_or(last) };
        self.place(entry, victim);
    }

    /// Puts `entry` first in its set over slot `victim`.
    #[inline]
    fn place(&mut self, entry: TlbEntry, victim: usize) {
        let set = self.set_of(entry.vpn);
        let gone = set[victim];
        make_most_recent(set, victim, Some(entry));
        if let Some(gone) = gone {
            self.held[size_index(gone.size)] -= 1;
        }
        self.held[size_index(entry.size)] += 1;
    }

    /// Removes the entries for pages of `size` covering `va` that `hit` selects: only the one
    /// set they can live in is searched.
    pub fn remove_page(&mut self, va: Gva, size: PageSize, mut hit: impl FnMut(&TlbEntry) -> bool) {
        if self.held[size_index(size)] == 0 {
            return;
        }
        let vpn = page_number(va, size);
        let first = self.layout.first_slot(vpn);
        let set = &mut self.slots[first..first + self.layout.ways()];
        let mut doomed = |entry: &TlbEntry| entry.size == size && entry.vpn == vpn && hit(entry);
        // Usually nothing matches (a fault on a page the TLB does not hold): look first, and
        // only rewrite the set when an entry goes.
        if set.iter().any(|slot| slot.as_ref().is_some_and(&mut doomed)) {
            compact(set, &mut self.held, |entry| !doomed(entry));
        }
    }

    /// Removes every entry for which `keep` says no, keeping the order of the rest.
    pub fn retain(&mut self, mut keep: impl FnMut(&TlbEntry) -> bool) {
        for set in self.slots.chunks_mut(self.layout.ways()) {
            compact(set, &mut self.held, &mut keep);
        }
    }

    /// Number of valid entries.
    pub fn occupancy(&self) -> usize {
        self.slots.iter().filter(|slot| slot.is_some()).count()
    }

    /// Whether the counts of entries by size agree with the slots (for tests).
    #[cfg(test)]
    pub fn counts_agree(&self) -> bool {
        [PageSize::Size4K, PageSize::Size2M, PageSize::Size1G].into_iter().all(|size| {
            let found = self.slots.iter().flatten().filter(|e| e.size == size).count();
            found == self.held[size_index(size)] as usize
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(vpn: u64) -> TlbEntry {
        TlbEntry {
            vpn,
            tag: TlbTag::default(),
            size: PageSize::Size4K,
            page: Hpa::new(vpn << 12),
            rights: Rights::ALL,
            global: false,
            dirty: false,
        }
    }

    fn va(vpn: u64) -> Gva {
        Gva::new_truncate(vpn << 12)
    }

    #[test]
    fn serves_exactly_what_the_rights_and_dirty_flag_allow() {
        let kinds = [AccessKind::Read, AccessKind::Write, AccessKind::Fetch];
        for bits in 0..32u8 {
            let flag = |n: u8| bits & 1 << n != 0;
            let rights = Rights { writable: flag(0), user: flag(1), no_execute: flag(2) };
            let e = TlbEntry { rights, dirty: flag(3), global: flag(4), ..entry(1) };
            for privilege in [Privilege::User, Privilege::Supervisor] {
                for kind in kinds {
                    for (smap, smep, wp) in [(false, false, false), (true, true, true)] {
                        let cpu = CpuState { smap, smep, wp, ..CpuState::default() };
                        let access = Access::new(kind, privilege);
                        let expected = rights.permit(access, &cpu) && (e.dirty || kind != AccessKind::Write);
                        assert_eq!(
                            e.serves(access, &cpu),
                            expected,
                            "{rights:?} dirty {} {access:?}",
                            e.dirty
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn lru_within_a_set() {
        // One set of two ways: touching 1 makes 2 the victim.
        let mut tlb = TlbArray::new(1, 2);
        let tag = TlbTag::default();
        tlb.insert(entry(1));
        tlb.insert(entry(2));
        assert!(tlb.lookup(va(1), PageSize::Size4K, tag).is_some());
        tlb.insert(entry(3));
        assert!(tlb.lookup(va(2), PageSize::Size4K, tag).is_none());
        assert!(tlb.lookup(va(1), PageSize::Size4K, tag).is_some());
        assert!(tlb.lookup(va(3), PageSize::Size4K, tag).is_some());
    }

    #[test]
    fn sets_are_chosen_by_page_number_modulo() {
        let mut tlb = TlbArray::new(4, 1);
        let tag = TlbTag::default();
        tlb.insert(entry(1));
        tlb.insert(entry(2));
        tlb.insert(entry(5)); // same set as 1
        assert!(tlb.lookup(va(1), PageSize::Size4K, tag).is_none());
        assert!(tlb.lookup(va(2), PageSize::Size4K, tag).is_some());
        assert_eq!(tlb.occupancy(), 2);
    }

    #[test]
    fn pcid_tags_separate_and_global_entries_match_any_pcid() {
        let mut tlb = TlbArray::new(1, 4);
        let a = TlbTag { vpid: 0, pcid: 1 };
        let b = TlbTag { vpid: 0, pcid: 2 };
        tlb.insert(TlbEntry { tag: a, ..entry(1) });
        tlb.insert(TlbEntry { tag: a, global: true, ..entry(2) });
        assert!(tlb.lookup(va(1), PageSize::Size4K, b).is_none());
        assert!(tlb.lookup(va(2), PageSize::Size4K, b).is_some());
        assert!(tlb.lookup(va(2), PageSize::Size4K, TlbTag { vpid: 1, pcid: 1 }).is_none());
        tlb.retain(|e| e.global);
        assert!(tlb.lookup(va(1), PageSize::Size4K, a).is_none());
        assert!(tlb.lookup(va(2), PageSize::Size4K, a).is_some());
    }
    #[test]
    fn inserting_an_absent_entry_skips_only_the_search() {
        // Two arrays fed the same fills after misses, one through each insert, with lookups
        // and removals between: every lookup agrees and the counts stay right.
        let (mut searched, mut absent) = (TlbArray::new(4, 3), TlbArray::new(4, 3));
        let tag = TlbTag::default();
        let mut x = 0x2545_f491_4f6c_dd1du64;
        for step in 0..50_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let vpn = x % 40;
            let hit = searched.lookup(va(vpn), PageSize::Size4K, tag);
            assert_eq!(hit, absent.lookup(va(vpn), PageSize::Size4K, tag), "step {step}");
            if hit.is_none() {
                searched.insert(entry(vpn));
                absent.insert_absent(entry(vpn));
            } else if x >> 61 == 0 {
                searched.remove_page(va(vpn), PageSize::Size4K, |_| true);
                absent.remove_page(va(vpn), PageSize::Size4K, |_| true);
            }
            assert!(absent.counts_agree(), "step {step}");
        }
        assert_eq!(searched.occupancy(), absent.occupancy());
    }
}
