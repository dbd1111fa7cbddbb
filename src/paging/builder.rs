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

impl<P: PhysAddr> Slot<P> {
    /// The table the slot lies in, with its level: where an install can start.
    pub fn table(&self) -> (P, Level) {
        (P::from_raw(self.entry.raw() & Pte::ADDRESS_MASK), self.level)
    }
}

impl<P> Slot<P> {
    /// Where a leaf slot maps `input`, and the page size; `None` for a slot that is not a leaf.
    pub fn mapped(&self, input: u64) -> Option<(u64, PageSize)> {
        if !self.leaf {
            return None;
        }
        let size = self.level.leaf_size()?;
        let page = self.value & Pte::ADDRESS_MASK & !(size.bytes() - 1);
        Some((page | input & (size.bytes() - 1), size))
    }
}

/// Follows `input` from `root` down to the first non-present entry or the leaf.
pub fn lookup<P: PhysAddr, S: TableStore<P>>(
    store: &mut S,
    format: EntryFormat,
    root: P,
    levels: PagingLevels,
    input: u64,
) -> Slot<P> {
    search(|addr| store.read(addr), format, root, levels, input)
}

/// [`lookup`] through any way of reading entries (one without side effects, for instance).
pub fn search<P: PhysAddr>(
    mut read: impl FnMut(P) -> u64,
    format: EntryFormat,
    root: P,
    levels: PagingLevels,
    input: u64,
) -> Slot<P> {
    let mut table = root;
    let mut level = levels.root();
    loop {
        let entry = entry_address(table, input, level);
        let value = read(entry);
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

/// The address of the lowest-level entry a search for `input` reads, found by reading (with
/// `read`, which answers `None` for an address it cannot reach) only the entries above it;
/// `None` when an upper entry already ends the search (not present, or a large leaf). The
/// simulator uses it to touch a walk's last entry early (see `Mode::prefetch`).
pub fn last_entry<P: PhysAddr>(
    mut read: impl FnMut(P) -> Option<u64>,
    format: EntryFormat,
    root: P,
    levels: PagingLevels,
    input: u64,
) -> Option<P> {
    let mut table = root;
    let mut level = levels.root();
    loop {
        let entry = entry_address(table, input, level);
        let lower = match level.next_lower() {
            Some(lower) => lower,
            None => return Some(entry),
        };
        let value = read(entry)?;
        if !format.is_present(value) || format.is_leaf(value, level) {
            return None;
        }
        table = P::from_raw(value & Pte::ADDRESS_MASK);
        level = lower;
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
    install_from(store, format, (root, levels.root()), input, size, leaf, table_entry_flags)
}

/// [`install`] starting at the table `from` (its address and level) instead of the root: the
/// table a search for `input` reached, when nothing has changed the entries above it since
/// (a fault handler installing where its lookup stopped).
pub fn install_from<P: PhysAddr, S: TableStore<P>>(
    store: &mut S,
    format: EntryFormat,
    from: (P, Level),
    input: u64,
    size: PageSize,
    leaf: u64,
    table_entry_flags: u64,
) -> Result<(u64, P), InstallError> {
    let leaf_level = size.leaf_level();
    let mut created = 0;
    let (mut table, mut level) = from;
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::addr::Hpa;
    use std::collections::HashMap;

    /// Four-level tables written by hand (P = bit 0, PS = bit 7, address in 51:12): PML4 at
    /// 0x1000, PDPT at 0x2000, PD at 0x3000 whose entry 0 points at a PT at 0x4000 (entry 5
    /// maps 0x9000, entry 6 absent), entry 1 maps a 2 MiB page at 0x20_0000, entry 2 absent.
    fn tables() -> HashMap<u64, u64> {
        HashMap::from([
            (0x1000, 0x2000 | 1),
            (0x2000, 0x3000 | 1),
            (0x3000, 0x4000 | 1),
            (0x3008, 0x20_0000 | 0x80 | 1),
            (0x4000 + 5 * 8, 0x9000 | 1),
        ])
    }

    #[test]
    fn last_entry_reads_only_the_entries_above_it() {
        let memory = tables();
        let mut reads = Vec::new();
        let mut read = |addr: Hpa| {
            reads.push(addr.as_u64());
            Some(memory.get(&addr.as_u64()).copied().unwrap_or(0))
        };
        let root = Hpa::new(0x1000);
        let last = |va: u64, read: &mut dyn FnMut(Hpa) -> Option<u64>| {
            last_entry(read, EntryFormat::X86, root, PagingLevels::Four, va)
        };
        assert_eq!(last(5 << 12, &mut read), Some(Hpa::new(0x4028)));
        assert_eq!(last(6 << 12, &mut read), Some(Hpa::new(0x4030)));
        // A large leaf or an absent PDE ends the walk above the PT level.
        assert_eq!(last(1 << 21 | 0x456, &mut read), None);
        assert_eq!(last(2 << 21, &mut read), None);
        // Memory it cannot reach ends the search too.
        assert_eq!(last_entry(|_: Hpa| None, EntryFormat::X86, root, PagingLevels::Four, 5 << 12), None);
        // The PT entries themselves were never read.
        assert!(reads.iter().all(|&addr| addr < 0x4000), "{reads:x?}");
    }

    #[test]
    fn a_search_maps_through_leaves_of_every_size() {
        let memory = tables();
        let search_at = |va: u64| {
            search(
                |a: Hpa| memory.get(&a.as_u64()).copied().unwrap_or(0),
                EntryFormat::X86,
                Hpa::new(0x1000),
                PagingLevels::Four,
                va,
            )
        };
        assert_eq!(search_at(5 << 12 | 0x123).mapped(5 << 12 | 0x123), Some((0x9123, PageSize::Size4K)));
        assert_eq!(search_at(1 << 21 | 0x456).mapped(1 << 21 | 0x456), Some((0x20_0456, PageSize::Size2M)));
        let absent = search_at(6 << 12);
        assert_eq!((absent.entry, absent.level, absent.mapped(6 << 12)), (Hpa::new(0x4030), Level::Pt, None));
        assert_eq!(search_at(2 << 21).level, Level::Pd);
    }
    /// Tables in a map, new ones taken from 0x10_0000 up.
    struct MapStore(HashMap<u64, u64>, u64);

    impl TableStore<Hpa> for MapStore {
        fn read(&mut self, addr: Hpa) -> u64 {
            self.0.get(&addr.as_u64()).copied().unwrap_or(0)
        }
        fn write(&mut self, addr: Hpa, value: u64) {
            self.0.insert(addr.as_u64(), value);
        }
        fn new_table(&mut self) -> Result<Hpa, OutOfFrames> {
            self.1 += 0x1000;
            Ok(Hpa::new(self.1))
        }
    }

    #[test]
    fn installing_where_a_search_stopped_equals_installing_from_the_root() {
        // Below an absent PTE, an absent PDE, and a root with nothing under it.
        for va in [6u64 << 12, 2 << 21 | 0x3000, 1 << 39 | 0x7000] {
            let (mut from_root, mut from_slot) =
                (MapStore(tables(), 0x10_0000), MapStore(tables(), 0x10_0000));
            let root = Hpa::new(0x1000);
            let four = PagingLevels::Four;
            let leaf = 0xa000 | 1;
            let a = install(&mut from_root, EntryFormat::X86, root, four, va, PageSize::Size4K, leaf, 7);
            let slot = lookup(&mut from_slot, EntryFormat::X86, root, four, va);
            let b =
                install_from(&mut from_slot, EntryFormat::X86, slot.table(), va, PageSize::Size4K, leaf, 7);
            assert_eq!(a, b, "{va:x}");
            assert_eq!(from_root.0, from_slot.0, "{va:x}");
            assert_eq!(
                search(|a: Hpa| from_slot.read(a), EntryFormat::X86, root, four, va).mapped(va),
                Some((0xa000, PageSize::Size4K))
            );
        }
    }
}
