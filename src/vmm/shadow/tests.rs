//! The shadow MMU held to KVM's behaviour, one rule a test, each naming the KVM function it
//! mirrors. A guest kernel runs on a shadow-paged vCPU; every access's HPA is checked against
//! the reference composition GVA -> GPA -> HVA -> HPA, and the shadow tables are inspected
//! directly.

use super::*;
use crate::addr::Level;
use crate::guest::page_table;
use crate::guest::{FaultResolution, Kernel, KernelConfig, Pid, Platform, Prot, Region};
use crate::paging::{AccessKind, Privilege, Rights};
use crate::sim::Machine;
use crate::tlb::TlbConfig;
use crate::vcpu::PageOutcome;
use crate::workload::Op;

const RAM: u64 = 1 << 30;
const BASE: u64 = 0x1000_0000;
const PAGE: u64 = PAGE_BYTES;
const USER_READ: Access = Access::USER_READ;
const USER_WRITE: Access = Access::USER_WRITE;
const KERNEL_WRITE: Access = Access::new(AccessKind::Write, Privilege::Supervisor);

/// A guest kernel on a shadow-paged vCPU.
struct Vm {
    m: Machine<Shadow>,
    k: Kernel,
}

impl Vm {
    fn new(cpu: CpuState, config: ShadowConfig) -> Self {
        let host = Host::new(RAM, PageSize::Size4K).expect("host");
        let mode = Shadow::new(host, &cpu, config, RAM);
        let mut vcpu = Vcpu::new(cpu, TlbConfig::Hierarchy, 1, Some(crate::tlb::WalkCacheSizes::default()));
        vcpu.hw = mode.hardware_cpu(cpu);
        let mut m = Machine { mode, vcpu };
        let k = Kernel::boot(&mut m, KernelConfig { ram_bytes: RAM }).expect("boot");
        Self { m, k }
    }

    fn default_guest() -> Self {
        Self::new(CpuState::default(), ShadowConfig::default())
    }

    /// Process `pid` with a user region of `len` bytes at `start`.
    fn process(&mut self, pid: Pid, start: u64, len: u64, prot: Prot, page_size: PageSize) {
        self.op(Op::Spawn { pid, anywhere: false });
        let region = Region { start: Gva::new_truncate(start), len, prot, user: true, page_size };
        self.op(Op::Map { pid, region });
    }

    fn op(&mut self, op: Op) {
        crate::sim::run::apply(&mut self.m, &mut self.k, op).expect("operation");
    }

    /// One access by `pid` with the guest's fault handling, as the run loop makes it (a
    /// supervisor access with EFLAGS.AC set, as `copy_to_user` sets it); every translation
    /// is checked against the reference composition. The final outcome.
    fn access(&mut self, pid: Pid, va: u64, access: Access) -> PageOutcome {
        self.k.switch_to(&mut self.m, pid).expect("switch");
        let va = Gva::new_truncate(va);
        let supervisor = !access.is_user();
        self.m.vcpu.cpu.ac = supervisor;
        self.m.vcpu.hw.ac = supervisor;
        let mut retry = false;
        let mut outcome = PageOutcome::Emulated;
        for _ in 0..8 {
            outcome = self.m.vcpu.translate(&mut self.m.mode, va, access, retry);
            if let PageOutcome::Done(hpa) = outcome {
                let gpa = self.m.mode.reference_gpa(va, access, &self.m.vcpu).expect("the guest maps it");
                assert_eq!(Some(hpa), self.m.mode.reference_hpa(gpa), "{va:?} {access:?}");
            }
            let PageOutcome::Fault(_) = outcome else { break };
            match self.k.handle_fault(&mut self.m, pid, va, access).expect("fault handling") {
                FaultResolution::Mapped | FaultResolution::Spurious => retry = true,
                FaultResolution::Segv => break,
            }
        }
        self.m.vcpu.cpu.ac = false;
        self.m.vcpu.hw.ac = false;
        self.assert_no_shadow_entry_maps_a_shadow_table();
        outcome
    }

    fn done(&mut self, pid: Pid, va: u64, access: Access) {
        let outcome = self.access(pid, va, access);
        assert!(matches!(outcome, PageOutcome::Done(_)), "{va:#x} {access:?}: {outcome:?}");
    }

    /// The guest's entry for `va` in `pid`'s tables, and where it is.
    fn guest_entry(&mut self, pid: Pid, va: u64) -> (Gpa, u64) {
        let root = self.k.root_of(pid).expect("process");
        let slot = page_table::lookup(&mut self.m, root, Gva::new_truncate(va), PagingLevels::Four);
        (slot.entry, slot.value)
    }

    /// The shadow entry that maps `va` in the active root (the lowest one the walk reaches).
    fn shadow_entry(&mut self, va: u64) -> (Hpa, u64, Level) {
        let root = self.m.mode.active.expect("a root is loaded");
        let slot =
            builder::lookup(&mut self.m.mode.host.memory, EntryFormat::X86, root, PagingLevels::Four, va);
        (slot.entry, slot.value, slot.level)
    }

    /// The shadow page holding the shadow entry for `va` at `level`.
    fn shadow_page_at(&mut self, va: u64, level: Level) -> Hpa {
        let mut table = self.m.mode.active.expect("root");
        let mut at = PagingLevels::Four.root();
        while at > level {
            let value = self.m.mode.host.memory.read_u64(entry_address(table, va, at));
            assert!(spte::is_link(value, at), "no link at {at:?} for {va:#x}");
            table = Hpa::new(value & Pte::ADDRESS_MASK);
            at = at.next_lower().expect("lower");
        }
        table
    }

    fn stats(&self) -> &crate::sim::stats::ShadowStats {
        &self.m.vcpu.stats.shadow
    }

    /// No shadow entry may give the guest a shadow table as memory, and every link must
    /// lead to a live shadow page (the guest must never reach the VMM's tables).
    fn assert_no_shadow_entry_maps_a_shadow_table(&self) {
        let shadow = &self.m.mode;
        for page in shadow.pages.values() {
            for index in 0..512 {
                let value = shadow.host.memory.read_u64(Hpa::new(page.table.as_u64() + index * 8));
                if value & Pte::PRESENT == 0 {
                    continue;
                }
                let target = Hpa::new(value & Pte::ADDRESS_MASK);
                if spte::is_link(value, page.role.level) {
                    assert!(shadow.pages.contains_key(&target), "a link to a freed table");
                } else {
                    let size = if page.role.level == Level::Pt { PAGE } else { 1 << page.role.level.shift() };
                    let start = target.as_u64() & !(size - 1);
                    assert!(
                        !shadow.pages.keys().any(|t| (start..start + size).contains(&t.as_u64())),
                        "a shadow entry maps shadow table memory"
                    );
                }
            }
        }
    }
}

#[test]
fn pages_are_made_available_before_the_walk_and_roots_are_spared() {
    // KVM's make_mmu_pages_available before FNAME(fetch), kvm_mmu_zap_oldest_mmu_pages
    // (skipping pages with a root count): at the smallest budget a 4-level walk can use,
    // and a few above it, every access is right, the budget is never exceeded, the root in
    // use is never recycled, and no shadow entry ever maps a shadow table.
    for budget in [4, 5, 6, 9, 30] {
        for unsync in [true, false] {
            let mut vm = Vm::new(CpuState::default(), ShadowConfig { max_pages: Some(budget), unsync });
            vm.process(1, BASE, 128 << 20, Prot::RW, PageSize::Size4K);
            for round in 0..3u32 {
                for i in 0..40u64 {
                    // Pages in different page tables (2 MiB apart) and page directories.
                    let va = BASE + (i % 20) * (2 << 20) + (i / 20) * (32 << 20) + u64::from(round) * PAGE;
                    let root = vm.m.mode.active;
                    vm.done(1, va, if i % 3 == 0 { USER_WRITE } else { USER_READ });
                    assert!(vm.m.mode.pages.len() <= budget, "budget {budget}: {}", vm.m.mode.pages.len());
                    if root.is_some() {
                        assert_eq!(vm.m.mode.active, root, "the root in use was recycled");
                    }
                }
                vm.op(Op::Fork { parent: 1, child: 10 + round });
                vm.done(10 + round, BASE, USER_WRITE);
                vm.done(1, BASE + PAGE, USER_WRITE);
            }
            assert!(vm.stats().recycled > 0, "budget {budget}");
            assert!(vm.stats().peak_pages <= budget as u64);
        }
    }
}

#[test]
fn a_cr0_wp_off_kernel_write_maps_the_page_kernel_writable_and_user_reads_map_it_back() {
    // Documentation/virt/kvm/x86/mmu.rst, "Emulating cr0.wp", FNAME(page_fault): the
    // hardware keeps WP set; a guest with WP clear gets spte.u=0, spte.w=1 (and spte.nx=1
    // with SMEP) for a kernel write to a read-only user page, spte.u=1, spte.w=0 for reads.
    let cpu = CpuState { wp: false, ..CpuState::default() };
    let mut vm = Vm::new(cpu, ShadowConfig::default());
    assert!(vm.m.vcpu.hw.wp && vm.m.vcpu.hw.nxe && !vm.m.vcpu.cpu.wp);
    vm.process(1, BASE, 16 * PAGE, Prot { read: true, write: false, exec: false }, PageSize::Size4K);
    vm.done(1, BASE, USER_READ);
    let (_, user, _) = vm.shadow_entry(BASE);
    assert_eq!(user & (Pte::USER | Pte::WRITABLE), Pte::USER);
    vm.done(1, BASE, KERNEL_WRITE);
    let (_, kernel, _) = vm.shadow_entry(BASE);
    assert_eq!(kernel & (Pte::USER | Pte::WRITABLE), Pte::WRITABLE, "{kernel:#x}");
    assert_ne!(kernel & Pte::NO_EXECUTE, 0, "SMEP is on: a converted page must not be executable");
    assert_eq!(vm.stats().wp_emulations, 1);
    vm.done(1, BASE, USER_READ);
    let (_, back, _) = vm.shadow_entry(BASE);
    assert_eq!(back & (Pte::USER | Pte::WRITABLE), Pte::USER);
    // The guest's own tables said read-only all along.
    assert_eq!(vm.guest_entry(1, BASE).1 & Pte::WRITABLE, 0);
    // With WP set, the same write is the guest's fault.
    let mut vm = Vm::default_guest();
    vm.process(1, BASE, 16 * PAGE, Prot { read: true, write: false, exec: false }, PageSize::Size4K);
    vm.done(1, BASE, USER_READ);
    assert!(matches!(vm.access(1, BASE, KERNEL_WRITE), PageOutcome::Fault(_)));
    assert_eq!(vm.stats().wp_emulations, 0);
}

#[test]
fn a_cr0_wp_off_kernel_write_to_a_clean_page_sets_the_guests_dirty_bit() {
    // The hardware runs with WP set, so a supervisor write through the read-only entry a
    // clean guest page gets exits, and the VMM sets D in the guest's entry (were the shadow
    // walk run with the guest's WP=0, the write would go through and D stay clear).
    let cpu = CpuState { wp: false, ..CpuState::default() };
    let mut vm = Vm::new(cpu, ShadowConfig::default());
    vm.process(1, BASE, 16 * PAGE, Prot::RW, PageSize::Size4K);
    vm.done(1, BASE, USER_READ);
    assert_eq!(vm.guest_entry(1, BASE).1 & Pte::DIRTY, 0);
    assert_eq!(vm.shadow_entry(BASE).1 & Pte::WRITABLE, 0, "a clean page is mapped read-only");
    vm.done(1, BASE, KERNEL_WRITE);
    assert_ne!(vm.guest_entry(1, BASE).1 & Pte::DIRTY, 0);
}

/// Process 1 with 2 MiB pages over [BASE, BASE + 4 MiB).
fn large_page_process(vm: &mut Vm) {
    vm.process(1, BASE, 4 << 20, Prot::RW, PageSize::Size2M);
}

#[test]
fn aliases_of_a_large_page_with_different_rights_get_their_own_direct_pages() {
    // kvm_mmu_page_role.access and validate_direct_spte: the split of a guest large page is
    // keyed by its rights, so a read-only alias never shares the writable alias's entries.
    let mut vm = Vm::default_guest();
    large_page_process(&mut vm);
    vm.done(1, BASE, USER_WRITE);
    let (_, pde) = vm.guest_entry(1, BASE);
    assert_ne!(pde & Pte::PAGE_SIZE, 0, "the guest maps a 2 MiB page: {pde:#x}");
    let alias = BASE + (4 << 20);
    vm.k.poke(&mut vm.m, 1, Gva::new_truncate(alias), 2, pde & !Pte::WRITABLE).expect("poke");
    vm.done(1, alias, USER_READ);
    assert!(matches!(vm.access(1, alias, USER_WRITE), PageOutcome::Fault(_)), "the alias is read-only");
    let writable = vm.shadow_page_at(BASE, Level::Pt);
    let read_only = vm.shadow_page_at(alias, Level::Pt);
    assert_ne!(writable, read_only);
    let role = |vm: &Vm, t: Hpa| vm.m.mode.pages[&t].role;
    assert!(role(&vm, writable).direct && role(&vm, read_only).direct);
    assert!(role(&vm, writable).access.writable && !role(&vm, read_only).access.writable);
}

#[test]
fn a_clean_large_page_is_split_read_only_until_the_guest_dirties_it() {
    // FNAME(protect_clean_gpte) on the large entry, then validate_direct_spte: the first
    // write unlinks the read-only split and links one with write access.
    let mut vm = Vm::default_guest();
    large_page_process(&mut vm);
    vm.done(1, BASE, USER_READ);
    assert_ne!(vm.guest_entry(1, BASE).1 & Pte::PAGE_SIZE, 0, "the guest maps a 2 MiB page");
    let clean = vm.shadow_page_at(BASE, Level::Pt);
    assert!(!vm.m.mode.pages[&clean].role.access.writable);
    assert_eq!(vm.shadow_entry(BASE).1 & Pte::WRITABLE, 0);
    let flushes = vm.stats().remote_flushes;
    vm.done(1, BASE, USER_WRITE);
    let dirty = vm.shadow_page_at(BASE, Level::Pt);
    assert_ne!(clean, dirty);
    assert!(vm.m.mode.pages[&dirty].role.access.writable);
    assert_ne!(vm.shadow_entry(BASE).1 & Pte::WRITABLE, 0);
    assert!(vm.stats().remote_flushes > flushes, "the unlinked split may be cached");
}

#[test]
fn shadow_entries_never_carry_the_guests_global_bit() {
    // make_spte never sets G: a guest's global pages are not global to the hardware.
    let mut vm = Vm::default_guest();
    vm.process(1, BASE, 16 * PAGE, Prot::RW, PageSize::Size4K);
    vm.done(1, BASE, USER_WRITE);
    let (_, pte) = vm.guest_entry(1, BASE);
    vm.k.poke(&mut vm.m, 1, Gva::new_truncate(BASE), 1, pte | Pte::GLOBAL).expect("poke");
    vm.done(1, BASE, USER_READ);
    assert_ne!(vm.guest_entry(1, BASE).1 & Pte::GLOBAL, 0);
    assert_eq!(vm.shadow_entry(BASE).1 & Pte::GLOBAL, 0);
}

#[test]
fn a_guest_table_write_that_zaps_a_present_entry_flushes_the_tlb() {
    // kvm_mmu_track_write: a present shadow entry zapped means kvm_flush_remote_tlbs, which
    // drops every translation of the VM, not only the one written.
    let mut vm = Vm::new(CpuState::default(), ShadowConfig { unsync: false, ..ShadowConfig::default() });
    vm.process(1, BASE, 16 * PAGE, Prot::RW, PageSize::Size4K);
    vm.done(1, BASE, USER_WRITE);
    vm.done(1, BASE + PAGE, USER_WRITE);
    vm.done(1, BASE, USER_READ);
    let misses = vm.m.vcpu.tlb.stats().misses;
    vm.done(1, BASE, USER_READ);
    assert_eq!(vm.m.vcpu.tlb.stats().misses, misses, "a TLB hit before the write");
    let flushes = vm.stats().remote_flushes;
    let (gpte, value) = vm.guest_entry(1, BASE + PAGE);
    vm.m.write_phys(gpte, value & !Pte::WRITABLE);
    assert_eq!(vm.stats().remote_flushes, flushes + 1);
    vm.done(1, BASE, USER_READ);
    assert_eq!(vm.m.vcpu.tlb.stats().misses, misses + 1, "the flush dropped the other page too");
    // Writing an entry whose shadow entry is not present needs no flush.
    let (gpte, value) = vm.guest_entry(1, BASE + 5 * PAGE);
    vm.m.write_phys(gpte, value);
    assert_eq!(vm.stats().remote_flushes, flushes + 1);
}

#[test]
fn a_fault_fills_the_accessed_neighbours_of_its_group_of_eight() {
    // FNAME(pte_prefetch) / FNAME(prefetch_gpte): the aligned group of 8 guest entries
    // around the fault; present and accessed ones are mapped, the first that is not ends it.
    let mut vm = Vm::default_guest();
    vm.process(1, BASE, 64 * PAGE, Prot::RW, PageSize::Size4K);
    for i in 0..8 {
        vm.done(1, BASE + i * PAGE, USER_WRITE);
    }
    let leaf = vm.shadow_page_at(BASE, Level::Pt);
    let mut stats = Stats::default();
    vm.m.mode.zap_page(leaf, &mut stats);
    vm.m.mode.apply_flush(&mut vm.m.vcpu);
    let (exits, prefetched) = (vm.m.vcpu.stats.vm_exits.page_fault, vm.stats().prefetched);
    vm.done(1, BASE, USER_READ);
    assert_eq!(vm.stats().prefetched, prefetched + 7);
    for i in 1..8 {
        vm.done(1, BASE + i * PAGE, USER_WRITE);
    }
    assert_eq!(vm.m.vcpu.stats.vm_exits.page_fault, exits + 1, "one exit for the whole group");
    // A guest entry without A stops the prefetch where it stands.
    let (gpte, value) = vm.guest_entry(1, BASE + 3 * PAGE);
    vm.m.write_phys(gpte, value & !Pte::ACCESSED);
    vm.m.invlpg(Gva::new_truncate(BASE + 3 * PAGE));
    let leaf = vm.shadow_page_at(BASE, Level::Pt);
    vm.m.mode.zap_page(leaf, &mut stats);
    vm.m.mode.apply_flush(&mut vm.m.vcpu);
    let prefetched = vm.stats().prefetched;
    vm.done(1, BASE, USER_READ);
    assert_eq!(vm.stats().prefetched, prefetched + 2, "entries 1 and 2, then entry 3 has A clear");
}

#[test]
fn invlpg_brings_an_out_of_sync_entry_up_to_date_in_place() {
    // kvm_mmu_invlpg -> __kvm_mmu_invalidate_addr -> FNAME(sync_spte): the entry of an
    // out-of-sync page is rewritten from the guest's, not zapped; in-sync pages are current.
    let mut vm = Vm::default_guest();
    vm.process(1, BASE, 16 * PAGE, Prot::RW, PageSize::Size4K);
    vm.done(1, BASE, USER_WRITE);
    vm.done(1, BASE + PAGE, USER_WRITE);
    let (gpte, value) = vm.guest_entry(1, BASE);
    vm.m.write_phys(gpte, value & !Pte::WRITABLE);
    let leaf = vm.shadow_page_at(BASE, Level::Pt);
    assert!(vm.m.mode.pages[&leaf].unsync, "the guest's write let the table out of sync");
    assert_ne!(vm.shadow_entry(BASE).1 & Pte::WRITABLE, 0, "stale until the guest flushes");
    vm.m.invlpg(Gva::new_truncate(BASE));
    let (_, after, level) = vm.shadow_entry(BASE);
    assert_eq!(level, Level::Pt);
    assert_ne!(after & Pte::PRESENT, 0, "updated in place, not zapped");
    assert_eq!(after & Pte::WRITABLE, 0);
    // An in-sync page's entry is left as it is.
    let mut vm = Vm::new(CpuState::default(), ShadowConfig { unsync: false, ..ShadowConfig::default() });
    vm.process(1, BASE, 16 * PAGE, Prot::RW, PageSize::Size4K);
    vm.done(1, BASE, USER_WRITE);
    let before = vm.shadow_entry(BASE).1;
    vm.m.invlpg(Gva::new_truncate(BASE));
    assert_eq!(vm.shadow_entry(BASE).1, before);
}

#[test]
fn a_flushing_cr3_load_resyncs_only_the_pages_the_new_root_reaches() {
    // kvm_mmu_sync_roots -> mmu_sync_children on the new root, found through the
    // unsync_child_bitmap marks (kvm_mmu_mark_parents_unsync).
    let mut vm = Vm::default_guest();
    for pid in [1, 2] {
        vm.process(pid, BASE, 16 * PAGE, Prot::RW, PageSize::Size4K);
        vm.done(pid, BASE, USER_WRITE);
    }
    let mut leaves = Vec::new();
    for pid in [1, 2] {
        vm.k.switch_to(&mut vm.m, pid).expect("switch");
        let (gpte, value) = vm.guest_entry(pid, BASE + PAGE);
        vm.m.write_phys(gpte, value);
        leaves.push(vm.shadow_page_at(BASE, Level::Pt));
    }
    assert!(leaves.iter().all(|t| vm.m.mode.pages[t].unsync));
    let resynced = vm.stats().resynced;
    let root = vm.k.root_of(1).expect("root");
    vm.m.load_cr3(Cr3 { root, pcid: 1, no_flush: false });
    assert!(!vm.m.mode.pages[&leaves[0]].unsync, "process 1's table is in sync again");
    assert!(vm.m.mode.pages[&leaves[1]].unsync, "process 2's is not reachable from this root");
    assert_eq!(vm.stats().resynced, resynced + 1);
    assert!(vm.m.mode.is_protected(vm.m.mode.pages[&leaves[0]].gfn));
}

#[test]
fn relinking_an_out_of_sync_page_brings_it_up_to_date() {
    // kvm_mmu_find_shadow_page: a found out-of-sync page is synced by kvm_sync_page and
    // stays out of sync.
    let mut vm = Vm::default_guest();
    vm.process(1, BASE, 16 * PAGE, Prot::RW, PageSize::Size4K);
    vm.done(1, BASE, USER_WRITE);
    vm.done(1, BASE + PAGE, USER_WRITE);
    let (gpte, value) = vm.guest_entry(1, BASE + PAGE);
    vm.m.write_phys(gpte, value & !Pte::WRITABLE);
    let leaf = vm.shadow_page_at(BASE, Level::Pt);
    assert!(vm.m.mode.pages[&leaf].unsync);
    // Unlink it from its page directory: the next fault finds it through the hash.
    let pd = vm.shadow_page_at(BASE, Level::Pd);
    let link = entry_address(pd, BASE, Level::Pd);
    vm.m.mode.zap_entry(link, Level::Pd);
    vm.m.mode.pending_flush = true;
    vm.m.mode.apply_flush(&mut vm.m.vcpu);
    let resynced = vm.stats().resynced;
    vm.done(1, BASE, USER_READ);
    assert_eq!(vm.shadow_page_at(BASE, Level::Pt), leaf, "the same page, linked again");
    assert_eq!(vm.stats().resynced, resynced + 1);
    assert!(vm.m.mode.pages[&leaf].unsync);
    assert_eq!(vm.shadow_entry(BASE + PAGE).1 & Pte::WRITABLE, 0, "brought up to date");
}

#[test]
fn a_write_through_a_mapping_of_an_upper_level_guest_table_is_emulated() {
    // RET_PF_EMULATE: mmu_try_to_unsync_pages refuses write access to a write-tracked
    // (upper-level) table, so the faulting write is emulated and the frame stays protected.
    let mut vm = Vm::default_guest();
    vm.process(1, BASE, 16 * PAGE, Prot::RW, PageSize::Size4K);
    vm.done(1, BASE, USER_WRITE);
    // The page directory the walk for BASE passes through.
    let root = vm.k.root_of(1).expect("root");
    let pml4e = vm.m.mode.read_guest_entry(entry_address(root, BASE, Level::Pml4));
    let pdpte =
        vm.m.mode.read_guest_entry(entry_address(Gpa::new(pml4e & Pte::ADDRESS_MASK), BASE, Level::Pdpt));
    let pd_frame = Gpa::new(pdpte & Pte::ADDRESS_MASK);
    assert!(vm.m.mode.shadowed.get(&pd_frame.frame()).is_some_and(|g| g.upper > 0));
    let window = BASE + 8 * PAGE;
    let pte = pd_frame.as_u64() | Pte::PRESENT | Pte::WRITABLE | Pte::USER | Pte::ACCESSED | Pte::DIRTY;
    vm.k.poke(&mut vm.m, 1, Gva::new_truncate(window), 1, pte).expect("poke");
    let emulated = vm.stats().emulated_writes;
    let outcome = vm.access(1, window + 8 * 511, USER_WRITE);
    assert_eq!(outcome, PageOutcome::Emulated);
    assert_eq!(vm.stats().emulated_writes, emulated + 1);
    assert!(vm.m.mode.is_protected(pd_frame.frame()));
    assert_eq!(vm.shadow_entry(window).1 & Pte::WRITABLE, 0);
}

#[test]
fn write_flooding_zaps_upper_level_pages_and_leaf_pages_only_without_unsync() {
    // detect_write_flooding skips level-1 pages, which can go out of sync instead, and zaps
    // an upper-level page on the third write with no use in between; with unsync off a leaf
    // page floods too (as every page did before KVM had unsync). detect_write_misaligned
    // zaps any page.
    for unsync in [true, false] {
        let mut vm = Vm::new(CpuState::default(), ShadowConfig { unsync, ..ShadowConfig::default() });
        vm.process(1, BASE, 16 * PAGE, Prot::RW, PageSize::Size4K);
        vm.done(1, BASE, USER_WRITE);
        let leaf = vm.shadow_page_at(BASE, Level::Pt);
        let (gpte, _) = vm.guest_entry(1, BASE + 9 * PAGE);
        let mut stats = Stats::default();
        for _ in 0..10 {
            vm.m.mode.emulated_write(gpte, &mut stats);
        }
        assert_eq!(vm.m.mode.pages.contains_key(&leaf), unsync, "unsync {unsync}");
        assert_eq!(stats.shadow.flooded, u64::from(!unsync));
        vm.m.mode.apply_flush(&mut vm.m.vcpu);
        vm.done(1, BASE, USER_READ);
        let pd = vm.shadow_page_at(BASE, Level::Pd);
        let pd_gfn = vm.m.mode.pages[&pd].gfn;
        let unused = Gpa::new(pd_gfn.start().as_u64() + 8 * 300);
        vm.m.write_phys(unused, 0);
        vm.m.write_phys(unused, 0);
        assert!(vm.m.mode.pages.contains_key(&pd));
        vm.m.write_phys(unused, 0);
        assert!(!vm.m.mode.pages.contains_key(&pd), "the third write with no use floods it");
        vm.done(1, BASE, USER_READ);
        let leaf = vm.shadow_page_at(BASE, Level::Pt);
        vm.m.mode.emulated_write(Gpa::new(gpte.as_u64() + 4), &mut stats);
        assert!(!vm.m.mode.pages.contains_key(&leaf), "a misaligned write zaps even a leaf page");
    }
}

#[test]
fn shadow_defaults_are_kvms() {
    let config = ShadowConfig::default();
    assert!(config.unsync);
    assert_eq!(config.budget(64 << 30), recycle::default_budget(64 << 30));
    let access = Rights { writable: true, user: true, no_execute: false };
    let bits = RoleBits::of(&CpuState::default());
    assert_ne!(
        bits.role(Level::Pt, false, access),
        bits.role(Level::Pt, false, Rights { writable: false, ..access })
    );
}
