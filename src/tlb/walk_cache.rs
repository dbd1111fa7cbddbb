//! Caches that shorten page walks: the paging-structure caches (PML4E, PDPTE and PDE caches,
//! SDM Vol. 3A §4.10.3) and the nested TLB that caches guest-physical to host-physical
//! translations for the second dimension of a nested walk.
//!
//! Invalidation contract: the paging-structure caches hold upper-level entries of the tables
//! the walker reads, tagged like TLB entries; they are flushed together with the TLB (CR3 load
//! without no-flush, INVLPG for the current PCID, a VMM flush of the VPID). The nested TLB is
//! tagged by VPID and must be flushed by whoever changes the nested tables.

use serde::Serialize;

use crate::addr::{Gpa, Gva, Hpa, Level, PageSize};
use crate::paging::{Rights, TableStep, WalkStart};
use crate::tlb::lru::LruSets;
use crate::tlb::TlbTag;

/// Paging-structure cache counters.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default, Serialize)]
pub struct WalkCacheStats {
    /// Walks that started below the root thanks to a paging-structure cache.
    pub psc_hits: u64,
    /// Walks that started at the root.
    pub psc_misses: u64,
    /// Nested translations (GPA -> HPA) found in the nested TLB.
    pub nested_tlb_hits: u64,
    /// Nested translations that needed a nested walk.
    pub nested_tlb_misses: u64,
}

type Entry = (u64, Rights);

/// A cache key: the tag and the address bits above the cached level in one word (VPID in bits
/// 63:48, the 12-bit PCID in 47:36, the prefix — at most 36 bits, a PDE's under LA57 — below),
/// so a lookup compares one word per way.
fn key(tag: TlbTag, prefix: u64) -> u64 {
    u64::from(tag.vpid) << 48 | u64::from(tag.pcid & 0xfff) << 36 | prefix
}

/// The tag a [`key`] was made from.
fn tag_of(key: u64) -> TlbTag {
    // Both fields fit their types by the shifts and mask.
    #[allow(clippy::cast_possible_truncation)]
    TlbTag { vpid: (key >> 48) as u16, pcid: (key >> 36 & 0xfff) as u16 }
}

/// PML4E, PDPTE and PDE caches. Table addresses are kept raw: the walker that uses them
/// knows its address space (GPA for a guest walk under nested paging, HPA otherwise).
#[derive(Clone, Debug)]
pub struct PagingStructureCache {
    pml4e: LruSets<u64, Entry>,
    pdpte: LruSets<u64, Entry>,
    pde: LruSets<u64, Entry>,
}

impl Default for PagingStructureCache {
    /// Sizes in the range of recent Intel cores: 4 PML4E, 4 PDPTE and 32 PDE entries.
    fn default() -> Self {
        Self { pml4e: LruSets::new(4, 4), pdpte: LruSets::new(4, 4), pde: LruSets::new(32, 4) }
    }
}

impl PagingStructureCache {
    /// The lowest point a walk of `va` can start from, if any cache holds it.
    pub fn lookup(&mut self, va: Gva, tag: TlbTag) -> Option<(u64, Level, Rights)> {
        let prefix = |shift: u32| va.as_u64() >> shift & ((1u64 << (57 - shift)) - 1);
        if let Some((table, rights)) = self.pde.get(prefix(21), key(tag, prefix(21))) {
            return Some((table, Level::Pt, rights));
        }
        if let Some((table, rights)) = self.pdpte.get(prefix(30), key(tag, prefix(30))) {
            return Some((table, Level::Pd, rights));
        }
        if let Some((table, rights)) = self.pml4e.get(prefix(39), key(tag, prefix(39))) {
            return Some((table, Level::Pdpt, rights));
        }
        None
    }

    /// The walk start for `va`, as a typed [`WalkStart`], if a cache holds one.
    pub fn start<P: crate::addr::PhysAddr>(&mut self, va: Gva, tag: TlbTag) -> Option<WalkStart<P>> {
        self.lookup(va, tag).map(|(table, level, rights)| WalkStart {
            table: P::from_raw(table),
            level,
            rights,
        })
    }

    /// Keeps a non-leaf entry a successful walk of `va` used.
    pub fn fill<P: crate::addr::PhysAddr>(&mut self, va: Gva, tag: TlbTag, step: TableStep<P>) {
        let prefix = |shift: u32| va.as_u64() >> shift & ((1u64 << (57 - shift)) - 1);
        let value = (step.next.raw(), step.rights);
        match step.level {
            Level::Pd => self.pde.insert(prefix(21), key(tag, prefix(21)), value),
            Level::Pdpt => self.pdpte.insert(prefix(30), key(tag, prefix(30)), value),
            Level::Pml4 => self.pml4e.insert(prefix(39), key(tag, prefix(39)), value),
            // A PML5E cache is not modelled; the PML4E cache covers 5-level walks' upper bits.
            Level::Pml5 | Level::Pt => {}
        }
    }

    /// Drops every entry `drop` selects.
    pub fn flush(&mut self, mut drop: impl FnMut(TlbTag) -> bool) {
        self.pml4e.retain(|key, _| !drop(tag_of(*key)));
        self.pdpte.retain(|key, _| !drop(tag_of(*key)));
        self.pde.retain(|key, _| !drop(tag_of(*key)));
    }
}

/// The nested TLB: guest-physical 4 KiB pages to host-physical pages (with the size of the
/// nested page they belong to), tagged by VPID.
#[derive(Clone, Debug)]
pub struct NestedTlb {
    entries: LruSets<(u16, u64), (u64, PageSize)>,
}

impl Default for NestedTlb {
    /// 128 entries, 4-way.
    fn default() -> Self {
        Self { entries: LruSets::new(128, 4) }
    }
}

impl NestedTlb {
    /// The host-physical address of `gpa`, and the nested page size, if cached.
    #[inline]
    pub fn lookup(&mut self, vpid: u16, gpa: Gpa) -> Option<(Hpa, PageSize)> {
        let gfn = gpa.frame().number();
        self.entries
            .get(gfn, (vpid, gfn))
            .map(|(page, size)| (Hpa::new(page | gpa.page_offset(PageSize::Size4K)), size))
    }

    /// Remembers that `gpa` translates to `hpa` through a nested page of `size`.
    pub fn insert(&mut self, vpid: u16, gpa: Gpa, hpa: Hpa, size: PageSize) {
        let gfn = gpa.frame().number();
        self.entries.insert(gfn, (vpid, gfn), (hpa.as_u64() & !0xfff, size));
    }

    /// Drops every entry of `vpid`.
    pub fn flush_vpid(&mut self, vpid: u16) {
        self.entries.retain(|(v, _), _| *v != vpid);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_keep_tags_and_prefixes_apart() {
        let tags = [
            TlbTag { vpid: 0, pcid: 0 },
            TlbTag { vpid: 0, pcid: 0xfff },
            TlbTag { vpid: 1, pcid: 0 },
            TlbTag { vpid: 0xffff, pcid: 0xfff },
        ];
        // The widest prefix is a PDE's under LA57: 57 - 21 = 36 bits.
        let prefixes = [0, 1, (1u64 << 36) - 1, 0x5_5555_5555];
        let mut seen = std::collections::HashSet::new();
        for tag in tags {
            for prefix in prefixes {
                assert_eq!(tag_of(key(tag, prefix)), tag);
                assert!(seen.insert(key(tag, prefix)), "{tag:?} {prefix:x} collides");
            }
        }
    }

    #[test]
    fn a_pde_hit_needs_the_same_tag() {
        let mut psc = PagingStructureCache::default();
        let va = Gva::new_truncate(0x7fff_ffe0_0000);
        let (a, b) = (TlbTag { vpid: 1, pcid: 5 }, TlbTag { vpid: 1, pcid: 6 });
        let step = TableStep { level: Level::Pd, next: Hpa::new(0x5000), rights: Rights::ALL };
        psc.fill(va, a, step);
        assert_eq!(psc.lookup(va, a), Some((0x5000, Level::Pt, Rights::ALL)));
        assert_eq!(psc.lookup(va, b), None);
        psc.flush(|tag| tag == a);
        assert_eq!(psc.lookup(va, a), None);
    }
}
