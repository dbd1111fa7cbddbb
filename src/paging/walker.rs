//! The one x86-64 page walker (SDM Vol. 3A §4.5) used for every kind of table.
//!
//! The walker reads entries through [`TableMemory`], so the same code walks guest tables whose
//! entries are addressed by GPA (reached through EPT or memory slots), shadow and host tables
//! addressed by HPA, and native tables. Each `read_entry` call is one memory reference: a
//! wrapper implementing the trait can count or trace them without touching the walk itself.
//!
//! Accessed and dirty bits are set only once the whole walk has succeeded: a faulting walk
//! changes nothing.

use crate::addr::{Gva, Level, PageSize, PhysAddr, TableIndex};
use crate::paging::access::{Access, PfErrorCode};
use crate::paging::cpu::CpuState;
use crate::paging::entry::Pte;
use crate::paging::permission::Rights;

/// Where a walker reads and writes paging-structure entries.
pub trait TableMemory<P: PhysAddr> {
    /// Why an entry could not be read (for a guest table reached through EPT: a violation).
    type Error;

    /// Reads the 8-byte entry at `addr`, which belongs to a table at `level`.
    /// Each call is one memory reference.
    fn read_entry(&mut self, addr: P, level: Level) -> Result<u64, Self::Error>;

    /// Writes back an entry whose accessed or dirty bit the walk sets.
    fn write_entry(&mut self, addr: P, level: Level, value: u64) -> Result<(), Self::Error>;

    /// Where the table at `table` lives in host memory, if this memory had to translate it
    /// during the walk (a guest table under nested paging); `None` when tables are addressed
    /// as they are stored. A combined paging-structure cache keeps this address.
    fn table_host(&self, _table: P) -> Option<u64> {
        None
    }

    /// The walk starts at `table`, which a combined paging-structure cache says lives at
    /// `host`: its entries are read there without translating `table` again.
    fn enter_table(&mut self, _table: P, _host: u64) {}
}

/// Whether a walk sets accessed/dirty bits (the processor does; an inspecting tool does not).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum AdPolicy {
    /// Set A in every entry used and D in the leaf on a write, as the processor does.
    Update,
    /// Leave memory untouched.
    Leave,
}

/// A successful translation.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Translation<P> {
    /// The first byte of the page the address falls in.
    pub page: P,
    /// The page's size.
    pub size: PageSize,
    /// The rights combined over every level.
    pub rights: Rights,
    /// The leaf's G bit (meaningful with CR4.PGE).
    pub global: bool,
    /// The leaf's D bit once the walk is done.
    pub dirty: bool,
    /// Where the leaf entry is.
    pub leaf_entry: P,
    /// The level the leaf was found at.
    pub leaf_level: Level,
}

impl<P: PhysAddr> Translation<P> {
    /// The translated address of `va`.
    pub fn address(&self, va: Gva) -> P {
        P::from_raw(self.page.raw() | va.page_offset(self.size))
    }
}

/// A page fault the walk raised.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct PageFault {
    /// The error code the processor pushes.
    pub code: PfErrorCode,
    /// The level of the entry that stopped the walk (for permission faults: the leaf).
    pub level: Level,
}

/// The result of a walk.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum WalkOutcome<P, E> {
    /// The address translates.
    Mapped(Translation<P>),
    /// A page fault (#PF) with its error code.
    PageFault(PageFault),
    /// The address is not canonical for the paging mode: #GP, no walk is made.
    NonCanonical,
    /// The table memory refused a reference (for example an EPT violation on a guest table).
    Memory(E),
}

/// Where a walk begins: at the root, or lower down where a paging-structure cache supplied
/// the upper entries.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct WalkStart<P> {
    /// The table to read first.
    pub table: P,
    /// Its level.
    pub level: Level,
    /// The rights the skipped upper entries grant.
    pub rights: Rights,
}

impl<P: PhysAddr> WalkStart<P> {
    /// A full walk from the root table (CR3's address bits).
    pub fn root(root: P, cpu: &CpuState) -> Self {
        Self { table: root, level: cpu.levels.root(), rights: Rights::ALL }
    }
}

/// One non-leaf entry a successful walk passed through, as a paging-structure cache keeps it.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct TableStep<P> {
    /// The level of the entry.
    pub level: Level,
    /// The next-lower table it points at.
    pub next: P,
    /// Rights accumulated down to and including this entry.
    pub rights: Rights,
}

/// Translates `va` for `access` starting from the root table at `root` (CR3's address bits).
pub fn walk<P: PhysAddr, M: TableMemory<P>>(
    mem: &mut M,
    root: P,
    va: Gva,
    access: Access,
    cpu: &CpuState,
    ad: AdPolicy,
) -> WalkOutcome<P, M::Error> {
    walk_from(mem, WalkStart::root(root, cpu), va, access, cpu, ad, |_| {})
}

/// Translates `va` starting at `start`. After a successful walk, `on_table` is told every
/// non-leaf entry used, top down, so a paging-structure cache can keep them.
// Always inlined: in a mode's walk the compiler otherwise inlines it or not from one build to
// the next, and the call (a large outcome returned through memory, the closure and the
// A/D policy no longer known) costs about a tenth of a miss-heavy run's instructions.
#[inline(always)]
pub fn walk_from<P: PhysAddr, M: TableMemory<P>>(
    mem: &mut M,
    start: WalkStart<P>,
    va: Gva,
    access: Access,
    cpu: &CpuState,
    ad: AdPolicy,
    mut on_table: impl FnMut(TableStep<P>),
) -> WalkOutcome<P, M::Error> {
    if !va.is_canonical_for(cpu.levels) {
        return WalkOutcome::NonCanonical;
    }
    // The fault code bits that depend only on the access.
    let mut access_bits = 0;
    if access.is_write() {
        access_bits |= PfErrorCode::WRITE;
    }
    if access.is_user() {
        access_bits |= PfErrorCode::USER;
    }
    if access.is_fetch() && (cpu.nxe || cpu.smep) {
        access_bits |= PfErrorCode::FETCH;
    }
    let fault = |level: Level, extra: u32| {
        WalkOutcome::PageFault(PageFault { code: PfErrorCode::from_bits(access_bits | extra), level })
    };

    // Entries used (address, value), root first, so A bits can be set once the walk has
    // succeeded, and the rights down to each; the first is at the start level, each next one
    // level lower.
    let mut used = [(0u64, 0u64); 5];
    let mut rights_to = [Rights::ALL; 5];
    let mut used_len = 0;
    let mut rights = start.rights;
    let mut table = start.table.raw() & Pte::ADDRESS_MASK;
    let mut level = start.level;
    loop {
        let index: TableIndex = va.table_index(level);
        let entry_addr = table | index.byte_offset();
        let raw = match mem.read_entry(P::from_raw(entry_addr), level) {
            Ok(raw) => raw,
            Err(error) => return WalkOutcome::Memory(error),
        };
        let pte = Pte(raw);
        if !pte.has(Pte::PRESENT) {
            return fault(level, 0);
        }
        if raw & pte.reserved_mask(level, cpu) != 0 {
            return fault(level, PfErrorCode::PRESENT | PfErrorCode::RESERVED);
        }
        rights.writable &= pte.has(Pte::WRITABLE);
        rights.user &= pte.has(Pte::USER);
        rights.no_execute |= cpu.nxe && pte.has(Pte::NO_EXECUTE);
        used[used_len] = (entry_addr, raw);
        rights_to[used_len] = rights;
        used_len += 1;

        let leaf_size = match level {
            Level::Pt => Some(PageSize::Size4K),
            Level::Pd | Level::Pdpt if pte.has(Pte::PAGE_SIZE) => level.leaf_size(),
            _ => None,
        };
        if let Some(size) = leaf_size {
            if !rights.permit(access, cpu) {
                return fault(level, PfErrorCode::PRESENT);
            }
            let mut dirty = pte.has(Pte::DIRTY);
            if ad == AdPolicy::Update {
                let mut at = start.level;
                for (i, &(addr, value)) in used[..used_len].iter().enumerate() {
                    let mut new = value | Pte::ACCESSED;
                    if i + 1 == used_len && access.is_write() {
                        new |= Pte::DIRTY;
                        dirty = true;
                    }
                    if new != value {
                        if let Err(error) = mem.write_entry(P::from_raw(addr), at, new) {
                            return WalkOutcome::Memory(error);
                        }
                    }
                    at = at.next_lower().unwrap_or(at);
                }
            }
            let mut at = start.level;
            for (&(_, value), &so_far) in used[..used_len - 1].iter().zip(&rights_to) {
                on_table(TableStep {
                    level: at,
                    next: P::from_raw(value & Pte::ADDRESS_MASK),
                    rights: so_far,
                });
                at = at.next_lower().unwrap_or(at);
            }
            return WalkOutcome::Mapped(Translation {
                page: P::from_raw(raw & Pte::ADDRESS_MASK & !(size.bytes() - 1)),
                size,
                rights,
                global: pte.has(Pte::GLOBAL),
                dirty,
                leaf_entry: P::from_raw(entry_addr),
                leaf_level: level,
            });
        }
        table = raw & Pte::ADDRESS_MASK;
        level = match level.next_lower() {
            Some(lower) => lower,
            // Unreachable: a PT entry is always a leaf. Treat it as a reserved-bit fault
            // rather than panic.
            None => return fault(level, PfErrorCode::PRESENT | PfErrorCode::RESERVED),
        };
    }
}
