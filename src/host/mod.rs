//! The host: physical memory, the host kernel's frame allocator, and the VMM process's own
//! page tables (HVA -> HPA, ordinary x86-64 4-level tables held as bytes). Guest RAM is a
//! memory slot of the VMM process, backed lazily with 4 KiB, 2 MiB or 1 GiB host pages.

pub mod frame_memo;
pub mod guest_memory;

use std::cell::RefCell;
use std::fmt;
use std::rc::Rc;

use rustc_hash::FxHashMap;

use crate::addr::{Gpa, Hfn, Hpa, Hva, PageSize, PagingLevels, PAGE_BYTES};
use crate::memory::{BigFrame, FrameAllocator, MemorySlot, MemorySlots, OutOfFrames, PhysMemory};
use crate::paging::builder::{self, EntryFormat, InstallError, Slot, TableStore};
use crate::paging::Pte;

pub use frame_memo::FrameMemo;
pub use guest_memory::GuestMemory;

/// Where the VMM maps guest RAM in its address space (1 GiB-aligned, in the user half).
pub const GUEST_RAM_HVA: u64 = 0x7f00_0000_0000;
/// The host's physical memory (data frames cost nothing, so this is a ceiling, not a cost).
pub const HOST_RAM_BYTES: u64 = 1 << 40;

/// Why a guest-physical address has no host page.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum BackingError {
    /// The GPA is outside every memory slot (an MMIO or unbacked address).
    Unbacked(Gpa),
    /// The host ran out of frames.
    OutOfMemory(OutOfFrames),
}

impl fmt::Display for BackingError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Unbacked(gpa) => write!(f, "guest-physical address {gpa:#x} is outside every memory slot"),
            Self::OutOfMemory(e) => write!(f, "host {e}"),
        }
    }
}

impl std::error::Error for BackingError {}

/// The host kernel's frames, shared by every VMM process on the host.
struct HostFrames {
    small: FrameAllocator<Hfn>,
    large: FrameAllocator<BigFrame<21>>,
    huge: FrameAllocator<BigFrame<30>>,
    /// With several VMs: which VM each guest-RAM backing page (by first frame) belongs to.
    owners: Option<FxHashMap<u64, u16>>,
}

/// One VM's view of the host: the host's memory and frames (shared with any other VM) and
/// the VM's own VMM process (its page tables and memory slot).
pub struct Host {
    /// All host physical memory.
    pub memory: PhysMemory,
    frames: Rc<RefCell<HostFrames>>,
    vm: u16,
    root: Hpa,
    page_size: PageSize,
    host_table_frames: u64,
    slots: MemorySlots,
    /// Recent GPA -> HPA backings with the host page size. A backing changes only when the host
    /// migrates the page, which forgets it here.
    recent: FrameMemo<PageSize>,
}

/// Entries in the backing cache: enough for the page-table frames of tens of gigabytes of guest
/// memory touched at random, which a shadow-paging VMM's software walks read over and over.
const RECENT: usize = 16384;

impl Host {
    /// A host whose VMM backs `guest_ram` bytes of guest RAM (GPA 0 up) with pages of
    /// `page_size`.
    pub fn new(guest_ram: u64, page_size: PageSize) -> Result<Self, OutOfFrames> {
        let quarter = HOST_RAM_BYTES / 4;
        let frames = HostFrames {
            small: FrameAllocator::<Hfn>::new(1, quarter / PAGE_BYTES - 1),
            large: FrameAllocator::new(quarter >> 21, quarter >> 21),
            huge: FrameAllocator::new((2 * quarter) >> 30, (2 * quarter) >> 30),
            owners: None,
        };
        Self::process(PhysMemory::new(), Rc::new(RefCell::new(frames)), 1, guest_ram, page_size)
    }

    /// Another VM on the same host: a new VMM process with its own page tables and memory
    /// slot, drawing on the same physical memory and frames. Backing pages are then recorded
    /// by VM, so [`Host::owner_of`] can tell whose a frame is.
    pub fn another_vm(&self, guest_ram: u64) -> Result<Self, OutOfFrames> {
        self.frames.borrow_mut().owners.get_or_insert_with(FxHashMap::default);
        Self::process(self.memory.share(), Rc::clone(&self.frames), self.vm + 1, guest_ram, self.page_size)
    }

    fn process(
        mut memory: PhysMemory,
        frames: Rc<RefCell<HostFrames>>,
        vm: u16,
        guest_ram: u64,
        page_size: PageSize,
    ) -> Result<Self, OutOfFrames> {
        let root = frames.borrow_mut().small.allocate()?.start();
        memory.zero_frame(root.frame());
        let mut slots = MemorySlots::new();
        let ram =
            MemorySlot { guest_start: Gpa::new(0), len: guest_ram, host_start: Hva::new(GUEST_RAM_HVA) };
        // The only slot: it cannot clash.
        let _ = slots.add(ram);
        Ok(Self {
            memory,
            frames,
            vm,
            root,
            page_size,
            host_table_frames: 1,
            slots,
            recent: FrameMemo::new(RECENT, PageSize::Size4K),
        })
    }

    /// The VM's memory slots.
    pub fn slots(&self) -> &MemorySlots {
        &self.slots
    }

    /// The page size guest RAM is backed with.
    pub fn page_size(&self) -> PageSize {
        self.page_size
    }

    /// Which VM this is (1, 2, ...).
    pub fn vm(&self) -> u16 {
        self.vm
    }

    /// The VM whose guest RAM the frame of `hpa` backs, when several VMs share the host.
    pub fn owner_of(&self, hpa: Hpa) -> Option<u16> {
        let frames = self.frames.borrow();
        let owners = frames.owners.as_ref()?;
        [PageSize::Size4K, PageSize::Size2M, PageSize::Size1G]
            .iter()
            .find_map(|size| owners.get(&(hpa.align_down(*size).as_u64() >> 12)).copied())
    }

    /// A zeroed 4 KiB frame for a VMM table (EPT, NPT, shadow).
    pub fn table_frame(&mut self) -> Result<Hpa, OutOfFrames> {
        let frame = self.frames.borrow_mut().small.allocate()?;
        self.memory.zero_frame(frame);
        Ok(frame.start())
    }

    /// Returns a VMM table frame.
    pub fn free_table_frame(&mut self, frame: Hpa) {
        self.memory.zero_frame(frame.frame());
        self.frames.borrow_mut().small.free(frame.frame());
    }

    /// The host-physical address of `hva` through the VMM's page tables, if mapped.
    pub fn hpa_of_hva(&self, hva: Hva) -> Option<(Hpa, PageSize)> {
        self.search(hva).mapped(hva.as_u64()).map(|(hpa, size)| (Hpa::new(hpa), size))
    }

    /// Where a search of the VMM's page tables for `hva` stops.
    fn search(&self, hva: Hva) -> Slot<Hpa> {
        let read = |addr| self.memory.read_u64(addr);
        builder::search(read, EntryFormat::X86, self.root, PagingLevels::Four, hva.as_u64())
    }

    /// The host-physical address backing `gpa` if it has been backed, read without side
    /// effects (not even on the memo of recent backings).
    pub fn peek_backing(&self, gpa: Gpa) -> Option<Hpa> {
        self.recent.get(gpa).or_else(|| self.backing_in_tables(gpa)).map(|(hpa, _)| hpa)
    }

    /// The host-physical address backing `gpa` if it has been backed, without backing it.
    pub fn backing_of(&mut self, gpa: Gpa) -> Option<(Hpa, PageSize)> {
        if let Some(found) = self.recent.get(gpa) {
            return Some(found);
        }
        let found = self.backing_in_tables(gpa)?;
        self.recent.remember(gpa, found.0, found.1);
        Some(found)
    }

    /// The backing of `gpa` as the VMM's page tables give it (memory slot, then HVA -> HPA).
    fn backing_in_tables(&self, gpa: Gpa) -> Option<(Hpa, PageSize)> {
        self.hpa_of_hva(self.slots.hva_of(gpa)?)
    }

    /// The host-physical address backing `gpa`, backing its page first if the VMM has not
    /// touched it yet (the host kernel's demand paging of the VMM's memory).
    pub fn back(&mut self, gpa: Gpa) -> Result<(Hpa, PageSize), BackingError> {
        if let Some(found) = self.recent.get(gpa) {
            return Ok(found);
        }
        let hva = self.slots.hva_of(gpa).ok_or(BackingError::Unbacked(gpa))?;
        let slot = self.search(hva);
        if let Some((hpa, size)) = slot.mapped(hva.as_u64()) {
            let found = (Hpa::new(hpa), size);
            self.recent.remember(gpa, found.0, found.1);
            return Ok(found);
        }
        // Fall back to smaller host pages where the slot does not cover a whole large page.
        let mut size = self.page_size;
        while !self.slot_covers(hva, size) {
            size = match size {
                PageSize::Size1G => PageSize::Size2M,
                _ => PageSize::Size4K,
            };
        }
        let mut frames = self.frames.borrow_mut();
        let frame = match size {
            PageSize::Size4K => frames.small.allocate().map(|f| f.start().as_u64()),
            PageSize::Size2M => frames.large.allocate().map(BigFrame::start_raw),
            PageSize::Size1G => frames.huge.allocate().map(BigFrame::start_raw),
        }
        .map_err(BackingError::OutOfMemory)?;
        let vm = self.vm;
        if let Some(owners) = frames.owners.as_mut() {
            owners.insert(frame >> 12, vm);
        }
        let mut leaf = Pte::new(Hpa::new(frame), Pte::PRESENT | Pte::WRITABLE | Pte::USER | Pte::NO_EXECUTE);
        if size != PageSize::Size4K {
            leaf = leaf.with(Pte::PAGE_SIZE);
        }
        let table_flags = Pte::PRESENT | Pte::WRITABLE | Pte::USER;
        // Install from where the search stopped, unless that is below the new leaf's level (a
        // smaller host page's table in a range now backed by a larger page).
        let from = if slot.level >= size.leaf_level() {
            slot.table()
        } else {
            (self.root, PagingLevels::Four.root())
        };
        let mut store = HostTables { memory: &mut self.memory, frames: &mut frames.small, created: 0 };
        match builder::install_from(
            &mut store,
            EntryFormat::X86,
            from,
            hva.as_u64(),
            size,
            leaf.0,
            table_flags,
        ) {
            Ok(_) => {}
            Err(InstallError::OutOfMemory(e)) => return Err(BackingError::OutOfMemory(e)),
            // Unreachable: the lookup above found no leaf on the way.
            Err(InstallError::LargePageInTheWay) => {}
        }
        let created = store.created;
        drop(frames);
        self.host_table_frames += created;
        Ok((Hpa::new(frame | hva.page_offset(size)), size))
    }

    fn slot_covers(&self, hva: Hva, size: PageSize) -> bool {
        let start = hva.align_down(size);
        let last = start.checked_add(size.bytes() - 1);
        size == PageSize::Size4K
            || (self.slots.contains_hva(start) && last.is_some_and(|last| self.slots.contains_hva(last)))
    }

    /// The host moves the 4 KiB page backing `gpa` to another frame, as page migration or
    /// compaction does: the contents are copied, the VMM's page table points at the new frame
    /// and the old one is freed. Returns the old and new pages; `None` if `gpa` is not backed,
    /// or backed by a large page (not moved here). Whoever maps the old page (nested or shadow
    /// tables) must drop it and invalidate, as KVM does from the host's MMU notifier.
    pub fn migrate(&mut self, gpa: Gpa) -> Option<(Hpa, Hpa)> {
        let (old, size) = self.backing_of(gpa)?;
        if size != PageSize::Size4K {
            return None;
        }
        let hva = self.slots.hva_of(gpa)?;
        let slot = self.search(hva);
        let old_page = old.align_down(PageSize::Size4K);
        if !slot.leaf || slot.value & Pte::ADDRESS_MASK != old_page.as_u64() {
            return None;
        }
        let mut frames = self.frames.borrow_mut();
        let new_page = frames.small.allocate().ok()?.start();
        for offset in (0..PAGE_BYTES).step_by(8) {
            let word = self.memory.read_u64(Hpa::new(old_page.as_u64() + offset));
            self.memory.write_u64(Hpa::new(new_page.as_u64() + offset), word);
        }
        self.memory.write_u64(slot.entry, (slot.value & !Pte::ADDRESS_MASK) | new_page.as_u64());
        let vm = self.vm;
        if let Some(owners) = frames.owners.as_mut() {
            owners.remove(&(old_page.as_u64() >> 12));
            owners.insert(new_page.as_u64() >> 12, vm);
        }
        self.memory.zero_frame(old_page.frame());
        frames.small.free(old_page.frame());
        drop(frames);
        self.recent.forget(gpa);
        Some((old_page, new_page))
    }

    /// Whether `hpa` lies in a host frame backing this VM's memory slots.
    pub fn backs_guest(&mut self, hpa: Hpa, gpa: Gpa) -> bool {
        self.backing_of(gpa).is_some_and(|(backing, _)| backing == hpa)
    }

    /// Bytes of the VMM process's own page tables.
    pub fn host_table_bytes(&self) -> u64 {
        self.host_table_frames * PAGE_BYTES
    }
}

/// Host memory plus a frame allocator, as a table store for host-physical tables.
struct HostTables<'a> {
    memory: &'a mut PhysMemory,
    frames: &'a mut FrameAllocator<Hfn>,
    created: u64,
}

impl TableStore<Hpa> for HostTables<'_> {
    fn read(&mut self, addr: Hpa) -> u64 {
        self.memory.read_u64(addr)
    }
    fn write(&mut self, addr: Hpa, value: u64) {
        self.memory.write_u64(addr, value);
    }
    fn new_table(&mut self) -> Result<Hpa, OutOfFrames> {
        let frame = self.frames.allocate()?;
        self.memory.zero_frame(frame);
        self.created += 1;
        Ok(frame.start())
    }
}

/// A VMM-owned set of host-physical tables (EPT, NPT, shadow), built in host memory with
/// frames from the host.
pub struct VmmTables<'a> {
    /// The host.
    pub host: &'a mut Host,
    /// Tables created through this store.
    pub created: u64,
}

impl TableStore<Hpa> for VmmTables<'_> {
    fn read(&mut self, addr: Hpa) -> u64 {
        self.host.memory.read_u64(addr)
    }
    fn write(&mut self, addr: Hpa, value: u64) {
        self.host.memory.write_u64(addr, value);
    }
    fn new_table(&mut self) -> Result<Hpa, OutOfFrames> {
        self.created += 1;
        self.host.table_frame()
    }
}

impl TableStore<Hpa> for PhysMemory {
    fn read(&mut self, addr: Hpa) -> u64 {
        self.read_u64(addr)
    }
    fn write(&mut self, addr: Hpa, value: u64) {
        self.write_u64(addr, value);
    }
    fn new_table(&mut self) -> Result<Hpa, OutOfFrames> {
        Err(OutOfFrames { capacity: 0 })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_vms_share_memory_but_never_a_frame() {
        let mut first = Host::new(1 << 30, PageSize::Size4K).expect("host");
        let mut second = first.another_vm(1 << 30).expect("second VM");
        assert_eq!((first.vm(), second.vm()), (1, 2));
        let (a, _) = first.back(Gpa::new(0x5000)).expect("backed");
        let (b, _) = second.back(Gpa::new(0x5000)).expect("backed");
        assert_ne!(a, b, "the same GPA in two VMs is two host frames");
        assert_eq!(first.owner_of(a), Some(1));
        assert_eq!(first.owner_of(b), Some(2));
        // One physical memory: what one VMM process writes, the host can read at that HPA.
        second.memory.write_u64(b, 42);
        assert_eq!(first.memory.read_u64(b), 42);
        // VMM table frames belong to no VM.
        let table = first.table_frame().expect("frame");
        assert_eq!(second.owner_of(table), None);
    }

    #[test]
    fn backing_is_lazy_stable_and_sized() {
        let mut host = Host::new(4 << 30, PageSize::Size2M).expect("host");
        assert_eq!(host.backing_of(Gpa::new(0x20_1234)), None);
        let (hpa, size) = host.back(Gpa::new(0x20_1234)).expect("backed");
        assert_eq!(size, PageSize::Size2M);
        assert_eq!(hpa.as_u64() & 0x1f_ffff, 0x1234);
        assert_eq!(host.back(Gpa::new(0x20_1234)), Ok((hpa, size)));
        let (next, _) = host.back(Gpa::new(0x20_2000)).expect("same 2M page");
        assert_eq!(next.as_u64(), (hpa.as_u64() & !0xfff) + 0x1000);
        assert_eq!(host.back(Gpa::new(4 << 30)), Err(BackingError::Unbacked(Gpa::new(4 << 30))));
        // PML4 + PDPT + PD for the VMM's tables.
        assert_eq!(host.host_table_bytes(), 3 * 4096);
    }
}
