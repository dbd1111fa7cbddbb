//! Out-of-sync leaf pages: letting a guest page table go unprotected while the guest edits
//! it, finding the pages a flush point must bring back, and bringing them back. KVM:
//! `mmu_try_to_unsync_pages`, `kvm_unsync_page`, `kvm_mmu_mark_parents_unsync`,
//! `mmu_sync_children`, `kvm_sync_page` (mmu.c) and `FNAME(sync_spte)` (paging_tmpl.h).

use crate::addr::{Gfn, Gpa, Hpa, Level, PAGE_BYTES};
use crate::paging::Pte;
use crate::sim::stats::Stats;

use super::page::ShadowPage;
use super::{spte, Shadow};

/// Why a leaf shadow entry is being made, for the decision on write access.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Making {
    /// For the fault being handled.
    Fault,
    /// Ahead of use, from a neighbouring guest entry.
    Prefetch,
    /// While resynchronising an out-of-sync page.
    Sync,
}

impl Shadow {
    /// May a shadow entry map `gfn` writable? Yes if no shadow page shadows it, or all are
    /// out of sync. If only leaf pages do, they are let out of sync now, unless the entry is
    /// being prefetched or resynchronised or unsync is off; a frame holding an upper-level
    /// table never is (KVM's `mmu_try_to_unsync_pages`).
    pub(super) fn may_map_writable(&mut self, gfn: Gfn, making: Making, stats: &mut Stats) -> bool {
        let Some(shadows) = self.shadowed.get(&gfn) else { return true };
        if shadows.upper > 0 || (making == Making::Sync && !shadows.pages.is_empty()) {
            return false;
        }
        if shadows.in_sync == 0 {
            return true;
        }
        if making == Making::Prefetch || !self.config.unsync {
            return false;
        }
        self.unsync_gfn(gfn, stats);
        true
    }

    /// Lets every in-sync (leaf) shadow page of `gfn` go out of sync (KVM's
    /// `kvm_unsync_page`): the frame is no longer write-protected.
    pub(super) fn unsync_gfn(&mut self, gfn: Gfn, stats: &mut Stats) {
        let Some(shadows) = self.shadowed.get_mut(&gfn) else { return };
        shadows.in_sync = 0;
        let tables = shadows.pages.clone();
        for table in tables {
            let Some(page) = self.pages.get_mut(&table) else { continue };
            if page.unsync {
                continue;
            }
            page.unsync = true;
            stats.shadow.unsync += 1;
            let parents = page.parents.clone();
            for parent in parents {
                self.mark_parent_unsync(parent);
            }
        }
    }

    /// Marks the entry at `entry` (in an upper shadow page) as leading to out-of-sync pages,
    /// and its own parents in turn when it is the page's first (KVM's
    /// `kvm_mmu_mark_parents_unsync`).
    pub(super) fn mark_parent_unsync(&mut self, entry: Hpa) {
        let table = Hpa::new(entry.as_u64() & !(PAGE_BYTES - 1));
        let index = (entry.as_u64() & (PAGE_BYTES - 1)) / 8;
        let Some(parent) = self.pages.get_mut(&table) else { return };
        if parent.set_unsync_child(index) {
            let grandparents = parent.parents.clone();
            for grandparent in grandparents {
                self.mark_parent_unsync(grandparent);
            }
        }
    }

    /// Clears the marks that led to `page` (now in sync or gone) in its parents, and in
    /// theirs where nothing else is left below (KVM's `clear_unsync_child_bit` as
    /// `mmu_pages_clear_parents` applies it).
    pub(super) fn unmark_parents(&mut self, page: &ShadowPage) {
        for &entry in &page.parents {
            let table = Hpa::new(entry.as_u64() & !(PAGE_BYTES - 1));
            let index = (entry.as_u64() & (PAGE_BYTES - 1)) / 8;
            let Some(parent) = self.pages.get_mut(&table) else { continue };
            let had = parent.unsync_children > 0;
            if parent.clear_unsync_child(index) && had && !parent.unsync {
                let parent = parent.clone();
                self.unmark_parents(&parent);
            }
        }
    }

    /// The out-of-sync pages reachable from `table` through marked entries, dropping marks
    /// that no longer lead anywhere (KVM's `__mmu_unsync_walk`).
    pub(super) fn collect_unsync(&mut self, table: Hpa) -> Vec<Hpa> {
        let mut found = Vec::new();
        self.collect_unsync_into(table, &mut found, 0);
        found
    }

    fn collect_unsync_into(&mut self, table: Hpa, found: &mut Vec<Hpa>, depth: u8) {
        let Some(page) = self.pages.get(&table) else { return };
        if depth > 5 {
            return;
        }
        let level = page.role.level;
        for index in page.unsync_child_indices() {
            let value = self.host.memory.read_u64(Hpa::new(table.as_u64() + index * 8));
            let child = Hpa::new(value & Pte::ADDRESS_MASK);
            let keep = if spte::is_link(value, level) && self.pages.contains_key(&child) {
                self.collect_unsync_into(child, found, depth + 1);
                self.pages.get(&child).is_some_and(|c| {
                    if c.unsync && !found.contains(&child) {
                        found.push(child);
                    }
                    c.unsync || c.unsync_children > 0
                })
            } else {
                false
            };
            if !keep {
                if let Some(page) = self.pages.get_mut(&table) {
                    page.clear_unsync_child(index);
                }
            }
        }
    }

    /// Brings every out-of-sync page reachable from `table` back in sync and write-protects
    /// its frame again (KVM's `mmu_sync_children`, at a flush point).
    pub(super) fn sync_children(&mut self, table: Hpa, stats: &mut Stats) {
        if self.pages.get(&table).is_none_or(|p| p.unsync_children == 0) {
            return;
        }
        for leaf in self.collect_unsync(table) {
            let Some(page) = self.pages.get_mut(&leaf) else { continue };
            page.unsync = false;
            let page = page.clone();
            self.unmark_parents(&page);
            let first_in_sync = self.shadowed.get_mut(&page.gfn).is_some_and(|g| {
                g.in_sync += 1;
                g.in_sync == 1
            });
            if first_in_sync {
                self.write_protect(page.gfn);
            }
            if self.sync_page(leaf, stats) {
                self.pending_flush = true;
            }
        }
    }

    /// Brings every entry of the leaf page `table` up to date with the guest table; returns
    /// whether any changed (KVM's `kvm_sync_page`).
    pub(super) fn sync_page(&mut self, table: Hpa, stats: &mut Stats) -> bool {
        stats.shadow.resynced += 1;
        let mut changed = false;
        for index in 0..512 {
            changed |= self.sync_entry(table, index, stats);
        }
        changed
    }

    /// Brings entry `index` of the leaf page `table` up to date: dropped if the guest entry
    /// is no longer usable or maps another frame, its rights rewritten in place if they
    /// changed (KVM's `FNAME(sync_spte)`). Returns whether the change needs a TLB flush: an
    /// entry dropped or given fewer rights (`mmu_spte_update`), not one given more.
    pub(super) fn sync_entry(&mut self, table: Hpa, index: u64, stats: &mut Stats) -> bool {
        let Some(page) = self.pages.get(&table) else { return false };
        if page.role.direct || page.role.level != Level::Pt {
            return false;
        }
        let (gfn, access) = (page.gfn, page.role.access);
        let entry = Hpa::new(table.as_u64() + index * 8);
        let old = self.host.memory.read_u64(entry);
        if old & Pte::PRESENT == 0 {
            return false;
        }
        stats.shadow.vmm_walk_refs += 1;
        let gpte = self.read_guest_entry(Gpa::new(gfn.start().as_u64() + index * 8));
        if !spte::usable_guest_pte(gpte, &self.guest_cpu) {
            self.host.memory.write_u64(entry, 0);
            return true;
        }
        let target = Gpa::new(gpte & Pte::ADDRESS_MASK).frame();
        let backing = self.host.peek_backing(target.start());
        if backing.map(|hpa| hpa.as_u64() & Pte::ADDRESS_MASK) != Some(old & Pte::ADDRESS_MASK) {
            self.host.memory.write_u64(entry, 0);
            return true;
        }
        let mut rights = spte::guest_leaf_access(access, gpte, self.guest_cpu.nxe);
        if rights.writable && !self.may_map_writable(target, Making::Sync, stats) {
            rights.writable = false;
        }
        let Some(page) = backing else { return false };
        // Synchronising keeps the entry accessed (make_spte with `synchronizing`).
        let new = spte::leaf(page, rights, false, true);
        if new == old {
            return false;
        }
        self.host.memory.write_u64(entry, new);
        spte::fewer_rights(old, new)
    }

    /// A word of guest memory, read by the VMM without side effects (0 where nothing backs it).
    pub(super) fn read_guest_entry(&self, gpa: Gpa) -> u64 {
        self.host.peek_backing(gpa).map_or(0, |hpa| self.host.memory.read_u64(hpa))
    }
}
