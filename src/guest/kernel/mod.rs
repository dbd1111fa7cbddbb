//! The guest kernel: boots a shared kernel half, creates processes, switches between them and
//! pages their memory in on demand.

mod address_space;
mod hostile;
mod lifecycle;

use std::collections::BTreeMap;
use std::fmt;

use crate::addr::{Gfn, Gpa, Gva, Level, PageSize, PagingLevels, PAGE_BYTES};
use crate::guest::page_table::{self, GuestTables, Leaf, KERNEL_TABLE_FLAGS, USER_TABLE_FLAGS};
use crate::guest::platform::Platform;
use crate::guest::region::{Prot, Region};
use rustc_hash::FxHashMap;

use crate::guest::frames::{GuestFrames, LargeFrame};
use crate::memory::{FrameNumber, OutOfFrames};
use crate::paging::builder::InstallError;
use crate::paging::builder::Slot;
use crate::paging::{Access, Pte};
use crate::vcpu::Cr3;

/// A process identifier.
pub type Pid = u32;

/// Where the kernel image is mapped (Linux's `__START_KERNEL_map`).
pub const KERNEL_IMAGE_BASE: u64 = 0xffff_ffff_8000_0000;
/// The kernel image's size: 8 MiB of text then 8 MiB of data, in 2 MiB global pages.
pub const KERNEL_IMAGE_BYTES: u64 = 16 << 20;
/// The first user-half virtual address that is not canonical-low (the user half ends here).
const USER_HALF_END_4: u64 = 1 << 47;
const USER_HALF_END_5: u64 = 1 << 56;
/// PCIDs 1..=4095 are handed out; 0 is left for the kernel's own use.
const PCID_COUNT: usize = 4096;

/// The kernel's boot parameters.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct KernelConfig {
    /// Guest RAM in bytes (see [`GuestFrames`] for how it is divided).
    pub ram_bytes: u64,
}

impl Default for KernelConfig {
    fn default() -> Self {
        Self { ram_bytes: 64 << 30 }
    }
}

/// A failure of the simulated kernel that ends the run (not a guest-visible fault).
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum KernelError {
    /// Guest RAM is exhausted.
    OutOfMemory(OutOfFrames),
    /// An operation named a process that does not exist.
    NoSuchProcess(Pid),
    /// A process was created twice.
    ProcessExists(Pid),
    /// A region was not page-aligned, empty, or not in the user half.
    BadRegion {
        /// The process.
        pid: Pid,
        /// The region's start.
        start: u64,
        /// Its length.
        len: u64,
    },
}

impl fmt::Display for KernelError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::OutOfMemory(e) => write!(f, "guest {e}; give the guest more RAM with --guest-ram"),
            Self::NoSuchProcess(pid) => write!(f, "process {pid} does not exist"),
            Self::ProcessExists(pid) => write!(f, "process {pid} already exists"),
            Self::BadRegion { pid, start, len } => write!(
                f,
                "process {pid}: region {start:#x}+{len:#x} must be non-empty, 4 KiB-aligned and in the user half"
            ),
        }
    }
}

impl std::error::Error for KernelError {}

impl From<OutOfFrames> for KernelError {
    fn from(e: OutOfFrames) -> Self {
        Self::OutOfMemory(e)
    }
}

/// What the kernel did about a page fault.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum FaultResolution {
    /// It mapped the page; the access can be retried.
    Mapped,
    /// The tables already allowed the access (a stale translation); retry.
    Spurious,
    /// The access is not allowed: the process would get SIGSEGV.
    Segv,
}

struct Process {
    root: Gfn,
    pcid: u16,
    regions: Vec<Region>,
    /// Every user-half address is an anonymous read-write-execute mapping (trace mode).
    anywhere: bool,
    /// The process's tables were written arbitrarily (a hostile guest): they are never
    /// followed to free frames, which they need not own.
    hostile: bool,
}

/// The guest kernel.
pub struct Kernel {
    levels: PagingLevels,
    nxe: bool,
    pcide: bool,
    frames: GuestFrames,
    template: Gfn,
    processes: BTreeMap<Pid, Process>,
    current: Option<Pid>,
    /// The process that ran last (still set after it exits, to count the switch away).
    last_ran: Option<Pid>,
    pcid_owner: Vec<Option<Pid>>,
    next_pcid: usize,
    table_frames: u64,
    /// Extra mappings of shared data frames (copy-on-write), keyed by frame start.
    shared: FxHashMap<Gpa, u32>,
    counters: GuestCounters,
}

/// What the guest kernel did, for the stats.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default, serde::Serialize)]
pub struct GuestCounters {
    /// 4 KiB pages mapped on demand (a 2 MiB page counts 512).
    pub pages_mapped: u64,
    /// Switches from one process to another.
    pub context_switches: u64,
    /// Copy-on-write faults resolved.
    pub cow_breaks: u64,
    /// Processes forked.
    pub forks: u64,
    /// Execs.
    pub execs: u64,
    /// Process exits.
    pub exits: u64,
    /// munmap calls.
    pub munmaps: u64,
    /// mprotect calls.
    pub mprotects: u64,
    /// 2 MiB mappings split into 4 KiB ones.
    pub large_splits: u64,
}

impl Kernel {
    /// Boots: builds the kernel half (the image in 2 MiB global pages) in a template root
    /// every process copies.
    pub fn boot(p: &mut impl Platform, config: KernelConfig) -> Result<Self, KernelError> {
        let cpu = p.cpu();
        let mut frames = GuestFrames::new(config.ram_bytes);
        let template = frames.allocate()?;
        p.zero_frame(template);
        let mut kernel = Self {
            levels: cpu.levels,
            nxe: cpu.nxe,
            pcide: cpu.pcide,
            frames,
            template,
            processes: BTreeMap::new(),
            current: None,
            last_ran: None,
            pcid_owner: vec![None; PCID_COUNT],
            next_pcid: 1,
            table_frames: 1,
            shared: FxHashMap::default(),
            counters: GuestCounters::default(),
        };
        let half = KERNEL_IMAGE_BYTES / 2;
        let text = Region {
            start: Gva::new_truncate(KERNEL_IMAGE_BASE),
            len: half,
            prot: Prot::RX,
            user: false,
            page_size: PageSize::Size2M,
        };
        let data = Region { start: Gva::new_truncate(KERNEL_IMAGE_BASE + half), prot: Prot::RW, ..text };
        for region in [text, data] {
            let mut offset = 0;
            while offset < region.len {
                let frame = kernel.frames.allocate_large()?;
                let va = Gva::new_truncate(region.start.as_u64() + offset);
                let flags = region.leaf_flags(kernel.nxe) | Pte::ACCESSED | Pte::DIRTY;
                let leaf = Leaf {
                    va,
                    size: PageSize::Size2M,
                    frame: Gpa::new(frame.start_raw()),
                    flags,
                    table_flags: KERNEL_TABLE_FLAGS,
                };
                kernel.install(p, (template.start(), kernel.levels.root()), leaf)?;
                offset += PageSize::Size2M.bytes();
            }
        }
        Ok(kernel)
    }

    fn install(&mut self, p: &mut impl Platform, from: (Gpa, Level), leaf: Leaf) -> Result<(), KernelError> {
        let mut tables = GuestTables { platform: p, frames: &mut self.frames };
        match page_table::map(&mut tables, from, leaf) {
            Ok(created) => {
                self.table_frames += created;
                Ok(())
            }
            Err(InstallError::OutOfMemory(e)) => Err(e.into()),
            // The kernel only maps into holes it found; a large page in the way means the
            // caller asked for a 4 KiB page inside a 2 MiB one, which the fault path avoids.
            Err(InstallError::LargePageInTheWay) => Ok(()),
        }
    }

    /// Creates process `pid` with an empty user half. With `anywhere`, every user address is
    /// an anonymous read-write-execute mapping (how a trace's pages are treated).
    pub fn spawn(&mut self, p: &mut impl Platform, pid: Pid, anywhere: bool) -> Result<(), KernelError> {
        if self.processes.contains_key(&pid) {
            return Err(KernelError::ProcessExists(pid));
        }
        let root = self.frames.allocate()?;
        p.zero_frame(root);
        self.table_frames += 1;
        // Share the kernel half: copy the template's upper 256 root entries.
        for index in 256..512u64 {
            let value = p.read_phys(Gpa::new(self.template.start().as_u64() + index * 8));
            if value != 0 {
                p.write_phys(Gpa::new(root.start().as_u64() + index * 8), value);
            }
        }
        let pcid = self.next_pcid;
        self.next_pcid = if self.next_pcid + 1 >= PCID_COUNT { 1 } else { self.next_pcid + 1 };
        self.processes.insert(
            pid,
            Process {
                root,
                pcid: u16::try_from(pcid).unwrap_or(1),
                regions: Vec::new(),
                anywhere,
                hostile: false,
            },
        );
        Ok(())
    }

    /// Adds a region to `pid`'s address space (nothing is mapped until it is touched).
    pub fn add_region(&mut self, pid: Pid, region: Region) -> Result<(), KernelError> {
        let user_end = match self.levels {
            PagingLevels::Four => USER_HALF_END_4,
            PagingLevels::Five => USER_HALF_END_5,
        };
        let start = region.start.as_u64();
        let bad = KernelError::BadRegion { pid, start, len: region.len };
        if region.len == 0
            || start % PAGE_BYTES != 0
            || region.len % PAGE_BYTES != 0
            || start.checked_add(region.len).is_none_or(|end| end > user_end)
        {
            return Err(bad);
        }
        let process = self.processes.get_mut(&pid).ok_or(KernelError::NoSuchProcess(pid))?;
        process.regions.push(region);
        Ok(())
    }

    /// The end of the user half (exclusive).
    fn user_end(&self) -> u64 {
        match self.levels {
            PagingLevels::Four => USER_HALF_END_4,
            PagingLevels::Five => USER_HALF_END_5,
        }
    }

    /// Whether `pid`'s tables were written by a hostile guest.
    fn is_hostile(&self, pid: Pid) -> bool {
        self.processes.get(&pid).is_some_and(|process| process.hostile)
    }

    /// Whether `pid` exists.
    pub fn has_process(&self, pid: Pid) -> bool {
        self.processes.contains_key(&pid)
    }

    /// The running process.
    pub fn current(&self) -> Option<Pid> {
        self.current
    }

    /// Makes `pid` the running process, loading its CR3 (with PCIDs: keeping its TLB entries
    /// when its PCID has not been given to another process since it last ran).
    #[inline]
    pub fn switch_to(&mut self, p: &mut impl Platform, pid: Pid) -> Result<(), KernelError> {
        if self.current == Some(pid) {
            return Ok(());
        }
        self.switch_away(p, pid)
    }

    /// [`Kernel::switch_to`] another process than the running one.
    fn switch_away(&mut self, p: &mut impl Platform, pid: Pid) -> Result<(), KernelError> {
        let process = self.processes.get(&pid).ok_or(KernelError::NoSuchProcess(pid))?;
        let cr3 = if self.pcide {
            let owner = &mut self.pcid_owner[usize::from(process.pcid)];
            let no_flush = *owner == Some(pid);
            *owner = Some(pid);
            Cr3 { root: process.root.start(), pcid: process.pcid, no_flush }
        } else {
            Cr3 { root: process.root.start(), pcid: 0, no_flush: false }
        };
        if self.last_ran.is_some_and(|last| last != pid) {
            self.counters.context_switches += 1;
        }
        self.last_ran = Some(pid);
        self.current = Some(pid);
        p.load_cr3(cr3);
        Ok(())
    }

    /// Handles a page fault `pid` took at `va`: maps the page if its region allows the access.
    pub fn handle_fault(
        &mut self,
        p: &mut impl Platform,
        pid: Pid,
        va: Gva,
        access: Access,
    ) -> Result<FaultResolution, KernelError> {
        let levels = self.levels;
        let nxe = self.nxe;
        let process = self.processes.get(&pid).ok_or(KernelError::NoSuchProcess(pid))?;
        if process.hostile {
            // Its tables hold whatever it wrote: the kernel does not try to repair them.
            return Ok(FaultResolution::Segv);
        }
        let user_end = match levels {
            PagingLevels::Four => USER_HALF_END_4,
            PagingLevels::Five => USER_HALF_END_5,
        };
        let region = if let Some(region) = process.regions.iter().rev().find(|r| r.contains(va)) {
            *region
        } else if process.anywhere && va.as_u64() < user_end {
            let start = va.align_down(PageSize::Size4K);
            Region { start, len: PAGE_BYTES, prot: Prot::RWX, user: true, page_size: PageSize::Size4K }
        } else {
            return Ok(FaultResolution::Segv);
        };
        if !region.permits(access) {
            return Ok(FaultResolution::Segv);
        }
        let root = process.root.start();
        let slot = page_table::lookup(p, root, va, levels);
        if slot.leaf {
            let pte = Pte(slot.value);
            if access.is_write() && !pte.has(Pte::WRITABLE) && region.prot.write {
                return self.break_cow(p, slot, va);
            }
            // Present: the tables already allow what the region allows.
            p.invlpg(va);
            return Ok(FaultResolution::Spurious);
        }
        let flags = region.leaf_flags(nxe) | if access.is_write() { Pte::DIRTY } else { 0 };
        let large_start = va.align_down(PageSize::Size2M);
        let fits_large = region.page_size == PageSize::Size2M
            && region.contains(large_start)
            && region.contains(Gva::new_truncate(large_start.as_u64() + PageSize::Size2M.bytes() - 1))
            // No page table below this 2 MiB yet: the search stopped at the PD or above it
            // (Linux's THP fault path allocates the missing upper tables and maps the huge
            // page, do_huge_pmd_anonymous_page).
            && slot.level >= Level::Pd;
        if fits_large {
            let frame = self.frames.allocate_large()?;
            let leaf = Leaf {
                va: large_start,
                size: PageSize::Size2M,
                frame: Gpa::new(frame.start_raw()),
                flags,
                table_flags: USER_TABLE_FLAGS,
            };
            self.install(p, slot.table(), leaf)?;
            self.counters.pages_mapped += 512;
        } else {
            let frame = self.frames.allocate()?;
            let leaf = Leaf {
                va,
                size: PageSize::Size4K,
                frame: frame.start(),
                flags,
                table_flags: USER_TABLE_FLAGS,
            };
            self.install(p, slot.table(), leaf)?;
            self.counters.pages_mapped += 1;
        }
        Ok(FaultResolution::Mapped)
    }

    /// A write to a present read-only page of a writable region: copy-on-write after fork.
    /// The page is copied if still shared, or simply made writable if this mapping is the
    /// last; then the stale translation is flushed, as Linux's `ptep_clear_flush` does.
    fn break_cow(
        &mut self,
        p: &mut impl Platform,
        slot: Slot<Gpa>,
        va: Gva,
    ) -> Result<FaultResolution, KernelError> {
        let size = slot.level.leaf_size().unwrap_or(PageSize::Size4K);
        let old = Pte(slot.value);
        let frame = Gpa::new(old.0 & Pte::ADDRESS_MASK & !(size.bytes() - 1));
        let target = if self.extra_refs(frame) > 0 {
            self.drop_ref(frame, size);
            self.allocate_frame(size)?
        } else {
            frame
        };
        let keep = old.0 & !(Pte::ADDRESS_MASK);
        let new = Pte((target.as_u64() & Pte::ADDRESS_MASK) | keep | Pte::WRITABLE | Pte::DIRTY);
        p.write_phys(slot.entry, new.0);
        p.invlpg(va);
        self.counters.cow_breaks += 1;
        Ok(FaultResolution::Mapped)
    }

    /// A zero-filled data frame of `size`.
    fn allocate_frame(&mut self, size: PageSize) -> Result<Gpa, KernelError> {
        Ok(match size {
            PageSize::Size4K => self.frames.allocate()?.start(),
            _ => Gpa::new(self.frames.allocate_large()?.start_raw()),
        })
    }

    /// Mappings of `frame` besides the first (copy-on-write sharing after fork).
    fn extra_refs(&self, frame: Gpa) -> u32 {
        self.shared.get(&frame).copied().unwrap_or(0)
    }

    /// Drops one mapping of the data frame at `frame`; frees it with its last mapping. A
    /// 4 KiB piece of a split 2 MiB frame frees the 2 MiB frame with its last piece.
    fn drop_ref(&mut self, frame: Gpa, size: PageSize) {
        if let Some(extra) = self.shared.get_mut(&frame) {
            *extra -= 1;
            if *extra == 0 {
                self.shared.remove(&frame);
            }
            return;
        }
        match size {
            // A 4 KiB frame, or a piece of a 2 MiB one (see `GuestFrames`).
            PageSize::Size4K => self.frames.free(frame.frame()),
            _ => self.frames.free_large(LargeFrame::from_number(frame.as_u64() >> PageSize::Size2M.shift())),
        }
    }

    /// Bytes of guest memory holding page tables.
    pub fn page_table_bytes(&self) -> u64 {
        self.table_frames * PAGE_BYTES
    }

    /// Zeroes the counters (the end of a warm-up).
    pub fn reset_counters(&mut self) {
        self.counters = GuestCounters::default();
    }

    /// What the kernel did so far.
    pub fn counters(&self) -> GuestCounters {
        self.counters
    }

    /// The process with the lowest identifier (the workload's first, for the builtin ones).
    pub fn first_process(&self) -> Option<Pid> {
        self.processes.keys().next().copied()
    }

    /// The root table of `pid`.
    pub fn root_of(&self, pid: Pid) -> Option<Gpa> {
        self.processes.get(&pid).map(|process| process.root.start())
    }
}
