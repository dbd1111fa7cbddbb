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
use crate::paging::{Rights, TableStep};
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
    /// Nested walks that started below the nested root thanks to a guest-physical
    /// paging-structure cache.
    pub nested_psc_hits: u64,
    /// Nested walks that started at the nested root.
    pub nested_psc_misses: u64,
}

/// The sizes of one set of PML4E, PDPTE and PDE caches, in entries (each 4-way, or fully
/// associative when smaller).
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, serde::Deserialize)]
pub struct PscSizes {
    /// PML4E-cache entries.
    pub pml4e: usize,
    /// PDPTE-cache entries.
    pub pdpte: usize,
    /// PDE-cache entries.
    pub pde: usize,
}

impl Default for PscSizes {
    /// 4 PML4E, 4 PDPTE and 32 PDE entries: the range of recent Intel cores.
    fn default() -> Self {
        Self { pml4e: 4, pdpte: 4, pde: 32 }
    }
}

impl PscSizes {
    fn sets<K: Copy + Eq, V: Copy>(entries: usize) -> LruSets<K, V> {
        LruSets::new(entries, entries.clamp(1, 4))
    }
}

/// Every walk-cache size a run uses: the linear (or combined) paging-structure caches, the
/// guest-physical ones of the nested dimension, and the nested TLB (`--psc`, `--nested-psc`,
/// `--nested-tlb`).
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, serde::Deserialize)]
pub struct WalkCacheSizes {
    /// The paging-structure caches of the processor's walk.
    pub psc: PscSizes,
    /// The guest-physical paging-structure caches.
    pub nested_psc: PscSizes,
    /// Nested TLB entries.
    pub nested_tlb_entries: usize,
    /// Nested TLB associativity.
    pub nested_tlb_ways: usize,
}

impl Default for WalkCacheSizes {
    /// The paging-structure caches' defaults for both dimensions and a 128-entry, 4-way
    /// nested TLB.
    fn default() -> Self {
        Self {
            psc: PscSizes::default(),
            nested_psc: PscSizes::default(),
            nested_tlb_entries: 128,
            nested_tlb_ways: 4,
        }
    }
}

/// What a paging-structure-cache entry holds: the next table's address as the walk uses it,
/// where that table lives in host memory (the same under native and shadow paging; under
/// nested paging, the host-physical address the guest table's guest-physical address
/// translated to: a *combined* paging-structure-cache entry, SDM Vol. 3C §29.4.1), the
/// rights of the entries above it, and the EPT root it was made under (0 without EPT).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct CachedTable {
    /// The next table, as the walker addresses it (a GPA under nested paging).
    pub table: u64,
    /// Where it lives in host memory.
    pub host: u64,
    /// The level of that table.
    pub level: Level,
    /// The rights the entries above it grant.
    pub rights: Rights,
    /// The EPT root (EP4TA) of the combined mapping; 0 for a linear mapping.
    pub ep4ta: u64,
}

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

/// PML4E, PDPTE and PDE caches, tagged by VPID and PCID and, for combined mappings, the EPT
/// root (SDM Vol. 3A §4.10.3, Vol. 3C §29.4.1).
#[derive(Clone, Debug)]
pub struct PagingStructureCache {
    pml4e: LruSets<u64, CachedTable>,
    pdpte: LruSets<u64, CachedTable>,
    pde: LruSets<u64, CachedTable>,
}

impl Default for PagingStructureCache {
    /// Sizes in the range of recent Intel cores: 4 PML4E, 4 PDPTE and 32 PDE entries.
    fn default() -> Self {
        Self::new(PscSizes::default())
    }
}

impl PagingStructureCache {
    /// Empty caches of `sizes`.
    pub fn new(sizes: PscSizes) -> Self {
        Self {
            pml4e: PscSizes::sets(sizes.pml4e),
            pdpte: PscSizes::sets(sizes.pdpte),
            pde: PscSizes::sets(sizes.pde),
        }
    }
}

/// The bits of `va` above `shift` (the prefix a cache entry of that level covers).
fn prefix(va: Gva, shift: u32) -> u64 {
    va.as_u64() >> shift & ((1u64 << (57 - shift)) - 1)
}

impl PagingStructureCache {
    /// The lowest table a walk of `va` can start from under EPT root `ep4ta` (0 without
    /// EPT), if any cache holds it: the PDE cache first, then PDPTE, then PML4E.
    pub fn lookup(&mut self, va: Gva, tag: TlbTag, ep4ta: u64) -> Option<CachedTable> {
        let current = |entry: &CachedTable| entry.ep4ta == ep4ta;
        for (cache, shift) in [(&mut self.pde, 21), (&mut self.pdpte, 30), (&mut self.pml4e, 39)] {
            if let Some(entry) = cache.get(prefix(va, shift), key(tag, prefix(va, shift))).filter(current) {
                return Some(entry);
            }
        }
        None
    }

    /// Keeps a non-leaf entry a successful walk of `va` used, with where its next table lives
    /// in host memory.
    pub fn fill<P: crate::addr::PhysAddr>(
        &mut self,
        va: Gva,
        tag: TlbTag,
        ep4ta: u64,
        step: TableStep<P>,
        host: u64,
    ) {
        let Some(level) = step.level.next_lower() else { return };
        let value = CachedTable { table: step.next.raw(), host, level, rights: step.rights, ep4ta };
        let (cache, shift) = match step.level {
            Level::Pd => (&mut self.pde, 21),
            Level::Pdpt => (&mut self.pdpte, 30),
            Level::Pml4 => (&mut self.pml4e, 39),
            // A PML5E cache is not modelled; the PML4E cache covers 5-level walks' upper bits.
            Level::Pml5 | Level::Pt => return,
        };
        cache.insert(prefix(va, shift), key(tag, prefix(va, shift)), value);
    }

    /// Drops every entry `drop` selects by its tag and EPT root.
    pub fn flush(&mut self, mut drop: impl FnMut(TlbTag, u64) -> bool) {
        for cache in [&mut self.pml4e, &mut self.pdpte, &mut self.pde] {
            cache.retain(|key, entry| !drop(tag_of(*key), entry.ep4ta));
        }
    }
}

/// Guest-physical paging-structure caches: the nested dimension's PML4E, PDPTE and PDE caches
/// (EPT's, SDM Vol. 3C §29.4.1 "guest-physical mappings"; for NPT, the nested page walk cache
/// of Bhargava et al., ASPLOS 2008), tagged by the nested root (EP4TA). Each maps the upper
/// bits of a guest-physical address to the host-physical address of the next nested table and
/// the rights above it, so a nested-TLB miss walks from there instead of the root.
///
/// Invalidation contract: guest-physical mappings survive guest CR3 loads, INVLPG and
/// INVVPID; only INVEPT (or whoever changes the nested tables) removes them.
#[derive(Clone, Debug)]
pub struct NestedPagingStructureCache {
    pml4e: LruSets<(u64, u64), NestedCached>,
    pdpte: LruSets<(u64, u64), NestedCached>,
    pde: LruSets<(u64, u64), NestedCached>,
}

/// A guest-physical paging-structure-cache entry: the next nested table, its level, and the
/// rights above it in the nested format's encoding.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct NestedCached {
    /// The next nested table.
    pub table: Hpa,
    /// Its level.
    pub level: Level,
    /// The rights of the entries above it.
    pub perms: u64,
}

impl Default for NestedPagingStructureCache {
    /// The same sizes as the linear paging-structure caches (4, 4 and 32 entries): the
    /// manuals give none, and published designs size the nested dimension's alike.
    fn default() -> Self {
        Self::new(PscSizes::default())
    }
}

impl NestedPagingStructureCache {
    /// Empty caches of `sizes`.
    pub fn new(sizes: PscSizes) -> Self {
        Self {
            pml4e: PscSizes::sets(sizes.pml4e),
            pdpte: PscSizes::sets(sizes.pdpte),
            pde: PscSizes::sets(sizes.pde),
        }
    }
}

impl NestedPagingStructureCache {
    /// The lowest nested table a walk of `gpa` under `ep4ta` can start from, if cached.
    pub fn lookup(&mut self, ep4ta: u64, gpa: Gpa) -> Option<NestedCached> {
        let raw = gpa.as_u64();
        for (cache, shift) in [(&mut self.pde, 21), (&mut self.pdpte, 30), (&mut self.pml4e, 39)] {
            let prefix = raw >> shift;
            if let Some(found) = cache.get(prefix, (ep4ta, prefix)) {
                return Some(found);
            }
        }
        None
    }

    /// Keeps the non-leaf nested entry at `level` a successful walk of `gpa` used.
    pub fn fill(&mut self, ep4ta: u64, gpa: Gpa, level: Level, next: Hpa, perms: u64) {
        let Some(lower) = level.next_lower() else { return };
        let (cache, shift) = match level {
            Level::Pd => (&mut self.pde, 21),
            Level::Pdpt => (&mut self.pdpte, 30),
            Level::Pml4 => (&mut self.pml4e, 39),
            Level::Pml5 | Level::Pt => return,
        };
        let prefix = gpa.as_u64() >> shift;
        cache.insert(prefix, (ep4ta, prefix), NestedCached { table: next, level: lower, perms });
    }

    /// Drops every entry `drop` selects by its nested root.
    pub fn flush(&mut self, mut drop: impl FnMut(u64) -> bool) {
        for cache in [&mut self.pml4e, &mut self.pdpte, &mut self.pde] {
            cache.retain(|(ep4ta, _), _| !drop(*ep4ta));
        }
    }
}

/// The nested TLB: guest-physical mappings (SDM Vol. 3C §29.4.1), guest-physical 4 KiB pages
/// to host-physical pages (with the size of the nested page they belong to), tagged by the
/// nested root (EP4TA), not the VPID: a guest-physical mapping belongs to the EPT, whoever
/// uses it. Each entry remembers whether the nested leaf was dirty, so a write through a
/// mapping a read filled walks again to set D, as a TLB entry does for a clean page.
///
/// Invalidation contract: guest CR3 loads, INVLPG and INVVPID leave it alone; INVEPT, or
/// whoever changes the nested tables, flushes it.
#[derive(Clone, Debug)]
pub struct NestedTlb {
    entries: LruSets<(u64, u64), (u64, PageSize, bool)>,
}

impl Default for NestedTlb {
    /// 128 entries, 4-way.
    fn default() -> Self {
        Self::new(128, 4)
    }
}

impl NestedTlb {
    /// An empty nested TLB of `entries` entries, `ways`-way.
    pub fn new(entries: usize, ways: usize) -> Self {
        Self { entries: LruSets::new(entries, ways) }
    }
}

impl NestedTlb {
    /// The host-physical address of `gpa` under `ep4ta`, and the nested page size, if cached
    /// and usable for the access (a write needs an entry made dirty).
    #[inline]
    pub fn lookup(&mut self, ep4ta: u64, gpa: Gpa, write: bool) -> Option<(Hpa, PageSize)> {
        let gfn = gpa.frame().number();
        self.entries
            .get(gfn, (ep4ta, gfn))
            .filter(|&(_, _, dirty)| dirty || !write)
            .map(|(page, size, _)| (Hpa::new(page | gpa.page_offset(PageSize::Size4K)), size))
    }

    /// Remembers that `gpa` translates to `hpa` through a nested page of `size`, dirty or not.
    pub fn insert(&mut self, ep4ta: u64, gpa: Gpa, hpa: Hpa, size: PageSize, dirty: bool) {
        let gfn = gpa.frame().number();
        self.entries.insert(gfn, (ep4ta, gfn), (hpa.as_u64() & !0xfff, size, dirty));
    }

    /// Drops every entry `drop` selects by its nested root.
    pub fn flush(&mut self, mut drop: impl FnMut(u64) -> bool) {
        self.entries.retain(|(ep4ta, _), _| !drop(*ep4ta));
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
        psc.fill(va, a, 0, step, 0x5000);
        let found = psc.lookup(va, a, 0).expect("filled");
        assert_eq!(
            (found.table, found.host, found.level, found.rights),
            (0x5000, 0x5000, Level::Pt, Rights::ALL)
        );
        assert_eq!(psc.lookup(va, b, 0), None);
        psc.flush(|tag, _| tag == a);
        assert_eq!(psc.lookup(va, a, 0), None);
    }
}
