//! The translation caches of a nested walk held to SDM Vol. 3C §29.4 ("Caching translation
//! information"), one rule a test, the expectation taken from the manual's text rather than
//! from the code: what each cache holds, what a guest CR3 load and INVLPG invalidate, and how a
//! write through a cached guest-physical mapping sets the EPT dirty flag.

use super::*;
use crate::addr::PagingLevels;
use crate::ept::EptEntry;
use crate::guest::{FaultResolution, Kernel, KernelConfig, Pid, Platform, Prot, Region};
use crate::paging::builder::EntryFormat;
use crate::paging::Access;
use crate::sim::run::HOST_PHYS_BITS;
use crate::sim::Machine;
use crate::tlb::TlbConfig;
use crate::vcpu::Cr3;
use crate::vcpu::PageOutcome;
use crate::workload::Op;

const RAM: u64 = 1 << 30;
const BASE: u64 = 0x1000_0000;
const PAGE: u64 = 4096;

/// A guest kernel on an EPT vCPU with every walk cache on.
struct Vm {
    m: Machine<Nested<Ept>>,
    k: Kernel,
}

impl Vm {
    fn new() -> Self {
        let host = Host::new(RAM, PageSize::Size4K).expect("host");
        let format = Ept { levels: PagingLevels::Four, ad: true, phys_bits: HOST_PHYS_BITS };
        let mode = Nested::new(format, host).expect("nested root");
        let cpu = crate::paging::CpuState::default();
        let mut vcpu = Vcpu::new(cpu, TlbConfig::Hierarchy, 1, Some(crate::tlb::WalkCacheSizes::default()));
        vcpu.ep4ta = mode.ep4ta();
        let mut m = Machine { mode, vcpu };
        let k = Kernel::boot(&mut m, KernelConfig { ram_bytes: RAM }).expect("boot");
        let mut vm = Self { m, k };
        vm.op(Op::Spawn { pid: 1, anywhere: false });
        let region = Region {
            start: Gva::new_truncate(BASE),
            len: 64 * PAGE,
            prot: Prot::RW,
            user: true,
            page_size: PageSize::Size4K,
        };
        vm.op(Op::Map { pid: 1, region });
        vm
    }

    fn op(&mut self, op: Op) {
        crate::sim::run::apply(&mut self.m, &mut self.k, op).expect("operation");
    }

    /// An access by process 1 with the guest's fault handling; the HPA.
    fn access(&mut self, va: u64, access: Access) -> Hpa {
        let pid: Pid = 1;
        self.k.switch_to(&mut self.m, pid).expect("switch");
        let va = Gva::new_truncate(va);
        let mut retry = false;
        for _ in 0..8 {
            match self.m.vcpu.translate(&mut self.m.mode, va, access, retry) {
                PageOutcome::Done(hpa) => {
                    let gpa = self.m.mode.reference_gpa(va, access, &self.m.vcpu).expect("mapped");
                    assert_eq!(Some(hpa), self.m.mode.reference_hpa(gpa));
                    return hpa;
                }
                PageOutcome::Fault(_) => {
                    match self.k.handle_fault(&mut self.m, pid, va, access).expect("fault") {
                        FaultResolution::Mapped | FaultResolution::Spurious => retry = true,
                        FaultResolution::Segv => panic!("segfault at {va:?}"),
                    }
                }
                other => panic!("{other:?}"),
            }
        }
        panic!("no translation for {va:?}");
    }

    /// References (guest, nested) of one TLB-missing walk of `va`: the TLB entry is dropped
    /// first, so the walk goes through the paging-structure caches.
    fn walk_refs(&mut self, va: u64, access: Access) -> (u64, u64) {
        let tag = self.m.vcpu.tag();
        self.m.vcpu.tlb.invlpg(Gva::new_truncate(va), tag);
        let before = (self.m.vcpu.stats.walk_refs, self.m.vcpu.stats.walk_refs_nested);
        self.access(va, access);
        let total = self.m.vcpu.stats.walk_refs - before.0;
        let nested = self.m.vcpu.stats.walk_refs_nested - before.1;
        (total - nested, nested)
    }

    /// The EPT leaf for the guest-physical address `va` maps to.
    fn ept_leaf(&mut self, va: u64) -> u64 {
        let gpa = self
            .m
            .mode
            .reference_gpa(Gva::new_truncate(va), Access::USER_READ, &self.m.vcpu)
            .expect("mapped");
        let root = self.m.mode.root();
        let slot = builder::lookup(
            &mut self.m.mode.host.memory,
            EntryFormat::EPT,
            root,
            PagingLevels::Four,
            gpa.as_u64(),
        );
        slot.value
    }
}

#[test]
fn a_combined_paging_structure_cache_entry_holds_the_host_physical_address_of_the_next_table() {
    // §29.4.1: combined paging-structure-cache entries map linear-address bits to the
    // physical address of the next paging structure, "translated" through EPT. A walk
    // started from a cached PDE reads the guest PTE with no nested translation of the page
    // table; only the final guest-physical address needs one.
    let mut vm = Vm::new();
    vm.access(BASE, Access::USER_WRITE);
    vm.access(BASE + PAGE, Access::USER_WRITE);
    let (guest, nested) = vm.walk_refs(BASE + PAGE, Access::USER_READ);
    assert_eq!(guest, 1, "one guest entry: the PTE");
    assert_eq!(nested, 0, "the page table's HPA came from the cache, the data page's from the nested TLB");
}

#[test]
fn a_guest_physical_paging_structure_cache_entry_shortens_a_nested_walk() {
    // §29.4.1: guest-physical paging-structure-cache entries map guest-physical-address bits
    // to the next EPT paging structure. With the nested TLB missing for a new page whose EPT
    // page table another page already used, the nested walk reads the EPT PTE alone.
    let mut vm = Vm::new();
    vm.access(BASE, Access::USER_WRITE);
    let hits = vm.m.vcpu.stats.walk_caches.nested_psc_hits;
    let (_, nested) = vm.walk_refs(BASE + 7 * PAGE, Access::USER_WRITE);
    assert!(vm.m.vcpu.stats.walk_caches.nested_psc_hits > hits);
    // The first walk of a fresh page: its EPT violation and the retry; the retry's nested
    // walk of the data page starts at the EPT page table (one reference).
    assert!(nested <= 2, "{nested} nested references");
}

#[test]
fn a_guest_cr3_load_flushes_combined_mappings_and_keeps_guest_physical_ones() {
    // §29.4.3.1 (operations that invalidate cached mappings): MOV to CR3 invalidates
    // combined mappings for the current VPID and PCID (global ones aside); guest-physical
    // mappings are invalidated only by INVEPT.
    let mut vm = Vm::new();
    vm.access(BASE, Access::USER_WRITE);
    let root = vm.k.root_of(1).expect("root");
    let pcid = vm.m.vcpu.cr3.pcid;
    vm.m.load_cr3(Cr3 { root, pcid, no_flush: false });
    let (tag, ep4ta) = (vm.m.vcpu.tag(), vm.m.vcpu.ep4ta);
    assert!(vm.m.vcpu.psc.as_mut().expect("psc").lookup(Gva::new_truncate(BASE), tag, ep4ta).is_none());
    let hits = vm.m.vcpu.stats.walk_caches.nested_tlb_hits;
    let (guest, nested) = vm.walk_refs(BASE, Access::USER_READ);
    assert_eq!(guest, 4, "a full guest walk after the flush");
    assert_eq!(nested, 0, "every guest-physical mapping survived the CR3 load");
    assert_eq!(vm.m.vcpu.stats.walk_caches.nested_tlb_hits, hits + 5);
}

#[test]
fn invlpg_flushes_the_current_pcids_combined_mappings_only() {
    // §29.4.3.1: INVLPG invalidates combined mappings for the linear address and all
    // combined paging-structure-cache entries of the current VPID and PCID; guest-physical
    // mappings stay.
    let mut vm = Vm::new();
    vm.access(BASE, Access::USER_WRITE);
    vm.m.invlpg(Gva::new_truncate(BASE + 5 * PAGE));
    let tag = vm.m.vcpu.tag();
    let ep4ta = vm.m.vcpu.ep4ta;
    assert!(vm.m.vcpu.psc.as_mut().expect("psc").lookup(Gva::new_truncate(BASE), tag, ep4ta).is_none());
    let (_, nested) = vm.walk_refs(BASE, Access::USER_READ);
    assert_eq!(nested, 0);
}

#[test]
fn combined_mappings_are_tagged_by_the_ept_root() {
    // §29.4.1: combined mappings are associated with the VPID, the PCID and the EP4TA; an
    // entry made under one EPT is of no use under another.
    let mut vm = Vm::new();
    vm.access(BASE, Access::USER_WRITE);
    let tag = vm.m.vcpu.tag();
    let ep4ta = vm.m.vcpu.ep4ta;
    let psc = vm.m.vcpu.psc.as_mut().expect("psc");
    assert!(psc.lookup(Gva::new_truncate(BASE), tag, ep4ta).is_some());
    assert!(psc.lookup(Gva::new_truncate(BASE), tag, ep4ta ^ 0x1000).is_none());
    let gpa =
        vm.m.mode.reference_gpa(Gva::new_truncate(BASE), Access::USER_READ, &vm.m.vcpu).expect("mapped");
    let tlb = vm.m.vcpu.nested_tlb.as_mut().expect("nested TLB");
    assert!(tlb.lookup(ep4ta, gpa, false).is_some());
    assert!(tlb.lookup(ep4ta ^ 0x1000, gpa, false).is_none(), "guest-physical mappings belong to one EPT");
}

#[test]
fn a_write_through_a_guest_physical_mapping_a_read_filled_sets_the_ept_dirty_flag() {
    // §29.3.5 (accessed and dirty flags for EPT): a write to a guest-physical address sets
    // the dirty flag of the EPT leaf; a cached mapping that did not record a dirty leaf
    // cannot complete a write without the walk that sets it.
    let mut vm = Vm::new();
    // The guest kernel's fault handler maps the page without the processor touching it;
    // the first access through the EPT is the read.
    vm.access(BASE + 9 * PAGE, Access::USER_READ);
    let leaf = vm.ept_leaf(BASE + 9 * PAGE);
    assert_eq!(leaf & EptEntry::DIRTY, 0, "a read leaves D clear");
    vm.access(BASE + 9 * PAGE, Access::USER_WRITE);
    assert_ne!(vm.ept_leaf(BASE + 9 * PAGE) & EptEntry::DIRTY, 0, "the write set D");
}

#[test]
fn invept_drops_guest_physical_and_combined_mappings_and_invvpid_keeps_guest_physical_ones() {
    // §29.4.3.1: INVEPT (single-context for this EP4TA, or all-context) invalidates
    // guest-physical and combined mappings; INVVPID invalidates linear and combined mappings
    // of the VPID and leaves guest-physical mappings alone.
    let mut vm = Vm::new();
    vm.access(BASE, Access::USER_WRITE);
    let gpa =
        vm.m.mode.reference_gpa(Gva::new_truncate(BASE), Access::USER_READ, &vm.m.vcpu).expect("mapped");
    let (tag, ep4ta) = (vm.m.vcpu.tag(), vm.m.vcpu.ep4ta);
    let cached = |vm: &mut Vm| {
        let combined =
            vm.m.vcpu.psc.as_mut().expect("psc").lookup(Gva::new_truncate(BASE), tag, ep4ta).is_some();
        let guest_physical =
            vm.m.vcpu.nested_tlb.as_mut().expect("nested TLB").lookup(ep4ta, gpa, false).is_some();
        let tlb = vm.m.vcpu.tlb.lookup(Gva::new_truncate(BASE), false, tag).is_some();
        (combined, guest_physical, tlb)
    };
    assert_eq!(cached(&mut vm), (true, true, true));
    vm.m.vcpu.invvpid_single();
    assert_eq!(cached(&mut vm), (false, true, false), "INVVPID keeps guest-physical mappings");
    vm.walk_refs(BASE, Access::USER_READ);
    vm.m.vcpu.invept_single(ep4ta ^ 0x1000);
    assert_eq!(cached(&mut vm), (true, true, true), "another EPT's INVEPT changes nothing here");
    vm.m.vcpu.invept_single(ep4ta);
    assert_eq!(cached(&mut vm), (false, false, false));
    vm.walk_refs(BASE, Access::USER_READ);
    vm.m.vcpu.invept_all();
    assert_eq!(cached(&mut vm), (false, false, false));
    vm.walk_refs(BASE, Access::USER_READ);
    vm.m.vcpu.invvpid_all();
    assert_eq!(cached(&mut vm), (false, true, false));
    let counted = vm.m.vcpu.stats.invalidations;
    assert_eq!(
        (counted.invept_single, counted.invept_all, counted.invvpid_single, counted.invvpid_all),
        (2, 1, 1, 1)
    );
}
