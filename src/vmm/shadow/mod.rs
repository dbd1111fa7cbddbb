//! Software shadow paging: the VMM merges the guest's tables (GVA -> GPA) with its own
//! mappings (GPA -> HVA -> HPA) into shadow tables (GVA -> HPA) that the real CR3 points to.
//!
//! The design follows the production shadow MMU of Linux KVM:
//! - shadow pages are found through a hash keyed by (guest frame, role);
//! - every guest frame that holds a shadowed guest table is write-protected, so a guest write
//!   to it exits (`pt_write`); the VMM emulates the write and zaps the affected shadow entry;
//!   repeated writes with no use in between (write flooding) or a misaligned write zap the
//!   shadow page and drop the protection;
//! - CR3 loads exit; a small cache of recent roots (current + 3) makes process switches cheap;
//! - a page fault exits; a hidden fault (the guest tables allow the access) is fixed from the
//!   guest tables and never seen by the guest, a true fault is injected with the guest's error
//!   code; the guest's A and D bits are emulated, and a clean guest page gets a read-only
//!   shadow entry so the first write faults and sets D;
//! - INVLPG exits and zaps the shadow entry;
//! - shadow pages live in host frames within a budget; the oldest are recycled beyond it.
//!
//! Invalidation contract: whenever the VMM zaps a shadow page or removes write access from a
//! shadow entry, it flushes the vCPU's TLB and paging-structure caches before the guest runs.

pub mod page;
pub mod rmap;

use std::cell::Cell;
use std::collections::VecDeque;

use rustc_hash::FxHashMap;
use smallvec::SmallVec;

use crate::addr::{Gfn, Gpa, Gva, Hpa, Level, PageSize, PagingLevels, PAGE_BYTES};
use crate::host::{GuestMemory, Host};
use crate::memory::{OutOfFrames, Touches};
use crate::paging::builder::{self, entry_address, EntryFormat};
use crate::paging::Traced;
use crate::paging::{
    walk_from, Access, AdPolicy, Counted, PageFault, Pte, Rights, TableStep, WalkOutcome, WalkStart,
};
use crate::sim::explain::{Explanation, WalkRef};
use crate::sim::stats::{PageTableBytes, Stats};
use crate::vcpu::{Cr3, Mapping, Resolved, Vcpu};
use crate::vmm::{guest_walk_end, Mode};

pub use page::{Role, ShadowPage};
use rmap::ReverseMap;

/// Writes to a shadowed table with no use in between before the page is zapped.
const FLOOD_WRITES: u8 = 3;
/// Recent roots kept besides the hash (KVM keeps the current root and 3 previous ones).
const ROOT_CACHE: usize = 4;
/// How many page-fault exits one translation may take before the VMM gives up on it.
const MAX_FAULTS_PER_WALK: u32 = 8;

/// The shadow pages of one guest frame: almost always one, kept inline so the frame's entry
/// in the hash holds it (a guest PTE write reads it without following a pointer).
type Tables = SmallVec<[Hpa; 1]>;

/// Shadow-paging options.
#[derive(Clone, Copy, PartialEq, Eq, Debug, serde::Serialize)]
pub struct ShadowConfig {
    /// The most shadow pages in use at once; the oldest are recycled beyond it.
    pub max_pages: usize,
    /// Let leaf shadow pages go out of sync instead of trapping every guest PTE write.
    pub unsync: bool,
}

impl Default for ShadowConfig {
    /// 65,536 pages (256 MiB of shadow tables).
    fn default() -> Self {
        Self { max_pages: 1 << 16, unsync: false }
    }
}

/// What the VMM did about a page-fault exit.
enum FaultFix {
    /// The shadow tables now allow the access: resume.
    Fixed,
    /// A true guest fault: inject it.
    Inject(PageFault),
    /// The access was emulated (or cannot be mapped).
    Emulated,
}

/// A VM under shadow paging.
pub struct Shadow {
    host: Host,
    config: ShadowConfig,
    levels: PagingLevels,
    nxe: bool,
    pages: FxHashMap<Hpa, ShadowPage>,
    index: FxHashMap<(Gfn, Role), Hpa>,
    /// Indirect shadow pages of each write-protected guest frame.
    protected: FxHashMap<Gfn, Tables>,
    /// Out-of-sync shadow pages of each guest frame the guest may write freely.
    unsync: FxHashMap<Gfn, Tables>,
    /// Leaf shadow entries that map each guest frame (entries may have gone stale).
    rmap: ReverseMap,
    order: VecDeque<Hpa>,
    roots: VecDeque<(Gpa, u16, Hpa)>,
    active: Option<Hpa>,
    pending_flush: bool,
    /// Page-fault exits counted at the last prefetch: while the VMM is not filling entries,
    /// prefetching skips the guest's tables (it does not read them).
    exits_at_prefetch: Cell<u64>,
}

impl Shadow {
    /// A VM with no shadow pages yet, for a guest with paging state `cpu`.
    pub fn new(host: Host, cpu: &crate::paging::CpuState, config: ShadowConfig) -> Self {
        Self {
            host,
            config,
            levels: cpu.levels,
            nxe: cpu.nxe,
            pages: FxHashMap::default(),
            index: FxHashMap::default(),
            protected: FxHashMap::default(),
            unsync: FxHashMap::default(),
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

    /// Whether `gfn` holds a shadowed guest table (and is therefore write-protected).
    pub fn is_protected(&self, gfn: Gfn) -> bool {
        self.protected.contains_key(&gfn)
    }

    fn apply_flush(&mut self, vcpu: &mut Vcpu) {
        if self.pending_flush {
            vcpu.flush_all();
            self.pending_flush = false;
        }
    }

    fn note_pages(&self, stats: &mut Stats) {
        let pages = self.pages.len() as u64;
        stats.shadow.pages = pages;
        stats.shadow.peak_pages = stats.shadow.peak_pages.max(pages);
    }

    /// The shadow page for (`gfn`, `role`), created (and its guest frame write-protected) if
    /// there is none.
    fn get_or_create(&mut self, gfn: Gfn, role: Role, stats: &mut Stats) -> Result<Hpa, OutOfFrames> {
        if role.level > Level::Pt && self.unsync.contains_key(&gfn) {
            // The frame is about to be shadowed as an upper-level table, which must be
            // write-protected: bring its leaf pages back in sync first. (A leaf page found
            // again stays out of sync; the fault that found it fixes the entry it needs.)
            self.sync_gfn(gfn, stats);
        }
        if let Some(&table) = self.index.get(&(gfn, role)) {
            stats.shadow.hash_hits += 1;
            return Ok(table);
        }
        stats.shadow.hash_misses += 1;
        self.recycle(stats);
        let table = self.host.table_frame()?;
        self.pages.insert(
            table,
            ShadowPage { table, gfn, role, parents: Vec::new(), writes_since_use: 0, unsync: false },
        );
        self.index.insert((gfn, role), table);
        self.order.push_back(table);
        stats.shadow.created += 1;
        if !role.direct {
            let first = !self.protected.contains_key(&gfn);
            self.protected.entry(gfn).or_default().push(table);
            if first {
                self.write_protect(gfn);
            }
        }
        self.note_pages(stats);
        Ok(table)
    }

    /// Removes write access from every shadow entry that maps `gfn`: 4 KiB entries lose W,
    /// large entries covering it are dropped (the next fault splits the large page).
    fn write_protect(&mut self, gfn: Gfn) {
        for size in [PageSize::Size2M, PageSize::Size1G] {
            let base = Gfn::new(gfn.number() & !(size.bytes() / PAGE_BYTES - 1));
            for spte in self.rmap.take(base) {
                let value = self.host.memory.read_u64(spte);
                if value & Pte::PRESENT != 0 && value & Pte::PAGE_SIZE != 0 {
                    self.host.memory.write_u64(spte, 0);
                    self.pending_flush = true;
                } else {
                    self.rmap.add(base, spte);
                }
            }
        }
        let sptes = self.rmap.take(gfn);
        if sptes.is_empty() {
            return;
        }
        let Some((backing, _)) = self.host.backing_of(gfn.start()) else { return };
        let page = backing.as_u64() & Pte::ADDRESS_MASK;
        for spte in sptes {
            let value = self.host.memory.read_u64(spte);
            if value & Pte::PRESENT == 0 || value & Pte::ADDRESS_MASK != page {
                continue;
            }
            if value & Pte::WRITABLE != 0 {
                self.host.memory.write_u64(spte, value & !(Pte::WRITABLE | Pte::DIRTY));
                self.pending_flush = true;
            }
            self.rmap.add(gfn, spte);
        }
    }

    /// Zaps the oldest shadow pages while the budget is exhausted (never the active root).
    fn recycle(&mut self, stats: &mut Stats) {
        let mut skipped = 0;
        while self.pages.len() >= self.config.max_pages.max(1) && skipped <= self.order.len() {
            let Some(oldest) = self.order.pop_front() else { break };
            if !self.pages.contains_key(&oldest) {
                continue;
            }
            if Some(oldest) == self.active {
                self.order.push_back(oldest);
                skipped += 1;
                continue;
            }
            self.zap(oldest, stats);
            stats.shadow.recycled += 1;
        }
    }

    /// Frees a shadow page: unlinks it from its parents, forgets it, and drops the guest
    /// frame's protection if no other shadow page needs it. Direct pages take their direct
    /// children with them (their contents derive from the guest's large-page entry).
    fn zap(&mut self, table: Hpa, stats: &mut Stats) {
        let Some(page) = self.pages.remove(&table) else { return };
        self.index.remove(&(page.gfn, page.role));
        if !page.role.direct {
            for map in [&mut self.protected, &mut self.unsync] {
                if let Some(list) = map.get_mut(&page.gfn) {
                    list.retain(|t| *t != table);
                    if list.is_empty() {
                        map.remove(&page.gfn);
                    }
                }
            }
        }
        for parent in &page.parents {
            let value = self.host.memory.read_u64(*parent);
            if value & Pte::PRESENT != 0 && value & Pte::ADDRESS_MASK == table.as_u64() {
                self.host.memory.write_u64(*parent, 0);
            }
        }
        if page.role.direct && page.role.level > Level::Pt {
            let children: Vec<Hpa> = (0..512u64)
                .map(|i| self.host.memory.read_u64(Hpa::new(table.as_u64() + i * 8)))
                .filter(|value| value & Pte::PRESENT != 0)
                .map(|value| Hpa::new(value & Pte::ADDRESS_MASK))
                .collect();
            for child in children {
                if self.pages.get(&child).is_some_and(|p| p.role.direct) {
                    self.zap(child, stats);
                }
            }
        }
        self.roots.retain(|&(_, _, root)| root != table);
        if self.active == Some(table) {
            self.active = None;
        }
        self.host.free_table_frame(table);
        stats.shadow.zaps += 1;
        self.pending_flush = true;
        self.note_pages(stats);
    }

    /// Zaps every shadow page of `gfn` (the guest reuses or rewrites the whole table).
    fn unshadow(&mut self, gfn: Gfn, stats: &mut Stats) {
        let mut tables = self.protected.get(&gfn).cloned().unwrap_or_default();
        tables.extend(self.unsync.get(&gfn).cloned().unwrap_or_default());
        for table in tables {
            self.zap(table, stats);
        }
    }

    /// Whether a leaf shadow entry still agrees with the guest entry it was made from: it must
    /// map the same frame and grant no right the guest entry does not.
    fn spte_current(&mut self, spte: u64, guest: u64, nxe: bool) -> bool {
        let guest = Pte(guest);
        if !guest.has(Pte::PRESENT) || guest.has(Pte::PAGE_SIZE) {
            return false;
        }
        let frame = Gpa::new(guest.0 & Pte::ADDRESS_MASK);
        let backing = self.host.backing_of(frame).map(|(hpa, _)| hpa.as_u64() & Pte::ADDRESS_MASK);
        let spte = Pte(spte);
        backing == Some(spte.0 & Pte::ADDRESS_MASK)
            && (!spte.has(Pte::WRITABLE) || (guest.has(Pte::WRITABLE) && guest.has(Pte::DIRTY)))
            && (!spte.has(Pte::USER) || guest.has(Pte::USER))
            && (spte.has(Pte::NO_EXECUTE) || !(nxe && guest.has(Pte::NO_EXECUTE)))
    }

    /// Maps a guest large page with one shadow entry at `level` when the host backs it with a
    /// page at least as large and no guest frame inside it is write-protected.
    fn large_spte(
        &mut self,
        table: Hpa,
        level: Level,
        va: Gva,
        translation: &crate::paging::Translation<Gpa>,
    ) -> Option<FaultFix> {
        let size = translation.size;
        let first = translation.page.frame().number();
        let frames = size.bytes() / PAGE_BYTES;
        if self
            .protected
            .keys()
            .chain(self.unsync.keys())
            .any(|g| (first..first + frames).contains(&g.number()))
        {
            return None;
        }
        let (backing, host_size) = self.host.back(translation.page).ok()?;
        if host_size < size {
            return None;
        }
        let rights = translation.rights;
        let page = Hpa::new(backing.as_u64() & !(size.bytes() - 1));
        let writable = rights.writable && translation.dirty;
        let value = leaf_spte(page, rights, writable, translation.global) | Pte::PAGE_SIZE;
        let spte = entry_address(table, va.as_u64(), level);
        self.host.memory.write_u64(spte, value);
        // Filed under the large page's first frame; write-protection looks there too.
        self.rmap.add(translation.page.frame(), spte);
        Some(FaultFix::Fixed)
    }

    /// Brings one entry of an out-of-sync page up to date: drops it if the guest changed it.
    fn sync_entry(&mut self, table: Hpa, gfn: Gfn, index: u64, nxe: bool) -> bool {
        let spte_addr = Hpa::new(table.as_u64() + index * 8);
        let spte = self.host.memory.read_u64(spte_addr);
        if spte & Pte::PRESENT == 0 {
            return false;
        }
        let guest = match self.host.backing_of(Gpa::new(gfn.start().as_u64() + index * 8)) {
            Some((hpa, _)) => self.host.memory.read_u64(hpa),
            None => 0,
        };
        if self.spte_current(spte, guest, nxe) {
            return false;
        }
        self.host.memory.write_u64(spte_addr, 0);
        true
    }

    /// Resynchronises every out-of-sync page of `gfn` and write-protects the frame again.
    fn sync_gfn(&mut self, gfn: Gfn, stats: &mut Stats) {
        let Some(tables) = self.unsync.remove(&gfn) else { return };
        let nxe = self.nxe;
        for &table in &tables {
            for index in 0..512 {
                if self.sync_entry(table, gfn, index, nxe) {
                    self.pending_flush = true;
                }
            }
            if let Some(page) = self.pages.get_mut(&table) {
                page.unsync = false;
            }
            stats.shadow.resyncs += 1;
        }
        self.protected.entry(gfn).or_default().extend(tables);
        self.write_protect(gfn);
    }

    /// Resynchronises every out-of-sync page (a guest CR3 load that flushes).
    fn sync_all(&mut self, stats: &mut Stats) {
        let frames: Vec<Gfn> = self.unsync.keys().copied().collect();
        for gfn in frames {
            self.sync_gfn(gfn, stats);
        }
    }

    /// With unsync on: lets `gfn`'s shadow pages go out of sync if they are all leaf tables,
    /// so the guest can write the frame without exits. Returns whether it did.
    fn try_unsync(&mut self, gfn: Gfn, stats: &mut Stats) -> bool {
        if !self.config.unsync {
            return false;
        }
        let Some(tables) = self.protected.get(&gfn) else { return false };
        let all_leaf = tables.iter().all(|t| self.pages.get(t).is_some_and(|p| p.role.level == Level::Pt));
        if !all_leaf {
            return false;
        }
        let tables = self.protected.remove(&gfn).unwrap_or_default();
        for table in &tables {
            if let Some(page) = self.pages.get_mut(table) {
                page.unsync = true;
            }
            stats.shadow.unsyncs += 1;
        }
        self.unsync.insert(gfn, tables);
        true
    }

    /// Points the real CR3 at the shadow root for `cr3`.
    fn load_root(&mut self, cr3: Cr3, stats: &mut Stats) -> Result<Hpa, OutOfFrames> {
        if let Some(at) = self.roots.iter().position(|&(root, pcid, _)| root == cr3.root && pcid == cr3.pcid)
        {
            if let Some(entry) = self.roots.remove(at) {
                stats.shadow.root_cache_hits += 1;
                self.roots.push_front(entry);
                self.active = Some(entry.2);
                return Ok(entry.2);
            }
        }
        stats.shadow.root_cache_misses += 1;
        let role = Role { level: self.levels.root(), direct: false };
        let table = self.get_or_create(cr3.root.frame(), role, stats)?;
        self.roots.push_front((cr3.root, cr3.pcid, table));
        self.roots.truncate(ROOT_CACHE);
        self.active = Some(table);
        Ok(table)
    }

    /// Makes `spte` point at the shadow page for (`gfn`, `role`) with `rights`.
    fn link(
        &mut self,
        spte: Hpa,
        gfn: Gfn,
        role: Role,
        rights: Rights,
        stats: &mut Stats,
    ) -> Result<Hpa, OutOfFrames> {
        let child = self.get_or_create(gfn, role, stats)?;
        let value = child.as_u64() | link_flags(rights);
        let old = self.host.memory.read_u64(spte);
        if old != value {
            self.host.memory.write_u64(spte, value);
        }
        if let Some(page) = self.pages.get_mut(&child) {
            if !page.parents.contains(&spte) {
                page.parents.push(spte);
            }
        }
        Ok(child)
    }

    /// A page-fault exit: counted, handled, and the TLB flushed if the handling requires it.
    fn page_fault_exit(&mut self, va: Gva, access: Access, vcpu: &mut Vcpu) -> FaultFix {
        vcpu.stats.vm_exits.total += 1;
        vcpu.stats.vm_exits.page_fault += 1;
        let fix = self.fix(va, access, vcpu);
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
        let stats = &mut vcpu.stats;
        let Some(mut table) = self.active.or_else(|| self.load_root(vcpu.cr3, stats).ok()) else {
            return FaultFix::Emulated;
        };
        let mut level = self.levels.root();
        for step in steps.iter().flatten() {
            if let Some(page) = self.pages.get_mut(&table) {
                page.writes_since_use = 0;
            }
            let Some(lower) = level.next_lower() else { return FaultFix::Emulated };
            let spte = entry_address(table, va.as_u64(), level);
            // A present link with the guest entry's rights is current: every change to the
            // guest entry it was made from zapped it (the guest table is write-protected).
            // Follow it without the hash, as KVM's fault path follows present entries.
            let value = self.host.memory.read_u64(spte);
            if value & Pte::PRESENT != 0 && value & !Pte::ADDRESS_MASK == link_flags(step.rights) {
                table = Hpa::new(value & Pte::ADDRESS_MASK);
                level = lower;
                continue;
            }
            let role = Role { level: lower, direct: false };
            match self.link(spte, step.next.frame(), role, step.rights, stats) {
                Ok(child) => table = child,
                Err(_) => return FaultFix::Emulated,
            }
            level = lower;
        }
        // A guest large page backed by a host page at least as large, with no shadowed guest
        // table inside it, gets a large shadow entry; otherwise it is split into direct pages
        // of 4 KiB entries.
        if level > Level::Pt {
            if let Some(fixed) = self.large_spte(table, level, va, &translation) {
                return fixed;
            }
        }
        while level > Level::Pt {
            let Some(lower) = level.next_lower() else { break };
            let part = translation.page.as_u64()
                + (va.page_offset(translation.size) & !((1u64 << level.shift()) - 1));
            let spte = entry_address(table, va.as_u64(), level);
            let role = Role { level: lower, direct: true };
            match self.link(spte, Gpa::new(part).frame(), role, translation.rights, stats) {
                Ok(child) => table = child,
                Err(_) => return FaultFix::Emulated,
            }
            level = lower;
        }
        // The leaf's table was used too: its guest writes were not a flood.
        if let Some(page) = self.pages.get_mut(&table) {
            page.writes_since_use = 0;
        }
        let gpa =
            Gpa::new(translation.page.as_u64() + (va.page_offset(translation.size) & !(PAGE_BYTES - 1)));
        let gfn = gpa.frame();
        if access.is_write() && self.is_protected(gfn) {
            // The guest writes one of its own page tables through a mapping: stop shadowing it.
            stats.shadow.unprotects += 1;
            self.unshadow(gfn, stats);
        }
        let Ok((backing, _)) = self.host.back(gpa) else { return FaultFix::Emulated };
        let rights = translation.rights;
        let writable = rights.writable && translation.dirty && !self.is_protected(gfn);
        let value = leaf_spte(backing, rights, writable, translation.global);
        let spte = entry_address(table, va.as_u64(), Level::Pt);
        self.host.memory.write_u64(spte, value);
        self.rmap.add(gfn, spte);
        FaultFix::Fixed
    }
}

/// The flags of a shadow entry that links a lower shadow table with `rights`.
fn link_flags(rights: Rights) -> u64 {
    let mut flags = Pte::PRESENT | Pte::ACCESSED;
    if rights.writable {
        flags |= Pte::WRITABLE;
    }
    if rights.user {
        flags |= Pte::USER;
    }
    if rights.no_execute {
        flags |= Pte::NO_EXECUTE;
    }
    flags
}

/// A leaf shadow entry for `page` (accessed set; dirty set with write access, so the
/// processor never writes shadow entries back).
fn leaf_spte(page: Hpa, rights: Rights, writable: bool, global: bool) -> u64 {
    let mut value = (page.as_u64() & Pte::ADDRESS_MASK) | Pte::PRESENT | Pte::ACCESSED;
    if writable {
        value |= Pte::WRITABLE | Pte::DIRTY;
    }
    if rights.user {
        value |= Pte::USER;
    }
    if rights.no_execute {
        value |= Pte::NO_EXECUTE;
    }
    if global {
        value |= Pte::GLOBAL;
    }
    value
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

    fn write_guest(&mut self, gpa: Gpa, value: u64, vcpu: &mut Vcpu) {
        let gfn = gpa.frame();
        if self.is_protected(gfn) {
            let stats = &mut vcpu.stats;
            stats.vm_exits.total += 1;
            stats.vm_exits.pt_write += 1;
            if self.try_unsync(gfn, stats) {
                // The write is retried natively; the shadow page lags until the guest's
                // next TLB flush point.
            } else if gpa.as_u64() % 8 != 0 {
                let before = stats.shadow.zaps;
                self.unshadow(gfn, stats);
                stats.shadow.flood_zaps += stats.shadow.zaps - before;
            } else {
                let offset = gpa.as_u64() & (PAGE_BYTES - 1);
                // Each shadow page of the frame in turn, read from the live list (no copy on
                // this path, taken by every guest PTE write): a zap removes just the page it
                // zaps from the list, so the next one moves up to the same position.
                let mut next = 0;
                while let Some(&table) = self.protected.get(&gfn).and_then(|tables| tables.get(next)) {
                    let flooded = self.pages.get_mut(&table).is_some_and(|page| {
                        page.writes_since_use = page.writes_since_use.saturating_add(1);
                        page.writes_since_use >= FLOOD_WRITES
                    });
                    if flooded {
                        self.zap(table, stats);
                        stats.shadow.flood_zaps += 1;
                    } else {
                        // The guest will INVLPG or reload CR3 before relying on the change.
                        self.host.memory.write_u64(Hpa::new(table.as_u64() + offset), 0);
                        next += 1;
                    }
                }
            }
        }
        if let Ok((hpa, _)) = self.host.back(gpa) {
            self.host.memory.write_u64(hpa, value);
        }
        self.apply_flush(vcpu);
    }

    fn zero_guest_frame(&mut self, gfn: Gfn, vcpu: &mut Vcpu) {
        if self.unsync.contains_key(&gfn) {
            // Reused as a fresh table: its old shadow pages are of no use.
            self.unshadow(gfn, &mut vcpu.stats);
        }
        if self.is_protected(gfn) {
            vcpu.stats.vm_exits.total += 1;
            vcpu.stats.vm_exits.pt_write += 1;
            let before = vcpu.stats.shadow.zaps;
            self.unshadow(gfn, &mut vcpu.stats);
            vcpu.stats.shadow.flood_zaps += vcpu.stats.shadow.zaps - before;
        }
        if let Ok((hpa, _)) = self.host.back(gfn.start()) {
            self.host.memory.zero_frame(hpa.frame());
        }
        self.apply_flush(vcpu);
    }

    fn on_cr3_load(&mut self, cr3: Cr3, vcpu: &mut Vcpu) {
        vcpu.stats.vm_exits.total += 1;
        vcpu.stats.vm_exits.cr3_write += 1;
        if !cr3.no_flush || !vcpu.cpu.pcide {
            self.sync_all(&mut vcpu.stats);
        }
        let _ = self.load_root(cr3, &mut vcpu.stats);
        self.apply_flush(vcpu);
    }

    fn on_invlpg(&mut self, va: Gva, vcpu: &mut Vcpu) {
        vcpu.stats.vm_exits.total += 1;
        vcpu.stats.vm_exits.invlpg += 1;
        if let Some(root) = self.active {
            let slot =
                builder::lookup(&mut self.host.memory, EntryFormat::X86, root, self.levels, va.as_u64());
            if slot.leaf {
                match self.direct_top(root, va) {
                    // The guest mapped a large page here: drop the whole split.
                    Some(top) => self.zap(top, &mut vcpu.stats),
                    None => self.host.memory.write_u64(slot.entry, 0),
                }
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
            let outcome = crate::paging::walk(&mut traced, root, va, access, &vcpu.cpu, AdPolicy::Leave);
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

    fn page_table_bytes(&self) -> PageTableBytes {
        PageTableBytes { guest: 0, shadow: self.pages.len() as u64 * PAGE_BYTES, ept: 0 }
    }
}

impl Shadow {
    /// The highest direct shadow page on the path of `va`, if the path splits a large page.
    fn direct_top(&mut self, root: Hpa, va: Gva) -> Option<Hpa> {
        let mut table = root;
        let mut level = self.levels.root();
        loop {
            if self.pages.get(&table).is_some_and(|page| page.role.direct) {
                return Some(table);
            }
            let lower = level.next_lower()?;
            let value = self.host.memory.read_u64(entry_address(table, va.as_u64(), level));
            if value & Pte::PRESENT == 0 {
                return None;
            }
            table = Hpa::new(value & Pte::ADDRESS_MASK);
            level = lower;
        }
    }
}
