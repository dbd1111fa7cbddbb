//! The page-fault exit: the VMM walks the guest's tables in software, injects a fault the
//! guest must see, or builds the shadow entries the access needs. KVM: `FNAME(page_fault)`,
//! `FNAME(walk_addr)` and `FNAME(fetch)` (paging_tmpl.h), `mmu_set_spte` (mmu.c).

use crate::addr::{Gpa, Gva, Hpa, Level, PAGE_BYTES};
use crate::host::GuestMemory;
use crate::paging::builder::entry_address;
use crate::paging::Translation;
use crate::paging::{walk_from, Access, AdPolicy, PageFault, Pte, Rights, TableStep, WalkOutcome, WalkStart};
use crate::vcpu::Vcpu;

use super::sync::Making;
use super::{spte, Shadow};

/// What the VMM did about a page-fault exit.
pub(super) enum FaultFix {
    /// The shadow tables now allow the access: resume.
    Fixed,
    /// A true guest fault: inject it.
    Inject(PageFault),
    /// The access was emulated (a write to a write-protected guest table), or cannot be
    /// mapped.
    Emulated,
}

impl Shadow {
    /// A page-fault exit: counted, pages made available for the walk that follows, handled,
    /// and the TLB flushed if the handling requires it.
    pub(super) fn page_fault_exit(&mut self, va: Gva, access: Access, vcpu: &mut Vcpu) -> FaultFix {
        vcpu.stats.vm_exits.total += 1;
        vcpu.stats.vm_exits.page_fault += 1;
        let fix = self.fix(va, access, vcpu);
        self.compact_order();
        self.apply_flush(vcpu);
        fix
    }

    /// The VMM's handling of a page-fault exit: walk the guest tables in software (setting
    /// the guest's A/D bits as hardware would); inject a true fault, or build the missing
    /// shadow entries.
    fn fix(&mut self, va: Gva, access: Access, vcpu: &mut Vcpu) -> FaultFix {
        let cpu = vcpu.cpu;
        // The upper entries the walk passed (at most four, with five levels), kept without an
        // allocation: this runs on every hidden fault.
        let mut steps: [Option<TableStep<Gpa>>; 4] = [None; 4];
        let mut count = 0;
        let mut memory = GuestMemory::new(&mut self.host);
        let start = WalkStart::root(vcpu.cr3.root, &cpu);
        let outcome = walk_from(&mut memory, start, va, access, &cpu, AdPolicy::Update, |step| {
            if let Some(slot) = steps.get_mut(count) {
                *slot = Some(step);
                count += 1;
            }
        });
        vcpu.stats.shadow.vmm_walk_refs += memory.reads;
        let translation = match outcome {
            WalkOutcome::Mapped(t) => t,
            WalkOutcome::PageFault(fault) => {
                vcpu.stats.shadow.injected_faults += 1;
                return FaultFix::Inject(fault);
            }
            WalkOutcome::NonCanonical | WalkOutcome::Memory(_) => return FaultFix::Emulated,
        };
        vcpu.stats.shadow.hidden_faults += 1;
        // The rights the shadow leaf gets: the guest's, write access only once the guest
        // entry is dirty (KVM's FNAME(protect_clean_gpte); a write fault has just set D).
        let mut rights = translation.rights;
        rights.writable &= translation.dirty;
        if access.is_write() && !access.is_user() && !translation.rights.writable && !cpu.wp {
            // The guest allows this write only because its CR0.WP is clear; the hardware
            // runs with WP set, so the page becomes the kernel's (FNAME(page_fault)).
            rights = spte::kernel_writable(translation.rights, cpu.smep);
            vcpu.stats.shadow.wp_emulations += 1;
        }
        let stats = &mut vcpu.stats;
        let Some(root) = self.active.or_else(|| self.load_root(vcpu.cr3, stats).ok()) else {
            return FaultFix::Emulated;
        };
        // Only a fault the VMM will fill gets pages made available, and before any table is
        // followed or built (FNAME(page_fault) calls make_mmu_pages_available after
        // FNAME(walk_addr), before FNAME(fetch)); the root in use is never recycled.
        self.make_pages_available(stats);
        let Some((table, level)) = self.fetch_tables(root, va, &steps, stats) else {
            return FaultFix::Emulated;
        };
        self.map_leaf(table, level, va, access, &translation, rights, stats)
    }

    /// Follows or builds the shadow tables for `va` down to the level of the guest's leaf,
    /// one for each guest table the walk passed (KVM's `FNAME(fetch)`, first loop): a
    /// present link is followed, since every change to the guest entry it was made from
    /// zapped it; a missing one is made to the page for (guest table, role with the rights
    /// above it). Returns the shadow table the leaf goes in and its level.
    fn fetch_tables(
        &mut self,
        root: Hpa,
        va: Gva,
        steps: &[Option<TableStep<Gpa>>; 4],
        stats: &mut crate::sim::stats::Stats,
    ) -> Option<(Hpa, Level)> {
        let mut table = root;
        let mut level = self.levels.root();
        for step in steps.iter().flatten() {
            self.used(table);
            let lower = level.next_lower()?;
            let entry = entry_address(table, va.as_u64(), level);
            let value = self.host.memory.read_u64(entry);
            if spte::is_link(value, level) && self.pages.contains_key(&Hpa::new(value & Pte::ADDRESS_MASK)) {
                table = Hpa::new(value & Pte::ADDRESS_MASK);
                level = lower;
                continue;
            }
            if self.zap_entry(entry, level) {
                // A large entry where the guest now has a table (or a stale link).
                self.pending_flush = true;
            }
            let role = self.role_bits.role(lower, false, step.rights);
            let (child, created) = self.get_page(step.next.frame(), role, stats).ok()?;
            if !created {
                // A table found again is brought up to date before it is linked: the guest
                // need not flush after making an entry present (FNAME(fetch)).
                self.sync_children(child, stats);
            }
            self.link_child(entry, child);
            table = child;
            level = lower;
        }
        Some((table, level))
    }

    /// Maps the guest's leaf for `va` in `table` at `level`: one large shadow entry where the
    /// host backs the guest's large page with a page at least as large and no shadowed guest
    /// table lies inside it, otherwise 4 KiB entries in direct pages that split it (KVM's
    /// `FNAME(fetch)`, second loop, and `kvm_mmu_hugepage_adjust`). Then the 4 KiB entry
    /// itself, and its neighbours prefetched.
    #[allow(clippy::too_many_arguments)]
    fn map_leaf(
        &mut self,
        mut table: Hpa,
        mut level: Level,
        va: Gva,
        access: Access,
        translation: &Translation<Gpa>,
        rights: Rights,
        stats: &mut crate::sim::stats::Stats,
    ) -> FaultFix {
        if level > Level::Pt {
            if let Some(fixed) = self.large_leaf(table, level, va, translation, rights) {
                return fixed;
            }
        }
        while level > Level::Pt {
            self.used(table);
            let Some(lower) = level.next_lower() else { break };
            let entry = entry_address(table, va.as_u64(), level);
            let value = self.host.memory.read_u64(entry);
            let linked = Hpa::new(value & Pte::ADDRESS_MASK);
            if spte::is_link(value, level)
                && self.pages.get(&linked).is_some_and(|p| p.role.direct && p.role.access == rights)
            {
                table = linked;
                level = lower;
                continue;
            }
            // A direct page made for other rights (the guest's large entry was clean, or
            // is another alias's) is unlinked first (KVM's validate_direct_spte).
            if self.zap_entry(entry, level) {
                self.pending_flush = true;
            }
            let part = translation.page.as_u64()
                + (va.page_offset(translation.size) & !((1u64 << level.shift()) - 1));
            let role = self.role_bits.role(lower, true, rights);
            let Ok((child, _)) = self.get_page(Gpa::new(part).frame(), role, stats) else {
                return FaultFix::Emulated;
            };
            self.link_child(entry, child);
            table = child;
            level = lower;
        }
        self.used(table);
        let gpa =
            Gpa::new(translation.page.as_u64() + (va.page_offset(translation.size) & !(PAGE_BYTES - 1)));
        let gfn = gpa.frame();
        let Ok((backing, _)) = self.host.back(gpa) else { return FaultFix::Emulated };
        let mut leaf_rights = rights;
        let mut refused = false;
        if leaf_rights.writable && !self.may_map_writable(gfn, Making::Fault, stats) {
            leaf_rights.writable = false;
            refused = true;
        }
        let entry = entry_address(table, va.as_u64(), Level::Pt);
        let old = self.host.memory.read_u64(entry);
        let value = spte::leaf(backing, leaf_rights, false, true);
        self.host.memory.write_u64(entry, value);
        if old & Pte::PRESENT != 0
            && (old & Pte::ADDRESS_MASK != value & Pte::ADDRESS_MASK || old & !value != 0)
        {
            self.pending_flush = true;
        }
        self.rmap.add(gfn, entry);
        let index = (entry.as_u64() & (PAGE_BYTES - 1)) / 8;
        self.pte_prefetch(table, index, stats);
        if refused && access.is_write() {
            // The guest writes one of its own page tables through a mapping that must stay
            // read-only: the VMM emulates the write (RET_PF_EMULATE). Where in the frame it
            // lands decides whether it is misaligned.
            let written = Gpa::new(gfn.start().as_u64() + (va.as_u64() & (PAGE_BYTES - 1)));
            self.emulated_write(written, stats);
            return FaultFix::Emulated;
        }
        FaultFix::Fixed
    }

    /// One large shadow entry for the guest's large page, if the host and the shadowed
    /// frames inside it allow it.
    fn large_leaf(
        &mut self,
        table: Hpa,
        level: Level,
        va: Gva,
        translation: &Translation<Gpa>,
        rights: Rights,
    ) -> Option<FaultFix> {
        let size = translation.size;
        let first = translation.page.frame();
        if !self.large_allowed(first, size) {
            return None;
        }
        let (backing, host_size) = self.host.back(translation.page).ok()?;
        if host_size < size {
            return None;
        }
        let entry = entry_address(table, va.as_u64(), level);
        if self.zap_entry(entry, level) {
            self.pending_flush = true;
        }
        let page = Hpa::new(backing.as_u64() & !(size.bytes() - 1));
        self.host.memory.write_u64(entry, spte::leaf(page, rights, true, true));
        // Filed under the large page's first frame; write protection looks there too.
        self.rmap.add(first, entry);
        Some(FaultFix::Fixed)
    }

    /// A fault used `table`: the guest's writes to it before were not a flood (KVM's
    /// `__clear_sp_write_flooding_count`).
    pub(super) fn used(&mut self, table: Hpa) {
        if let Some(page) = self.pages.get_mut(&table) {
            page.writes_since_use = 0;
        }
    }
}
