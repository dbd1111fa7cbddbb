//! How the guest kernel edits its page tables: software walks over its own memory, through
//! [`Platform`] so that every read and write is seen by the virtualization mode.

use crate::addr::{Gfn, Gpa, Gva, Level, PageSize, PagingLevels};
use crate::guest::platform::Platform;
use crate::memory::{FrameAllocator, OutOfFrames};
use crate::paging::Pte;

/// Flags of an entry that points at a user-half table (Linux's `_PAGE_TABLE`).
pub const USER_TABLE_FLAGS: u64 = Pte::PRESENT | Pte::WRITABLE | Pte::USER | Pte::ACCESSED | Pte::DIRTY;
/// Flags of an entry that points at a kernel-half table (Linux's `_KERNPG_TABLE`).
pub const KERNEL_TABLE_FLAGS: u64 = Pte::PRESENT | Pte::WRITABLE | Pte::ACCESSED | Pte::DIRTY;

/// Where a software walk stopped.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Slot {
    /// The entry's guest-physical address.
    pub entry: Gpa,
    /// Its value.
    pub value: Pte,
    /// The level of its table.
    pub level: Level,
}

impl Slot {
    /// Whether the walk ended on a present leaf.
    pub fn is_leaf(&self) -> bool {
        self.value.has(Pte::PRESENT)
            && (self.level == Level::Pt || (self.value.has(Pte::PAGE_SIZE) && self.level <= Level::Pdpt))
    }
}

/// The address of the entry for `va` in the table at `table`.
pub fn entry_address(table: Gpa, va: Gva, level: Level) -> Gpa {
    Gpa::new(table.as_u64() | va.table_index(level).byte_offset())
}

/// Walks from `root` towards `va` and returns the first entry that is not present, or the leaf.
pub fn lookup(p: &mut impl Platform, root: Gpa, va: Gva, levels: PagingLevels) -> Slot {
    let mut table = root;
    let mut level = levels.root();
    loop {
        let entry = entry_address(table, va, level);
        let value = Pte(p.read_phys(entry));
        let slot = Slot { entry, value, level };
        if !value.has(Pte::PRESENT) || slot.is_leaf() {
            return slot;
        }
        match level.next_lower() {
            Some(lower) => {
                table = Gpa::new(value.0 & Pte::ADDRESS_MASK);
                level = lower;
            }
            None => return slot,
        }
    }
}

/// Why a mapping could not be installed.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum MapError {
    /// Guest RAM ran out while allocating a table.
    OutOfMemory(OutOfFrames),
    /// A larger leaf already maps part of the range.
    LargePageInTheWay,
}

/// A leaf mapping to install.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Leaf {
    /// The virtual address (any byte of the page).
    pub va: Gva,
    /// The page size.
    pub size: PageSize,
    /// The first byte of the guest-physical page.
    pub frame: Gpa,
    /// Leaf flags (PS is added for large pages).
    pub flags: u64,
    /// Flags of any table entry created on the way.
    pub table_flags: u64,
}

/// Installs `leaf` under `root`, allocating any missing table from `frames` (zeroed through
/// the platform). Returns the number of tables created.
pub fn map(
    p: &mut impl Platform,
    frames: &mut FrameAllocator<Gfn>,
    root: Gpa,
    levels: PagingLevels,
    leaf: Leaf,
) -> Result<u64, MapError> {
    let Leaf { va, size, frame, flags, table_flags } = leaf;
    let leaf_level = match size {
        PageSize::Size4K => Level::Pt,
        PageSize::Size2M => Level::Pd,
        PageSize::Size1G => Level::Pdpt,
    };
    let mut created = 0;
    let mut table = root;
    let mut level = levels.root();
    while level > leaf_level {
        let entry = entry_address(table, va, level);
        let value = Pte(p.read_phys(entry));
        if !value.has(Pte::PRESENT) {
            let gfn = frames.allocate().map_err(MapError::OutOfMemory)?;
            p.zero_frame(gfn);
            p.write_phys(entry, Pte::new(gfn.start(), table_flags).0);
            created += 1;
            table = gfn.start();
        } else if value.has(Pte::PAGE_SIZE) && level <= Level::Pdpt {
            return Err(MapError::LargePageInTheWay);
        } else {
            table = Gpa::new(value.0 & Pte::ADDRESS_MASK);
        }
        level = match level.next_lower() {
            Some(lower) => lower,
            None => break,
        };
    }
    let leaf_flags = if size == PageSize::Size4K { flags } else { flags | Pte::PAGE_SIZE };
    p.write_phys(entry_address(table, va, level), Pte::new(frame, leaf_flags).0);
    Ok(created)
}
