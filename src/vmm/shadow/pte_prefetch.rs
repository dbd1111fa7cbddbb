//! Filling the neighbours of a faulting shadow entry while the VMM is there anyway. KVM:
//! `FNAME(pte_prefetch)` and `FNAME(prefetch_gpte)` (paging_tmpl.h), `__direct_pte_prefetch`
//! (mmu.c).

use crate::addr::{Gfn, Gpa, Hpa, Level, PAGE_BYTES};
use crate::paging::{Pte, Rights};
use crate::sim::stats::Stats;

use super::sync::Making;
use super::{spte, Shadow};

/// Entries looked at around a fault: the aligned group of 8 that holds it, one 64-byte line
/// of the guest table (PTE_PREFETCH_NUM).
const PREFETCH_ENTRIES: u64 = 8;

impl Shadow {
    /// After entry `index` of the leaf shadow page `table` was filled for a fault, fills the
    /// other non-present entries of its aligned group of 8: from the guest's entries (present
    /// and accessed) for a page that shadows a guest table, or from the guest's large page
    /// for a direct page. The first entry that cannot be filled ends it, and only guest
    /// memory the host already backs is mapped (KVM maps with `gfn_to_pfn_memslot_atomic`,
    /// which never faults a page in).
    pub(super) fn pte_prefetch(&mut self, table: Hpa, index: u64, stats: &mut Stats) {
        let Some(page) = self.pages.get(&table) else { return };
        if page.role.level != Level::Pt {
            return;
        }
        let (gfn, access, direct) = (page.gfn, page.role.access, page.role.direct);
        let first = index & !(PREFETCH_ENTRIES - 1);
        if !direct {
            // The VMM reads the guest's group of entries at once (the faulting one was read
            // by its walk).
            stats.shadow.vmm_walk_refs += PREFETCH_ENTRIES - 1;
        }
        for i in first..first + PREFETCH_ENTRIES {
            let entry = Hpa::new(table.as_u64() + i * 8);
            if i == index || self.host.memory.read_u64(entry) & Pte::PRESENT != 0 {
                continue;
            }
            let (target, rights) = if direct {
                (Gfn::new(gfn.number() + i), access)
            } else {
                let gpte = self.read_guest_entry(Gpa::new(gfn.start().as_u64() + i * 8));
                if !spte::usable_guest_pte(gpte, &self.guest_cpu) {
                    break;
                }
                let rights = spte::guest_leaf_access(access, gpte, self.guest_cpu.nxe);
                (Gpa::new(gpte & Pte::ADDRESS_MASK).frame(), rights)
            };
            if !self.prefetch_entry(entry, target, rights, stats) {
                break;
            }
            stats.shadow.prefetched += 1;
        }
    }

    /// Fills the shadow entry at `entry` to map `gfn` with `rights` if the host already backs
    /// it; returns whether it did.
    fn prefetch_entry(&mut self, entry: Hpa, gfn: Gfn, mut rights: Rights, stats: &mut Stats) -> bool {
        let Some(backing) = self.host.peek_backing(gfn.start()) else { return false };
        if rights.writable && !self.may_map_writable(gfn, Making::Prefetch, stats) {
            rights.writable = false;
        }
        let page = Hpa::new(backing.as_u64() & !(PAGE_BYTES - 1));
        self.host.memory.write_u64(entry, spte::leaf(page, rights, false, false));
        self.rmap.add(gfn, entry);
        true
    }
}
