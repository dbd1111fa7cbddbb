//! What a run counts. Every field is a plain count; cycles come from `crate::cost`.

use serde::Serialize;

use crate::tlb::{TlbLevelStats, WalkCacheStats};

/// VM exits by reason (all zero natively).
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default, Serialize)]
pub struct VmExits {
    /// Sum of every reason below.
    pub total: u64,
    /// Guest CR3 loads the VMM intercepts (shadow paging).
    pub cr3_write: u64,
    /// Guest INVLPG the VMM intercepts (shadow paging).
    pub invlpg: u64,
    /// Page faults the VMM intercepts (shadow paging), hidden or injected.
    pub page_fault: u64,
    /// Guest writes to write-protected guest page-table frames (shadow paging).
    pub pt_write: u64,
    /// EPT violations (Intel exit reason 48) and NPT nested page faults.
    pub ept_violation: u64,
    /// EPT misconfigurations (exit reason 49).
    pub ept_misconfig: u64,
    /// Accesses to guest-physical addresses outside every memory slot.
    pub mmio: u64,
}

/// Page-table memory by owner, in bytes.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default, Serialize)]
pub struct PageTableBytes {
    /// The guest kernel's own tables.
    pub guest: u64,
    /// Shadow tables the VMM maintains.
    pub shadow: u64,
    /// EPT / NPT tables.
    pub ept: u64,
}

/// What the shadow-paging VMM did (all zero in other modes). The names follow KVM's own
/// counters where it has one (`mmu_flooded`, `mmu_recycled`, `mmu_unsync`, ...).
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default, Serialize)]
pub struct ShadowStats {
    /// Shadow pages in use at the end of the run.
    pub pages: u64,
    /// The most shadow pages in use at once.
    pub peak_pages: u64,
    /// The budget of shadow pages (`--shadow-max-pages`, or KVM's default from guest RAM).
    pub max_pages: u64,
    /// Shadow pages created.
    pub created: u64,
    /// Shadow pages zapped (for any reason).
    pub zapped: u64,
    /// Of those, zapped because the guest kept writing an upper-level table with no use in
    /// between (write flooding) or wrote it misaligned.
    pub flooded: u64,
    /// Of those, zapped to stay within the page budget.
    pub recycled: u64,
    /// Guest writes to write-protected guest tables the VMM emulated (each zaps the shadow
    /// entry written).
    pub emulated_writes: u64,
    /// Shadow entries filled ahead of use from neighbouring guest entries (KVM's
    /// `pte_prefetch`).
    pub prefetched: u64,
    /// Leaf shadow pages let go out of sync (their guest frame left writable).
    pub unsync: u64,
    /// Out-of-sync pages brought back in sync and write-protected again.
    pub resynced: u64,
    /// TLB flushes the VMM made after changing shadow entries the CPU may have cached (KVM's
    /// `kvm_flush_remote_tlbs`).
    pub remote_flushes: u64,
    /// Supervisor writes to read-only user pages a CR0.WP=0 guest makes, mapped
    /// kernel-writable and user-inaccessible.
    pub wp_emulations: u64,
    /// Lookups of the (guest frame, role) hash that found a shadow page. A fault looks up
    /// only the shadow entries it finds missing; present ones are followed.
    pub hash_hits: u64,
    /// Lookups that had to create one.
    pub hash_misses: u64,
    /// CR3 loads served by the cache of recent roots.
    pub root_cache_hits: u64,
    /// CR3 loads that looked the root up in the hash or built it.
    pub root_cache_misses: u64,
    /// Hidden page faults the VMM fixed without the guest noticing.
    pub hidden_faults: u64,
    /// Page faults the VMM injected into the guest.
    pub injected_faults: u64,
    /// Guest page-table entries the VMM read in software (its own walks of guest tables,
    /// the entries it prefetches from and those it resynchronises).
    pub vmm_walk_refs: u64,
}

/// The VMM's TLB invalidation instructions (SDM Vol. 3C §29.4.3; all zero natively).
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default, Serialize)]
pub struct Invalidations {
    /// INVEPT single-context: guest-physical and combined mappings of one EPT root.
    pub invept_single: u64,
    /// INVEPT all-context: those of every EPT root.
    pub invept_all: u64,
    /// INVVPID single-context: linear and combined mappings of one VPID.
    pub invvpid_single: u64,
    /// INVVPID all-context: those of every VPID but 0.
    pub invvpid_all: u64,
}

/// Counters of one run in one mode.
#[derive(Clone, PartialEq, Debug, Default, Serialize)]
pub struct Stats {
    /// The run was stopped early (Ctrl-C): the counters cover the accesses made until then.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub interrupted: bool,
    /// Memory accesses the workload made (after warm-up).
    pub accesses: u64,
    /// Page translations those accesses needed (an access crossing a page boundary needs two):
    /// the TLB lookups, `tlb_hits + tlb_misses`.
    pub translations: u64,
    /// Translations found in a TLB (`tlb.l1_hits + tlb.l2_hits`).
    pub tlb_hits: u64,
    /// Translations not found in any TLB (`tlb.misses`).
    pub tlb_misses: u64,
    /// TLB hits by level.
    pub tlb: TlbLevelStats,
    /// Page walks started, retries after a handled fault included.
    pub walks: u64,
    /// Memory references made by all walks (both dimensions of a nested walk).
    pub walk_refs: u64,
    /// Of `walk_refs`, those made in the nested dimension (EPT/NPT entries).
    pub walk_refs_nested: u64,
    /// The most references one walk made.
    pub walk_refs_max: u64,
    /// Paging-structure cache and nested TLB counters.
    pub walk_caches: WalkCacheStats,
    /// Accessed/dirty bits written back by walks.
    pub ad_writes: u64,
    /// Page faults the guest kernel handled.
    pub guest_page_faults: u64,
    /// Accesses the guest kernel refused (the process would get SIGSEGV); they are skipped.
    pub segfaults: u64,
    /// Accesses to non-canonical addresses (#GP); they are skipped.
    pub general_protection: u64,
    /// VM exits.
    pub vm_exits: VmExits,
    /// What the guest kernel did.
    pub guest: crate::guest::kernel::GuestCounters,
    /// Shadow-paging VMM counters.
    pub shadow: ShadowStats,
    /// INVEPT and INVVPID the VMM executed.
    pub invalidations: Invalidations,
    /// Guest pages whose backing the host moved to another frame (`--host-migrate-every`).
    pub host_migrations: u64,
    /// Page-table memory at the end of the run.
    pub page_table_bytes: PageTableBytes,
    /// Context switches between processes.
    pub context_switches: u64,
    /// Guest CR3 loads.
    pub cr3_loads: u64,
    /// Guest INVLPG instructions.
    pub invlpgs: u64,
    /// Distinct guest pages (4 KiB) that were mapped on demand.
    pub pages_mapped: u64,
}

impl Stats {
    /// Mean references per walk.
    pub fn refs_per_walk(&self) -> f64 {
        if self.walks == 0 {
            0.0
        } else {
            ratio(self.walk_refs, self.walks)
        }
    }
}

/// `a / b` as a float, for reports.
#[allow(clippy::cast_precision_loss)]
pub fn ratio(a: u64, b: u64) -> f64 {
    a as f64 / b as f64
}

impl Stats {
    /// Adds one walk's references and A/D write-backs.
    #[inline]
    pub fn record_walk(&mut self, refs: u64, ad_writes: u64) {
        self.walk_refs += refs;
        self.walk_refs_max = self.walk_refs_max.max(refs);
        self.ad_writes += ad_writes;
    }
}

/// Adds the listed count fields of `$other` into `$self`.
macro_rules! add_counts {
    ($self:ident, $other:ident; $($field:ident),* $(,)?) => {
        $( $self.$field += $other.$field; )*
    };
}

impl Stats {
    /// Folds another VM's counters into these (sums; maxima where a field is a maximum).
    pub fn absorb(&mut self, o: &Stats) {
        add_counts!(self, o; accesses, translations, tlb_hits, tlb_misses, walks, walk_refs,
            walk_refs_nested, ad_writes, guest_page_faults, segfaults, general_protection,
            context_switches, cr3_loads, invlpgs, pages_mapped, host_migrations);
        let (i, j) = (&mut self.invalidations, &o.invalidations);
        add_counts!(i, j; invept_single, invept_all, invvpid_single, invvpid_all);
        self.walk_refs_max = self.walk_refs_max.max(o.walk_refs_max);
        self.interrupted |= o.interrupted;
        let (t, u) = (&mut self.tlb, &o.tlb);
        add_counts!(t, u; l1_hits, l2_hits, misses);
        let (w, x) = (&mut self.walk_caches, &o.walk_caches);
        add_counts!(w, x; psc_hits, psc_misses, nested_tlb_hits, nested_tlb_misses, nested_psc_hits,
            nested_psc_misses);
        let (e, f) = (&mut self.vm_exits, &o.vm_exits);
        add_counts!(e, f; total, cr3_write, invlpg, page_fault, pt_write, ept_violation, ept_misconfig, mmio);
        let (p, q) = (&mut self.page_table_bytes, &o.page_table_bytes);
        add_counts!(p, q; guest, shadow, ept);
        let (g, h) = (&mut self.guest, &o.guest);
        add_counts!(g, h; pages_mapped, context_switches, cow_breaks, forks, execs, exits, munmaps,
            mprotects, large_splits);
        let (s, r) = (&mut self.shadow, &o.shadow);
        add_counts!(s, r; pages, peak_pages, max_pages, created, zapped, flooded, recycled,
            emulated_writes, prefetched, unsync, resynced, remote_flushes, wp_emulations,
            hash_hits, hash_misses, root_cache_hits, root_cache_misses, hidden_faults,
            injected_faults, vmm_walk_refs);
    }
}
