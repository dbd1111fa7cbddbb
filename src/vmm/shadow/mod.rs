//! Software shadow paging: the VMM merges the guest's tables (GVA -> GPA) with its own
//! mappings (GPA -> HVA -> HPA) into shadow tables (GVA -> HPA) that the real CR3 points to.
//!
//! The design is Linux KVM's shadow MMU (arch/x86/kvm/mmu/mmu.c, paging_tmpl.h, spte.c;
//! Documentation/virt/kvm/x86/mmu.rst), one concern a file as KVM separates them:
//! - [`page`]: shadow pages and their roles; [`pages`]: the hash keyed by (guest frame, role),
//!   write protection of shadowed guest frames, zapping;
//! - [`fault`]: the page-fault exit — a hidden fault is fixed from the guest's tables, a true
//!   one injected with the guest's error code; the guest's A and D bits are emulated (a clean
//!   guest page gets a read-only shadow entry so its first write faults and sets D), and a
//!   CR0.WP=0 guest's supervisor writes to read-only pages are emulated as KVM does;
//! - [`write_track`]: a guest write to a write-protected table exits and is emulated (the
//!   entry written is zapped, and the TLB flushed if it was present); repeated writes to an
//!   upper-level table with no use in between (write flooding) or a misaligned write zap the
//!   shadow page;
//! - [`sync`]: leaf shadow pages go out of sync when the guest writes their frame (on by
//!   default, as in KVM) and are brought back at the guest's flush points: the pages the
//!   new root reaches on a flushing CR3 load, the one entry on INVLPG;
//! - [`pte_prefetch`]: the neighbours of a faulting entry are filled at the same time;
//! - [`recycle`]: shadow pages live within a budget (by default KVM's, from guest memory);
//!   pages are made available before a fault's walk, oldest first, never a root in use.
//!
//! CR3 loads exit; the current root and three previous ones are kept for fast switches.
//!
//! Invalidation contract: whenever the VMM zaps a shadow page or entry the CPU may have
//! cached, or removes rights from one, it flushes the vCPU's TLB and paging-structure caches
//! before the guest runs (KVM's `kvm_flush_remote_tlbs`, counted as `remote_flushes`).

pub mod fault;
pub mod page;
pub mod pages;
pub mod pte_prefetch;
pub mod recycle;
pub mod rmap;
pub mod spte;
pub mod sync;
#[cfg(test)]
mod tests;
pub mod write_track;

use std::cell::Cell;
use std::collections::VecDeque;

use rustc_hash::FxHashMap;

use crate::addr::{Gfn, Gpa, Gva, Hpa, PageSize, PagingLevels, PAGE_BYTES};
use crate::host::{GuestMemory, Host};
use crate::memory::{OutOfFrames, Touches};
use crate::paging::builder::{self, entry_address, EntryFormat};
use crate::paging::{Access, AdPolicy, Counted, CpuState, Pte, Traced, WalkOutcome};
use crate::sim::explain::{Explanation, WalkRef};
use crate::sim::stats::{PageTableBytes, Stats};
use crate::vcpu::{Cr3, Mapping, Resolved, Vcpu};
use crate::vmm::{guest_walk_end, Mode};

use fault::FaultFix;
pub use page::{Role, RoleBits, ShadowPage};
use pages::GfnShadows;
use rmap::ReverseMap;

/// Recent roots kept: the current one and 3 previous (KVM_MMU_NUM_PREV_ROOTS).
const ROOT_CACHE: usize = 4;
/// How many page-fault exits one translation may take before the VMM gives up on it.
const MAX_FAULTS_PER_WALK: u32 = 8;

/// Shadow-paging options.
#[derive(Clone, Copy, PartialEq, Eq, Debug, serde::Serialize)]
pub struct ShadowConfig {
    /// The most shadow pages in use at once; `None` for KVM's default (2 % of guest memory's
    /// pages, at least 64).
    pub max_pages: Option<usize>,
    /// Let leaf shadow pages go out of sync when the guest writes them, as KVM does.
    pub unsync: bool,
}

impl Default for ShadowConfig {
    /// KVM's behaviour: the default budget, unsync on.
    fn default() -> Self {
        Self { max_pages: None, unsync: true }
    }
}

impl ShadowConfig {
    /// The budget for a guest with `guest_ram` bytes of memory.
    pub fn budget(&self, guest_ram: u64) -> usize {
        self.max_pages.unwrap_or_else(|| recycle::default_budget(guest_ram))
    }
}

/// A VM under shadow paging.
pub struct Shadow {
    host: Host,
    config: ShadowConfig,
    /// The most shadow pages at once.
    budget: usize,
    levels: PagingLevels,
    /// The guest's paging state (the VMM's software walks and resyncs follow it).
    guest_cpu: CpuState,
    /// The bits of every role that come from the guest's control registers.
    role_bits: RoleBits,
    pages: FxHashMap<Hpa, ShadowPage>,
    index: FxHashMap<(Gfn, Role), Hpa>,
    /// Indirect shadow pages of each shadowed guest frame.
    shadowed: FxHashMap<Gfn, GfnShadows>,
    /// Shadowed guest frames in each large guest page (size, first frame): no large shadow
    /// entry may map it.
    large_disallowed: FxHashMap<(PageSize, Gfn), u32>,
    /// Leaf shadow entries that map each guest frame (entries may have gone stale).
    rmap: ReverseMap,
    /// Shadow pages oldest first (entries of zapped pages are skipped).
    order: VecDeque<Hpa>,
    /// Recent roots by guest CR3 (root, PCID), the current one first.
    roots: VecDeque<(Gpa, u16, Hpa)>,
    active: Option<Hpa>,
    pending_flush: bool,
    /// Page-fault exits counted at the last prefetch: while the VMM is not filling entries,
    /// prefetching skips the guest's tables (it does not read them).
    exits_at_prefetch: Cell<u64>,
}

impl Shadow {
    /// A VM with no shadow pages yet, for a guest with paging state `cpu` and `guest_ram`
    /// bytes of memory.
    pub fn new(host: Host, cpu: &CpuState, config: ShadowConfig, guest_ram: u64) -> Self {
        Self {
            host,
            config,
            budget: config.budget(guest_ram).max(recycle::min_budget(cpu.levels)),
            levels: cpu.levels,
            guest_cpu: *cpu,
            role_bits: RoleBits::of(cpu),
            pages: FxHashMap::default(),
            index: FxHashMap::default(),
            shadowed: FxHashMap::default(),
            large_disallowed: FxHashMap::default(),
            rmap: ReverseMap::default(),
            order: VecDeque::new(),
            roots: VecDeque::new(),
            active: None,
            pending_flush: false,
            exits_at_prefetch: Cell::new(0),
        }
    }

    /// The host.
    pub fn host(&mut self) -> &mut Host {
        &mut self.host
    }

    /// The shadow root the real CR3 holds, if one is loaded.
    pub fn active_root(&self) -> Option<Hpa> {
        self.active
    }

    /// The shadow page held in `table`, if there is one.
    pub fn page(&self, table: Hpa) -> Option<&ShadowPage> {
        self.pages.get(&table)
    }

    /// Every shadow page, in no particular order.
    pub fn pages(&self) -> impl Iterator<Item = &ShadowPage> {
        self.pages.values()
    }

    /// Carries out a TLB flush the VMM's changes require, before the guest runs again.
    fn apply_flush(&mut self, vcpu: &mut Vcpu) {
        if self.pending_flush {
            // KVM flushes a VPID-tagged shadow-paged guest with INVVPID single-context.
            vcpu.invvpid_single();
            vcpu.stats.shadow.remote_flushes += 1;
            self.pending_flush = false;
        }
    }

    fn note_pages(&self, stats: &mut Stats) {
        let pages = self.pages.len() as u64;
        stats.shadow.pages = pages;
        stats.shadow.peak_pages = stats.shadow.peak_pages.max(pages);
        stats.shadow.max_pages = self.budget as u64;
    }

    /// Points the real CR3 at the shadow root for `cr3`: from the cache of recent roots, or
    /// found or built through the hash, when it is also brought up to date (KVM's
    /// `kvm_mmu_new_pgd` / `fast_pgd_switch`, and `kvm_mmu_load`, which syncs the roots).
    fn load_root(&mut self, cr3: Cr3, stats: &mut Stats) -> Result<Hpa, OutOfFrames> {
        if let Some(at) = self.roots.iter().position(|&(root, pcid, _)| root == cr3.root && pcid == cr3.pcid)
        {
            if let Some(entry) = self.roots.remove(at) {
                stats.shadow.root_cache_hits += 1;
                self.roots.push_front(entry);
                self.active = Some(entry.2);
                // kvm_mmu_new_pgd clears the new root's write-flooding count.
                self.used(entry.2);
                return Ok(entry.2);
            }
        }
        stats.shadow.root_cache_misses += 1;
        // Until the new root stands, no root is loaded: a failure leaves none (KVM fails the
        // entry), never the previous process's.
        self.active = None;
        self.make_pages_available(stats);
        let role = self.role_bits.role(self.levels.root(), false, crate::paging::Rights::ALL);
        let (table, _) = self.get_page(cr3.root.frame(), role, stats)?;
        self.roots.push_front((cr3.root, cr3.pcid, table));
        self.roots.truncate(ROOT_CACHE);
        self.active = Some(table);
        self.sync_children(table, stats);
        Ok(table)
    }
}

impl Mode for Shadow {
    fn name(&self) -> &'static str {
        "shadow"
    }

    fn prefetch(&self, vas: &[Gva], _found: &mut [Option<Hpa>], _near: &[Hpa], vcpu: &Vcpu) {
        // The shadow walk's last entry; and, while walks end in page-fault exits, the guest's,
        // which the VMM reads to fill it. Over tables already filled, reaching the guest's
        // entries (through the host's tables) would cost more than the walks it serves.
        let exits = vcpu.stats.vm_exits.page_fault;
        let filling = self.exits_at_prefetch.replace(exits) != exits;
        let memory = &self.host.memory;
        let shadow_read = |hpa| Some(memory.read_u64(hpa));
        let mut touches = Touches::new();
        for &va in vas {
            if let Some(root) = self.active {
                let levels = vcpu.cpu.levels;
                touches.push(builder::last_entry(shadow_read, EntryFormat::X86, root, levels, va.as_u64()));
            }
            if filling {
                touches.push(guest_walk_end(memory, |gpa| self.host.peek_backing(gpa), vcpu, va));
            }
        }
        memory.touch(&touches);
    }

    fn read_guest(&mut self, gpa: Gpa, _vcpu: &mut Vcpu) -> u64 {
        match self.host.back(gpa) {
            Ok((hpa, _)) => self.host.memory.read_u64(hpa),
            Err(_) => 0,
        }
    }

    fn host_migrate(&mut self, gpa: Gpa, vcpu: &mut Vcpu) -> bool {
        let Some((old, _)) = self.host.migrate(gpa) else { return false };
        // KVM's MMU notifier: every shadow entry that maps the old page is zapped through the
        // reverse map (kvm_unmap_rmap), then a remote flush.
        let gfn = gpa.frame();
        for entry in self.rmap.take(gfn) {
            if self.live_entry_level(entry) != Some(crate::addr::Level::Pt) {
                continue;
            }
            let value = self.host.memory.read_u64(entry);
            if value & Pte::PRESENT != 0 && value & Pte::ADDRESS_MASK == old.as_u64() {
                self.host.memory.write_u64(entry, 0);
                self.pending_flush = true;
            }
        }
        self.apply_flush(vcpu);
        true
    }

    fn hardware_cpu(&self, guest: CpuState) -> CpuState {
        // KVM runs a shadow-paged guest with CR0.WP set, so write protection of the guest's
        // tables holds against the guest kernel too, and with EFER.NXE set; the guest's own
        // values are emulated in the shadow entries (mmu.rst, "Emulating cr0.wp").
        CpuState { wp: true, nxe: true, ..guest }
    }

    fn write_guest(&mut self, gpa: Gpa, value: u64, vcpu: &mut Vcpu) {
        if self.is_protected(gpa.frame()) {
            self.protected_store(gpa, &mut vcpu.stats);
        }
        if let Ok((hpa, _)) = self.host.back(gpa) {
            self.host.memory.write_u64(hpa, value);
        }
        self.apply_flush(vcpu);
    }

    fn zero_guest_frame(&mut self, gfn: Gfn, vcpu: &mut Vcpu) {
        // The guest clears the frame a word at a time: while it stays protected, each store
        // exits as any other does (the first lets a leaf table out of sync; an upper-level
        // one is zapped as a flood by the third).
        for offset in (0..PAGE_BYTES).step_by(8) {
            if !self.is_protected(gfn) {
                break;
            }
            self.protected_store(Gpa::new(gfn.start().as_u64() + offset), &mut vcpu.stats);
        }
        if let Ok((hpa, _)) = self.host.back(gfn.start()) {
            self.host.memory.zero_frame(hpa.frame());
        }
        self.apply_flush(vcpu);
    }

    fn on_cr3_load(&mut self, cr3: Cr3, vcpu: &mut Vcpu) {
        vcpu.stats.vm_exits.total += 1;
        vcpu.stats.vm_exits.cr3_write += 1;
        let stats = &mut vcpu.stats;
        if let Ok(root) = self.load_root(cr3, stats) {
            let flush = !cr3.no_flush || !vcpu.cpu.pcide;
            if flush {
                // A flushing load: the out-of-sync pages the new root reaches are brought
                // back (KVM_REQ_MMU_SYNC), and cached roots of the same PCID are given up
                // (kvm_invalidate_pcid).
                self.sync_children(root, stats);
                if vcpu.cpu.pcide {
                    self.roots.retain(|&(_, pcid, r)| r == root || pcid != cr3.pcid);
                }
            }
        }
        self.compact_order();
        self.apply_flush(vcpu);
    }

    fn on_invlpg(&mut self, va: Gva, vcpu: &mut Vcpu) {
        vcpu.stats.vm_exits.total += 1;
        vcpu.stats.vm_exits.invlpg += 1;
        // In every root KVM holds (kvm_mmu_invlpg, __kvm_mmu_invalidate_addr): down the path
        // of `va` while the page has out-of-sync pages below it; an out-of-sync page's entry
        // for `va` is brought up to date from the guest's. In-sync pages are current already.
        let mut roots: Vec<Hpa> = self.roots.iter().map(|&(_, _, root)| root).collect();
        if let Some(active) = self.active {
            if !roots.contains(&active) {
                roots.push(active);
            }
        }
        for root in roots {
            let mut table = root;
            let mut level = self.levels.root();
            while let Some(page) = self.pages.get(&table) {
                let (unsync, children) = (page.unsync, page.unsync_children);
                let entry = entry_address(table, va.as_u64(), level);
                if unsync {
                    let index = (entry.as_u64() & (PAGE_BYTES - 1)) / 8;
                    if self.sync_entry(table, index, &mut vcpu.stats) {
                        self.pending_flush = true;
                    }
                }
                if children == 0 {
                    break;
                }
                let value = self.host.memory.read_u64(entry);
                let Some(lower) = level.next_lower() else { break };
                if !spte::is_link(value, level) {
                    break;
                }
                table = Hpa::new(value & Pte::ADDRESS_MASK);
                level = lower;
            }
        }
        self.apply_flush(vcpu);
    }

    fn vm_host(&self) -> Option<&Host> {
        Some(&self.host)
    }

    fn vm_host_mut(&mut self) -> Option<&mut Host> {
        Some(&mut self.host)
    }

    fn write_protected(&self, gpa: Gpa) -> bool {
        self.is_protected(gpa.frame())
    }

    fn explain(&mut self, va: Gva, access: Access, vcpu: &mut Vcpu) -> Explanation {
        let mut explanation = Explanation::new("shadow", va, access);
        for _ in 0..MAX_FAULTS_PER_WALK {
            let root = match self.active {
                Some(root) => root,
                None => match self.load_root(vcpu.cr3, &mut vcpu.stats) {
                    Ok(root) => root,
                    Err(_) => break,
                },
            };
            let mut traced = Traced::new(&mut self.host.memory);
            let outcome = crate::paging::walk(&mut traced, root, va, access, &vcpu.hw, AdPolicy::Leave);
            explanation.refs = traced
                .reads
                .iter()
                .map(|r| WalkRef {
                    table: "shadow",
                    level: r.level.number(),
                    gpa: None,
                    hpa: r.addr,
                    entry: r.value,
                })
                .collect();
            match outcome {
                WalkOutcome::Mapped(t) => {
                    explanation.hpa = Some(t.address(va));
                    explanation.gpa = self.reference_gpa(va, access, vcpu);
                    break;
                }
                WalkOutcome::PageFault(_) => {
                    // The exit, and the VMM's own walk of the guest tables that follows it.
                    let mut memory = GuestMemory::observer(&mut self.host);
                    let mut guest = Traced::new(&mut memory);
                    let _ = crate::paging::walk(
                        &mut guest,
                        vcpu.cr3.root,
                        va,
                        access,
                        &vcpu.cpu,
                        AdPolicy::Leave,
                    );
                    let reads = guest.reads;
                    explanation.vmm_refs = reads
                        .iter()
                        .filter_map(|r| {
                            let (hpa, _) = self.host.backing_of(r.addr)?;
                            Some(WalkRef {
                                table: "guest",
                                level: r.level.number(),
                                gpa: Some(r.addr),
                                hpa,
                                entry: r.value,
                            })
                        })
                        .collect();
                    match self.page_fault_exit(va, access, vcpu) {
                        FaultFix::Fixed => {}
                        FaultFix::Inject(fault) => {
                            explanation.fault = Some(fault.code);
                            break;
                        }
                        FaultFix::Emulated => break,
                    }
                }
                WalkOutcome::NonCanonical | WalkOutcome::Memory(_) => break,
            }
        }
        explanation
    }

    fn translate(&mut self, va: Gva, access: Access, vcpu: &mut Vcpu) -> Resolved {
        for attempt in 0..MAX_FAULTS_PER_WALK {
            if attempt > 0 {
                vcpu.stats.walks += 1;
            }
            let root = match self.active {
                Some(root) => root,
                None => match self.load_root(vcpu.cr3, &mut vcpu.stats) {
                    Ok(root) => root,
                    Err(_) => return Resolved::Emulated,
                },
            };
            self.apply_flush(vcpu);
            let mut memory = Counted::new(&mut self.host.memory);
            let outcome = vcpu.cached_walk(&mut memory, root, va, access);
            let (reads, writes) = (memory.reads, memory.writes);
            vcpu.stats.record_walk(reads, writes);
            match outcome {
                WalkOutcome::Mapped(t) => {
                    return Resolved::Mapped(Mapping {
                        page: t.page,
                        size: t.size,
                        rights: t.rights,
                        global: t.global && vcpu.cpu.pge,
                        dirty: t.dirty,
                    })
                }
                WalkOutcome::NonCanonical => return Resolved::NonCanonical,
                WalkOutcome::Memory(never) => match never {},
                WalkOutcome::PageFault(_) => match self.page_fault_exit(va, access, vcpu) {
                    FaultFix::Fixed => {}
                    FaultFix::Inject(fault) => return Resolved::Fault(fault),
                    FaultFix::Emulated => return Resolved::Emulated,
                },
            }
        }
        Resolved::Emulated
    }

    fn note_state(&self, stats: &mut Stats) {
        self.note_pages(stats);
    }

    fn page_table_bytes(&self) -> PageTableBytes {
        PageTableBytes { guest: 0, shadow: self.pages.len() as u64 * PAGE_BYTES, ept: 0 }
    }
}
