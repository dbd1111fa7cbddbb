//! The EPT walk: guest-physical to host-physical through the EPT (SDM Vol. 3C §29.3.2).

use std::convert::Infallible;

use crate::addr::{Gpa, Hpa, Level, PageSize};
use crate::ept::entry::EptEntry;
use crate::ept::eptp::Eptp;
use crate::ept::qualification::ExitQualification;
use crate::paging::{AccessKind, TableMemory};

/// An access the EPT must allow.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct NestedAccess {
    /// Read, write or fetch as the second dimension sees it.
    pub kind: AccessKind,
    /// The access is to the translated linear address (not to a guest paging-structure
    /// entry).
    pub final_translation: bool,
}

/// The result of an EPT walk.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum EptOutcome {
    /// Mapped: the host page and its size.
    Mapped {
        /// The first byte of the host page holding the GPA.
        page: Hpa,
        /// The EPT page size.
        size: PageSize,
    },
    /// An EPT violation (exit reason 48).
    Violation(ExitQualification),
    /// An EPT misconfiguration (exit reason 49) at an entry of `level`.
    Misconfig(Level),
}

/// Where an EPT walk begins: at the root, or lower where a guest-physical paging-structure
/// cache supplied the upper entries (SDM Vol. 3C §29.4.1).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct EptStart {
    /// The EPT table to read first.
    pub table: Hpa,
    /// Its level.
    pub level: Level,
    /// The R/W/X rights (bits 2:0) the skipped entries grant together.
    pub allowed: u64,
}

impl EptStart {
    /// A walk from the EPT root `eptp` points at.
    pub fn root(eptp: Eptp) -> Self {
        Self { table: eptp.root(), level: eptp.levels().root(), allowed: EptEntry::RWX }
    }
}

/// Translates `gpa` for `access` through the EPT `eptp` points at. `phys_bits` is the host's
/// MAXPHYADDR. With A/D enabled, sets A in every entry used and D in the leaf of a write, once
/// the walk has succeeded.
pub fn ept_walk<M: TableMemory<Hpa, Error = Infallible>>(
    mem: &mut M,
    eptp: Eptp,
    gpa: Gpa,
    access: NestedAccess,
    phys_bits: u8,
) -> EptOutcome {
    ept_walk_from(mem, eptp, EptStart::root(eptp), gpa, access, phys_bits, |_, _, _| {})
}

/// [`ept_walk`] from `start`. After a successful walk, `on_table(level, next, allowed)` is told
/// every non-leaf entry used, top down: its level, the next EPT table, and the rights the
/// entries down to it grant, so a guest-physical paging-structure cache can keep them.
pub fn ept_walk_from<M: TableMemory<Hpa, Error = Infallible>>(
    mem: &mut M,
    eptp: Eptp,
    start: EptStart,
    gpa: Gpa,
    access: NestedAccess,
    phys_bits: u8,
    mut on_table: impl FnMut(Level, Hpa, u64),
) -> EptOutcome {
    let needed = match access.kind {
        AccessKind::Read => EptEntry::READ,
        AccessKind::Write => EptEntry::WRITE,
        AccessKind::Fetch => EptEntry::EXECUTE,
    };
    let mut allowed = start.allowed & EptEntry::RWX;
    // Entries used (address, value, rights down to it), from the start level; each is one
    // level below the one before.
    let mut used = [(0u64, 0u64, 0u64); 5];
    let mut used_len = 0;
    let mut table = start.table.as_u64() & EptEntry::ADDRESS_MASK;
    let mut level = start.level;
    let input = gpa.as_u64();
    loop {
        let entry_addr = table | (((input >> level.shift()) & 0x1ff) * 8);
        let Ok(raw) = mem.read_entry(Hpa::new(entry_addr), level);
        let entry = EptEntry(raw);
        if !entry.is_present() {
            return EptOutcome::Violation(qualification(access, 0, eptp));
        }
        if entry.is_misconfigured(level, phys_bits) {
            return EptOutcome::Misconfig(level);
        }
        allowed &= raw;
        if let Some(slot) = used.get_mut(used_len) {
            *slot = (entry_addr, raw, allowed);
            used_len += 1;
        }
        if entry.is_leaf(level) {
            if allowed & needed == 0 {
                return EptOutcome::Violation(qualification(access, allowed, eptp));
            }
            if eptp.ad_enabled() {
                let mut at = start.level;
                for (i, &(addr, value, _)) in used[..used_len].iter().enumerate() {
                    let mut new = value | EptEntry::ACCESSED;
                    if i + 1 == used_len && access.kind == AccessKind::Write {
                        new |= EptEntry::DIRTY;
                    }
                    if new != value {
                        let Ok(()) = mem.write_entry(Hpa::new(addr), at, new);
                    }
                    at = at.next_lower().unwrap_or(at);
                }
            }
            let mut at = start.level;
            for &(_, value, so_far) in &used[..used_len.saturating_sub(1)] {
                on_table(at, Hpa::new(value & EptEntry::ADDRESS_MASK), so_far & EptEntry::RWX);
                at = at.next_lower().unwrap_or(at);
            }
            let size = level.leaf_size().unwrap_or(PageSize::Size4K);
            let page = raw & EptEntry::ADDRESS_MASK & !(size.bytes() - 1);
            return EptOutcome::Mapped { page: Hpa::new(page), size };
        }
        table = raw & EptEntry::ADDRESS_MASK;
        level = match level.next_lower() {
            Some(lower) => lower,
            None => return EptOutcome::Misconfig(level),
        };
    }
}

/// The exit qualification of a violation by `access` where the entries walked allowed
/// `allowed` (R/W/X in bits 2:0; 0 when the walk met a non-present entry).
fn qualification(access: NestedAccess, allowed: u64, eptp: Eptp) -> ExitQualification {
    let mut bits = match access.kind {
        AccessKind::Read => ExitQualification::READ,
        // With EPT A/D on, a guest paging-structure access counts as a write, and a violation
        // it causes reports both read and write (SDM Vol. 3C §28.2.1, note to bits 0-1).
        AccessKind::Write if eptp.ad_enabled() && !access.final_translation => {
            ExitQualification::READ | ExitQualification::WRITE
        }
        AccessKind::Write => ExitQualification::WRITE,
        AccessKind::Fetch => ExitQualification::FETCH,
    };
    bits |= (allowed & EptEntry::RWX) << 3;
    bits |= ExitQualification::LINEAR_VALID;
    if access.final_translation {
        bits |= ExitQualification::FINAL_TRANSLATION;
    }
    ExitQualification(bits)
}
