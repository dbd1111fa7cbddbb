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
    let needed = match access.kind {
        AccessKind::Read => EptEntry::READ,
        AccessKind::Write => EptEntry::WRITE,
        AccessKind::Fetch => EptEntry::EXECUTE,
    };
    let mut allowed = EptEntry::RWX;
    // Entries used (address, value), root first; each is one level below the one before.
    let mut used = [(0u64, 0u64); 5];
    let mut used_len = 0;
    let mut table = eptp.root().as_u64();
    let mut level = eptp.levels().root();
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
        used[used_len] = (entry_addr, raw);
        used_len += 1;
        if entry.is_leaf(level) {
            if allowed & needed == 0 {
                return EptOutcome::Violation(qualification(access, allowed, eptp));
            }
            if eptp.ad_enabled() {
                let mut at = eptp.levels().root();
                for (i, &(addr, value)) in used[..used_len].iter().enumerate() {
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
