//! How the guest kernel edits its page tables: the shared table builder over the kernel's own
//! memory, reached through [`Platform`] so every read and write is seen by the virtualization
//! mode.

use crate::addr::{Gpa, Gva, Level, PageSize, PagingLevels};
use crate::guest::frames::GuestFrames;
use crate::guest::platform::Platform;
use crate::memory::OutOfFrames;
use crate::paging::builder::{self, EntryFormat, InstallError, Slot, TableStore};
use crate::paging::Pte;

/// Flags of an entry that points at a user-half table (Linux's `_PAGE_TABLE`).
pub const USER_TABLE_FLAGS: u64 = Pte::PRESENT | Pte::WRITABLE | Pte::USER | Pte::ACCESSED | Pte::DIRTY;
/// Flags of an entry that points at a kernel-half table (Linux's `_KERNPG_TABLE`).
pub const KERNEL_TABLE_FLAGS: u64 = Pte::PRESENT | Pte::WRITABLE | Pte::ACCESSED | Pte::DIRTY;

/// The guest kernel's tables as a [`TableStore`]: new tables come from its frame allocator
/// and are zeroed through the platform.
pub struct GuestTables<'a, P> {
    /// The machine.
    pub platform: &'a mut P,
    /// Where new table frames come from.
    pub frames: &'a mut GuestFrames,
}

impl<P: Platform> TableStore<Gpa> for GuestTables<'_, P> {
    fn read(&mut self, addr: Gpa) -> u64 {
        self.platform.read_phys(addr)
    }
    fn write(&mut self, addr: Gpa, value: u64) {
        self.platform.write_phys(addr, value);
    }
    fn new_table(&mut self) -> Result<Gpa, OutOfFrames> {
        let gfn = self.frames.allocate()?;
        self.platform.zero_frame(gfn);
        Ok(gfn.start())
    }
}

/// Follows `va` from `root` to the first non-present entry or the leaf.
pub fn lookup(p: &mut impl Platform, root: Gpa, va: Gva, levels: PagingLevels) -> Slot<Gpa> {
    struct ReadOnly<'a, P>(&'a mut P);
    impl<P: Platform> TableStore<Gpa> for ReadOnly<'_, P> {
        fn read(&mut self, addr: Gpa) -> u64 {
            self.0.read_phys(addr)
        }
        fn write(&mut self, addr: Gpa, value: u64) {
            self.0.write_phys(addr, value);
        }
        fn new_table(&mut self) -> Result<Gpa, OutOfFrames> {
            Err(OutOfFrames { capacity: 0 })
        }
    }
    builder::lookup(&mut ReadOnly(p), EntryFormat::X86, root, levels, va.as_u64())
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

/// Installs `leaf` from the table `from` (its address and level: the root, or lower where a
/// lookup of the same address stopped). Returns the number of tables created.
pub fn map<P: Platform>(
    tables: &mut GuestTables<'_, P>,
    from: (Gpa, Level),
    leaf: Leaf,
) -> Result<u64, InstallError> {
    let flags = if leaf.size == PageSize::Size4K { leaf.flags } else { leaf.flags | Pte::PAGE_SIZE };
    let entry = Pte::new(leaf.frame, flags).0;
    builder::install_from(
        tables,
        EntryFormat::X86,
        from,
        leaf.va.as_u64(),
        leaf.size,
        entry,
        leaf.table_flags,
    )
    .map(|(created, _)| created)
}
