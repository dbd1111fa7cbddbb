//! Hardware-assisted nested paging (Intel EPT, AMD NPT).
//!
//! The guest's CR3 holds a guest-physical address and the guest owns its tables outright: a
//! guest page fault, CR3 load or INVLPG causes no VM exit. The VMM keeps one nested table per
//! VM mapping GPA -> HPA, filled lazily: the first touch of a guest-physical page is an EPT
//! violation (or nested page fault) that the VMM handles like a host page fault — it backs the
//! page from the memory slot and maps it — before the guest resumes.

pub mod format;
pub mod guest_view;
#[cfg(test)]
mod tests;

use crate::addr::{Gfn, Gpa, Gva, Hpa, PageSize, PAGE_BYTES};
use crate::ept::NestedAccess;
use crate::host::{BackingError, FrameMemo, GuestMemory, Host, VmmTables};
use crate::memory::{OutOfFrames, Touches};
use crate::paging::builder::{self, InstallError};
use crate::paging::{walk, Access, AdPolicy, Pte, WalkOutcome};
use crate::sim::explain::Explanation;
use crate::sim::stats::{PageTableBytes, Stats};
use crate::vcpu::{Mapping, Resolved, Vcpu};
use crate::vmm::{guest_last_entry, Mode};

pub use format::{Ept, NestedFault, NestedFormat, Npt};
pub use guest_view::{GuestView, NestedExit};

/// How many nested exits one translation may take before the VMM gives up on it.
const MAX_EXITS_PER_WALK: u32 = 8;

/// Entries of the memo of where the guest kernel's own accesses land, which the kernel's fault
/// handler and the simulator's prefetching read over and over: four times the page-table
/// frames of 32 GiB of guest memory touched at random (one per 2 MiB), so that nearly all of
/// those of a smaller guest find a slot of their own.
const KERNEL_PAGES: usize = 65536;

/// A VM under nested paging.
pub struct Nested<F> {
    host: Host,
    format: F,
    root: Hpa,
    table_frames: u64,
    /// Guest frames the nested table maps and where: the simulator's shortcut for the guest
    /// kernel's own accesses (which are not counted as references). A frame whose backing the
    /// host moves is forgotten.
    kernel_pages: FrameMemo<()>,
}

impl<F: NestedFormat> Nested<F> {
    /// A VM with an empty nested table over `host`.
    pub fn new(format: F, mut host: Host) -> Result<Self, OutOfFrames> {
        let root = host.table_frame()?;
        Ok(Self { host, format, root, table_frames: 1, kernel_pages: FrameMemo::new(KERNEL_PAGES, ()) })
    }

    /// The nested root (EPTP / nCR3 address).
    pub fn root(&self) -> Hpa {
        self.root
    }

    /// The host.
    pub fn host(&mut self) -> &mut Host {
        &mut self.host
    }

    /// The format.
    pub fn format(&self) -> &F {
        &self.format
    }

    /// The VMM's handling of a nested fault: a violation on a GPA inside a memory slot is
    /// backed and mapped; anything else (MMIO, a misconfiguration) cannot be repaired by a
    /// mapping. Counts the exit.
    fn handle_exit(&mut self, exit: NestedExit, stats: &mut Stats) -> Result<(), BackingError> {
        stats.vm_exits.total += 1;
        match exit.fault {
            NestedFault::EptMisconfig => {
                stats.vm_exits.ept_misconfig += 1;
                Err(BackingError::Unbacked(exit.gpa))
            }
            NestedFault::EptViolation(_) | NestedFault::NestedPageFault(_) => {
                if self.host.slots().hva_of(exit.gpa).is_none() {
                    stats.vm_exits.mmio += 1;
                    return Err(BackingError::Unbacked(exit.gpa));
                }
                stats.vm_exits.ept_violation += 1;
                self.map(exit.gpa).map(|_| ())
            }
        }
    }

    /// The VMM's answer to a nested fault it cannot map (a guest table or page outside every
    /// memory slot): it walks the guest tables in software, as KVM's emulator does, reading
    /// unbacked guest memory as zeros. A fault the walk meets is injected; otherwise the access
    /// is completed by emulation (MMIO).
    fn emulate_walk(&mut self, va: Gva, access: Access, vcpu: &mut Vcpu) -> Resolved {
        let mut memory = GuestMemory::new(&mut self.host);
        match walk(&mut memory, vcpu.cr3.root, va, access, &vcpu.cpu, AdPolicy::Update) {
            WalkOutcome::PageFault(fault) => Resolved::Fault(fault),
            WalkOutcome::NonCanonical => Resolved::NonCanonical,
            WalkOutcome::Mapped(_) | WalkOutcome::Memory(_) => Resolved::Emulated,
        }
    }

    /// Backs `gpa` and maps its page in the nested table with the host page's size.
    fn map(&mut self, gpa: Gpa) -> Result<Hpa, BackingError> {
        let (hpa, size) = self.host.back(gpa)?;
        let mut size = size;
        loop {
            let page = Hpa::new(hpa.as_u64() & !(size.bytes() - 1));
            let leaf = self.format.leaf(page, size);
            let mut store = VmmTables { host: &mut self.host, created: 0 };
            let installed = builder::install(
                &mut store,
                self.format.entry_format(),
                self.root,
                self.format.levels(),
                gpa.as_u64(),
                size,
                leaf,
                self.format.table_flags(),
            );
            self.table_frames += store.created;
            match installed {
                Ok(_) => return Ok(hpa),
                Err(InstallError::OutOfMemory(e)) => return Err(BackingError::OutOfMemory(e)),
                // A smaller mapping already covers part of the large page: map 4 KiB.
                Err(InstallError::LargePageInTheWay) if size != PageSize::Size4K => size = PageSize::Size4K,
                Err(InstallError::LargePageInTheWay) => return Ok(hpa),
            }
        }
    }

    /// Where the nested table maps `gpa`, read without side effects (no A/D bits, no counts).
    fn peek_nested(&self, gpa: Gpa) -> Option<Hpa> {
        let read = |addr| self.host.memory.read_u64(addr);
        let slot =
            builder::search(read, self.format.entry_format(), self.root, self.format.levels(), gpa.as_u64());
        slot.mapped(gpa.as_u64()).map(|(hpa, _)| Hpa::new(hpa))
    }

    /// The host-physical address of `gpa` for the guest kernel's own accesses, taking the
    /// violation exit a first touch causes. `None` for an address outside every slot.
    fn kernel_access(&mut self, gpa: Gpa, stats: &mut Stats) -> Option<Hpa> {
        if let Some((hpa, ())) = self.kernel_pages.get(gpa) {
            return Some(hpa);
        }
        let hpa = match self.peek_nested(gpa) {
            Some(hpa) => hpa,
            None => {
                let fault = NestedExit {
                    gpa,
                    fault: NestedFault::EptViolation(crate::ept::ExitQualification::default()),
                };
                self.handle_exit(fault, stats).ok()?;
                self.host.backing_of(gpa).map(|(hpa, _)| hpa)?
            }
        };
        self.kernel_pages.remember(gpa, hpa, ());
        Some(hpa)
    }
}

impl<F: NestedFormat> Mode for Nested<F> {
    fn name(&self) -> &'static str {
        self.format.name()
    }

    fn prefetch(&self, vas: &[Gva], found: &mut [Option<Hpa>], near: &[Hpa], vcpu: &Vcpu) {
        // Ahead: the guest's last entry, its table's host page found where the guest kernel's
        // accesses found it (or else through the nested table), and the nested table's last
        // entry for that table's frame, which the two-dimensional walk reads just before it.
        // Near, with the guest's entries cached by now: the nested table's last entry for the
        // page the guest's entry maps, the walk's final reference.
        let memory = &self.host.memory;
        let host_of =
            |gpa: Gpa| self.kernel_pages.get(gpa).map(|(hpa, ())| hpa).or_else(|| self.peek_nested(gpa));
        let nested_end = |gpa: Gpa| {
            let read = |hpa| Some(memory.read_u64(hpa));
            builder::last_entry(
                read,
                self.format.entry_format(),
                self.root,
                self.format.levels(),
                gpa.as_u64(),
            )
        };
        let mut touches = Touches::new();
        for (&va, found) in vas.iter().zip(found) {
            if let Some(entry) = guest_last_entry(memory, host_of, vcpu, va) {
                *found = host_of(entry);
                touches.push(*found);
                touches.push(nested_end(entry));
            }
        }
        for &guest_entry in near {
            let leaf = memory.read_u64(guest_entry);
            if leaf & Pte::PRESENT != 0 {
                touches.push(nested_end(Gpa::new(leaf & Pte::ADDRESS_MASK)));
            }
        }
        memory.touch(&touches);
    }

    fn ep4ta(&self) -> u64 {
        self.root.as_u64()
    }

    fn host_migrate(&mut self, gpa: Gpa, vcpu: &mut Vcpu) -> bool {
        if self.host.migrate(gpa).is_none() {
            return false;
        }
        // KVM's MMU notifier zaps the nested entry of the moved page (kvm_unmap_gfn_range);
        // the next access takes a violation and maps the new frame. The processor may still
        // hold the old page in any mapping made under this EPT: INVEPT single-context.
        let read = |addr| self.host.memory.read_u64(addr);
        let slot =
            builder::search(read, self.format.entry_format(), self.root, self.format.levels(), gpa.as_u64());
        if slot.leaf {
            self.host.memory.write_u64(slot.entry, 0);
        }
        self.kernel_pages.forget(gpa);
        vcpu.invept_single(self.root.as_u64());
        true
    }

    fn read_guest(&mut self, gpa: Gpa, vcpu: &mut Vcpu) -> u64 {
        match self.kernel_access(gpa, &mut vcpu.stats) {
            Some(hpa) => self.host.memory.read_u64(hpa),
            None => 0,
        }
    }

    fn write_guest(&mut self, gpa: Gpa, value: u64, vcpu: &mut Vcpu) {
        if let Some(hpa) = self.kernel_access(gpa, &mut vcpu.stats) {
            self.host.memory.write_u64(hpa, value);
        }
    }

    fn zero_guest_frame(&mut self, gfn: Gfn, vcpu: &mut Vcpu) {
        if let Some(hpa) = self.kernel_access(gfn.start(), &mut vcpu.stats) {
            self.host.memory.zero_frame(hpa.frame());
        }
    }

    fn vm_host(&self) -> Option<&Host> {
        Some(&self.host)
    }

    fn vm_host_mut(&mut self) -> Option<&mut Host> {
        Some(&mut self.host)
    }

    fn explain(&mut self, va: Gva, access: Access, vcpu: &mut Vcpu) -> Explanation {
        let mut explanation = Explanation::new(self.format.name(), va, access);
        for _ in 0..MAX_EXITS_PER_WALK {
            let mut view = GuestView::new(&self.format, self.root, &mut self.host.memory, None);
            view.trace = Some(Vec::new());
            let outcome = walk(&mut view, vcpu.cr3.root, va, access, &vcpu.cpu, AdPolicy::Leave);
            let exit = match outcome {
                WalkOutcome::Mapped(t) => {
                    let gpa = t.address(va);
                    explanation.gpa = Some(gpa);
                    match view.nested(gpa, NestedAccess { kind: access.kind, final_translation: true }) {
                        Ok((hpa, _)) => {
                            explanation.hpa = Some(hpa);
                            None
                        }
                        Err(exit) => Some(exit),
                    }
                }
                WalkOutcome::PageFault(fault) => {
                    explanation.fault = Some(fault.code);
                    None
                }
                WalkOutcome::NonCanonical => None,
                WalkOutcome::Memory(exit) => Some(exit),
            };
            explanation.refs = view.trace.take().unwrap_or_default();
            match exit {
                None => break,
                Some(exit) => {
                    if self.handle_exit(exit, &mut vcpu.stats).is_err() {
                        break;
                    }
                }
            }
        }
        explanation
    }

    fn translate(&mut self, va: Gva, access: Access, vcpu: &mut Vcpu) -> Resolved {
        let mut nested_tlb = vcpu.nested_tlb.take();
        let mut nested_psc = vcpu.nested_psc.take();
        let mut result = Resolved::Emulated;
        for attempt in 0..MAX_EXITS_PER_WALK {
            if attempt > 0 {
                // The guest resumes and the processor walks again.
                vcpu.stats.walks += 1;
            }
            let mut view =
                GuestView::new(&self.format, self.root, &mut self.host.memory, nested_tlb.as_mut());
            view.nested_psc = nested_psc.as_mut();
            let root = vcpu.cr3.root;
            let outcome = vcpu.cached_walk(&mut view, root, va, access);
            let exit = match outcome {
                WalkOutcome::Mapped(t) => {
                    let gpa = t.address(va);
                    match view.nested(gpa, NestedAccess { kind: access.kind, final_translation: true }) {
                        Ok((hpa, nested_size)) => {
                            let size = t.size.min(nested_size);
                            result = Resolved::Mapped(Mapping {
                                page: hpa.align_down(size),
                                size,
                                rights: t.rights,
                                global: t.global && vcpu.cpu.pge,
                                dirty: t.dirty,
                            });
                            None
                        }
                        Err(exit) => Some(exit),
                    }
                }
                WalkOutcome::PageFault(fault) => {
                    result = Resolved::Fault(fault);
                    None
                }
                WalkOutcome::NonCanonical => {
                    result = Resolved::NonCanonical;
                    None
                }
                WalkOutcome::Memory(exit) => Some(exit),
            };
            let stats = &mut vcpu.stats;
            let refs = view.guest_refs + view.nested_refs;
            stats.walk_refs_nested += view.nested_refs;
            stats.walk_caches.nested_tlb_hits += view.nested_tlb_hits;
            stats.walk_caches.nested_tlb_misses += view.nested_tlb_misses;
            stats.walk_caches.nested_psc_hits += view.nested_psc_hits;
            stats.walk_caches.nested_psc_misses += view.nested_psc_misses;
            stats.record_walk(refs, view.ad_writes);
            match exit {
                None => break,
                Some(exit) => {
                    if self.handle_exit(exit, stats).is_err() {
                        result = self.emulate_walk(va, access, vcpu);
                        break;
                    }
                }
            }
        }
        vcpu.nested_tlb = nested_tlb;
        vcpu.nested_psc = nested_psc;
        result
    }

    fn page_table_bytes(&self) -> PageTableBytes {
        PageTableBytes { guest: 0, shadow: 0, ept: self.table_frames * PAGE_BYTES }
    }
}
