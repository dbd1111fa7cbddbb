//! The control-register state that changes how a linear address is translated.

use crate::addr::PagingLevels;

/// The highest MAXPHYADDR the architecture allows.
pub const MAX_PHYS_BITS: u8 = 52;

/// The paging-relevant bits of CR0, CR4, EFER and EFLAGS, and the processor's MAXPHYADDR.
///
/// CR0.PG, CR4.PAE and EFER.LME are taken as set: this is long mode with 4- or 5-level paging.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, serde::Serialize, serde::Deserialize)]
pub struct CpuState {
    /// 4-level or 5-level paging (CR4.LA57).
    pub levels: PagingLevels,
    /// CR0.WP: supervisor writes honour read-only pages.
    pub wp: bool,
    /// CR4.SMEP: supervisor fetches from user-mode pages fault.
    pub smep: bool,
    /// CR4.SMAP: supervisor data accesses to user-mode pages fault unless EFLAGS.AC is set.
    pub smap: bool,
    /// EFLAGS.AC: lifts SMAP for explicit supervisor accesses.
    pub ac: bool,
    /// EFER.NXE: the XD bit is honoured (and is a reserved bit when clear).
    pub nxe: bool,
    /// CR4.PGE: global pages survive CR3 loads.
    pub pge: bool,
    /// CR4.PCIDE: TLB entries are tagged with the PCID in CR3 bits 11:0.
    pub pcide: bool,
    /// MAXPHYADDR: physical-address width; entry bits from here up to 51 are reserved.
    pub phys_bits: u8,
}

impl Default for CpuState {
    /// The state of a modern Linux guest: WP, SMEP, SMAP, NXE, PGE and PCIDE on, 46-bit
    /// physical addresses.
    fn default() -> Self {
        Self {
            levels: PagingLevels::Four,
            wp: true,
            smep: true,
            smap: true,
            ac: false,
            nxe: true,
            pge: true,
            pcide: true,
            phys_bits: 46,
        }
    }
}

impl CpuState {
    /// Entry bits 51:MAXPHYADDR, reserved in every paging-structure entry.
    pub const fn above_maxphyaddr_mask(&self) -> u64 {
        let bits = if self.phys_bits > MAX_PHYS_BITS { MAX_PHYS_BITS } else { self.phys_bits };
        ((1u64 << MAX_PHYS_BITS) - 1) & !((1u64 << bits) - 1)
    }
}
