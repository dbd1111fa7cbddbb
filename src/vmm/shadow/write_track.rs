//! Guest writes to its write-protected page tables: the exit, the emulated write, and the
//! shadow entries it makes stale. KVM: `kvm_mmu_track_write` (formerly
//! `kvm_mmu_pte_write`), `detect_write_misaligned`, `detect_write_flooding` (mmu.c).

use crate::addr::{Gpa, Hpa, Level, PAGE_BYTES};
use crate::sim::stats::Stats;

use super::Shadow;

/// Writes to an upper-level shadowed table with no use in between before its shadow page is
/// zapped (KVM's `detect_write_flooding`: the third).
const FLOOD_WRITES: u8 = 3;

impl Shadow {
    /// The guest stores to `gpa` of a write-protected frame through its own mapping of the
    /// frame, which the VMM keeps read-only: one exit. A frame shadowed only by leaf pages
    /// is let out of sync, and the store and those after it go through natively until the
    /// next flush point (in KVM that exit is a page fault on the guest's mapping of the
    /// frame, fixed by `mmu_try_to_unsync_pages`); otherwise the store is emulated.
    pub(super) fn protected_store(&mut self, gpa: Gpa, stats: &mut Stats) {
        stats.vm_exits.total += 1;
        stats.vm_exits.pt_write += 1;
        let gfn = gpa.frame();
        let leaf_only = self.shadowed.get(&gfn).is_some_and(|g| g.upper == 0);
        if leaf_only && self.config.unsync {
            self.unsync_gfn(gfn, stats);
        } else {
            self.emulated_write(gpa, stats);
        }
    }

    /// The VMM emulates a guest write of a word at `gpa`, in a frame it write-protects: each
    /// shadow page of the frame loses the entry written, or the whole page if the write is
    /// misaligned or the guest keeps writing an upper-level table it does not use (KVM's
    /// `kvm_mmu_track_write`; a leaf table too when unsync is off). A present entry zapped means the TLB is flushed.
    pub(super) fn emulated_write(&mut self, gpa: Gpa, stats: &mut Stats) {
        stats.shadow.emulated_writes += 1;
        let gfn = gpa.frame();
        let offset = gpa.as_u64() & (PAGE_BYTES - 1);
        // KVM's detect_write_misaligned for 8-byte entries and an 8-byte write.
        let misaligned = offset % 8 != 0;
        let mut flush = false;
        // Each shadow page of the frame in turn, read from the live list: a zap removes just
        // the page it zaps, so the next one moves up to the same position.
        let mut next = 0;
        while let Some(&table) = self.shadowed.get(&gfn).and_then(|g| g.pages.get(next)) {
            let Some(page) = self.pages.get_mut(&table) else {
                next += 1;
                continue;
            };
            // Leaf pages are never zapped for flooding: they can go out of sync instead. With
            // unsync off they can not, and are flooded as every page was before KVM had unsync.
            let flooded = (page.role.level > Level::Pt || !self.config.unsync) && {
                page.writes_since_use = page.writes_since_use.saturating_add(1);
                page.writes_since_use >= FLOOD_WRITES
            };
            if misaligned || flooded {
                self.zap_page(table, stats);
                stats.shadow.flooded += 1;
                continue;
            }
            let level = page.role.level;
            flush |= self.zap_entry(Hpa::new(table.as_u64() + (offset & !7)), level);
            next += 1;
        }
        if flush {
            self.pending_flush = true;
        }
    }
}
