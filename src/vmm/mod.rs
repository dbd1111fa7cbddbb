//! The virtualization designs. Each is a [`Mode`]: what the hardware walks on a TLB miss, and
//! what the VMM does when the guest touches its page tables, CR3 or INVLPG.

pub mod native;
pub mod nested;
pub mod shadow;

use crate::addr::{Gfn, Gpa, Gva, Hpa};
use crate::host::{GuestMemory, Host};
use crate::memory::PhysMemory;
use crate::paging::builder::{self, EntryFormat};
use crate::paging::Access;
use crate::paging::{walk, AdPolicy, CpuState, WalkOutcome};
use crate::sim::explain::Explanation;
use crate::sim::stats::{PageTableBytes, Stats};
use crate::vcpu::{Cr3, Resolved, Vcpu};

pub use native::Native;
pub use nested::{Ept, Nested, Npt};
pub use shadow::{Shadow, ShadowConfig};

/// Where a walk of the guest's own tables for `va` ends (the guest-physical address of the
/// guest's last entry), found for [`Mode::prefetch`] by reading the entries above it without
/// side effects; `host_of` tells where a guest-physical address lives in `memory`, if it can.
fn guest_last_entry(
    memory: &PhysMemory,
    host_of: impl Fn(Gpa) -> Option<Hpa>,
    vcpu: &Vcpu,
    va: Gva,
) -> Option<Gpa> {
    let read = |gpa| host_of(gpa).map(|hpa| memory.read_u64(hpa));
    builder::last_entry(read, EntryFormat::X86, vcpu.cr3.root, vcpu.cpu.levels, va.as_u64())
}

/// Where in host memory the guest's last entry for `va` lies (see [`guest_last_entry`]).
fn guest_walk_end(
    memory: &PhysMemory,
    host_of: impl Fn(Gpa) -> Option<Hpa>,
    vcpu: &Vcpu,
    va: Gva,
) -> Option<Hpa> {
    guest_last_entry(memory, &host_of, vcpu, va).and_then(&host_of)
}

/// One design of memory virtualization (or none).
pub trait Mode {
    /// The mode's name as the command line spells it.
    fn name(&self) -> &'static str;

    /// The paging control bits the processor runs the guest with, given the guest's own: the
    /// same, except where the VMM forces some (shadow paging keeps CR0.WP and EFER.NXE set).
    fn hardware_cpu(&self, guest: CpuState) -> CpuState {
        guest
    }

    /// The root of the nested tables the guest runs under (EPTP's EP4TA, or nCR3), which tags
    /// combined and guest-physical mappings in the vCPU's caches; 0 without nested paging.
    fn ep4ta(&self) -> u64 {
        0
    }

    /// The host moves the page backing `gpa` to another frame (page migration); the VMM
    /// drops what mapped the old one and invalidates the vCPU's caches as the manuals require.
    /// Returns whether a page moved. Nothing moves on bare metal.
    fn host_migrate(&mut self, _gpa: Gpa, _vcpu: &mut Vcpu) -> bool {
        false
    }

    /// The guest kernel reads a word of its physical memory (not a page walk).
    fn read_guest(&mut self, gpa: Gpa, vcpu: &mut Vcpu) -> u64;

    /// The guest kernel stores a word of its physical memory: the path through which it edits
    /// its page tables, and where a shadow-paging VMM traps.
    fn write_guest(&mut self, gpa: Gpa, value: u64, vcpu: &mut Vcpu);

    /// The guest kernel clears a frame it is about to use as a page table.
    fn zero_guest_frame(&mut self, gfn: Gfn, vcpu: &mut Vcpu);

    /// The guest loaded CR3 (the vCPU has already applied the architectural TLB flush).
    fn on_cr3_load(&mut self, _cr3: Cr3, _vcpu: &mut Vcpu) {}

    /// The guest executed INVLPG (the vCPU has already invalidated its TLB entries).
    fn on_invlpg(&mut self, _va: Gva, _vcpu: &mut Vcpu) {}

    /// A TLB miss: the walk this mode's hardware makes, with any VM exits it causes handled,
    /// ending in a translation or a fault the guest must see. Counts walk references.
    fn translate(&mut self, va: Gva, access: Access, vcpu: &mut Vcpu) -> Resolved;

    /// Outside the model, for the simulator's speed alone: finds, reading without side
    /// effects, the last entries that walks of `vas` will read (the ones likely to miss the
    /// host's caches: upper levels are shared by many walks) and touches them together, so
    /// their misses overlap instead of stalling one walk each. A mode that needs a second
    /// stage, for entries it can only find once those are cached (under nested paging, the
    /// nested entry of the page the guest's entry maps), puts in `found[i]` what it needs for
    /// `vas[i]`; the next call hands those of the accesses now right ahead back in `near`.
    /// Nothing a run reports changes.
    fn prefetch(&self, _vas: &[Gva], _found: &mut [Option<Hpa>], _near: &[Hpa], _vcpu: &Vcpu) {}

    /// The host this guest runs on as a VM (`None` on bare metal). The reference
    /// composition, memory accounting and isolation checks below come from it.
    fn vm_host(&self) -> Option<&Host> {
        None
    }

    /// The host, mutably.
    fn vm_host_mut(&mut self) -> Option<&mut Host> {
        None
    }

    /// The reference composition, first half: the guest-physical address the guest's own
    /// tables give `va` for `access` right now, read without side effects.
    fn reference_gpa(&mut self, va: Gva, access: Access, vcpu: &Vcpu) -> Option<Gpa> {
        let host = self.vm_host_mut()?;
        let mut memory = GuestMemory::observer(host);
        match walk(&mut memory, vcpu.cr3.root, va, access, &vcpu.cpu, AdPolicy::Leave) {
            WalkOutcome::Mapped(t) => Some(t.address(va)),
            _ => None,
        }
    }

    /// The reference composition, second half: GPA -> HVA (memory slot) -> HPA (host tables),
    /// without side effects.
    fn reference_hpa(&mut self, gpa: Gpa) -> Option<Hpa> {
        self.vm_host_mut()?.backing_of(gpa).map(|(hpa, _)| hpa)
    }

    /// Bytes of simulated host memory holding data (page-table frames, in practice): what a
    /// run's memory grows with.
    fn stored_bytes(&self) -> u64 {
        self.vm_host().map_or(0, |host| host.memory.stored_bytes())
    }

    /// Translates `va` for `access` with every translation cache bypassed, recording each
    /// reference (for `explain`). VM exits on the way are handled as in a run.
    fn explain(&mut self, va: Gva, access: Access, vcpu: &mut Vcpu) -> Explanation;

    /// Whether `hpa` backs another VM's memory (several VMs on one host): a guest must never
    /// reach it.
    fn foreign_frame(&self, hpa: Hpa) -> bool {
        self.vm_host().is_some_and(|host| host.owner_of(hpa).is_some_and(|vm| vm != host.vm()))
    }

    /// Whether the VMM keeps `gpa`'s frame write-protected (it holds a shadowed guest table):
    /// a guest write that completes there without a trap is a leak of the protection.
    fn write_protected(&self, _gpa: Gpa) -> bool {
        false
    }

    /// Fills in counters that describe the mode's state at the end of a run rather than
    /// events (the shadow pages held), which a reset of the counters must not leave at zero.
    fn note_state(&self, _stats: &mut Stats) {}

    /// Page-table memory the mode itself keeps (shadow and EPT tables).
    fn page_table_bytes(&self) -> PageTableBytes {
        PageTableBytes::default()
    }
}
