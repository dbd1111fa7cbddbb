//! The two hardware formats of nested paging behind one trait: Intel EPT and AMD NPT.

use std::convert::Infallible;

use serde::Serialize;

use crate::addr::{Gpa, Gva, Hpa, Level, PageSize, PagingLevels};
use crate::ept::{ept_walk_from, EptEntry, EptOutcome, EptStart, Eptp, ExitQualification, NestedAccess};
use crate::paging::builder::EntryFormat;
use crate::paging::{
    walk_from, Access, AccessKind, AdPolicy, CpuState, Privilege, Pte, Rights, TableMemory, WalkOutcome,
    WalkStart,
};

/// Why a nested translation failed: the VM exit it causes.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum NestedFault {
    /// Intel EPT violation (exit reason 48) with its exit qualification.
    EptViolation(ExitQualification),
    /// Intel EPT misconfiguration (exit reason 49).
    EptMisconfig,
    /// AMD nested page fault (#VMEXIT(NPF)) with EXITINFO1: the #PF-style error code in bits
    /// 31:0, bit 32 set for the final guest-physical address, bit 33 for a guest-table access.
    NestedPageFault(u64),
}

/// The result of one nested translation.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum NestedOutcome {
    /// The nested page holding the GPA and its size.
    Mapped {
        /// The first byte of the host page.
        page: Hpa,
        /// The nested page size.
        size: PageSize,
    },
    /// A VM exit.
    Fault(NestedFault),
}

/// A nested-paging table format.
pub trait NestedFormat {
    /// The mode's name.
    fn name(&self) -> &'static str;
    /// The nested tables' depth.
    fn levels(&self) -> PagingLevels;
    /// What makes an entry present.
    fn entry_format(&self) -> EntryFormat;
    /// The flags of an entry pointing at a lower nested table.
    fn table_flags(&self) -> u64;
    /// A read-write-execute leaf mapping `page` as a page of `size`.
    fn leaf(&self, page: Hpa, size: PageSize) -> u64;
    /// How the second dimension sees the guest walker's reads of guest tables.
    fn guest_table_access(&self) -> AccessKind;
    /// Translates `gpa` through the nested tables at `root`.
    fn translate<M: TableMemory<Hpa, Error = Infallible>>(
        &self,
        mem: &mut M,
        root: Hpa,
        gpa: Gpa,
        access: NestedAccess,
    ) -> NestedOutcome {
        self.translate_from(mem, self.root_start(root), gpa, access, &mut |_, _, _| {})
    }

    /// The bit of a nested leaf that says the page was written, or 0 where writes are not
    /// tracked (EPT with A/D flags off): every cached mapping then serves writes.
    fn dirty_bit(&self) -> u64;

    /// Where a walk of the nested tables at `root` begins with nothing cached.
    fn root_start(&self, root: Hpa) -> NestedStart;

    /// [`NestedFormat::translate`] from `start` (a root, or what a guest-physical
    /// paging-structure cache supplied). After a successful walk, `on_table(level, next,
    /// perms)` is told every non-leaf entry used, top down, so such a cache can keep them.
    fn translate_from<M: TableMemory<Hpa, Error = Infallible>>(
        &self,
        mem: &mut M,
        start: NestedStart,
        gpa: Gpa,
        access: NestedAccess,
        on_table: &mut dyn FnMut(Level, Hpa, u64),
    ) -> NestedOutcome;
}

/// Where a nested walk begins: the table to read first, its level, and the rights the entries
/// above it grant in the format's own encoding (EPT's R/W/X bits; for NPT, W in bit 1, U in
/// bit 2 and NX in bit 63, as in an entry).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct NestedStart {
    /// The nested table to read first.
    pub table: Hpa,
    /// Its level.
    pub level: Level,
    /// The rights of the entries above it.
    pub perms: u64,
}

/// Intel EPT.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Ept {
    /// Walk length.
    pub levels: PagingLevels,
    /// EPT accessed/dirty flags enabled (EPTP bit 6).
    pub ad: bool,
    /// The host's MAXPHYADDR.
    pub phys_bits: u8,
}

impl NestedFormat for Ept {
    fn name(&self) -> &'static str {
        "ept"
    }
    fn levels(&self) -> PagingLevels {
        self.levels
    }
    fn entry_format(&self) -> EntryFormat {
        EntryFormat::EPT
    }
    fn table_flags(&self) -> u64 {
        EptEntry::RWX
    }
    fn leaf(&self, page: Hpa, size: PageSize) -> u64 {
        EptEntry::leaf(page, size).0
    }
    /// With EPT A/D on, guest paging-structure accesses count as writes (SDM Vol. 3C
    /// §29.3.5); otherwise as reads.
    fn guest_table_access(&self) -> AccessKind {
        if self.ad {
            AccessKind::Write
        } else {
            AccessKind::Read
        }
    }
    fn root_start(&self, root: Hpa) -> NestedStart {
        NestedStart { table: root, level: self.levels.root(), perms: EptEntry::RWX }
    }

    fn dirty_bit(&self) -> u64 {
        if self.ad {
            EptEntry::DIRTY
        } else {
            0
        }
    }

    fn translate_from<M: TableMemory<Hpa, Error = Infallible>>(
        &self,
        mem: &mut M,
        start: NestedStart,
        gpa: Gpa,
        access: NestedAccess,
        on_table: &mut dyn FnMut(Level, Hpa, u64),
    ) -> NestedOutcome {
        let eptp = Eptp::new(start.table, self.levels, self.ad);
        let from = EptStart { table: start.table, level: start.level, allowed: start.perms };
        match ept_walk_from(mem, eptp, from, gpa, access, self.phys_bits, on_table) {
            EptOutcome::Mapped { page, size } => NestedOutcome::Mapped { page, size },
            EptOutcome::Violation(q) => NestedOutcome::Fault(NestedFault::EptViolation(q)),
            EptOutcome::Misconfig(_) => NestedOutcome::Fault(NestedFault::EptMisconfig),
        }
    }
}

/// AMD NPT: nested tables in the ordinary x86-64 format, walked as user-mode accesses.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Npt {
    /// Walk length (the host's paging mode).
    pub levels: PagingLevels,
    /// The host's MAXPHYADDR.
    pub phys_bits: u8,
}

/// EXITINFO1 bit 32: the fault happened translating the final guest-physical address.
pub const NPF_FINAL_ADDRESS: u64 = 1 << 32;
/// EXITINFO1 bit 33: the fault happened translating a guest page-table access.
pub const NPF_GUEST_TABLE: u64 = 1 << 33;

impl Npt {
    /// The host paging state the nested walk runs under.
    fn host_cpu(&self) -> CpuState {
        CpuState {
            levels: self.levels,
            wp: true,
            smep: false,
            smap: false,
            ac: false,
            nxe: true,
            pge: false,
            pcide: false,
            phys_bits: self.phys_bits,
        }
    }
}

impl NestedFormat for Npt {
    fn name(&self) -> &'static str {
        "npt"
    }
    fn levels(&self) -> PagingLevels {
        self.levels
    }
    fn entry_format(&self) -> EntryFormat {
        EntryFormat::X86
    }
    fn table_flags(&self) -> u64 {
        Pte::PRESENT | Pte::WRITABLE | Pte::USER
    }
    fn leaf(&self, page: Hpa, size: PageSize) -> u64 {
        let large = if size == PageSize::Size4K { 0 } else { Pte::PAGE_SIZE };
        Pte::new(page, Pte::PRESENT | Pte::WRITABLE | Pte::USER | large).0
    }
    /// The nested walk treats guest page-table accesses as user writes (APM Vol. 2 §15.25.5),
    /// so the guest walker can set A/D bits in them.
    fn guest_table_access(&self) -> AccessKind {
        AccessKind::Write
    }
    fn root_start(&self, root: Hpa) -> NestedStart {
        NestedStart { table: root, level: self.levels.root(), perms: rights_bits(Rights::ALL) }
    }

    fn dirty_bit(&self) -> u64 {
        Pte::DIRTY
    }

    fn translate_from<M: TableMemory<Hpa, Error = Infallible>>(
        &self,
        mem: &mut M,
        start: NestedStart,
        gpa: Gpa,
        access: NestedAccess,
        on_table: &mut dyn FnMut(Level, Hpa, u64),
    ) -> NestedOutcome {
        let place = if access.final_translation { NPF_FINAL_ADDRESS } else { NPF_GUEST_TABLE };
        // The nested table's input is the guest-physical address, walked like a linear one. A
        // physical address has no canonical form: its top index bit is copied upwards only so
        // the walker's linear-address check passes; the indices do not change.
        let bits = self.levels.linear_bits();
        let raw = gpa.as_u64();
        let write = if access.kind == AccessKind::Write { 2 } else { 0 };
        if raw >> bits != 0 {
            // Beyond what the nested tables can map: reported as not present.
            return NestedOutcome::Fault(NestedFault::NestedPageFault(4 | write | place));
        }
        let shift = 64 - bits;
        #[allow(clippy::cast_possible_wrap, clippy::cast_sign_loss)]
        let input = Gva::new_truncate((((raw << shift) as i64) >> shift) as u64);
        let nested_access = Access::new(access.kind, Privilege::User);
        let from = WalkStart { table: start.table, level: start.level, rights: rights_of(start.perms) };
        let cpu = self.host_cpu();
        let outcome = walk_from(mem, from, input, nested_access, &cpu, AdPolicy::Update, |step| {
            on_table(step.level, step.next, rights_bits(step.rights));
        });
        match outcome {
            WalkOutcome::Mapped(t) => NestedOutcome::Mapped { page: t.page, size: t.size },
            WalkOutcome::PageFault(fault) => {
                NestedOutcome::Fault(NestedFault::NestedPageFault(u64::from(fault.code.bits()) | place))
            }
            // Unreachable: the input was made canonical above.
            WalkOutcome::NonCanonical => {
                NestedOutcome::Fault(NestedFault::NestedPageFault(4 | write | place))
            }
            WalkOutcome::Memory(never) => match never {},
        }
    }
}

/// NPT rights as entry bits (W in bit 1, U in bit 2, NX in bit 63), for [`NestedStart`].
fn rights_bits(rights: Rights) -> u64 {
    let mut bits = 0;
    if rights.writable {
        bits |= Pte::WRITABLE;
    }
    if rights.user {
        bits |= Pte::USER;
    }
    if rights.no_execute {
        bits |= Pte::NO_EXECUTE;
    }
    bits
}

/// The reverse of [`rights_bits`].
fn rights_of(bits: u64) -> Rights {
    Rights {
        writable: bits & Pte::WRITABLE != 0,
        user: bits & Pte::USER != 0,
        no_execute: bits & Pte::NO_EXECUTE != 0,
    }
}
