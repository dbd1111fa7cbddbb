//! The hash of shadow pages, what a guest frame being shadowed means for the rest of the VMM
//! (write protection, no large mappings over it), and zapping. KVM: `kvm_mmu_get_shadow_page`,
//! `kvm_mmu_find_shadow_page`, `account_shadowed`, `kvm_mmu_prepare_zap_page` (mmu.c).

use smallvec::SmallVec;

use crate::addr::{Gfn, Hpa, Level, PageSize, PAGE_BYTES};
use crate::memory::OutOfFrames;
use crate::paging::Pte;
use crate::sim::stats::Stats;

use super::page::{Role, ShadowPage};
use super::{spte, Shadow};

/// The indirect shadow pages of one guest frame.
#[derive(Default, Clone, Debug)]
pub struct GfnShadows {
    /// The pages, almost always one, kept inline.
    pub pages: SmallVec<[Hpa; 1]>,
    /// Of those, the ones in sync: while any is, the frame is write-protected.
    pub in_sync: u32,
    /// Of those, the upper-level ones: while any is, the frame is write-tracked and can never
    /// be let out of sync (KVM's page-track count).
    pub upper: u32,
}

/// The large-page sizes a shadowed guest frame keeps the VMM from mapping over it.
const LARGE_SIZES: [PageSize; 2] = [PageSize::Size2M, PageSize::Size1G];

/// The first guest frame of the `size` page that holds `gfn`.
pub fn large_base(gfn: Gfn, size: PageSize) -> Gfn {
    Gfn::new(gfn.number() & !(size.bytes() / PAGE_BYTES - 1))
}

impl Shadow {
    /// Whether the VMM keeps `gfn` write-protected: some shadow page of it is in sync.
    pub fn is_protected(&self, gfn: Gfn) -> bool {
        self.shadowed.get(&gfn).is_some_and(|g| g.in_sync > 0)
    }

    /// Whether a `size` mapping of the guest page starting at `first` is allowed: no guest
    /// frame inside it is shadowed (KVM's `lpage_info.disallow_lpage`).
    pub(super) fn large_allowed(&self, first: Gfn, size: PageSize) -> bool {
        !self.large_disallowed.contains_key(&(size, large_base(first, size)))
    }

    /// The shadow page for (`gfn`, `role`) and whether it was just created. Creating an
    /// upper-level page first zaps the frame's out-of-sync pages (the frame is about to be
    /// write-protected); finding an out-of-sync leaf page brings its entries up to date
    /// without write-protecting it (KVM's `kvm_mmu_find_shadow_page`). Pages must have been
    /// made available first ([`Shadow::make_pages_available`]): this never recycles.
    pub(super) fn get_page(
        &mut self,
        gfn: Gfn,
        role: Role,
        stats: &mut Stats,
    ) -> Result<(Hpa, bool), OutOfFrames> {
        if !role.direct && role.level > Level::Pt {
            let unsynced: Vec<Hpa> = self.shadowed.get(&gfn).map_or_else(Vec::new, |g| {
                g.pages.iter().copied().filter(|t| self.pages.get(t).is_some_and(|p| p.unsync)).collect()
            });
            for table in unsynced {
                self.zap_page(table, stats);
            }
        }
        if let Some(&table) = self.index.get(&(gfn, role)) {
            stats.shadow.hash_hits += 1;
            if self.pages.get(&table).is_some_and(|p| p.unsync) && self.sync_page(table, stats) {
                self.pending_flush = true;
            }
            return Ok((table, false));
        }
        stats.shadow.hash_misses += 1;
        let table = self.host.table_frame()?;
        self.pages.insert(table, ShadowPage::new(table, gfn, role));
        self.index.insert((gfn, role), table);
        self.order.push_back(table);
        stats.shadow.created += 1;
        if !role.direct {
            self.account_shadowed(gfn, role.level, table);
        }
        self.note_pages(stats);
        Ok((table, true))
    }

    /// A new indirect shadow page of `gfn`: the frame is write-protected (if it was not) and
    /// no large mapping may cover it (KVM's `account_shadowed`).
    fn account_shadowed(&mut self, gfn: Gfn, level: Level, table: Hpa) {
        let entry = self.shadowed.entry(gfn).or_default();
        entry.pages.push(table);
        entry.in_sync += 1;
        if level > Level::Pt {
            entry.upper += 1;
        }
        let first_in_sync = entry.in_sync == 1;
        for size in LARGE_SIZES {
            *self.large_disallowed.entry((size, large_base(gfn, size))).or_insert(0) += 1;
        }
        if first_in_sync {
            self.write_protect(gfn);
        }
    }

    /// The reverse of [`Shadow::account_shadowed`] for a zapped page.
    fn unaccount_shadowed(&mut self, page: &ShadowPage) {
        let gfn = page.gfn;
        if let Some(entry) = self.shadowed.get_mut(&gfn) {
            entry.pages.retain(|t| *t != page.table);
            if !page.unsync {
                entry.in_sync = entry.in_sync.saturating_sub(1);
            }
            if page.role.level > Level::Pt {
                entry.upper = entry.upper.saturating_sub(1);
            }
            if entry.pages.is_empty() {
                self.shadowed.remove(&gfn);
            }
        }
        for size in LARGE_SIZES {
            let key = (size, large_base(gfn, size));
            if let Some(count) = self.large_disallowed.get_mut(&key) {
                *count -= 1;
                if *count == 0 {
                    self.large_disallowed.remove(&key);
                }
            }
        }
    }

    /// The level of the live shadow table holding the entry at `entry`, if one does. Reverse
    /// map entries outlive the pages they were in (KVM removes each from its rmap as it
    /// zaps it; here they are checked instead), and a freed shadow frame may hold guest
    /// memory now: an entry is acted on only while its table is a shadow page.
    pub(super) fn live_entry_level(&self, entry: Hpa) -> Option<Level> {
        self.pages.get(&Hpa::new(entry.as_u64() & !(PAGE_BYTES - 1))).map(|page| page.role.level)
    }

    /// Removes write access from every shadow entry that maps `gfn`, large entries covering
    /// it included (KVM's `kvm_mmu_slot_gfn_write_protect` at every level): reads go on
    /// through a large entry, and the next write fault maps the page in 4 KiB pieces, since
    /// no large mapping may cover a shadowed frame.
    pub(super) fn write_protect(&mut self, gfn: Gfn) {
        for size in LARGE_SIZES {
            let base = large_base(gfn, size);
            for entry in self.rmap.take(base) {
                let Some(level) = self.live_entry_level(entry) else { continue };
                let value = self.host.memory.read_u64(entry);
                let large = level > Level::Pt && value & Pte::PRESENT != 0 && value & Pte::PAGE_SIZE != 0;
                if large && value & Pte::WRITABLE != 0 {
                    self.host.memory.write_u64(entry, value & !(Pte::WRITABLE | Pte::DIRTY));
                    self.pending_flush = true;
                }
                self.rmap.add(base, entry);
            }
        }
        let entries = self.rmap.take(gfn);
        if entries.is_empty() {
            return;
        }
        let Some((backing, _)) = self.host.backing_of(gfn.start()) else { return };
        let page = backing.as_u64() & Pte::ADDRESS_MASK;
        for entry in entries {
            if self.live_entry_level(entry) != Some(Level::Pt) {
                continue;
            }
            let value = self.host.memory.read_u64(entry);
            if value & Pte::PRESENT == 0 || value & Pte::ADDRESS_MASK != page {
                continue;
            }
            if value & Pte::WRITABLE != 0 {
                self.host.memory.write_u64(entry, value & !(Pte::WRITABLE | Pte::DIRTY));
                self.pending_flush = true;
            }
            self.rmap.add(gfn, entry);
        }
    }

    /// Clears the shadow entry at `entry` (in a table at `level`), unlinking the lower shadow
    /// page it pointed at (KVM's `mmu_page_zap_pte`). Returns whether it was present.
    pub(super) fn zap_entry(&mut self, entry: Hpa, level: Level) -> bool {
        let value = self.host.memory.read_u64(entry);
        if value & Pte::PRESENT == 0 {
            return false;
        }
        if spte::is_link(value, level) {
            if let Some(child) = self.pages.get_mut(&Hpa::new(value & Pte::ADDRESS_MASK)) {
                child.parents.retain(|p| *p != entry);
            }
        }
        self.host.memory.write_u64(entry, 0);
        true
    }

    /// Frees a shadow page (KVM's `kvm_mmu_prepare_zap_page` and commit): out-of-sync pages
    /// only it reaches go with it; its parents stop pointing at it; the pages it links lose
    /// it as a parent (they stay, unreachable from here, until recycled); the guest frame's
    /// accounting drops; a root leaves the cache of roots. The TLB is flushed before the
    /// guest runs again.
    pub(super) fn zap_page(&mut self, table: Hpa, stats: &mut Stats) {
        if self.pages.get(&table).is_some_and(|p| p.unsync_children > 0) {
            // KVM's mmu_zap_unsync_children.
            for leaf in self.collect_unsync(table) {
                if leaf != table {
                    self.zap_page(leaf, stats);
                }
            }
        }
        let Some(page) = self.pages.remove(&table) else { return };
        self.index.remove(&(page.gfn, page.role));
        if page.unsync {
            self.unmark_parents(&page);
        }
        for parent in &page.parents {
            let value = self.host.memory.read_u64(*parent);
            if value & Pte::PRESENT != 0 && value & Pte::ADDRESS_MASK == table.as_u64() {
                self.host.memory.write_u64(*parent, 0);
            }
        }
        if page.role.level > Level::Pt {
            for index in 0..512u64 {
                let entry = Hpa::new(table.as_u64() + index * 8);
                let value = self.host.memory.read_u64(entry);
                if spte::is_link(value, page.role.level) {
                    if let Some(child) = self.pages.get_mut(&Hpa::new(value & Pte::ADDRESS_MASK)) {
                        child.parents.retain(|p| *p != entry);
                    }
                }
            }
        }
        if !page.role.direct {
            self.unaccount_shadowed(&page);
        }
        self.roots.retain(|&(_, _, root)| root != table);
        if self.active == Some(table) {
            self.active = None;
        }
        self.host.free_table_frame(table);
        stats.shadow.zapped += 1;
        self.pending_flush = true;
        self.note_pages(stats);
    }

    /// Makes the entry at `entry` link the shadow page `child`.
    pub(super) fn link_child(&mut self, entry: Hpa, child: Hpa) {
        let value = spte::link(child);
        if self.host.memory.read_u64(entry) != value {
            self.host.memory.write_u64(entry, value);
        }
        if let Some(page) = self.pages.get_mut(&child) {
            if !page.parents.contains(&entry) {
                page.parents.push(entry);
            }
            if page.unsync || page.unsync_children > 0 {
                // The new parent leads to out-of-sync pages too (KVM's link_shadow_page calls
                // mark_unsync when the child has any).
                self.mark_parent_unsync(entry);
            }
        }
    }
}
