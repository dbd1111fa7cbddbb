//! Conformance tests for the x86-64 page walker, [`memvirt::paging::walk`].
//!
//! Every expected result comes from a small reference model written in this file from the rules
//! of the Intel SDM Vol. 3A, chapter 4, and from nothing else (the walker's own sources are not
//! consulted):
//!
//! - §4.5 (4-level and 5-level paging), Tables 4-14 to 4-20: the entry formats, how the next
//!   table and the page frame are formed from an entry, and which bits are reserved: 51:M
//!   (M = MAXPHYADDR) in every entry, XD (bit 63) when EFER.NXE = 0, PS (bit 7) in a
//!   PML5E or PML4E, bits 20:13 in a PDE that maps a 2-MByte page and bits 29:13 in a PDPTE
//!   that maps a 1-GByte page. A reserved bit is only looked at in a present entry.
//! - §4.6 access rights: user-mode addresses (U/S = 1 in every entry), read-only addresses
//!   (R/W = 0 in some entry), execute-disable (XD = 1 in some entry with NXE = 1), CR0.WP,
//!   CR4.SMEP, and CR4.SMAP with EFLAGS.AC for explicit supervisor accesses.
//! - §4.7 page-fault error code: P, W/R, U/S, RSVD, and I/D, which is set only for instruction
//!   fetches when EFER.NXE = 1 or CR4.SMEP = 1.
//! - §4.8 accessed and dirty flags: A is set in every entry used by the translation and D in the
//!   entry that maps the page when the access is a write.
//!
//! On top of the SDM the walker promises, and these tests check, that:
//!
//! - A and D are written back only when the whole walk succeeds (a faulting walk calls
//!   `write_entry` not at all), and `AdPolicy::Leave` never writes;
//! - `read_entry` is called exactly once per level walked, in walk order (4 or 5 for a 4-KByte
//!   page, fewer for large pages, and the walk stops at the entry that is not present or has a
//!   reserved bit set);
//! - a linear address that is not canonical for 4-level paging gives `NonCanonical` without
//!   any memory reference.
//!
//! The layout follows kvm-unit-tests' `x86/access.c`: a little recording memory of 8-byte
//! entries, a table chain built for a chosen linear address, then an enumeration of entry bits
//! × access (read/write/fetch × user/supervisor) × CPU state (NXE, WP, SMEP, SMAP, AC), at 4 and
//! 5 levels. Each case is compared against the reference model on: fault or not, the exact error
//! code and the level of the faulting entry, the translated address, page size, leaf entry and
//! level, the memory contents after the walk (A and D), and the exact sequence of reads.
//!
//! Protection keys (CR4.PKE) and implicit supervisor accesses are out of scope: bits 62:59 of
//! leaf entries are never set here.

use memvirt::addr::{Gva, Hpa, Level, PageSize, PagingLevels};
use memvirt::paging::{
    walk, Access, AccessKind, AdPolicy, CpuState, PfErrorCode, Privilege, TableMemory, WalkOutcome,
};

// ---------------------------------------------------------------------------------------------
// Entry bits (SDM Vol. 3A Tables 4-14 to 4-20).
// ---------------------------------------------------------------------------------------------

/// Bit 0, present.
const P: u64 = 1 << 0;
/// Bit 1, read/write.
const RW: u64 = 1 << 1;
/// Bit 2, user/supervisor.
const US: u64 = 1 << 2;
/// Bit 3, page-level write-through.
const PWT: u64 = 1 << 3;
/// Bit 4, page-level cache disable.
const PCD: u64 = 1 << 4;
/// Bit 5, accessed.
const A: u64 = 1 << 5;
/// Bit 6, dirty (leaf entries; ignored in entries that reference a table).
const D: u64 = 1 << 6;
/// Bit 7, page size (PDPTE/PDE); PAT in a PTE; reserved in a PML4E/PML5E.
const PS: u64 = 1 << 7;
/// Bit 8, global (leaf entries; ignored in entries that reference a table).
const G: u64 = 1 << 8;
/// Bit 12 of a PDE/PDPTE that maps a large page: PAT, not an address bit.
const PAT_LARGE: u64 = 1 << 12;
/// Bit 63, execute-disable (reserved when EFER.NXE = 0).
const XD: u64 = 1 << 63;
/// Bits 51:12, the widest physical-address field of an entry (MAXPHYADDR = 52).
const ADDR_FIELD: u64 = 0x000f_ffff_ffff_f000;

/// Error-code bit P (SDM §4.7).
const EC_P: u32 = 1 << 0;
/// Error-code bit W/R.
const EC_W: u32 = 1 << 1;
/// Error-code bit U/S.
const EC_U: u32 = 1 << 2;
/// Error-code bit RSVD.
const EC_RSVD: u32 = 1 << 3;
/// Error-code bit I/D.
const EC_ID: u32 = 1 << 4;

/// The bits `hi:lo`, inclusive.
const fn bit_range(lo: u32, hi: u32) -> u64 {
    (u64::MAX >> (63 - hi)) & (u64::MAX << lo)
}

/// Entry bits 51:M, reserved in every paging-structure entry (SDM §4.5).
fn above_maxphyaddr(phys_bits: u8) -> u64 {
    if phys_bits >= 52 {
        0
    } else {
        bit_range(u32::from(phys_bits), 51)
    }
}

/// Physical-address bits M-1:0.
fn below_maxphyaddr(phys_bits: u8) -> u64 {
    (1u64 << phys_bits.min(52)) - 1
}

// ---------------------------------------------------------------------------------------------
// Levels, written out here rather than taken from the crate.
// ---------------------------------------------------------------------------------------------

/// The level below `level` (the reference model's own copy of the hierarchy).
fn lower(level: Level) -> Option<Level> {
    match level {
        Level::Pml5 => Some(Level::Pml4),
        Level::Pml4 => Some(Level::Pdpt),
        Level::Pdpt => Some(Level::Pd),
        Level::Pd => Some(Level::Pt),
        Level::Pt => None,
    }
}

/// The root level of a hierarchy.
fn root_level(levels: PagingLevels) -> Level {
    match levels {
        PagingLevels::Four => Level::Pml4,
        PagingLevels::Five => Level::Pml5,
    }
}

/// Slot 0..5 of a level in per-level arrays.
fn slot(level: Level) -> usize {
    match level {
        Level::Pt => 0,
        Level::Pd => 1,
        Level::Pdpt => 2,
        Level::Pml4 => 3,
        Level::Pml5 => 4,
    }
}

/// The byte offset of the entry `va` selects in a table at `level` (SDM Figures 4-8 to 4-11:
/// bits 56:48, 47:39, 38:30, 29:21 and 20:12 each select one of 512 8-byte entries).
fn entry_offset(va: u64, level: Level) -> u64 {
    let shift = match level {
        Level::Pt => 12,
        Level::Pd => 21,
        Level::Pdpt => 30,
        Level::Pml4 => 39,
        Level::Pml5 => 48,
    };
    ((va >> shift) & 0x1ff) * 8
}

/// The SDM's name for an entry at `level`.
fn entry_name(level: Level) -> &'static str {
    match level {
        Level::Pt => "PTE",
        Level::Pd => "PDE",
        Level::Pdpt => "PDPTE",
        Level::Pml4 => "PML4E",
        Level::Pml5 => "PML5E",
    }
}

/// A readable form of an entry: the raw value and its named flags.
fn describe_entry(level: Level, value: u64) -> String {
    let bit7 = if level == Level::Pt { "PAT" } else { "PS" };
    let names = [
        (P, "P"),
        (RW, "W"),
        (US, "U"),
        (PWT, "PWT"),
        (PCD, "PCD"),
        (A, "A"),
        (D, "D"),
        (PS, bit7),
        (G, "G"),
        (XD, "XD"),
    ];
    let set: Vec<&str> = names.iter().filter(|(bit, _)| value & bit != 0).map(|(_, name)| *name).collect();
    format!("{}={value:#018x}[{}]", entry_name(level), set.join("|"))
}

// ---------------------------------------------------------------------------------------------
// The recording memory.
// ---------------------------------------------------------------------------------------------

/// A sparse physical memory of 8-byte paging-structure entries: (address, value) pairs.
///
/// A chain holds at most five entries, so a short vector searched linearly is both simpler and
/// faster than a hash map here.
#[derive(Clone, PartialEq, Eq, Debug, Default)]
struct Image {
    entries: Vec<(u64, u64)>,
}

impl Image {
    /// The entry stored at `addr`, if any.
    fn get(&self, addr: u64) -> Option<u64> {
        self.entries.iter().find(|(at, _)| *at == addr).map(|(_, value)| *value)
    }

    /// Stores `value` at `addr`, adding the entry if it is new.
    fn insert(&mut self, addr: u64, value: u64) {
        match self.entries.iter_mut().find(|(at, _)| *at == addr) {
            Some(slot) => slot.1 = value,
            None => self.entries.push((addr, value)),
        }
    }

    /// Replaces the entry at `addr`; `false` if there is none.
    fn update(&mut self, addr: u64, value: u64) -> bool {
        match self.entries.iter_mut().find(|(at, _)| *at == addr) {
            Some(slot) => {
                slot.1 = value;
                true
            }
            None => false,
        }
    }
}

/// A reference to memory that holds no entry: the error this memory reports.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
struct Unmapped(u64);

/// The memory handed to the walker: an [`Image`] plus a log of every reference made to it.
struct RecordingMemory {
    image: Image,
    reads: Vec<(u64, Level)>,
    writes: Vec<(u64, Level, u64)>,
}

impl RecordingMemory {
    fn new(image: Image) -> Self {
        Self { image, reads: Vec::with_capacity(5), writes: Vec::new() }
    }
}

impl TableMemory<Hpa> for RecordingMemory {
    type Error = Unmapped;

    fn read_entry(&mut self, addr: Hpa, level: Level) -> Result<u64, Unmapped> {
        let addr = addr.as_u64();
        self.reads.push((addr, level));
        self.image.get(addr).ok_or(Unmapped(addr))
    }

    fn write_entry(&mut self, addr: Hpa, level: Level, value: u64) -> Result<(), Unmapped> {
        let addr = addr.as_u64();
        self.writes.push((addr, level, value));
        if self.image.update(addr, value) {
            Ok(())
        } else {
            Err(Unmapped(addr))
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Table chains.
// ---------------------------------------------------------------------------------------------

/// Default table frames, indexed by [`slot`]: PT, PD, PDPT, PML4, PML5. All lie below 2^35, so
/// they stay valid for every MAXPHYADDR tested (36 and up) and bit 35 is free for the tests
/// that move a frame to the top of the physical-address range.
const TABLE_FRAMES: [u64; 5] = [0x5_6789_a000, 0x4_5678_9000, 0x3_4567_8000, 0x2_3456_7000, 0x1_2345_6000];
/// The 4-KByte page a PTE maps.
const PAGE_4K: u64 = 0x6_8765_4000;
/// The 2-MByte page a PDE maps (2-MByte aligned).
const PAGE_2M: u64 = 0x2_bcc0_0000;
/// The 1-GByte page a PDPTE maps (1-GByte aligned).
const PAGE_1G: u64 = 0x3_c000_0000;

/// The linear address of the 4-level enumerations: every index differs and is non-zero.
const VA4: u64 = 0x0000_7f3a_9b5c_d123;
/// The linear address of the 5-level enumerations (bit 56 clear, canonical at 57 bits).
const VA5: u64 = 0x00c7_f3a9_b5cd_1e23;

/// Flags of a plain table entry: present, writable, user, accessed.
const TABLE: u64 = P | RW | US | A;
/// Flags of a plain, fully permissive leaf: present, writable, user, accessed, dirty.
const LEAF: u64 = P | RW | US | A | D;

/// A description of one table chain for one linear address.
///
/// `flags[slot(level)]` holds every non-address bit of the entry at `level`, plus any extra
/// bits a test wants (reserved, ignored or address bits); the builder ORs in the frame of the
/// next table, or of the page when the entry is a leaf. Whether a PDE or PDPTE is a leaf is
/// decided by the PS bit in its flags.
#[derive(Clone, Debug)]
struct Chain {
    levels: PagingLevels,
    va: u64,
    frames: [u64; 5],
    flags: [u64; 5],
}

/// A chain laid out in memory.
struct Built {
    image: Image,
    root: u64,
    /// The entries placed, root first.
    placed: Vec<(Level, u64)>,
}

impl Chain {
    /// A 4-KByte-page chain whose table entries are [`TABLE`] and whose PTE is [`LEAF`].
    fn new(levels: PagingLevels, va: u64) -> Self {
        let mut flags = [TABLE; 5];
        flags[slot(Level::Pt)] = LEAF;
        Self { levels, va, frames: TABLE_FRAMES, flags }
    }

    /// The same chain with the entry at `level` carrying `flags`.
    fn with(mut self, level: Level, flags: u64) -> Self {
        self.flags[slot(level)] = flags;
        self
    }

    /// The same chain with the table at `level` moved to `frame`.
    fn with_frame(mut self, level: Level, frame: u64) -> Self {
        self.frames[slot(level)] = frame;
        self
    }

    /// Lays the chain out: one entry per level from the root down to the first leaf.
    fn build(&self) -> Built {
        let root = root_level(self.levels);
        let mut image = Image::default();
        let mut placed = Vec::with_capacity(5);
        let mut level = root;
        loop {
            let addr = self.frames[slot(level)] + entry_offset(self.va, level);
            let flags = self.flags[slot(level)];
            let leaf_page = match level {
                Level::Pt => Some(PAGE_4K),
                Level::Pd if flags & PS != 0 => Some(PAGE_2M),
                Level::Pdpt if flags & PS != 0 => Some(PAGE_1G),
                _ => None,
            };
            placed.push((level, addr));
            if let Some(page) = leaf_page {
                image.insert(addr, flags | page);
                break;
            }
            let next = lower(level).expect("a table entry has a level below it");
            image.insert(addr, flags | self.frames[slot(next)]);
            level = next;
        }
        Built { image, root: self.frames[slot(root)], placed }
    }
}

// ---------------------------------------------------------------------------------------------
// The reference model (SDM Vol. 3A §4.5-§4.8).
// ---------------------------------------------------------------------------------------------

/// How the walk may treat A and D, mirrored locally so cases can be copied and printed.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Ad {
    /// Set A and D as the processor does.
    Update,
    /// Never write.
    Leave,
}

impl Ad {
    fn policy(self) -> AdPolicy {
        match self {
            Ad::Update => AdPolicy::Update,
            Ad::Leave => AdPolicy::Leave,
        }
    }
}

/// A successful translation, as the reference model computes it.
#[derive(Clone, PartialEq, Eq, Debug)]
struct ExpectedMapping {
    /// Physical address of the page frame.
    page: u64,
    size: PageSize,
    /// Physical address of the entry that maps the page.
    leaf_entry: u64,
    leaf_level: Level,
    /// `None` where the walker's convention is not pinned down (G = 1 with CR4.PGE = 0: the
    /// SDM says G is then ignored, but not what a simulator field should report).
    global: Option<bool>,
    /// Whether the cached translation is dirty; `None` for a write under `AdPolicy::Leave`
    /// to a page whose D flag is clear (D is not set, yet the write is allowed).
    dirty: Option<bool>,
}

/// The outcome the reference model expects.
#[derive(Clone, PartialEq, Eq, Debug)]
enum Expected {
    Mapped(ExpectedMapping),
    Fault { code: u32, level: Level },
    NonCanonical,
    Memory(Unmapped),
}

/// The reference model's full account of a walk.
struct Reference {
    outcome: Expected,
    /// Entry reads, in order.
    reads: Vec<(u64, Level)>,
    /// Memory after the walk.
    after: Image,
}

/// The reserved bits of `entry` at `level` (SDM §4.5, Tables 4-14 to 4-20). Bits 62:52 are
/// ignored (62:59 are protection keys only with CR4.PKE = 1, out of scope here).
fn reserved_bits(level: Level, entry: u64, cpu: &CpuState) -> u64 {
    let mut mask = above_maxphyaddr(cpu.phys_bits);
    if !cpu.nxe {
        mask |= XD;
    }
    match level {
        // PS "must be 0" in a PML5E and in a PML4E.
        Level::Pml5 | Level::Pml4 => mask |= PS,
        // A PDPTE that maps a 1-GByte page: bits 29:13 reserved (bit 12 is PAT).
        Level::Pdpt if entry & PS != 0 => mask |= bit_range(13, 29),
        // A PDE that maps a 2-MByte page: bits 20:13 reserved (bit 12 is PAT).
        Level::Pd if entry & PS != 0 => mask |= bit_range(13, 20),
        _ => {}
    }
    mask
}

/// The error-code bits that describe the access itself (SDM §4.7): W/R, U/S and I/D. I/D is
/// reported only for instruction fetches with EFER.NXE = 1 or CR4.SMEP = 1.
fn access_code(access: Access, cpu: &CpuState) -> u32 {
    let mut code = 0;
    if access.kind == AccessKind::Write {
        code |= EC_W;
    }
    if access.privilege == Privilege::User {
        code |= EC_U;
    }
    if access.kind == AccessKind::Fetch && (cpu.nxe || cpu.smep) {
        code |= EC_ID;
    }
    code
}

/// The combined rights of a translation (SDM §4.6).
#[derive(Clone, Copy, Debug)]
struct Rights {
    /// U/S = 1 in every entry: a user-mode address.
    user: bool,
    /// R/W = 1 in every entry.
    writable: bool,
    /// XD = 1 in some entry (only meaningful with NXE = 1).
    xd: bool,
}

/// Whether `access` is allowed to a page with `rights` (SDM §4.6.1, explicit accesses only).
fn permitted(access: Access, cpu: &CpuState, rights: Rights) -> bool {
    // Instruction fetches may be made from an address only if XD is clear in every entry or
    // EFER.NXE = 0.
    let executable = !(cpu.nxe && rights.xd);
    // CR4.SMAP blocks explicit supervisor data accesses to user-mode addresses unless
    // EFLAGS.AC = 1.
    let smap_blocks = rights.user && cpu.smap && !cpu.ac;
    match (access.privilege, access.kind) {
        // User-mode accesses to supervisor-mode addresses are never allowed.
        (Privilege::User, _) if !rights.user => false,
        (Privilege::User, AccessKind::Read) => true,
        // User-mode writes need R/W = 1 everywhere, whatever CR0.WP says.
        (Privilege::User, AccessKind::Write) => rights.writable,
        (Privilege::User, AccessKind::Fetch) => executable,
        (Privilege::Supervisor, AccessKind::Read) => !smap_blocks,
        // Supervisor writes ignore R/W when CR0.WP = 0.
        (Privilege::Supervisor, AccessKind::Write) => !smap_blocks && (!cpu.wp || rights.writable),
        // CR4.SMEP: no supervisor fetches from user-mode addresses (EFLAGS.AC does not help).
        (Privilege::Supervisor, AccessKind::Fetch) => !(rights.user && cpu.smep) && executable,
    }
}

/// Whether `va` is canonical for `levels` (bits 63:47, or 63:56, all equal).
fn canonical(va: u64, levels: PagingLevels) -> bool {
    let top = match levels {
        PagingLevels::Four => va >> 47,
        PagingLevels::Five => va >> 56,
    };
    let ones = match levels {
        PagingLevels::Four => (1u64 << 17) - 1,
        PagingLevels::Five => (1u64 << 8) - 1,
    };
    top == 0 || top == ones
}

/// One walk as the SDM describes it.
fn reference_walk(image: &Image, root: u64, va: u64, access: Access, cpu: &CpuState, ad: Ad) -> Reference {
    let unchanged = |outcome, reads| Reference { outcome, reads, after: image.clone() };
    if !canonical(va, cpu.levels) {
        return unchanged(Expected::NonCanonical, Vec::new());
    }
    let mut reads = Vec::with_capacity(5);
    let mut used = Vec::with_capacity(5);
    let mut rights = Rights { user: true, writable: true, xd: false };
    let mut table = root;
    let mut level = root_level(cpu.levels);
    let (leaf_addr, leaf, size) = loop {
        let addr = table + entry_offset(va, level);
        reads.push((addr, level));
        let Some(entry) = image.get(addr) else {
            return unchanged(Expected::Memory(Unmapped(addr)), reads);
        };
        // A not-present entry ends the walk; all its other bits are ignored.
        if entry & P == 0 {
            let code = access_code(access, cpu);
            return unchanged(Expected::Fault { code, level }, reads);
        }
        // A present entry with a reserved bit set ends the walk with RSVD = 1 (and P = 1).
        if entry & reserved_bits(level, entry, cpu) != 0 {
            let code = EC_P | EC_RSVD | access_code(access, cpu);
            return unchanged(Expected::Fault { code, level }, reads);
        }
        used.push(addr);
        rights.user &= entry & US != 0;
        rights.writable &= entry & RW != 0;
        rights.xd |= entry & XD != 0;
        let size = match level {
            Level::Pt => Some(PageSize::Size4K),
            Level::Pd if entry & PS != 0 => Some(PageSize::Size2M),
            Level::Pdpt if entry & PS != 0 => Some(PageSize::Size1G),
            _ => None,
        };
        if let Some(size) = size {
            break (addr, entry, size);
        }
        table = entry & ADDR_FIELD & below_maxphyaddr(cpu.phys_bits);
        level = lower(level).expect("only a PTE has no level below");
    };
    if !permitted(access, cpu, rights) {
        // The walk reached the leaf; the fault is reported for the leaf's level.
        let code = EC_P | access_code(access, cpu);
        return unchanged(Expected::Fault { code, level }, reads);
    }
    let write = access.kind == AccessKind::Write;
    let mut after = image.clone();
    if ad == Ad::Update {
        for &addr in &used {
            let value = after.get(addr).expect("a used entry is in memory");
            after.insert(addr, value | A);
        }
        if write {
            after.insert(leaf_addr, after.get(leaf_addr).expect("leaf in memory") | D);
        }
    }
    let global = match (leaf & G != 0, cpu.pge) {
        (false, _) => Some(false),
        (true, true) => Some(true),
        (true, false) => None,
    };
    let dirty = if leaf & D != 0 {
        Some(true)
    } else if !write {
        Some(false)
    } else if ad == Ad::Update {
        Some(true)
    } else {
        None
    };
    let page_mask = !(size.bytes() - 1);
    let mapping = ExpectedMapping {
        page: leaf & ADDR_FIELD & below_maxphyaddr(cpu.phys_bits) & page_mask,
        size,
        leaf_entry: leaf_addr,
        leaf_level: level,
        global,
        dirty,
    };
    Reference { outcome: Expected::Mapped(mapping), reads, after }
}

// ---------------------------------------------------------------------------------------------
// Running and comparing.
// ---------------------------------------------------------------------------------------------

/// All six accesses: read, write, fetch, each as supervisor and as user.
const ACCESSES: [Access; 6] = [
    Access::new(AccessKind::Read, Privilege::Supervisor),
    Access::new(AccessKind::Write, Privilege::Supervisor),
    Access::new(AccessKind::Fetch, Privilege::Supervisor),
    Access::new(AccessKind::Read, Privilege::User),
    Access::new(AccessKind::Write, Privilege::User),
    Access::new(AccessKind::Fetch, Privilege::User),
];

/// The 32 combinations of EFER.NXE, CR0.WP, CR4.SMEP, CR4.SMAP and EFLAGS.AC (CR4.PGE on,
/// CR4.PCIDE off: neither changes a walk).
fn cpu_states(levels: PagingLevels, phys_bits: u8) -> Vec<CpuState> {
    (0..32u8)
        .map(|m| CpuState {
            levels,
            nxe: m & 1 != 0,
            wp: m & 2 != 0,
            smep: m & 4 != 0,
            smap: m & 8 != 0,
            ac: m & 16 != 0,
            pge: true,
            pcide: false,
            phys_bits,
        })
        .collect()
}

/// Every subset of `bits`, combined with bitwise or.
fn subsets(bits: &[u64]) -> Vec<u64> {
    let count = u32::try_from(bits.len()).expect("few bits");
    (0..1u32 << count)
        .map(|mask| {
            bits.iter().enumerate().filter(|(i, _)| (mask >> i) & 1 != 0).fold(0, |acc, (_, bit)| acc | bit)
        })
        .collect()
}

/// A short form of a CPU state.
fn describe_cpu(cpu: &CpuState) -> String {
    format!(
        "{}-level NXE={} WP={} SMEP={} SMAP={} AC={} PGE={} MAXPHYADDR={}",
        match cpu.levels {
            PagingLevels::Four => 4,
            PagingLevels::Five => 5,
        },
        u8::from(cpu.nxe),
        u8::from(cpu.wp),
        u8::from(cpu.smep),
        u8::from(cpu.smap),
        u8::from(cpu.ac),
        u8::from(cpu.pge),
        cpu.phys_bits
    )
}

/// A short form of an outcome the walker returned.
fn describe_outcome(got: &WalkOutcome<Hpa, Unmapped>, va: Gva) -> String {
    match got {
        WalkOutcome::Mapped(t) => format!(
            "Mapped {{ page: {:#x}, size: {:?}, address(va): {:#x}, leaf_entry: {:#x}, \
             leaf_level: {:?}, global: {}, dirty: {} }}",
            t.page.as_u64(),
            t.size,
            t.address(va).as_u64(),
            t.leaf_entry.as_u64(),
            t.leaf_level,
            t.global,
            t.dirty
        ),
        WalkOutcome::PageFault(pf) => {
            format!("PageFault {{ code: {:#x} [{}], level: {:?} }}", pf.code.bits(), pf.code, pf.level)
        }
        WalkOutcome::NonCanonical => "NonCanonical".to_string(),
        WalkOutcome::Memory(e) => format!("Memory({e:?})"),
    }
}

/// A short form of an expected outcome.
fn describe_expected(expected: &Expected) -> String {
    match expected {
        Expected::Mapped(m) => format!(
            "Mapped {{ page: {:#x}, size: {:?}, leaf_entry: {:#x}, leaf_level: {:?}, \
             global: {:?}, dirty: {:?} }}",
            m.page, m.size, m.leaf_entry, m.leaf_level, m.global, m.dirty
        ),
        Expected::Fault { code, level } => {
            format!("PageFault {{ code: {code:#x} [{}], level: {level:?} }}", PfErrorCode::from_bits(*code))
        }
        Expected::NonCanonical => "NonCanonical".to_string(),
        Expected::Memory(e) => format!("Memory({e:?})"),
    }
}

/// Compares the walker's outcome with the expected one; returns the mismatches.
fn compare_outcome(
    expected: &Expected,
    got: &WalkOutcome<Hpa, Unmapped>,
    va: Gva,
    problems: &mut Vec<String>,
) {
    match (expected, got) {
        (Expected::Mapped(want), WalkOutcome::Mapped(t)) => {
            let offset = va.as_u64() & (want.size.bytes() - 1);
            let mut check = |what: &str, ok: bool| {
                if !ok {
                    problems.push(format!("translation field `{what}` differs"));
                }
            };
            check("page", t.page.as_u64() == want.page);
            check("size", t.size == want.size);
            check("address(va)", t.address(va).as_u64() == want.page + offset);
            check("leaf_entry", t.leaf_entry.as_u64() == want.leaf_entry);
            check("leaf_level", t.leaf_level == want.leaf_level);
            check("global", want.global.is_none_or(|g| g == t.global));
            check("dirty", want.dirty.is_none_or(|d| d == t.dirty));
        }
        (Expected::Fault { code, level }, WalkOutcome::PageFault(pf)) => {
            if pf.code.bits() != *code {
                problems.push("page-fault error code differs".to_string());
            }
            if pf.level != *level {
                problems.push("page-fault level differs".to_string());
            }
        }
        (Expected::NonCanonical, WalkOutcome::NonCanonical) => {}
        (Expected::Memory(want), WalkOutcome::Memory(e)) => {
            if want != e {
                problems.push("memory error differs".to_string());
            }
        }
        _ => problems.push("outcome kind differs".to_string()),
    }
}

/// Runs cases and collects failures, so that one run shows the pattern of what is wrong.
struct Runner {
    label: &'static str,
    cases: usize,
    failed: usize,
    reports: Vec<String>,
}

/// How many failing cases are printed in full.
const MAX_REPORTS: usize = 25;

impl Runner {
    fn new(label: &'static str) -> Self {
        Self { label, cases: 0, failed: 0, reports: Vec::new() }
    }

    /// Walks `built` for `va` and checks everything against the reference model.
    fn run(&mut self, built: &Built, va: u64, access: Access, cpu: &CpuState, ad: Ad) {
        self.cases += 1;
        let reference = reference_walk(&built.image, built.root, va, access, cpu, ad);
        let gva = Gva::try_new(va).expect("test addresses are canonical at 57 bits");
        let mut mem = RecordingMemory::new(built.image.clone());
        let got = walk(&mut mem, Hpa::new(built.root), gva, access, cpu, ad.policy());

        let mut problems = Vec::new();
        compare_outcome(&reference.outcome, &got, gva, &mut problems);
        if mem.reads != reference.reads {
            problems.push(format!(
                "reads differ: expected {} {:x?}, got {} {:x?}",
                reference.reads.len(),
                reference.reads,
                mem.reads.len(),
                mem.reads
            ));
        }
        let may_write = ad == Ad::Update && matches!(reference.outcome, Expected::Mapped(_));
        if !may_write && !mem.writes.is_empty() {
            problems.push(format!(
                "write_entry called although {}: {:x?}",
                if ad == Ad::Leave { "AdPolicy::Leave" } else { "the walk does not succeed" },
                mem.writes
            ));
        }
        for &(addr, level, _) in &mem.writes {
            if !reference.reads.contains(&(addr, level)) {
                problems
                    .push(format!("write_entry({addr:#x}, {level:?}) names an entry the walk does not use"));
            }
        }
        if mem.image != reference.after {
            let diffs: Vec<String> = reference
                .after
                .entries
                .iter()
                .filter_map(|&(addr, want)| {
                    let have = mem.image.get(addr);
                    (have != Some(want)).then(|| {
                        let have = have.map_or_else(|| "nothing".to_string(), |v| format!("{v:#018x}"));
                        format!("[{addr:#x}] expected {want:#018x}, got {have}")
                    })
                })
                .collect();
            problems.push(format!("memory after the walk differs: {}", diffs.join("; ")));
        }

        if !problems.is_empty() {
            self.failed += 1;
            if self.reports.len() < MAX_REPORTS {
                let entries: Vec<String> = built
                    .placed
                    .iter()
                    .map(|&(level, addr)| describe_entry(level, built.image.get(addr).expect("placed")))
                    .collect();
                self.reports.push(format!(
                    "case: va={va:#x} {} | {:?} {:?} | {} | ad={ad:?}\n      expected: {}\n      \
                     got:      {}\n      problems: {}",
                    entries.join(" "),
                    access.privilege,
                    access.kind,
                    describe_cpu(cpu),
                    describe_expected(&reference.outcome),
                    describe_outcome(&got, gva),
                    problems.join(" / ")
                ));
            }
        }
    }

    /// Panics with a summary if any case failed.
    fn finish(self) {
        assert!(self.cases > 0, "{}: no cases ran", self.label);
        assert!(
            self.failed == 0,
            "{}: {} of {} cases failed; the first {}:\n{}",
            self.label,
            self.failed,
            self.cases,
            self.reports.len(),
            self.reports.join("\n")
        );
    }
}

/// Runs `built` for every CPU state in `cpus` and every access.
fn run_all(runner: &mut Runner, built: &Built, va: u64, cpus: &[CpuState], ad: Ad) {
    for cpu in cpus {
        for access in ACCESSES {
            runner.run(built, va, access, cpu, ad);
        }
    }
}

/// The enumerated linear address for a hierarchy.
fn test_va(levels: PagingLevels) -> u64 {
    match levels {
        PagingLevels::Four => VA4,
        PagingLevels::Five => VA5,
    }
}

// ---------------------------------------------------------------------------------------------
// The enumerations.
// ---------------------------------------------------------------------------------------------

/// Every combination of PDE bits P, W, U, A, D, XD, PS and, when the PDE references a page
/// table, of PTE bits P, W, U, A, D, XD, under every access and all 32 CPU states; the upper
/// levels are plain present/writable/user/accessed table entries. XD set with EFER.NXE = 0 is
/// the reserved-bit case of SDM §4.5.
fn pde_pte_matrix(levels: PagingLevels, policies: &[Ad], label: &'static str) {
    let va = test_va(levels);
    let cpus = cpu_states(levels, 46);
    let pte_bits = subsets(&[P, RW, US, A, D, XD]);
    let mut runner = Runner::new(label);
    for pde in subsets(&[P, RW, US, A, D, XD, PS]) {
        let ptes: &[u64] = if pde & PS != 0 { &[0] } else { &pte_bits };
        for &pte in ptes {
            let built = Chain::new(levels, va).with(Level::Pd, pde).with(Level::Pt, pte).build();
            for &ad in policies {
                run_all(&mut runner, &built, va, &cpus, ad);
            }
        }
    }
    runner.finish();
}

#[test]
fn pde_and_pte_bits_4_level() {
    pde_pte_matrix(PagingLevels::Four, &[Ad::Update, Ad::Leave], "PDE x PTE, 4-level");
}

#[test]
fn pde_and_pte_bits_5_level() {
    pde_pte_matrix(PagingLevels::Five, &[Ad::Update, Ad::Leave], "PDE x PTE, 5-level");
}

/// Every combination of PDPTE bits P, W, U, A, D, XD, PS: with PS = 1 a 1-GByte page, with
/// PS = 0 a table leading to a plain PDE and PTE.
#[test]
fn pdpte_bits_and_1g_pages() {
    let mut runner = Runner::new("PDPTE x 1G pages");
    for levels in [PagingLevels::Four, PagingLevels::Five] {
        let va = test_va(levels);
        let cpus = cpu_states(levels, 46);
        for pdpte in subsets(&[P, RW, US, A, D, XD, PS]) {
            let built = Chain::new(levels, va).with(Level::Pdpt, pdpte).build();
            for ad in [Ad::Update, Ad::Leave] {
                run_all(&mut runner, &built, va, &cpus, ad);
            }
        }
    }
    runner.finish();
}

/// The rights of an upper entry combine with those of the leaf (SDM §4.6: U/S and R/W must be
/// 1, XD 0, in *every* entry), and A is set in upper entries too (§4.8). For each upper entry
/// in turn, every combination of P, W, U, A, XD and bit 6 (ignored in a table entry), with
/// the other entries present/writable/user but not accessed, over a 4-KByte, 2-MByte and
/// 1-GByte leaf.
#[test]
fn upper_entry_bits_combine_with_the_leaf() {
    let mut runner = Runner::new("upper entries");
    let plain = P | RW | US;
    for levels in [PagingLevels::Four, PagingLevels::Five] {
        let va = test_va(levels);
        let cpus = cpu_states(levels, 46);
        let uppers: &[Level] = match levels {
            PagingLevels::Four => &[Level::Pml4, Level::Pdpt],
            PagingLevels::Five => &[Level::Pml5, Level::Pml4, Level::Pdpt],
        };
        let base = Chain::new(levels, va)
            .with(Level::Pml5, plain)
            .with(Level::Pml4, plain)
            .with(Level::Pdpt, plain)
            .with(Level::Pd, plain)
            .with(Level::Pt, plain);
        let shapes = [
            base.clone(),
            base.clone().with(Level::Pd, plain | PS),
            base.clone().with(Level::Pdpt, plain | PS),
        ];
        for &upper in uppers {
            for flags in subsets(&[P, RW, US, A, D, XD]) {
                for shape in &shapes {
                    // The 1-GByte shape makes the PDPTE the leaf; vary it only as a leaf there.
                    let leaf_ps = shape.flags[slot(Level::Pdpt)] & PS;
                    let flags = if upper == Level::Pdpt { flags | leaf_ps } else { flags };
                    let built = shape.clone().with(upper, flags).build();
                    run_all(&mut runner, &built, va, &cpus, Ad::Update);
                }
            }
        }
    }
    runner.finish();
}

/// Where a reserved bit may be set, and which bits are reserved there (SDM §4.5).
struct Carrier {
    level: Level,
    /// Extra flags that make the carrier what it is (PS for a large-page leaf).
    shape: u64,
    /// Reserved bits specific to this kind of entry, beyond 51:M and XD.
    specific: u64,
}

/// One reserved bit at a time in every kind of entry: each bit of 51:M for MAXPHYADDR 46 and
/// 36, XD (reserved only with EFER.NXE = 0, so the NXE = 1 half of the CPU states checks that
/// it is *not* reserved then), PS in a PML4E/PML5E, bits 20:13 of a 2-MByte PDE and 29:13 of a
/// 1-GByte PDPTE. The carrier's P, W, U, A, D bits are enumerated, so a reserved bit in a
/// non-present entry (ignored) and a reserved bit together with a protection violation
/// (RSVD wins: the walk never reaches the protection check) are both covered.
///
/// All 32 CPU states are used: WP, SMAP and AC cannot change a reserved-bit outcome per the
/// SDM, but they decide whether the same entry *would* fail a protection check, which catches
/// a walker that checks rights before reserved bits.
#[test]
fn reserved_bits_one_at_a_time() {
    let mut runner = Runner::new("reserved bits");
    for levels in [PagingLevels::Four, PagingLevels::Five] {
        let va = test_va(levels);
        let mut carriers = vec![
            Carrier { level: Level::Pml4, shape: 0, specific: PS },
            Carrier { level: Level::Pdpt, shape: 0, specific: 0 },
            Carrier { level: Level::Pdpt, shape: PS, specific: bit_range(13, 29) },
            Carrier { level: Level::Pd, shape: 0, specific: 0 },
            Carrier { level: Level::Pd, shape: PS, specific: bit_range(13, 20) },
            Carrier { level: Level::Pt, shape: 0, specific: 0 },
        ];
        if levels == PagingLevels::Five {
            carriers.push(Carrier { level: Level::Pml5, shape: 0, specific: PS });
        }
        for phys_bits in [46u8, 36] {
            let cpus = cpu_states(levels, phys_bits);
            for carrier in &carriers {
                let candidates = above_maxphyaddr(phys_bits) | XD | carrier.specific;
                for bit in (0..64).map(|n| 1u64 << n).filter(|b| candidates & b != 0) {
                    for flags in subsets(&[P, RW, US, A, D]) {
                        let built =
                            Chain::new(levels, va).with(carrier.level, flags | carrier.shape | bit).build();
                        run_all(&mut runner, &built, va, &cpus, Ad::Update);
                    }
                }
            }
        }
    }
    runner.finish();
}

/// Bits the SDM calls ignored, or that affect only caching (PWT, PCD, PAT), change nothing in
/// the walk: not the rights, not the address, not A/D. Bit 6 (D) and bit 8 (G) are ignored in
/// entries that reference a table, bits 11:9 and 62:52 in table entries, and bits 11:9 and
/// 58:52 in leaves (62:59 of a leaf are protection keys, out of scope). G in a leaf with
/// CR4.PGE = 1 makes the translation global. Bit 12 of a large-page leaf is PAT, not part of
/// the page address.
#[test]
fn ignored_and_caching_bits_change_nothing() {
    let mut runner = Runner::new("ignored bits");
    let table_bits = PWT | PCD | D | G | bit_range(9, 11) | bit_range(52, 62);
    let leaf_bits = PWT | PCD | G | bit_range(9, 11) | bit_range(52, 58);
    for levels in [PagingLevels::Four, PagingLevels::Five] {
        let va = test_va(levels);
        let cpus = cpu_states(levels, 46);
        let base = Chain::new(levels, va)
            .with(Level::Pml5, P | RW | US)
            .with(Level::Pml4, P | RW | US)
            .with(Level::Pdpt, P | RW | US)
            .with(Level::Pd, P | RW | US)
            .with(Level::Pt, P | RW | US);
        let shapes = [
            (base.clone(), Level::Pt, PS),
            (base.clone().with(Level::Pd, P | RW | US | PS), Level::Pd, PAT_LARGE),
            (base.clone().with(Level::Pdpt, P | RW | US | PS), Level::Pdpt, PAT_LARGE),
        ];
        for (shape, leaf_level, pat) in &shapes {
            let built = shape.build();
            for &(level, _) in &built.placed {
                let extra = if level == *leaf_level { leaf_bits | pat } else { table_bits };
                for bit in (0..64).map(|n| 1u64 << n).filter(|b| extra & b != 0) {
                    let flags = shape.flags[slot(level)] | bit;
                    let built = shape.clone().with(level, flags).build();
                    run_all(&mut runner, &built, va, &cpus, Ad::Update);
                }
                // All of them at once.
                let flags = shape.flags[slot(level)] | extra;
                let built = shape.clone().with(level, flags).build();
                run_all(&mut runner, &built, va, &cpus, Ad::Update);
            }
        }
        // G with CR4.PGE = 0 (the flag is ignored; only the walk itself is pinned down).
        let built = base.clone().with(Level::Pt, P | RW | US | G).build();
        let no_pge: Vec<CpuState> = cpus.iter().map(|c| CpuState { pge: false, ..*c }).collect();
        run_all(&mut runner, &built, va, &no_pge, Ad::Update);
    }
    runner.finish();
}

/// Address bits M-1:12 of an entry are all used (SDM §4.5): with every table and the page
/// moved so that bit M-1 is set, the walk follows them; bit M itself is reserved. Checked for
/// MAXPHYADDR 36, 39, 40, 46, 48 and 52 (no reserved address bits at all).
#[test]
fn address_bits_up_to_maxphyaddr() {
    let mut runner = Runner::new("address width");
    for levels in [PagingLevels::Four, PagingLevels::Five] {
        let va = test_va(levels);
        for phys_bits in [36u8, 39, 40, 46, 48, 52] {
            let top = 1u64 << (phys_bits - 1);
            let cpus = cpu_states(levels, phys_bits);
            for leaf in [Level::Pt, Level::Pd, Level::Pdpt] {
                let mut chain = Chain::new(levels, va);
                for level in [Level::Pt, Level::Pd, Level::Pdpt, Level::Pml4, Level::Pml5] {
                    chain = chain.with_frame(level, TABLE_FRAMES[slot(level)] | top);
                }
                if leaf != Level::Pt {
                    chain = chain.with(leaf, LEAF | PS);
                }
                // The page frame gets bit M-1 through the leaf's flags.
                let high = chain.clone().with(leaf, chain.flags[slot(leaf)] | top);
                run_all(&mut runner, &high.build(), va, &cpus, Ad::Update);
                if phys_bits < 52 {
                    let beyond = top << 1;
                    for level in [leaf, Level::Pml4] {
                        let over = high.clone().with(level, high.flags[slot(level)] | beyond);
                        run_all(&mut runner, &over.build(), va, &cpus, Ad::Update);
                    }
                }
            }
        }
    }
    runner.finish();
}

/// Several linear addresses, including index 0 and 511 at every level and both halves of the
/// address space, each with a 4-KByte, 2-MByte and 1-GByte leaf, under both A/D policies and
/// entries whose A and D start clear.
#[test]
fn various_linear_addresses() {
    let mut runner = Runner::new("linear addresses");
    let cases: [(PagingLevels, u64); 9] = [
        (PagingLevels::Four, 0),
        (PagingLevels::Four, 0x0000_7fff_ffff_ffff),
        (PagingLevels::Four, 0xffff_8000_0000_0000),
        (PagingLevels::Four, 0xffff_ffff_ffff_fff8),
        (PagingLevels::Four, 0x0000_0080_4020_1abc),
        (PagingLevels::Five, 0x00ff_ffff_ffff_ffff),
        (PagingLevels::Five, 0xff00_0000_0000_0000),
        (PagingLevels::Five, 0x0080_0000_0000_0000),
        (PagingLevels::Five, 0xffff_8000_0000_0000),
    ];
    let plain = P | RW | US;
    for (levels, va) in cases {
        let cpus = cpu_states(levels, 46);
        let base = Chain::new(levels, va)
            .with(Level::Pml5, plain)
            .with(Level::Pml4, plain)
            .with(Level::Pdpt, plain)
            .with(Level::Pd, plain)
            .with(Level::Pt, plain);
        for chain in [
            base.clone(),
            base.clone().with(Level::Pd, plain | PS),
            base.clone().with(Level::Pdpt, plain | PS),
        ] {
            let built = chain.build();
            for ad in [Ad::Update, Ad::Leave] {
                run_all(&mut runner, &built, va, &cpus, ad);
            }
        }
    }
    runner.finish();
}

/// At 4 levels an address whose bits 63:47 are not all equal is not canonical: no memory
/// reference, no write, `NonCanonical`. The same addresses walk normally at 5 levels.
#[test]
fn non_canonical_at_4_levels() {
    let mut runner = Runner::new("canonical addresses");
    let addresses =
        [0x0000_8000_0000_0000, 0x00ff_ffff_ffff_f000, 0xffff_0000_0000_0000, 0xff00_7fff_ffff_ffff];
    for va in addresses {
        for levels in [PagingLevels::Four, PagingLevels::Five] {
            let built = Chain::new(levels, va).with(Level::Pt, P | RW | US).build();
            for ad in [Ad::Update, Ad::Leave] {
                run_all(&mut runner, &built, va, &cpu_states(levels, 46), ad);
            }
        }
    }
    runner.finish();

    // And directly, without the reference model.
    let built = Chain::new(PagingLevels::Four, addresses[0]).build();
    let mut mem = RecordingMemory::new(built.image.clone());
    let cpu = CpuState::default();
    let va = Gva::try_new(addresses[0]).expect("canonical at 57 bits");
    let got = walk(&mut mem, Hpa::new(built.root), va, Access::USER_READ, &cpu, AdPolicy::Update);
    assert!(
        matches!(got, WalkOutcome::NonCanonical),
        "{va:?} at 4 levels: expected NonCanonical, got {}",
        describe_outcome(&got, va)
    );
    assert!(mem.reads.is_empty() && mem.writes.is_empty());
}

/// `AdPolicy::Leave` never writes, even where `Update` would set A in every entry and D in the
/// leaf; `Update` sets exactly those bits and no others.
#[test]
fn ad_policy_leave_writes_nothing() {
    let plain = P | RW | US;
    for levels in [PagingLevels::Four, PagingLevels::Five] {
        let va = test_va(levels);
        let built = Chain::new(levels, va)
            .with(Level::Pml5, plain)
            .with(Level::Pml4, plain)
            .with(Level::Pdpt, plain)
            .with(Level::Pd, plain)
            .with(Level::Pt, plain)
            .build();
        let cpu = CpuState { levels, ..CpuState::default() };
        let gva = Gva::try_new(va).expect("canonical");
        for access in [Access::USER_READ, Access::USER_WRITE] {
            let mut mem = RecordingMemory::new(built.image.clone());
            let got = walk(&mut mem, Hpa::new(built.root), gva, access, &cpu, AdPolicy::Leave);
            assert!(matches!(got, WalkOutcome::Mapped(_)), "{}", describe_outcome(&got, gva));
            assert_eq!(mem.image, built.image, "Leave changed memory ({access:?})");
            assert!(mem.writes.is_empty(), "Leave wrote {:x?}", mem.writes);

            let mut mem = RecordingMemory::new(built.image.clone());
            let got = walk(&mut mem, Hpa::new(built.root), gva, access, &cpu, AdPolicy::Update);
            assert!(matches!(got, WalkOutcome::Mapped(_)), "{}", describe_outcome(&got, gva));
            for &(level, addr) in &built.placed {
                let before = built.image.get(addr).expect("placed");
                let want = if level == Level::Pt && access.is_write() { before | A | D } else { before | A };
                assert_eq!(
                    mem.image.get(addr),
                    Some(want),
                    "Update, {access:?}: {} after the walk",
                    entry_name(level)
                );
            }
        }
    }
}

/// The number of `read_entry` calls is the number of levels walked: 4 or 5 for a 4-KByte page,
/// one less for a 2-MByte page, two less for a 1-GByte page, and up to the faulting entry.
#[test]
fn one_read_per_level_walked() {
    let cpu4 = CpuState { levels: PagingLevels::Four, ..CpuState::default() };
    let cpu5 = CpuState { levels: PagingLevels::Five, ..CpuState::default() };
    let cases: [(&CpuState, Level, u64, usize); 10] = [
        (&cpu4, Level::Pt, LEAF, 4),
        (&cpu4, Level::Pd, LEAF | PS, 3),
        (&cpu4, Level::Pdpt, LEAF | PS, 2),
        (&cpu4, Level::Pdpt, 0, 2),
        (&cpu4, Level::Pml4, TABLE | PS, 1),
        (&cpu5, Level::Pt, LEAF, 5),
        (&cpu5, Level::Pd, LEAF | PS, 4),
        (&cpu5, Level::Pdpt, LEAF | PS, 3),
        (&cpu5, Level::Pd, 0, 4),
        (&cpu5, Level::Pml5, 0, 1),
    ];
    for (cpu, level, flags, reads) in cases {
        let va = test_va(cpu.levels);
        let built = Chain::new(cpu.levels, va).with(level, flags).build();
        let mut mem = RecordingMemory::new(built.image.clone());
        let gva = Gva::try_new(va).expect("canonical");
        let got = walk(&mut mem, Hpa::new(built.root), gva, Access::USER_READ, cpu, AdPolicy::Update);
        assert_eq!(
            mem.reads.len(),
            reads,
            "{} = {flags:#x}, {:?}: {} ({:x?})",
            entry_name(level),
            cpu.levels,
            describe_outcome(&got, gva),
            mem.reads
        );
    }
}

/// A table address that leads to memory holding no entries gives `WalkOutcome::Memory` with
/// the memory's own error, after the read that failed, and writes nothing.
#[test]
fn memory_errors_are_passed_through() {
    let mut runner = Runner::new("memory errors");
    for levels in [PagingLevels::Four, PagingLevels::Five] {
        let va = test_va(levels);
        let cpus = cpu_states(levels, 46);
        // An address bit below MAXPHYADDR moves the next table somewhere unmapped.
        for level in [Level::Pml5, Level::Pml4, Level::Pdpt, Level::Pd] {
            let chain = Chain::new(levels, va);
            let built = chain.clone().with(level, TABLE | (1 << 40)).build();
            run_all(&mut runner, &built, va, &cpus, Ad::Update);
        }
        // An unmapped root.
        let mut built = Chain::new(levels, va).build();
        built.root = 0x7_0000_0000;
        run_all(&mut runner, &built, va, &cpus, Ad::Update);
    }
    runner.finish();
}

/// splitmix64, a small deterministic generator for the random cases.
struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A value in `0..n`.
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn chance(&mut self, one_in: u64) -> bool {
        self.below(one_in) == 0
    }
}

/// Random chains against the reference model: random flags (bits 11:0, XD, the ignored bits
/// 58:52), now and then one random bit of 51:12 (reserved above MAXPHYADDR, or an address bit
/// that sends the walk into unmapped memory, or a large-page reserved bit), random linear
/// addresses (sometimes non-canonical at 4 levels), random MAXPHYADDR from 36 to 52 and random
/// CPU state. Deterministic seed.
#[test]
fn random_chains_match_the_reference_model() {
    let mut runner = Runner::new("random chains");
    let mut rng = SplitMix(0x5eed_1234_abcd_0042);
    for _ in 0..60_000 {
        let levels = if rng.chance(2) { PagingLevels::Four } else { PagingLevels::Five };
        let raw = rng.next();
        let va = match levels {
            // Mostly canonical at 48 bits, sometimes only at 57.
            PagingLevels::Four if !rng.chance(16) => {
                let low = raw & bit_range(0, 47);
                if low & (1 << 47) != 0 {
                    low | bit_range(48, 63)
                } else {
                    low
                }
            }
            _ => Gva::new_truncate(raw).as_u64(),
        };
        let phys_bits = u8::try_from(36 + rng.below(17)).expect("36..=52");
        let mut chain = Chain::new(levels, va);
        for level in [Level::Pt, Level::Pd, Level::Pdpt, Level::Pml4, Level::Pml5] {
            // Mostly present, so that walks get deep.
            let mut flags = (rng.next() & 0xfff) | P;
            if rng.chance(8) {
                flags &= !P;
            }
            if rng.chance(3) {
                flags &= !PS;
            }
            if rng.chance(4) {
                flags |= XD;
            }
            if rng.chance(4) {
                flags |= rng.next() & bit_range(52, 58);
            }
            if rng.chance(10) {
                flags |= 1u64 << (12 + rng.below(40));
            }
            chain = chain.with(level, flags);
        }
        let built = chain.build();
        let bits = rng.next();
        let cpu = CpuState {
            levels,
            nxe: bits & 1 != 0,
            wp: bits & 2 != 0,
            smep: bits & 4 != 0,
            smap: bits & 8 != 0,
            ac: bits & 16 != 0,
            pge: bits & 32 != 0,
            pcide: bits & 64 != 0,
            phys_bits,
        };
        let access = ACCESSES[usize::try_from(rng.below(6)).expect("small")];
        let ad = if rng.chance(4) { Ad::Leave } else { Ad::Update };
        runner.run(&built, va, access, &cpu, ad);
    }
    runner.finish();
}
