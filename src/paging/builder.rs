//! Building and searching radix page tables, shared by every owner of tables: the guest
//! kernel (x86-64 format, GPA-addressed), the host kernel (HVA -> HPA), the VMM's EPT, NPT and
//! shadow tables. The formats differ only in what makes an entry present; the radix shape,
//! the large-page bit (7) and the address field (51:12) are common to x86-64 and EPT entries.

use crate::addr::{Level, PageSize, PagingLevels, PhysAddr};
use crate::memory::OutOfFrames;
use crate::paging::Pte;

/// What distinguishes one entry format from another for building purposes.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct EntryFormat {
    /// Any of these bits set makes an entry present.
    pub present_mask: u64,
}

impl EntryFormat {
    /// x86-64 paging entries (also NPT): present when P (bit 0) is set.
    pub const X86: EntryFormat = EntryFormat { present_mask: Pte::PRESENT };
    /// EPT entries: present when any of R, W, X (bits 2:0) is set.
    pub const EPT: EntryFormat = EntryFormat { present_mask: 0b111 };

    /// Whether `raw` is present.
    pub const fn is_present(self, raw: u64) -> bool {
        raw & self.present_mask != 0
    }

    /// Whether a present `raw` at `level` maps a page rather than pointing at a table.
    pub const fn is_leaf(self, raw: u64, level: Level) -> bool {
        match level {
            Level::Pt => true,
            Level::Pd | Level::Pdpt => raw & Pte::PAGE_SIZE != 0,
            Level::Pml4 | Level::Pml5 => false,
        }
    }
}

/// Storage for a table owner's tables.
pub trait TableStore<P: PhysAddr> {
    /// Reads the entry at `addr`.
    fn read(&mut self, addr: P) -> u64;
    /// Writes the entry at `addr`.
    fn write(&mut self, addr: P, value: u64);
    /// A new zeroed table.
    fn new_table(&mut self) -> Result<P, OutOfFrames>;
}

/// The address of the entry selecting `input` in the table at `table`.
pub fn entry_address<P: PhysAddr>(table: P, input: u64, level: Level) -> P {
    P::from_raw((table.raw() & Pte::ADDRESS_MASK) | (((input >> level.shift()) & 0x1ff) * 8))
}

/// Where a search stopped.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Slot<P> {
    /// The entry's address.
    pub entry: P,
    /// Its value.
    pub value: u64,
    /// Its table's level.
    pub level: Level,
    /// Whether it is a present leaf.
    pub leaf: bool,
}

/// Follows `input` from `root` down to the first non-present entry or the leaf.
pub fn lookup<P: PhysAddr, S: TableStore<P>>(
    store: &mut S,
    format: EntryFormat,
    root: P,
    levels: PagingLevels,
    input: u64,
) -> Slot<P> {
    let mut table = root;
    let mut level = levels.root();
    loop {
        let entry = entry_address(table, input, level);
        let value = store.read(entry);
        let present = format.is_present(value);
        let leaf = present && format.is_leaf(value, level);
        match level.next_lower() {
            Some(lower) if present && !leaf => {
                table = P::from_raw(value & Pte::ADDRESS_MASK);
                level = lower;
            }
            _ => return Slot { entry, value, level, leaf },
        }
    }
}

/// Why a leaf could not be installed.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum InstallError {
    /// No frame for a new table.
    OutOfMemory(OutOfFrames),
    /// A larger leaf already maps part of the range.
    LargePageInTheWay,
}

/// Installs a leaf entry `leaf` for a page of `size` covering `input`, creating missing tables
/// whose entries are `table_entry_flags | table address`. Returns the tables created and the
/// leaf entry's address.
#[allow(clippy::too_many_arguments)]
pub fn install<P: PhysAddr, S: TableStore<P>>(
    store: &mut S,
    format: EntryFormat,
    root: P,
    levels: PagingLevels,
    input: u64,
    size: PageSize,
    leaf: u64,
    table_entry_flags: u64,
) -> Result<(u64, P), InstallError> {
    let leaf_level = match size {
        PageSize::Size4K => Level::Pt,
        PageSize::Size2M => Level::Pd,
        PageSize::Size1G => Level::Pdpt,
    };
    let mut created = 0;
    let mut table = root;
    let mut level = levels.root();
    while level > leaf_level {
        let entry = entry_address(table, input, level);
        let value = store.read(entry);
        if !format.is_present(value) {
            let new = store.new_table().map_err(InstallError::OutOfMemory)?;
            store.write(entry, (new.raw() & Pte::ADDRESS_MASK) | table_entry_flags);
            created += 1;
            table = new;
        } else if format.is_leaf(value, level) {
            return Err(InstallError::LargePageInTheWay);
        } else {
            table = P::from_raw(value & Pte::ADDRESS_MASK);
        }
        match level.next_lower() {
            Some(lower) => level = lower,
            None => break,
        }
    }
    let entry = entry_address(table, input, level);
    store.write(entry, leaf);
    Ok((created, entry))
}
