//! Conformance tests for the EPT walker, [`memvirt::ept::ept_walk`], and the AMD NPT nested
//! walk, [`memvirt::vmm::nested::format::Npt`].
//!
//! Every expected result comes from reference models written in this file from the manuals
//! alone (the walkers' sources were not consulted):
//!
//! - Intel SDM Vol. 3C §29.3.2 (EPT translation mechanism, entry formats): an entry is present
//!   iff any of bits 2:0 is set; bits 7:3 are reserved in an entry that references another EPT
//!   paging structure (PML5E, PML4E, PDPTE/PDE with bit 7 = 0); bit 7 = 1 in a PDPTE/PDE makes
//!   it map a 1-GByte/2-MByte page whose bits 29:12 / 20:12 are reserved; bits 51:N (N =
//!   MAXPHYADDR) are reserved everywhere; bits 63:52 are ignored (no #VE, no SPP, no
//!   mode-based execute, no guest-paging verification here); bit 7 of a PTE is ignored.
//! - §29.3.3.1 EPT misconfigurations: bits 2:0 = 010b or 110b; a present entry with a
//!   reserved bit set; a leaf whose memory type (bits 5:3) is 2, 3 or 7. The SDM text names the
//!   PDE with bit 7 = 1 and the PTE; the 1-GByte PDPTE carries its memory type in the same bits
//!   (its format table) and is checked the same way here.
//! - §29.3.3.2 EPT violations: a not-present entry, or a read/write/fetch with bit 0/1/2 clear
//!   in any entry used, when there is no misconfiguration (so a misconfiguration lower in the
//!   walk wins over a permission violation higher up).
//! - §29.3.5 accessed and dirty flags: with EPTP bit 6 set, bit 8 (A) is set in every entry
//!   used and bit 9 (D) in the entry that maps the page on a write.
//! - Vol. 3C §28.2.1, "Exit Qualification for EPT Violations": bits 0-2 access kind (with EPT
//!   A/D enabled a guest paging-structure access is treated as a write and sets both bits 0
//!   and 1, the table's footnote), bits 3-5 the AND of bits 0-2 over the entries used, bit 7
//!   guest-linear valid, bit 8 final translation.
//! - AMD APM Vol. 2 §15.25 (nested paging): nested tables in the long-mode format, walked as
//!   user accesses; #VMEXIT(NPF) EXITINFO1 = #PF error code (P, W, U, RSVD, I/D) plus bit 32
//!   (final guest-physical address) or bit 33 (guest page-table access). Reserved bits follow
//!   SDM Vol. 3A §4.5 / APM §5.3: 51:M, PS in PML5E/PML4E, 20:13 / 29:13 in a 2-MByte /
//!   1-GByte leaf.
//!
//! Design promises of the crate, also checked: execute-only EPT entries are allowed; mode-based
//! execute control is off; the walk stops at the first present misconfigured entry or the first
//! not-present entry, top-down; qualification bit 7 is always set and no bits other than 0-5,
//! 7, 8 are; bits 3-5 are 0 when a not-present entry was met; A/D are written only when the
//! walk maps, never with A/D disabled; NPT walks use CR0.WP = 1, EFER.NXE = 1, no SMEP/SMAP.
//!
//! The layout follows kvm-unit-tests: a recording memory of 8-byte entries, a table chain
//! built for a chosen GPA, then an enumeration of entry bits × access kind × final/guest-table
//! × A/D × 4/5 levels × MAXPHYADDR. Each case is compared on the outcome (page and size, exact
//! qualification / EXITINFO1, misconfiguration level), the exact sequence of `read_entry`
//! calls, the memory afterwards, and where writes may go. A few hand-computed golden cases pin
//! the reference models themselves.
//!
//! Deliberately not tested (the manuals leave them open or vendor-specific): bit 8 of NPT
//! PML4Es/PML5Es (AMD marks it MBZ, Intel ignores it), bits 62:59 of NPT leaves (protection
//! keys), and whether A/D writes happen when the flags are already set.

use std::collections::HashMap;
use std::convert::Infallible;

use memvirt::addr::{Gpa, Hpa, Level, PageSize, PagingLevels};
use memvirt::ept::{ept_walk, EptOutcome, Eptp, ExitQualification, NestedAccess};
use memvirt::paging::{AccessKind, TableMemory};
use memvirt::vmm::nested::format::{
    Ept, NestedFault, NestedFormat, NestedOutcome, Npt, NPF_FINAL_ADDRESS, NPF_GUEST_TABLE,
};

// ---------------------------------------------------------------------------------------------
// Bits.
// ---------------------------------------------------------------------------------------------

/// EPT bit 0: read access.
const ER: u64 = 1 << 0;
/// EPT bit 1: write access.
const EW: u64 = 1 << 1;
/// EPT bit 2: execute access.
const EX: u64 = 1 << 2;
/// EPT bits 2:0 all set.
const ERWX: u64 = ER | EW | EX;
/// EPT bit 6 of a leaf: ignore PAT.
const EIPAT: u64 = 1 << 6;
/// EPT bit 7: the PDPTE/PDE maps a page.
const ELARGE: u64 = 1 << 7;
/// EPT bit 8: accessed.
const EA: u64 = 1 << 8;
/// EPT bit 9: dirty (leaf only).
const ED: u64 = 1 << 9;
/// EPT memory type write-back (6) in bits 5:3.
const MT_WB: u64 = 6 << 3;

/// Exit qualification bits (SDM Vol. 3C §28.2.1).
const Q_READ: u64 = 1 << 0;
const Q_WRITE: u64 = 1 << 1;
const Q_FETCH: u64 = 1 << 2;
const Q_READABLE: u64 = 1 << 3;
const Q_WRITABLE: u64 = 1 << 4;
const Q_EXECUTABLE: u64 = 1 << 5;
const Q_LINEAR: u64 = 1 << 7;
const Q_FINAL: u64 = 1 << 8;

/// x86 entry bits (SDM Vol. 3A Tables 4-14 to 4-20; APM Vol. 2 §5.3).
const P: u64 = 1 << 0;
const RW: u64 = 1 << 1;
const US: u64 = 1 << 2;
const X86_A: u64 = 1 << 5;
const X86_D: u64 = 1 << 6;
const PS: u64 = 1 << 7;
const NX: u64 = 1 << 63;

/// #PF error code bits (SDM Vol. 3A §4.7), EXITINFO1 31:0.
const EC_P: u64 = 1 << 0;
const EC_W: u64 = 1 << 1;
const EC_U: u64 = 1 << 2;
const EC_RSVD: u64 = 1 << 3;
const EC_ID: u64 = 1 << 4;

/// The bits `hi:lo`, inclusive.
const fn bits(lo: u32, hi: u32) -> u64 {
    (u64::MAX >> (63 - hi)) & (u64::MAX << lo)
}

/// Bits 51:M, reserved in every entry.
fn above_m(m: u8) -> u64 {
    if m >= 52 {
        0
    } else {
        bits(u32::from(m), 51)
    }
}

/// Bits M-1:lo, an address field.
fn addr_field(m: u8, lo: u32) -> u64 {
    bits(lo, u32::from(m.min(52)) - 1)
}

const KINDS: [AccessKind; 3] = [AccessKind::Read, AccessKind::Write, AccessKind::Fetch];
const LEVEL_COUNTS: [PagingLevels; 2] = [PagingLevels::Four, PagingLevels::Five];
const LEAVES: [Level; 3] = [Level::Pt, Level::Pd, Level::Pdpt];

// ---------------------------------------------------------------------------------------------
// Levels, written out here.
// ---------------------------------------------------------------------------------------------

fn lower(level: Level) -> Option<Level> {
    match level {
        Level::Pml5 => Some(Level::Pml4),
        Level::Pml4 => Some(Level::Pdpt),
        Level::Pdpt => Some(Level::Pd),
        Level::Pd => Some(Level::Pt),
        Level::Pt => None,
    }
}

fn root_level(levels: PagingLevels) -> Level {
    match levels {
        PagingLevels::Four => Level::Pml4,
        PagingLevels::Five => Level::Pml5,
    }
}

fn slot(level: Level) -> usize {
    match level {
        Level::Pt => 0,
        Level::Pd => 1,
        Level::Pdpt => 2,
        Level::Pml4 => 3,
        Level::Pml5 => 4,
    }
}

/// Bits 56:48, 47:39, 38:30, 29:21, 20:12 of the GPA select one of 512 8-byte entries.
fn entry_offset(gpa: u64, level: Level) -> u64 {
    let shift = match level {
        Level::Pt => 12,
        Level::Pd => 21,
        Level::Pdpt => 30,
        Level::Pml4 => 39,
        Level::Pml5 => 48,
    };
    ((gpa >> shift) & 0x1ff) * 8
}

fn leaf_size(level: Level) -> PageSize {
    match level {
        Level::Pt => PageSize::Size4K,
        Level::Pd => PageSize::Size2M,
        _ => PageSize::Size1G,
    }
}

fn size_bytes(size: PageSize) -> u64 {
    match size {
        PageSize::Size4K => 1 << 12,
        PageSize::Size2M => 1 << 21,
        PageSize::Size1G => 1 << 30,
    }
}

/// The levels of a walk, root first, down to `leaf`.
fn path(levels: PagingLevels, leaf: Level) -> Vec<Level> {
    let mut out = Vec::new();
    let mut level = root_level(levels);
    loop {
        out.push(level);
        if level == leaf {
            return out;
        }
        level = lower(level).expect("leaf below root");
    }
}

// ---------------------------------------------------------------------------------------------
// Recording memory.
// ---------------------------------------------------------------------------------------------

/// Sparse memory of 8-byte entries (absent = 0) with a log of every reference.
#[derive(Default)]
struct Mem {
    cells: HashMap<u64, u64>,
    reads: Vec<(u64, Level)>,
    writes: Vec<(u64, Level, u64)>,
}

impl Mem {
    fn new(cells: &HashMap<u64, u64>) -> Self {
        Self { cells: cells.clone(), reads: Vec::with_capacity(5), writes: Vec::new() }
    }
}

impl TableMemory<Hpa> for Mem {
    type Error = Infallible;

    fn read_entry(&mut self, addr: Hpa, level: Level) -> Result<u64, Infallible> {
        let addr = addr.as_u64();
        self.reads.push((addr, level));
        Ok(self.cells.get(&addr).copied().unwrap_or(0))
    }

    fn write_entry(&mut self, addr: Hpa, level: Level, value: u64) -> Result<(), Infallible> {
        let addr = addr.as_u64();
        self.writes.push((addr, level, value));
        self.cells.insert(addr, value);
        Ok(())
    }
}

/// Memory with zero entries dropped, so "absent" and "written as 0" compare equal.
fn normalized(cells: &HashMap<u64, u64>) -> Vec<(u64, u64)> {
    let mut v: Vec<(u64, u64)> = cells.iter().filter(|(_, v)| **v != 0).map(|(a, v)| (*a, *v)).collect();
    v.sort_unstable();
    v
}

// ---------------------------------------------------------------------------------------------
// Table chains.
// ---------------------------------------------------------------------------------------------

/// Table frames by [`slot`]: PT, PD, PDPT, PML4, PML5; all below 2^35 (valid for M >= 36).
const FRAMES: [u64; 5] = [0x5_1234_5000, 0x4_2345_6000, 0x3_3456_7000, 0x2_4567_8000, 0x1_5678_9000];
/// The pages the leaves map.
const PAGE_4K: u64 = 0x6_789a_b000;
const PAGE_2M: u64 = 0x7_1ae0_0000;
const PAGE_1G: u64 = 0x6_c000_0000;

/// 4-level GPA (indices 0xd6, 0x169, 0x61, 0x1d2) and one with bit 47 set.
const GPA4: u64 = 0x0000_6b5a_4c3d_2e1f;
const GPA4_HIGH: u64 = 0x0000_eb5a_4c3d_2e1f;
/// 5-level GPA (PML5 index 0xd7) and one with bit 56 set.
const GPA5: u64 = 0x00d7_6b5a_4c3d_2e1f;
const GPA5_HIGH: u64 = 0x01d7_6b5a_4c3d_2e1f;

fn gpa_for(levels: PagingLevels) -> u64 {
    match levels {
        PagingLevels::Four => GPA4,
        PagingLevels::Five => GPA5,
    }
}

/// A chain for one GPA: `flags[slot]` are the non-address bits of each entry; the builder adds
/// the next table's frame, or the page for the entry at `leaf`.
#[derive(Clone, Debug)]
struct Chain {
    levels: PagingLevels,
    gpa: u64,
    leaf: Level,
    frames: [u64; 5],
    page: u64,
    flags: [u64; 5],
}

impl Chain {
    /// An EPT chain: RWX table entries, an RWX write-back leaf (bit 7 set at PD/PDPT).
    fn ept(levels: PagingLevels, gpa: u64, leaf: Level) -> Self {
        let mut flags = [ERWX; 5];
        flags[slot(leaf)] = ERWX | MT_WB | if leaf == Level::Pt { 0 } else { ELARGE };
        Self::with_flags(levels, gpa, leaf, flags)
    }

    /// An NPT chain: P|RW|US table entries and leaf (PS set at PD/PDPT).
    fn npt(levels: PagingLevels, gpa: u64, leaf: Level) -> Self {
        let mut flags = [P | RW | US; 5];
        flags[slot(leaf)] |= if leaf == Level::Pt { 0 } else { PS };
        Self::with_flags(levels, gpa, leaf, flags)
    }

    fn with_flags(levels: PagingLevels, gpa: u64, leaf: Level, flags: [u64; 5]) -> Self {
        let page = match leaf {
            Level::Pt => PAGE_4K,
            Level::Pd => PAGE_2M,
            _ => PAGE_1G,
        };
        Self { levels, gpa, leaf, frames: FRAMES, page, flags }
    }

    fn root(&self) -> u64 {
        self.frames[slot(root_level(self.levels))]
    }

    /// The address of the entry at `level`.
    fn entry_addr(&self, level: Level) -> u64 {
        self.frames[slot(level)] + entry_offset(self.gpa, level)
    }

    /// Lays the chain out.
    fn build(&self) -> HashMap<u64, u64> {
        let mut cells = HashMap::new();
        for level in path(self.levels, self.leaf) {
            let target = if level == self.leaf {
                self.page
            } else {
                self.frames[slot(lower(level).expect("non-leaf has a level below"))]
            };
            cells.insert(self.entry_addr(level), self.flags[slot(level)] | target);
        }
        cells
    }
}

/// Collected failures: the count and the first few descriptions.
#[derive(Default)]
struct Failures {
    count: usize,
    cases: usize,
    first: Vec<String>,
}

impl Failures {
    fn record(&mut self, failure: Option<String>) {
        self.cases += 1;
        if let Some(text) = failure {
            self.count += 1;
            if self.first.len() < 12 {
                self.first.push(text);
            }
        }
    }

    fn assert_none(&self, what: &str) {
        assert!(self.cases > 0, "{what}: no cases ran");
        assert!(
            self.count == 0,
            "{what}: {} of {} cases differ from the reference model; first ones:\n{}",
            self.count,
            self.cases,
            self.first.join("\n")
        );
    }
}

fn dump(cells: &HashMap<u64, u64>) -> String {
    normalized(cells).iter().map(|(a, v)| format!("[{a:#x}]={v:#018x}")).collect::<Vec<_>>().join(" ")
}

// ---------------------------------------------------------------------------------------------
// EPT reference model (SDM Vol. 3C §29.3.2-§29.3.5, §28.2.1).
// ---------------------------------------------------------------------------------------------

/// One EPT walk to make.
#[derive(Clone, Copy, Debug)]
struct EptCase {
    levels: PagingLevels,
    ad: bool,
    phys_bits: u8,
    root: u64,
    gpa: u64,
    kind: AccessKind,
    fin: bool,
}

/// An EPT walk's result in plain numbers.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum EptResult {
    Mapped { page: u64, size: PageSize },
    Violation(u64),
    Misconfig(Level),
}

/// What the reference model expects of a walk.
struct EptExpected {
    result: EptResult,
    reads: Vec<(u64, Level)>,
    after: HashMap<u64, u64>,
}

/// Qualification bits 0-2, 7 and 8 for the access (§28.2.1).
fn ept_access_bits(c: &EptCase) -> u64 {
    let kind = match c.kind {
        AccessKind::Read => Q_READ,
        // Table 28-7 footnote: with EPT A/D enabled a guest paging-structure access is treated
        // as a write, and a violation on it sets both bits 0 and 1.
        AccessKind::Write if c.ad && !c.fin => Q_READ | Q_WRITE,
        AccessKind::Write => Q_WRITE,
        AccessKind::Fetch => Q_FETCH,
    };
    kind | Q_LINEAR | if c.fin { Q_FINAL } else { 0 }
}

fn ept_needed(kind: AccessKind) -> u64 {
    match kind {
        AccessKind::Read => ER,
        AccessKind::Write => EW,
        AccessKind::Fetch => EX,
    }
}

fn ept_reference(cells: &HashMap<u64, u64>, c: &EptCase) -> EptExpected {
    let mut reads = Vec::new();
    let mut used = Vec::new();
    let mut after = cells.clone();
    let mut level = root_level(c.levels);
    let mut table = c.root;
    let mut and_rwx = ERWX;
    loop {
        let addr = table + entry_offset(c.gpa, level);
        reads.push((addr, level));
        let e = cells.get(&addr).copied().unwrap_or(0);
        let rwx = e & ERWX;
        if rwx == 0 {
            // Not present: bits 63:3 ignored; bits 3-5 of the qualification are the AND
            // including this entry, so 0.
            let q = ept_access_bits(c);
            return EptExpected { result: EptResult::Violation(q), reads, after };
        }
        // Bits 2:0 = 010b or 110b (write without read) is a misconfiguration.
        if rwx & (ER | EW) == EW {
            return EptExpected { result: EptResult::Misconfig(level), reads, after };
        }
        let is_leaf = match level {
            Level::Pt => true,
            Level::Pd | Level::Pdpt => e & ELARGE != 0,
            Level::Pml4 | Level::Pml5 => false,
        };
        let reserved = above_m(c.phys_bits)
            | match (level, is_leaf) {
                (_, false) => bits(3, 7),
                (Level::Pd, true) => bits(12, 20),
                (Level::Pdpt, true) => bits(12, 29),
                _ => 0,
            };
        if e & reserved != 0 {
            return EptExpected { result: EptResult::Misconfig(level), reads, after };
        }
        if is_leaf && matches!((e >> 3) & 7, 2 | 3 | 7) {
            return EptExpected { result: EptResult::Misconfig(level), reads, after };
        }
        and_rwx &= rwx;
        used.push(addr);
        if is_leaf {
            if and_rwx & ept_needed(c.kind) == 0 {
                let readable = if and_rwx & ER != 0 { Q_READABLE } else { 0 };
                let writable = if and_rwx & EW != 0 { Q_WRITABLE } else { 0 };
                let executable = if and_rwx & EX != 0 { Q_EXECUTABLE } else { 0 };
                let q = ept_access_bits(c) | readable | writable | executable;
                return EptExpected { result: EptResult::Violation(q), reads, after };
            }
            let size = leaf_size(level);
            let page = e & addr_field(c.phys_bits, 12) & !(size_bytes(size) - 1);
            if c.ad {
                for a in &used {
                    *after.get_mut(a).expect("used entry exists") |= EA;
                }
                if c.kind == AccessKind::Write {
                    *after.get_mut(&addr).expect("leaf exists") |= ED;
                }
            }
            return EptExpected { result: EptResult::Mapped { page, size }, reads, after };
        }
        table = e & addr_field(c.phys_bits, 12);
        level = lower(level).expect("a non-leaf PT entry is impossible");
    }
}

fn convert_ept(out: EptOutcome) -> EptResult {
    match out {
        EptOutcome::Mapped { page, size } => EptResult::Mapped { page: page.as_u64(), size },
        EptOutcome::Violation(q) => EptResult::Violation(q.0),
        EptOutcome::Misconfig(level) => EptResult::Misconfig(level),
    }
}

fn nested_access(kind: AccessKind, fin: bool) -> NestedAccess {
    NestedAccess { kind, final_translation: fin }
}

/// Runs `ept_walk` on a copy of `cells` and compares everything with the reference model.
fn check_ept(cells: &HashMap<u64, u64>, c: &EptCase, label: &str) -> Option<String> {
    let expected = ept_reference(cells, c);
    let mut mem = Mem::new(cells);
    let eptp = Eptp::new(Hpa::new(c.root), c.levels, c.ad);
    let got =
        convert_ept(ept_walk(&mut mem, eptp, Gpa::new(c.gpa), nested_access(c.kind, c.fin), c.phys_bits));
    compare_walk(
        Compared {
            label,
            case: &format!("{c:?}"),
            before: cells,
            expected_result: &format!("{:?}", expected.result),
            got_result: &format!("{got:?}"),
            results_equal: got == expected.result,
            expected_reads: &expected.reads,
            expected_after: &expected.after,
            may_write: c.ad && matches!(expected.result, EptResult::Mapped { .. }),
        },
        &mem,
    )
}

/// Everything needed to compare one walk, shared by the EPT and NPT checks.
struct Compared<'a> {
    label: &'a str,
    case: &'a str,
    before: &'a HashMap<u64, u64>,
    expected_result: &'a str,
    got_result: &'a str,
    results_equal: bool,
    expected_reads: &'a [(u64, Level)],
    expected_after: &'a HashMap<u64, u64>,
    may_write: bool,
}

fn compare_walk(c: Compared<'_>, mem: &Mem) -> Option<String> {
    let mut problems = Vec::new();
    if !c.results_equal {
        problems.push(format!("outcome: expected {} got {}", c.expected_result, c.got_result));
    }
    if mem.reads != c.expected_reads {
        problems.push(format!("reads: expected {:x?} got {:x?}", c.expected_reads, mem.reads));
    }
    if normalized(&mem.cells) != normalized(c.expected_after) {
        problems.push(format!("memory after: expected {} got {}", dump(c.expected_after), dump(&mem.cells)));
    }
    if !c.may_write && !mem.writes.is_empty() {
        problems.push(format!("writes: expected none got {:x?}", mem.writes));
    }
    for (addr, level, _) in &mem.writes {
        if !c.expected_reads.contains(&(*addr, *level)) {
            problems.push(format!("write to {addr:#x} ({level:?}) which is not an entry of the walk"));
        }
    }
    if problems.is_empty() {
        None
    } else {
        Some(format!(
            "[{}] {}\n    before: {}\n    {}",
            c.label,
            c.case,
            dump(c.before),
            problems.join("\n    ")
        ))
    }
}

/// Runs every access kind × final/guest-table × A/D for one memory image.
fn ept_all_accesses(
    failures: &mut Failures,
    cells: &HashMap<u64, u64>,
    base: (PagingLevels, u8, u64, u64),
    label: &str,
) {
    let (levels, phys_bits, root, gpa) = base;
    for ad in [false, true] {
        for kind in KINDS {
            for fin in [true, false] {
                let c = EptCase { levels, ad, phys_bits, root, gpa, kind, fin };
                failures.record(check_ept(cells, &c, label));
            }
        }
    }
}

fn ept_base(chain: &Chain, phys_bits: u8) -> (PagingLevels, u8, u64, u64) {
    (chain.levels, phys_bits, chain.root(), chain.gpa)
}

// ---------------------------------------------------------------------------------------------
// EPT: golden cases (hand-computed, pinning the reference model too).
// ---------------------------------------------------------------------------------------------

fn walk_once(cells: &HashMap<u64, u64>, c: &EptCase) -> (EptResult, Mem) {
    let mut mem = Mem::new(cells);
    let eptp = Eptp::new(Hpa::new(c.root), c.levels, c.ad);
    let out =
        convert_ept(ept_walk(&mut mem, eptp, Gpa::new(c.gpa), nested_access(c.kind, c.fin), c.phys_bits));
    (out, mem)
}

fn case4(kind: AccessKind, fin: bool, ad: bool) -> EptCase {
    EptCase { levels: PagingLevels::Four, ad, phys_bits: 46, root: FRAMES[3], gpa: GPA4, kind, fin }
}

#[test]
fn eptp_golden_values() {
    // EPTP (SDM Vol. 3C §25.6.11): 2:0 memory type (6 = WB), 5:3 walk length - 1, 6 A/D.
    assert_eq!(Eptp::new(Hpa::new(0x1234_5000), PagingLevels::Four, false).0, 0x1234_501e);
    assert_eq!(Eptp::new(Hpa::new(0x1234_5000), PagingLevels::Four, true).0, 0x1234_505e);
    assert_eq!(Eptp::new(Hpa::new(0x1234_5000), PagingLevels::Five, false).0, 0x1234_5026);
    assert_eq!(Eptp::new(Hpa::new(0x1234_5000), PagingLevels::Five, true).0, 0x1234_5066);
    assert_eq!(Eptp::new(Hpa::new(0x000f_ffff_ffff_f000), PagingLevels::Four, true).0, 0x000f_ffff_ffff_f05e);
    let e = Eptp::new(Hpa::new(0x2_4567_8000), PagingLevels::Five, true);
    assert_eq!(e.0 & 7, 6, "memory type WB");
    assert_eq!((e.0 >> 3) & 7, 4, "5-level walk length - 1");
    assert_ne!(e.0 & (1 << 6), 0, "A/D enable");
    assert_eq!(e.0 & !0xfff, 0x2_4567_8000);
    assert_eq!(e.0 & 0xf80, 0, "bits 11:7 clear");
}

#[test]
fn ept_raw_eptp_is_decoded_from_its_bits() {
    // A raw EPTP built by hand (root | length | A/D | memory type) walks like Eptp::new; the
    // EPTP memory type only governs accesses to the EPT structures, so UC (0) walks alike.
    for levels in LEVEL_COUNTS {
        let chain = Chain::ept(levels, gpa_for(levels), Level::Pt);
        let cells = chain.build();
        let length = u64::from(levels.count() - 1) << 3;
        for ad in [false, true] {
            for mt in [0u64, 6] {
                let raw = Eptp(chain.root() | length | if ad { 1 << 6 } else { 0 } | mt);
                let c = EptCase {
                    levels,
                    ad,
                    phys_bits: 46,
                    root: chain.root(),
                    gpa: chain.gpa,
                    kind: AccessKind::Write,
                    fin: true,
                };
                let expected = ept_reference(&cells, &c);
                let mut mem = Mem::new(&cells);
                let got =
                    convert_ept(ept_walk(&mut mem, raw, Gpa::new(c.gpa), nested_access(c.kind, true), 46));
                assert_eq!(got, expected.result, "raw EPTP {:#x}", raw.0);
                assert_eq!(mem.reads, expected.reads, "raw EPTP {:#x}", raw.0);
                assert_eq!(normalized(&mem.cells), normalized(&expected.after), "raw EPTP {:#x}", raw.0);
            }
        }
    }
}

#[test]
fn ept_golden_four_level_walk() {
    let chain = Chain::ept(PagingLevels::Four, GPA4, Level::Pt);
    let cells = chain.build();
    // Entry addresses computed by hand: indices 0xd6, 0x169, 0x61, 0x1d2.
    let reads = vec![
        (0x2_4567_8000 + 0x6b0, Level::Pml4),
        (0x3_3456_7000 + 0xb48, Level::Pdpt),
        (0x4_2345_6000 + 0x308, Level::Pd),
        (0x5_1234_5000 + 0xe90, Level::Pt),
    ];
    let (out, mem) = walk_once(&cells, &case4(AccessKind::Read, true, false));
    assert_eq!(out, EptResult::Mapped { page: 0x6_789a_b000, size: PageSize::Size4K });
    assert_eq!(mem.reads, reads);
    assert!(mem.writes.is_empty());

    // A/D enabled, write: A in all four, D in the PTE.
    let (out, mem) = walk_once(&cells, &case4(AccessKind::Write, true, true));
    assert_eq!(out, EptResult::Mapped { page: 0x6_789a_b000, size: PageSize::Size4K });
    assert_eq!(mem.cells[&(0x2_4567_8000 + 0x6b0)], 0x3_3456_7000 | 0x107);
    assert_eq!(mem.cells[&(0x3_3456_7000 + 0xb48)], 0x4_2345_6000 | 0x107);
    assert_eq!(mem.cells[&(0x4_2345_6000 + 0x308)], 0x5_1234_5000 | 0x107);
    assert_eq!(mem.cells[&(0x5_1234_5000 + 0xe90)], 0x6_789a_b000 | 0x337);

    // PTE read-only, final write: write | readable | linear | final = 0x18a.
    let mut ro = chain.clone();
    ro.flags[slot(Level::Pt)] = ER | MT_WB;
    let (out, mem) = walk_once(&ro.build(), &case4(AccessKind::Write, true, false));
    assert_eq!(out, EptResult::Violation(0x18a));
    assert_eq!(mem.reads, reads);

    // Same with A/D on and a guest paging-structure access: bits 0 and 1 both (Table 28-7
    // footnote), readable, linear: 0x8b. Nothing written.
    let (out, mem) = walk_once(&ro.build(), &case4(AccessKind::Write, false, true));
    assert_eq!(out, EptResult::Violation(0x8b));
    assert!(mem.writes.is_empty());

    // PML4E execute-only, final read: read | executable | linear | final = 0x1a1.
    let mut xo = chain.clone();
    xo.flags[slot(Level::Pml4)] = EX;
    let (out, mem) = walk_once(&xo.build(), &case4(AccessKind::Read, true, false));
    assert_eq!(out, EptResult::Violation(0x1a1));
    assert_eq!(mem.reads, reads, "a permission violation walks every entry");

    // PDE not present, guest-table fetch: fetch | linear = 0x84, three reads.
    let mut np = chain.clone();
    np.flags[slot(Level::Pd)] = 0;
    let (out, mem) = walk_once(&np.build(), &case4(AccessKind::Fetch, false, false));
    assert_eq!(out, EptResult::Violation(0x84));
    assert_eq!(mem.reads, reads[..3].to_vec());

    // PTE memory type 2: misconfiguration at the PT; PML4E bit 7: at the PML4.
    let mut mt = chain.clone();
    mt.flags[slot(Level::Pt)] = ERWX | (2 << 3);
    assert_eq!(
        walk_once(&mt.build(), &case4(AccessKind::Read, true, true)).0,
        EptResult::Misconfig(Level::Pt)
    );
    let mut big = chain.clone();
    big.flags[slot(Level::Pml4)] = ERWX | ELARGE;
    let (out, mem) = walk_once(&big.build(), &case4(AccessKind::Read, true, true));
    assert_eq!(out, EptResult::Misconfig(Level::Pml4));
    assert_eq!(mem.reads, reads[..1].to_vec());
    assert!(mem.writes.is_empty());

    // 2-MByte leaf: page 0x7_1ae0_0000, three reads; 1-GByte leaf: two reads.
    let two = Chain::ept(PagingLevels::Four, GPA4, Level::Pd);
    let (out, mem) = walk_once(&two.build(), &case4(AccessKind::Fetch, true, true));
    assert_eq!(out, EptResult::Mapped { page: 0x7_1ae0_0000, size: PageSize::Size2M });
    assert_eq!(mem.reads, reads[..3].to_vec());
    assert_eq!(mem.cells[&(0x4_2345_6000 + 0x308)], 0x7_1ae0_0000 | 0x1b7);
    let one = Chain::ept(PagingLevels::Four, GPA4, Level::Pdpt);
    let (out, mem) = walk_once(&one.build(), &case4(AccessKind::Read, false, false));
    assert_eq!(out, EptResult::Mapped { page: 0x6_c000_0000, size: PageSize::Size1G });
    assert_eq!(mem.reads, reads[..2].to_vec());
}

#[test]
fn ept_guest_table_write_with_ad_reports_read_and_write() {
    // SDM Vol. 3C §28.2.1, Table "Exit Qualification for EPT Violations", footnote to bits 0
    // and 1: with EPT A/D enabled, processor accesses to guest paging-structure entries are
    // treated as writes, and if such an access causes an EPT violation both bit 0 and bit 1
    // are set. A final-translation write sets only bit 1, and with A/D disabled too.
    for levels in LEVEL_COUNTS {
        for (name, leaf_flags) in
            [("not-present", 0), ("read-only", ER | MT_WB), ("execute-only", EX | MT_WB)]
        {
            let mut chain = Chain::ept(levels, gpa_for(levels), Level::Pt);
            chain.flags[slot(Level::Pt)] = leaf_flags;
            let cells = chain.build();
            let perms = match name {
                "read-only" => Q_READABLE,
                "execute-only" => Q_EXECUTABLE,
                _ => 0,
            };
            for (ad, fin, want) in [
                (true, false, Q_READ | Q_WRITE | perms | Q_LINEAR),
                (true, true, Q_WRITE | perms | Q_LINEAR | Q_FINAL),
                (false, false, Q_WRITE | perms | Q_LINEAR),
            ] {
                let c = EptCase {
                    levels,
                    ad,
                    phys_bits: 46,
                    root: chain.root(),
                    gpa: chain.gpa,
                    kind: AccessKind::Write,
                    fin,
                };
                let got = walk_once(&cells, &c).0;
                assert_eq!(
                    got,
                    EptResult::Violation(want),
                    "{levels:?}, PTE {name}, A/D {ad}, final {fin}: qualification {want:#x} expected"
                );
            }
        }
    }
}

#[test]
fn ept_golden_five_level_walk() {
    let chain = Chain::ept(PagingLevels::Five, GPA5, Level::Pt);
    let c = EptCase {
        levels: PagingLevels::Five,
        ad: false,
        phys_bits: 46,
        root: FRAMES[4],
        gpa: GPA5,
        kind: AccessKind::Read,
        fin: true,
    };
    let (out, mem) = walk_once(&chain.build(), &c);
    assert_eq!(out, EptResult::Mapped { page: PAGE_4K, size: PageSize::Size4K });
    assert_eq!(
        mem.reads,
        vec![
            (0x1_5678_9000 + 0x6b8, Level::Pml5),
            (0x2_4567_8000 + 0x6b0, Level::Pml4),
            (0x3_3456_7000 + 0xb48, Level::Pdpt),
            (0x4_2345_6000 + 0x308, Level::Pd),
            (0x5_1234_5000 + 0xe90, Level::Pt),
        ]
    );
}

// ---------------------------------------------------------------------------------------------
// EPT: enumerations against the reference model.
// ---------------------------------------------------------------------------------------------

#[test]
fn ept_permission_matrix() {
    // Every R/W/X value in the leaf × every R/W/X value in one upper entry at a time.
    let mut failures = Failures::default();
    for levels in LEVEL_COUNTS {
        for leaf in LEAVES {
            let base = Chain::ept(levels, gpa_for(levels), leaf);
            let uppers: Vec<Level> = path(levels, leaf).into_iter().filter(|l| *l != leaf).collect();
            for leaf_rwx in 0..8u64 {
                for upper in &uppers {
                    for upper_rwx in 0..8u64 {
                        let mut chain = base.clone();
                        chain.flags[slot(leaf)] = (chain.flags[slot(leaf)] & !ERWX) | leaf_rwx;
                        chain.flags[slot(*upper)] = upper_rwx;
                        let label =
                            format!("leaf {leaf:?} rwx={leaf_rwx:03b}, {upper:?} rwx={upper_rwx:03b}");
                        ept_all_accesses(&mut failures, &chain.build(), ept_base(&chain, 46), &label);
                    }
                }
            }
        }
    }
    failures.assert_none("EPT permission matrix");
}

#[test]
fn ept_memory_types_in_the_leaf() {
    // Bits 5:3 = 0..7 and IPAT in the leaf: 2, 3 and 7 are reserved (§29.3.3.1).
    let mut failures = Failures::default();
    for levels in LEVEL_COUNTS {
        for leaf in LEAVES {
            for mt in 0..8u64 {
                for ipat in [0, EIPAT] {
                    for rwx in [ERWX, ER, EX] {
                        let mut chain = Chain::ept(levels, gpa_for(levels), leaf);
                        let large = if leaf == Level::Pt { 0 } else { ELARGE };
                        chain.flags[slot(leaf)] = rwx | (mt << 3) | ipat | large;
                        let cells = chain.build();
                        // Direct statement of the rule, independent of the model's code path.
                        let c = EptCase {
                            levels,
                            ad: true,
                            phys_bits: 46,
                            root: chain.root(),
                            gpa: chain.gpa,
                            kind: AccessKind::Read,
                            fin: true,
                        };
                        let got = walk_once(&cells, &c).0;
                        if matches!(mt, 2 | 3 | 7) {
                            let text = format!("{leaf:?} leaf memory type {mt} is reserved: got {got:?}");
                            failures.record((got != EptResult::Misconfig(leaf)).then_some(text));
                        } else {
                            let text = format!("{leaf:?} leaf memory type {mt} is valid: got {got:?}");
                            failures.record(matches!(got, EptResult::Misconfig(_)).then_some(text));
                        }
                        let label = format!("{leaf:?} leaf mt={mt} ipat={ipat:#x} rwx={rwx:03b}");
                        ept_all_accesses(&mut failures, &cells, ept_base(&chain, 46), &label);
                    }
                }
            }
        }
    }
    failures.assert_none("EPT leaf memory types");
}

#[test]
fn ept_bits_7_3_of_table_entries() {
    // Every value of bits 7:3 in every entry that references a table. Bit 7 in a PDPTE/PDE
    // turns it into a leaf (whose address field then holds the table frame); elsewhere any
    // set bit is a misconfiguration.
    let mut failures = Failures::default();
    for levels in LEVEL_COUNTS {
        let base = Chain::ept(levels, gpa_for(levels), Level::Pt);
        for level in path(levels, Level::Pt).into_iter().filter(|l| *l != Level::Pt) {
            for v in 0..32u64 {
                let mut chain = base.clone();
                chain.flags[slot(level)] = ERWX | (v << 3);
                let cells = chain.build();
                let c = EptCase {
                    levels,
                    ad: false,
                    phys_bits: 46,
                    root: chain.root(),
                    gpa: chain.gpa,
                    kind: AccessKind::Read,
                    fin: true,
                };
                let got = walk_once(&cells, &c).0;
                if v != 0 && (v & 0x10 == 0 || matches!(level, Level::Pml4 | Level::Pml5)) {
                    let text = format!("{level:?} bits 7:3 = {v:05b} in a table entry: got {got:?}");
                    failures.record((got != EptResult::Misconfig(level)).then_some(text));
                }
                ept_all_accesses(
                    &mut failures,
                    &cells,
                    ept_base(&chain, 46),
                    &format!("{level:?} bits7:3={v:05b}"),
                );
            }
        }
    }
    failures.assert_none("EPT bits 7:3 of table entries");
}

#[test]
fn ept_single_bit_flips_everywhere() {
    // Each of bits 0..63 flipped in each entry of each chain (4K, 2M, 1G leaves; 4 and 5
    // levels; MAXPHYADDR 36, 40, 46, 52), every access. Covers the large-page reserved bits
    // 20:12 / 29:12, bits 51:M, ignored bits 63:52, A/D bits already set, bit 7 in the PTE, and
    // redirected table pointers.
    // The flips start from four permission layouts: all RWX, a read-only leaf, an
    // execute-only leaf, and read+execute table entries above an RWX leaf.
    let layouts: [(&str, u64, u64); 4] =
        [("rwx", ERWX, ERWX), ("leaf r", ER, ERWX), ("leaf x", EX, ERWX), ("tables rx", ERWX, ER | EX)];
    let mut failures = Failures::default();
    for levels in LEVEL_COUNTS {
        for leaf in LEAVES {
            for (layout, leaf_rwx, table_rwx) in layouts {
                let mut chain = Chain::ept(levels, gpa_for(levels), leaf);
                for level in path(levels, leaf) {
                    let rwx = if level == leaf { leaf_rwx } else { table_rwx };
                    chain.flags[slot(level)] = (chain.flags[slot(level)] & !ERWX) | rwx;
                }
                let base = chain.build();
                for phys_bits in [36u8, 40, 46, 52] {
                    ept_all_accesses(&mut failures, &base, ept_base(&chain, phys_bits), layout);
                    for level in path(levels, leaf) {
                        let addr = chain.entry_addr(level);
                        for bit in 0..64u32 {
                            let mut cells = base.clone();
                            *cells.get_mut(&addr).expect("entry placed") ^= 1 << bit;
                            let label = format!(
                                "M={phys_bits} {leaf:?}-leaf chain ({layout}), {level:?} bit {bit} flipped"
                            );
                            ept_all_accesses(&mut failures, &cells, ept_base(&chain, phys_bits), &label);
                        }
                    }
                }
            }
        }
    }
    failures.assert_none("EPT single-bit flips");
}

#[test]
fn ept_address_bits_from_maxphyaddr_to_51() {
    // For every MAXPHYADDR 36..=52: each bit M..51 set in each present entry is a
    // misconfiguration at that entry; bit M-1 is an address bit (a table moved there is
    // followed, a leaf page there is reported).
    let mut failures = Failures::default();
    for levels in LEVEL_COUNTS {
        for leaf in LEAVES {
            let chain = Chain::ept(levels, gpa_for(levels), leaf);
            for phys_bits in 36u8..=52 {
                for level in path(levels, leaf) {
                    for bit in u32::from(phys_bits)..52 {
                        let mut cells = chain.build();
                        *cells.get_mut(&chain.entry_addr(level)).expect("entry placed") |= 1 << bit;
                        let c = EptCase {
                            levels,
                            ad: true,
                            phys_bits,
                            root: chain.root(),
                            gpa: chain.gpa,
                            kind: AccessKind::Write,
                            fin: false,
                        };
                        let (got, mem) = walk_once(&cells, &c);
                        let text =
                            format!("M={phys_bits} {leaf:?}-leaf chain, {level:?} bit {bit}: got {got:?}");
                        failures.record(
                            (got != EptResult::Misconfig(level) || !mem.writes.is_empty()).then_some(text),
                        );
                        let label = format!("M={phys_bits} {level:?} bit {bit}");
                        ept_all_accesses(&mut failures, &cells, ept_base(&chain, phys_bits), &label);
                    }
                }
                // Highest address bit: move every table and the page up to bit M-1.
                let top = 1u64 << (phys_bits - 1);
                let mut high = chain.clone();
                for f in &mut high.frames {
                    *f |= top;
                }
                high.page |= top;
                let cells = high.build();
                let c = EptCase {
                    levels,
                    ad: false,
                    phys_bits,
                    root: high.root(),
                    gpa: high.gpa,
                    kind: AccessKind::Read,
                    fin: true,
                };
                let got = walk_once(&cells, &c).0;
                let want = EptResult::Mapped { page: high.page, size: leaf_size(leaf) };
                let text =
                    format!("M={phys_bits} {leaf:?}: tables and page at bit M-1: got {got:?} want {want:?}");
                failures.record((got != want).then_some(text));
                ept_all_accesses(
                    &mut failures,
                    &cells,
                    ept_base(&high, phys_bits),
                    &format!("M={phys_bits} high frames"),
                );
            }
        }
    }
    failures.assert_none("EPT address bits 51:M");
}

#[test]
fn ept_large_page_reserved_bits() {
    // PDE mapping 2 MBytes: bits 20:12 reserved; PDPTE mapping 1 GByte: bits 29:12 reserved.
    let mut failures = Failures::default();
    for levels in LEVEL_COUNTS {
        for (leaf, top) in [(Level::Pd, 20u32), (Level::Pdpt, 29)] {
            let chain = Chain::ept(levels, gpa_for(levels), leaf);
            for bit in 12..=top {
                let mut cells = chain.build();
                *cells.get_mut(&chain.entry_addr(leaf)).expect("leaf placed") |= 1 << bit;
                for kind in KINDS {
                    let c = EptCase {
                        levels,
                        ad: true,
                        phys_bits: 46,
                        root: chain.root(),
                        gpa: chain.gpa,
                        kind,
                        fin: true,
                    };
                    let (got, mem) = walk_once(&cells, &c);
                    let text = format!(
                        "{levels:?} {leaf:?} leaf bit {bit}, {kind:?}: got {got:?}, writes {:x?}",
                        mem.writes
                    );
                    failures.record(
                        (got != EptResult::Misconfig(leaf) || !mem.writes.is_empty()).then_some(text),
                    );
                }
            }
        }
    }
    failures.assert_none("EPT large-page reserved bits");
}

/// Representative entry states for the two-entry priority test.
fn variants(is_leaf: bool) -> Vec<(&'static str, u64)> {
    let mt = if is_leaf { MT_WB } else { 0 };
    vec![
        ("rwx", ERWX | mt),
        ("r", ER | mt),
        ("x-only", EX | mt),
        ("rx", ER | EX | mt),
        ("not-present", 0),
        ("not-present+junk", (1 << 51) | (1 << 3) | (1 << 6) | (1 << 9)),
        ("write-only", EW | mt),
        ("write-exec", EW | EX | mt),
        ("reserved-51", ERWX | mt | (1 << 51)),
    ]
}

#[test]
fn ept_violation_and_misconfiguration_priority() {
    // Two entries changed at once: the walk reports the first not-present or misconfigured
    // entry met top-down, and a misconfiguration anywhere on a complete walk beats a
    // permission violation.
    let mut failures = Failures::default();
    for levels in LEVEL_COUNTS {
        for leaf in LEAVES {
            let base = Chain::ept(levels, gpa_for(levels), leaf);
            let walk = path(levels, leaf);
            for (i, upper) in walk.iter().enumerate() {
                for lower_level in &walk[i + 1..] {
                    for (un, uv) in variants(false) {
                        for (ln, lv) in variants(*lower_level == leaf) {
                            let mut chain = base.clone();
                            let large = if *lower_level == leaf && leaf != Level::Pt { ELARGE } else { 0 };
                            chain.flags[slot(*upper)] = uv;
                            chain.flags[slot(*lower_level)] = lv | large;
                            let cells = chain.build();
                            let label = format!("{upper:?}={un} {lower_level:?}={ln}");
                            // Direct statements of the ordering rules.
                            let c = EptCase {
                                levels,
                                ad: true,
                                phys_bits: 46,
                                root: chain.root(),
                                gpa: chain.gpa,
                                kind: AccessKind::Read,
                                fin: true,
                            };
                            let got = walk_once(&cells, &c).0;
                            let upper_misconfig = matches!(un, "write-only" | "write-exec" | "reserved-51");
                            let upper_np = un.starts_with("not-present");
                            let lower_misconfig = matches!(ln, "write-only" | "write-exec" | "reserved-51");
                            let rule = if upper_misconfig {
                                Some(EptResult::Misconfig(*upper))
                            } else if upper_np {
                                Some(EptResult::Violation(Q_READ | Q_LINEAR | Q_FINAL))
                            } else if lower_misconfig {
                                Some(EptResult::Misconfig(*lower_level))
                            } else {
                                None
                            };
                            if let Some(want) = rule {
                                let text =
                                    format!("[{label}] {levels:?} {leaf:?}-leaf: want {want:?} got {got:?}");
                                failures.record((got != want).then_some(text));
                            }
                            ept_all_accesses(&mut failures, &cells, ept_base(&chain, 46), &label);
                        }
                    }
                }
            }
        }
    }
    failures.assert_none("EPT violation/misconfiguration priority");
}

#[test]
fn ept_accessed_and_dirty_flags() {
    let mut failures = Failures::default();
    for levels in LEVEL_COUNTS {
        for leaf in LEAVES {
            let chain = Chain::ept(levels, gpa_for(levels), leaf);
            let cells = chain.build();
            for kind in KINDS {
                for fin in [true, false] {
                    for ad in [false, true] {
                        let c = EptCase {
                            levels,
                            ad,
                            phys_bits: 46,
                            root: chain.root(),
                            gpa: chain.gpa,
                            kind,
                            fin,
                        };
                        let (_, mem) = walk_once(&cells, &c);
                        for level in path(levels, leaf) {
                            let addr = chain.entry_addr(level);
                            let before = cells[&addr];
                            let after = mem.cells[&addr];
                            let want_a = if ad { EA } else { 0 };
                            let want_d =
                                if ad && kind == AccessKind::Write && level == leaf { ED } else { 0 };
                            let want = before | want_a | want_d;
                            let text = format!(
                                "{levels:?} {leaf:?}-leaf {kind:?} final={fin} ad={ad}: {level:?} {before:#x} -> {after:#x}, want {want:#x}"
                            );
                            failures.record((after != want).then_some(text));
                        }
                        if !ad {
                            let text = format!("A/D disabled but writes {:x?}", mem.writes);
                            failures.record((!mem.writes.is_empty()).then_some(text));
                        }
                    }
                }
            }
            // Already accessed and dirty everywhere: memory unchanged by any walk.
            let mut set = chain.clone();
            for level in path(levels, leaf) {
                set.flags[slot(level)] |= EA | if level == leaf { ED } else { 0 };
            }
            let cells = set.build();
            for kind in KINDS {
                let c = EptCase {
                    levels,
                    ad: true,
                    phys_bits: 46,
                    root: set.root(),
                    gpa: set.gpa,
                    kind,
                    fin: true,
                };
                let (_, mem) = walk_once(&cells, &c);
                let text = format!("{levels:?} {leaf:?} A/D already set, {kind:?}: memory changed");
                failures.record((normalized(&mem.cells) != normalized(&cells)).then_some(text));
            }
        }
    }
    failures.assert_none("EPT accessed and dirty flags");
}

#[test]
fn ept_high_gpa_bits_select_the_upper_entries() {
    // GPA bit 47 (4-level) and bit 56 (5-level) are ordinary index bits.
    let mut failures = Failures::default();
    for (levels, gpa) in [(PagingLevels::Four, GPA4_HIGH), (PagingLevels::Five, GPA5_HIGH)] {
        for leaf in LEAVES {
            let chain = Chain::ept(levels, gpa, leaf);
            let cells = chain.build();
            ept_all_accesses(&mut failures, &cells, ept_base(&chain, 46), "high GPA");
            // The entry for the same GPA without the top bit is absent: not present.
            let low = gpa & !(1u64 << if levels == PagingLevels::Four { 47 } else { 56 });
            let c = EptCase {
                levels,
                ad: false,
                phys_bits: 46,
                root: chain.root(),
                gpa: low,
                kind: AccessKind::Read,
                fin: true,
            };
            let got = walk_once(&cells, &c).0;
            let text = format!("{levels:?}: GPA {low:#x} has no root entry, got {got:?}");
            failures.record((got != EptResult::Violation(Q_READ | Q_LINEAR | Q_FINAL)).then_some(text));
        }
    }
    failures.assert_none("EPT high GPA bits");
}

#[test]
fn ept_nested_format_agrees_with_the_walk() {
    // vmm::nested::format::Ept wraps the same walk: Mapped / EptViolation(q) / EptMisconfig.
    let mut failures = Failures::default();
    for levels in LEVEL_COUNTS {
        for leaf in LEAVES {
            let base = Chain::ept(levels, gpa_for(levels), leaf);
            for level in path(levels, leaf) {
                for (name, v) in variants(level == leaf) {
                    let mut chain = base.clone();
                    let large = if level == leaf && leaf != Level::Pt { ELARGE } else { 0 };
                    chain.flags[slot(level)] = v | large;
                    let cells = chain.build();
                    for ad in [false, true] {
                        for kind in KINDS {
                            for fin in [true, false] {
                                let c = EptCase {
                                    levels,
                                    ad,
                                    phys_bits: 46,
                                    root: chain.root(),
                                    gpa: chain.gpa,
                                    kind,
                                    fin,
                                };
                                let expected = ept_reference(&cells, &c);
                                let want = match expected.result {
                                    EptResult::Mapped { page, size } => {
                                        NestedOutcome::Mapped { page: Hpa::new(page), size }
                                    }
                                    EptResult::Violation(q) => {
                                        NestedOutcome::Fault(NestedFault::EptViolation(ExitQualification(q)))
                                    }
                                    EptResult::Misconfig(_) => {
                                        NestedOutcome::Fault(NestedFault::EptMisconfig)
                                    }
                                };
                                let format = Ept { levels, ad, phys_bits: 46 };
                                let mut mem = Mem::new(&cells);
                                let got = format.translate(
                                    &mut mem,
                                    Hpa::new(chain.root()),
                                    Gpa::new(chain.gpa),
                                    nested_access(kind, fin),
                                );
                                let ok = got == want
                                    && mem.reads == expected.reads
                                    && normalized(&mem.cells) == normalized(&expected.after);
                                let text = format!(
                                    "Ept format {levels:?} {leaf:?}-leaf {level:?}={name} ad={ad} {kind:?} final={fin}: want {want:?} got {got:?} reads {:x?} vs {:x?}",
                                    expected.reads, mem.reads
                                );
                                failures.record((!ok).then_some(text));
                            }
                        }
                    }
                }
            }
        }
    }
    failures.assert_none("Ept nested format");
}

#[test]
fn guest_table_access_kinds() {
    // SDM §29.3.3.2: guest paging-structure reads are data reads; with EPT A/D enabled
    // (§29.3.5) they are treated as writes. APM §15.25.5: NPT treats them as user writes.
    for levels in LEVEL_COUNTS {
        assert_eq!(Ept { levels, ad: false, phys_bits: 46 }.guest_table_access(), AccessKind::Read);
        assert_eq!(Ept { levels, ad: true, phys_bits: 46 }.guest_table_access(), AccessKind::Write);
        assert_eq!(Npt { levels, phys_bits: 46 }.guest_table_access(), AccessKind::Write);
    }
}

// ---------------------------------------------------------------------------------------------
// NPT reference model (APM Vol. 2 §15.25, SDM Vol. 3A §4.5-§4.8 for the entry format).
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Copy, Debug)]
struct NptCase {
    levels: PagingLevels,
    phys_bits: u8,
    root: u64,
    gpa: u64,
    kind: AccessKind,
    fin: bool,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum NptResult {
    Mapped { page: u64, size: PageSize },
    Fault(u64),
}

/// EXITINFO1 for a fault: error code (always U; W for writes; I/D for fetches, NXE = 1) plus
/// bit 32 or 33.
fn npf_info(c: &NptCase, cause: u64) -> u64 {
    let w = if c.kind == AccessKind::Write { EC_W } else { 0 };
    let id = if c.kind == AccessKind::Fetch { EC_ID } else { 0 };
    let which = if c.fin { NPF_FINAL_ADDRESS } else { NPF_GUEST_TABLE };
    cause | EC_U | w | id | which
}

fn npt_reference(cells: &HashMap<u64, u64>, c: &NptCase) -> NptExpected {
    let mut reads = Vec::new();
    let mut used = Vec::new();
    let mut after = cells.clone();
    let mut level = root_level(c.levels);
    let mut table = c.root;
    let (mut all_w, mut all_u, mut any_nx) = (true, true, false);
    loop {
        let addr = table + entry_offset(c.gpa, level);
        reads.push((addr, level));
        let e = cells.get(&addr).copied().unwrap_or(0);
        if e & P == 0 {
            return NptExpected { result: NptResult::Fault(npf_info(c, 0)), reads, after };
        }
        let is_leaf = match level {
            Level::Pt => true,
            Level::Pd | Level::Pdpt => e & PS != 0,
            Level::Pml4 | Level::Pml5 => false,
        };
        let reserved = above_m(c.phys_bits)
            | match (level, is_leaf) {
                (Level::Pml4 | Level::Pml5, _) => PS,
                (Level::Pd, true) => bits(13, 20),
                (Level::Pdpt, true) => bits(13, 29),
                _ => 0,
            };
        if e & reserved != 0 {
            return NptExpected { result: NptResult::Fault(npf_info(c, EC_P | EC_RSVD)), reads, after };
        }
        all_w &= e & RW != 0;
        all_u &= e & US != 0;
        any_nx |= e & NX != 0;
        used.push(addr);
        if is_leaf {
            let denied =
                !all_u || (c.kind == AccessKind::Write && !all_w) || (c.kind == AccessKind::Fetch && any_nx);
            if denied {
                return NptExpected { result: NptResult::Fault(npf_info(c, EC_P)), reads, after };
            }
            for a in &used {
                *after.get_mut(a).expect("used entry exists") |= X86_A;
            }
            if c.kind == AccessKind::Write {
                *after.get_mut(&addr).expect("leaf exists") |= X86_D;
            }
            let size = leaf_size(level);
            let page = e & addr_field(c.phys_bits, 12) & !(size_bytes(size) - 1);
            return NptExpected { result: NptResult::Mapped { page, size }, reads, after };
        }
        table = e & addr_field(c.phys_bits, 12);
        level = lower(level).expect("a non-leaf PT entry is impossible");
    }
}

/// The NPT model's expectation.
struct NptExpected {
    result: NptResult,
    reads: Vec<(u64, Level)>,
    after: HashMap<u64, u64>,
}

fn run_npt(cells: &HashMap<u64, u64>, c: &NptCase) -> (NptResult, Mem) {
    let mut mem = Mem::new(cells);
    let format = Npt { levels: c.levels, phys_bits: c.phys_bits };
    let out = format.translate(&mut mem, Hpa::new(c.root), Gpa::new(c.gpa), nested_access(c.kind, c.fin));
    let result = match out {
        NestedOutcome::Mapped { page, size } => NptResult::Mapped { page: page.as_u64(), size },
        NestedOutcome::Fault(NestedFault::NestedPageFault(info)) => NptResult::Fault(info),
        // Any other exit kind is wrong for NPT; encode it so the comparison fails visibly.
        NestedOutcome::Fault(NestedFault::EptViolation(q)) => NptResult::Fault(u64::MAX ^ q.0),
        NestedOutcome::Fault(NestedFault::EptMisconfig) => NptResult::Fault(u64::MAX),
    };
    (result, mem)
}

fn check_npt(cells: &HashMap<u64, u64>, c: &NptCase, label: &str) -> Option<String> {
    let expected = npt_reference(cells, c);
    let (got, mem) = run_npt(cells, c);
    compare_walk(
        Compared {
            label,
            case: &format!("{c:?}"),
            before: cells,
            expected_result: &format!("{:x?}", expected.result),
            got_result: &format!("{got:x?}"),
            results_equal: got == expected.result,
            expected_reads: &expected.reads,
            expected_after: &expected.after,
            may_write: matches!(expected.result, NptResult::Mapped { .. }),
        },
        &mem,
    )
}

fn npt_all_accesses(
    failures: &mut Failures,
    cells: &HashMap<u64, u64>,
    chain: &Chain,
    phys_bits: u8,
    label: &str,
) {
    for kind in KINDS {
        for fin in [true, false] {
            let c =
                NptCase { levels: chain.levels, phys_bits, root: chain.root(), gpa: chain.gpa, kind, fin };
            failures.record(check_npt(cells, &c, label));
        }
    }
}

#[test]
fn npt_golden_cases() {
    let chain = Chain::npt(PagingLevels::Four, GPA4, Level::Pt);
    let c = |kind, fin| NptCase {
        levels: PagingLevels::Four,
        phys_bits: 46,
        root: FRAMES[3],
        gpa: GPA4,
        kind,
        fin,
    };
    let reads = vec![
        (0x2_4567_8000 + 0x6b0, Level::Pml4),
        (0x3_3456_7000 + 0xb48, Level::Pdpt),
        (0x4_2345_6000 + 0x308, Level::Pd),
        (0x5_1234_5000 + 0xe90, Level::Pt),
    ];
    let (out, mem) = run_npt(&chain.build(), &c(AccessKind::Write, true));
    assert_eq!(out, NptResult::Mapped { page: PAGE_4K, size: PageSize::Size4K });
    assert_eq!(mem.reads, reads);
    assert_eq!(mem.cells[&(0x2_4567_8000 + 0x6b0)], 0x3_3456_7000 | 0x27);
    assert_eq!(mem.cells[&(0x5_1234_5000 + 0xe90)], PAGE_4K | 0x67);

    // PTE not present, final read: U only, bit 32.
    let mut np = chain.clone();
    np.flags[slot(Level::Pt)] = 0;
    let (out, mem) = run_npt(&np.build(), &c(AccessKind::Read, true));
    assert_eq!(out, NptResult::Fault(0x1_0000_0004));
    assert!(mem.writes.is_empty());

    // PDE read-only, guest-table write: P|W|U, bit 33.
    let mut ro = chain.clone();
    ro.flags[slot(Level::Pd)] = P | US;
    assert_eq!(run_npt(&ro.build(), &c(AccessKind::Write, false)).0, NptResult::Fault(0x2_0000_0007));

    // PML4E supervisor-only, final read: P|U, bit 32 (nested walks are user accesses).
    let mut sup = chain.clone();
    sup.flags[slot(Level::Pml4)] = P | RW;
    assert_eq!(run_npt(&sup.build(), &c(AccessKind::Read, true)).0, NptResult::Fault(0x1_0000_0005));

    // NX in the PDPTE, final fetch: P|U|I/D, bit 32.
    let mut nx = chain.clone();
    nx.flags[slot(Level::Pdpt)] = P | RW | US | NX;
    assert_eq!(run_npt(&nx.build(), &c(AccessKind::Fetch, true)).0, NptResult::Fault(0x1_0000_0015));

    // PS in the PML4E: P|U|RSVD, one read.
    let mut ps = chain.clone();
    ps.flags[slot(Level::Pml4)] = P | RW | US | PS;
    let (out, mem) = run_npt(&ps.build(), &c(AccessKind::Read, false));
    assert_eq!(out, NptResult::Fault(0x2_0000_000d));
    assert_eq!(mem.reads, reads[..1].to_vec());
}

#[test]
fn npt_permission_matrix() {
    // P/W/U/NX in the leaf × P/W/U/NX in one upper entry at a time.
    let mut failures = Failures::default();
    let combos: Vec<u64> = (0..16u64)
        .map(|v| {
            (if v & 1 != 0 { P } else { 0 })
                | (if v & 2 != 0 { RW } else { 0 })
                | (if v & 4 != 0 { US } else { 0 })
                | (if v & 8 != 0 { NX } else { 0 })
        })
        .collect();
    for levels in LEVEL_COUNTS {
        for leaf in LEAVES {
            let base = Chain::npt(levels, gpa_for(levels), leaf);
            let ps = if leaf == Level::Pt { 0 } else { PS };
            for upper in path(levels, leaf).into_iter().filter(|l| *l != leaf) {
                for lf in &combos {
                    for uf in &combos {
                        let mut chain = base.clone();
                        chain.flags[slot(leaf)] = lf | ps;
                        chain.flags[slot(upper)] = *uf;
                        let label = format!("leaf {leaf:?}={lf:#x} {upper:?}={uf:#x}");
                        npt_all_accesses(&mut failures, &chain.build(), &chain, 46, &label);
                    }
                }
            }
        }
    }
    failures.assert_none("NPT permission matrix");
}

#[test]
fn npt_single_bit_flips() {
    // Each bit flipped in each nested entry: PS at every level, reserved bits 51:M, 20:13 and
    // 29:13 of large leaves, PAT bit 12 of large leaves, NX, ignored bits, A/D already set.
    let mut failures = Failures::default();
    for levels in LEVEL_COUNTS {
        for leaf in LEAVES {
            let chain = Chain::npt(levels, gpa_for(levels), leaf);
            let base = chain.build();
            for phys_bits in [36u8, 46, 52] {
                npt_all_accesses(&mut failures, &base, &chain, phys_bits, "unmodified");
                for level in path(levels, leaf) {
                    for bit in 0..64u32 {
                        let vendor_specific = (level == leaf && (59..=62).contains(&bit))
                            || (matches!(level, Level::Pml4 | Level::Pml5) && bit == 8);
                        if vendor_specific {
                            continue;
                        }
                        let mut cells = base.clone();
                        *cells.get_mut(&chain.entry_addr(level)).expect("entry placed") ^= 1 << bit;
                        let label = format!("M={phys_bits} {leaf:?}-leaf chain, {level:?} bit {bit} flipped");
                        npt_all_accesses(&mut failures, &cells, &chain, phys_bits, &label);
                    }
                }
            }
        }
    }
    failures.assert_none("NPT single-bit flips");
}

#[test]
fn npt_reserved_and_not_present_priority() {
    // Not-present and reserved-bit faults stop the walk at that entry; a reserved bit below a
    // permission-denying entry still reports RSVD.
    let mut failures = Failures::default();
    let states: [(&str, u64); 6] = [
        ("ok", P | RW | US),
        ("not-present", 0),
        ("not-present+junk", RW | US | PS | (1 << 51)),
        ("read-only", P | US),
        ("supervisor", P | RW),
        ("reserved-51", P | RW | US | (1 << 51)),
    ];
    for levels in LEVEL_COUNTS {
        for leaf in LEAVES {
            let base = Chain::npt(levels, gpa_for(levels), leaf);
            let walk = path(levels, leaf);
            let ps = if leaf == Level::Pt { 0 } else { PS };
            for (i, upper) in walk.iter().enumerate() {
                for lower_level in &walk[i + 1..] {
                    for (un, uv) in states {
                        for (ln, lv) in states {
                            let mut chain = base.clone();
                            chain.flags[slot(*upper)] = uv;
                            chain.flags[slot(*lower_level)] = lv | if *lower_level == leaf { ps } else { 0 };
                            let label = format!("{upper:?}={un} {lower_level:?}={ln}");
                            npt_all_accesses(&mut failures, &chain.build(), &chain, 46, &label);
                        }
                    }
                }
            }
        }
    }
    failures.assert_none("NPT fault priority");
}

#[test]
fn npt_high_gpa_bits() {
    // A GPA is a physical address, not a linear one: bit 47 (4-level) and bit 56 (5-level)
    // are ordinary index bits of the nested PML4/PML5, with no canonical-form check.
    let mut failures = Failures::default();
    for (levels, gpa) in [(PagingLevels::Four, GPA4_HIGH), (PagingLevels::Five, GPA5_HIGH)] {
        for leaf in LEAVES {
            let chain = Chain::npt(levels, gpa, leaf);
            npt_all_accesses(&mut failures, &chain.build(), &chain, 46, "high GPA");
        }
    }
    failures.assert_none("NPT high GPA bits");
}

#[test]
fn npt_high_frames() {
    // Every table and the page moved up to bit M-1: the whole address field is used.
    let mut failures = Failures::default();
    for levels in LEVEL_COUNTS {
        for leaf in LEAVES {
            for phys_bits in [36u8, 40, 46, 52] {
                let mut chain = Chain::npt(levels, gpa_for(levels), leaf);
                let top = 1u64 << (phys_bits - 1);
                for f in &mut chain.frames {
                    *f |= top;
                }
                chain.page |= top;
                npt_all_accesses(
                    &mut failures,
                    &chain.build(),
                    &chain,
                    phys_bits,
                    &format!("M={phys_bits} high frames"),
                );
            }
        }
    }
    failures.assert_none("NPT high frames");
}
