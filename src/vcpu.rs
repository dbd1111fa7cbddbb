//! The virtual CPU: control registers, TLBs and counters, and the access path every mode
//! shares — TLB lookup first, the mode's walk on a miss.

use crate::addr::{Gpa, Gva, Hpa, PageSize, PhysAddr};
use crate::paging::{
    walk_from, Access, AdPolicy, CpuState, PageFault, Rights, TableMemory, TableStep, WalkOutcome, WalkStart,
};
use crate::sim::stats::Stats;
use crate::tlb::{
    NestedPagingStructureCache, NestedTlb, PagingStructureCache, Tlb, TlbConfig, TlbEntry, TlbTag,
    WalkCacheSizes,
};
use crate::vmm::Mode;

/// A guest CR3 value: the root table's guest-physical address, the PCID (bits 11:0, with
/// CR4.PCIDE) and the no-flush request (bit 63).
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct Cr3 {
    /// The root table.
    pub root: Gpa,
    /// The process-context identifier (0 without CR4.PCIDE).
    pub pcid: u16,
    /// Bit 63: keep the new PCID's TLB entries (CR4.PCIDE only).
    pub no_flush: bool,
}

/// A translation a mode's walk produced: what the TLB caches.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Mapping {
    /// The host-physical page.
    pub page: Hpa,
    /// The size the TLB may cache it as.
    pub size: PageSize,
    /// Combined rights.
    pub rights: Rights,
    /// Global (G set and CR4.PGE on).
    pub global: bool,
    /// Dirty once the walk is done.
    pub dirty: bool,
}

/// What a mode's walk ended in.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Resolved {
    /// The access may proceed.
    Mapped(Mapping),
    /// A page fault delivered to the guest.
    Fault(PageFault),
    /// A non-canonical address: #GP.
    NonCanonical,
    /// The VMM completed the access itself (MMIO emulation, or a nested fault it cannot
    /// repair); nothing is cached.
    Emulated,
}

/// The outcome of one page translation of an access.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum PageOutcome {
    /// Translated to this host-physical address.
    Done(Hpa),
    /// The guest must handle a page fault.
    Fault(PageFault),
    /// #GP.
    NonCanonical,
    /// Completed by the VMM without a translation.
    Emulated,
}

/// The architectural state of one virtual CPU.
pub struct Vcpu {
    /// The guest's paging control bits: what the guest wrote to CR0, CR4 and EFER.
    pub cpu: CpuState,
    /// The paging control bits the processor's MMU runs with. The guest's own, except under
    /// shadow paging, where the VMM keeps CR0.WP and EFER.NXE set and emulates the guest's
    /// values in the shadow entries (see [`crate::vmm::Mode::hardware_cpu`]).
    pub hw: CpuState,
    /// The guest's CR3.
    pub cr3: Cr3,
    /// The TLBs.
    pub tlb: Tlb,
    /// Paging-structure caches (`None` with `--no-walk-caches`).
    pub psc: Option<PagingStructureCache>,
    /// The nested TLB for the second dimension of nested walks (`None` with
    /// `--no-walk-caches`).
    pub nested_tlb: Option<NestedTlb>,
    /// The guest-physical paging-structure caches for the nested dimension (`None` with
    /// `--no-walk-caches`).
    pub nested_psc: Option<NestedPagingStructureCache>,
    /// This vCPU's VPID (0 natively).
    pub vpid: u16,
    /// The EPT (or nested) root the guest runs under (EP4TA; 0 without nested paging): part
    /// of the tag of combined mappings and of guest-physical mappings (SDM Vol. 3C §29.4.1).
    pub ep4ta: u64,
    /// Counters.
    pub stats: Stats,
}

impl Vcpu {
    /// A vCPU with empty TLBs, and walk caches of these sizes if `walk_caches` says so.
    pub fn new(cpu: CpuState, tlb: TlbConfig, vpid: u16, walk_caches: Option<WalkCacheSizes>) -> Self {
        Self {
            cpu,
            hw: cpu,
            cr3: Cr3::default(),
            tlb: Tlb::new(tlb),
            psc: walk_caches.map(|sizes| PagingStructureCache::new(sizes.psc)),
            nested_tlb: walk_caches
                .map(|sizes| NestedTlb::new(sizes.nested_tlb_entries, sizes.nested_tlb_ways)),
            nested_psc: walk_caches.map(|sizes| NestedPagingStructureCache::new(sizes.nested_psc)),
            vpid,
            ep4ta: 0,
            stats: Stats::default(),
        }
    }

    /// The walk the CPU makes through the tables at `root` (1D, or the guest dimension of a
    /// nested walk), starting as low as the paging-structure caches allow and filling them
    /// after a successful walk. Under nested paging the caches are combined ones: they give
    /// the host-physical address of the next guest table, so a walk started from them
    /// translates nothing for that table (SDM Vol. 3C §29.4.1). Counting is the memory's
    /// business (see `Counted`).
    pub fn cached_walk<P: PhysAddr, M: TableMemory<P>>(
        &mut self,
        mem: &mut M,
        root: P,
        va: Gva,
        access: Access,
    ) -> WalkOutcome<P, M::Error> {
        let tag = self.tag();
        let ep4ta = self.ep4ta;
        let start = match self.psc.as_mut().map(|psc| psc.lookup(va, tag, ep4ta)) {
            Some(Some(hit)) => {
                self.stats.walk_caches.psc_hits += 1;
                let table = P::from_raw(hit.table);
                if hit.host != hit.table {
                    mem.enter_table(table, hit.host);
                }
                WalkStart { table, level: hit.level, rights: hit.rights }
            }
            Some(None) => {
                self.stats.walk_caches.psc_misses += 1;
                WalkStart::root(root, &self.hw)
            }
            None => WalkStart::root(root, &self.hw),
        };
        // The upper entries a successful walk used (at most four, with five levels).
        let mut steps: [Option<TableStep<P>>; 4] = [None; 4];
        let mut count = 0;
        let outcome = walk_from(mem, start, va, access, &self.hw, AdPolicy::Update, |step| {
            if let Some(slot) = steps.get_mut(count) {
                *slot = Some(step);
                count += 1;
            }
        });
        if let Some(psc) = self.psc.as_mut() {
            for step in steps.iter().flatten() {
                let host = mem.table_host(step.next).unwrap_or(step.next.raw());
                psc.fill(va, tag, ep4ta, *step, host);
            }
        }
        outcome
    }

    /// Drops every TLB and paging-structure-cache entry of this vCPU's VPID, global ones
    /// included: what a VMM does after it changes tables the CPU may have cached.
    pub fn flush_all(&mut self) {
        self.tlb.flush_vpid(self.vpid, false);
        let vpid = self.vpid;
        if let Some(psc) = self.psc.as_mut() {
            psc.flush(|tag, _| tag.vpid == vpid);
        }
    }

    /// INVEPT single-context for the EPT root `ep4ta` (SDM Vol. 3C §29.4.3.1): drops the
    /// guest-physical mappings (nested TLB, guest-physical paging-structure caches) and the
    /// combined mappings (TLB and paging-structure caches) made under that root. A TLB entry
    /// here carries no EPT root, and one VPID runs under one root, so the VPID's go.
    pub fn invept_single(&mut self, ep4ta: u64) {
        self.stats.invalidations.invept_single += 1;
        self.drop_ept_mappings(|root| root == ep4ta);
    }

    /// INVEPT all-context: every EPT root's guest-physical and combined mappings.
    pub fn invept_all(&mut self) {
        self.stats.invalidations.invept_all += 1;
        self.drop_ept_mappings(|_| true);
    }

    fn drop_ept_mappings(&mut self, mut root: impl FnMut(u64) -> bool) {
        if let Some(tlb) = self.nested_tlb.as_mut() {
            tlb.flush(&mut root);
        }
        if let Some(psc) = self.nested_psc.as_mut() {
            psc.flush(&mut root);
        }
        if let Some(psc) = self.psc.as_mut() {
            // Combined entries carry their root; linear ones (root 0) are not INVEPT's.
            psc.flush(|_, entry_root| entry_root != 0 && root(entry_root));
        }
        if self.ep4ta != 0 && root(self.ep4ta) {
            self.tlb.flush_vpid(self.vpid, false);
        }
    }

    /// INVVPID single-context for this vCPU's VPID (SDM Vol. 3C §29.4.3.1): drops its linear
    /// and combined mappings, global ones included; guest-physical mappings stay. What a
    /// shadow-paging VMM executes for a remote TLB flush.
    pub fn invvpid_single(&mut self) {
        self.stats.invalidations.invvpid_single += 1;
        self.flush_all();
    }

    /// INVVPID all-context: every VPID's linear and combined mappings (VPID 0, the host's,
    /// excepted).
    pub fn invvpid_all(&mut self) {
        self.stats.invalidations.invvpid_all += 1;
        self.tlb.retain_vpid(|vpid| vpid == 0);
        if let Some(psc) = self.psc.as_mut() {
            psc.flush(|tag, _| tag.vpid != 0);
        }
    }

    /// The tag current translations carry.
    #[inline]
    pub fn tag(&self) -> TlbTag {
        // CR3 holds a 12-bit PCID (bits 11:0).
        TlbTag { vpid: self.vpid, pcid: if self.cpu.pcide { self.cr3.pcid & 0xfff } else { 0 } }
    }

    /// The fast path of [`Vcpu::translate`]: a TLB hit that changes no TLB state (see
    /// [`Tlb::unchanged_hit`]) with rights the entry grants, counted as the L1 hit it is.
    /// `None` (with nothing changed) leaves the access to `translate`.
    #[inline(always)]
    pub fn unchanged_hit(&mut self, va: Gva, access: Access) -> Option<TlbEntry> {
        let entry = self.tlb.unchanged_hit(va, access.is_fetch(), self.tag())?;
        if !entry.serves(access, &self.hw) {
            return None;
        }
        self.tlb.count_unchanged_hit();
        Some(entry)
    }

    /// Translates the page of `va` for `access`. A first attempt is one TLB lookup; a
    /// `retry` after the guest handled a fault walks again without a new lookup.
    #[inline]
    pub fn translate<M: Mode>(&mut self, mode: &mut M, va: Gva, access: Access, retry: bool) -> PageOutcome {
        let tag = self.tag();
        // Whether this attempt's lookup missed (then only the other L1 side can hold the page).
        let mut missed = false;
        if !retry {
            // The TLB counts the lookup (translations, hits and misses come from its counts).
            match self.tlb.lookup(va, access.is_fetch(), tag) {
                Some(hit) => {
                    let entry = hit.entry;
                    if entry.serves(access, &self.hw) {
                        return PageOutcome::Done(entry.translate(va));
                    }
                    // The cached entry cannot serve this access (a write to a clean page, or
                    // rights it does not grant): the processor walks again.
                    self.tlb.drop_entry(va, tag);
                }
                None => missed = true,
            }
        }
        self.stats.walks += 1;
        match mode.translate(va, access, self) {
            Resolved::Mapped(m) => {
                let entry = TlbEntry {
                    vpn: crate::tlb::array::page_number(va, m.size),
                    tag,
                    size: m.size,
                    page: m.page,
                    rights: m.rights,
                    global: m.global,
                    dirty: m.dirty,
                };
                // Every path here follows a lookup that missed, a dropped entry or a fault's
                // invalidation of the page, and nothing fills the TLB in between.
                self.tlb.insert_after_miss(entry, va, access.is_fetch());
                PageOutcome::Done(Hpa::new(m.page.as_u64() | va.page_offset(m.size)))
            }
            Resolved::Fault(fault) => {
                // A page fault invalidates TLB entries for the address (SDM Vol. 3A §4.10.4.1).
                // Walks never fill this TLB, so after a miss it holds the page only on the
                // other side.
                if missed {
                    self.tlb.drop_entry_after_miss(va, access.is_fetch(), tag);
                } else {
                    self.tlb.drop_entry(va, tag);
                }
                PageOutcome::Fault(fault)
            }
            Resolved::NonCanonical => PageOutcome::NonCanonical,
            Resolved::Emulated => PageOutcome::Emulated,
        }
    }

    /// Zeroes every counter (the end of a warm-up); caches keep their contents.
    pub fn reset_counters(&mut self) {
        self.stats = Stats::default();
        self.tlb.reset_stats();
    }

    /// A guest CR3 load: flushes what the architecture says a MOV to CR3 flushes.
    pub fn load_cr3(&mut self, cr3: Cr3) {
        self.cr3 = cr3;
        self.stats.cr3_loads += 1;
        let tag = self.tag();
        if self.cpu.pcide {
            if !cr3.no_flush {
                self.tlb.flush_pcid(tag);
                if let Some(psc) = self.psc.as_mut() {
                    psc.flush(|t, _| t == tag);
                }
            }
        } else {
            self.tlb.flush_vpid(self.vpid, self.cpu.pge);
            if let Some(psc) = self.psc.as_mut() {
                psc.flush(|t, _| t.vpid == tag.vpid);
            }
        }
    }

    /// A guest INVLPG.
    pub fn invlpg(&mut self, va: Gva) {
        self.stats.invlpgs += 1;
        let tag = self.tag();
        self.tlb.invlpg(va, tag);
        // INVLPG also invalidates paging-structure-cache entries of the current PCID.
        if let Some(psc) = self.psc.as_mut() {
            psc.flush(|t, _| t == tag);
        }
    }
}
