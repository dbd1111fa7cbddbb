//! The x86-64 paging-structure entry (SDM Vol. 3A §4.5, tables 4-15 to 4-20).
//!
//! [`Pte`] is the raw 64-bit entry exactly as it sits in memory; [`PteKind`] is the decoded
//! view at a given level. EPT entries have their own type in `crate::ept`; the two formats
//! never mix.

use std::fmt;

use crate::addr::{Level, PageSize, PhysAddr};
use crate::paging::cpu::CpuState;

/// A raw x86-64 paging-structure entry.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Pte(pub u64);

impl Pte {
    /// Bit 0, P: the entry maps something.
    pub const PRESENT: u64 = 1 << 0;
    /// Bit 1, R/W: writes allowed (subject to CR0.WP for supervisor accesses).
    pub const WRITABLE: u64 = 1 << 1;
    /// Bit 2, U/S: user-mode accesses allowed.
    pub const USER: u64 = 1 << 2;
    /// Bit 3, PWT: page-level write-through.
    pub const PWT: u64 = 1 << 3;
    /// Bit 4, PCD: page-level cache disable.
    pub const PCD: u64 = 1 << 4;
    /// Bit 5, A: set by the processor when the entry is used in a translation.
    pub const ACCESSED: u64 = 1 << 5;
    /// Bit 6, D: set by the processor on a write through a leaf entry.
    pub const DIRTY: u64 = 1 << 6;
    /// Bit 7, PS in a PDE/PDPTE (maps a large page); PAT in a PTE; reserved in PML4E/PML5E.
    pub const PAGE_SIZE: u64 = 1 << 7;
    /// Bit 8, G: global translation (with CR4.PGE), leaf entries only.
    pub const GLOBAL: u64 = 1 << 8;
    /// Bit 12 of a large-page leaf: its PAT bit.
    pub const LARGE_PAT: u64 = 1 << 12;
    /// Bit 63, XD: instruction fetches not allowed (with EFER.NXE).
    pub const NO_EXECUTE: u64 = 1 << 63;
    /// Bits 51:12: the physical address of the next table or 4 KiB page.
    pub const ADDRESS_MASK: u64 = 0x000f_ffff_ffff_f000;

    /// Whether all of `mask` is set.
    pub const fn has(self, mask: u64) -> bool {
        self.0 & mask == mask
    }

    /// The entry with `mask` set.
    #[must_use]
    pub const fn with(self, mask: u64) -> Pte {
        Pte(self.0 | mask)
    }

    /// A 4 KiB leaf or table pointer to `addr` with `flags`.
    pub fn new<P: PhysAddr>(addr: P, flags: u64) -> Pte {
        Pte((addr.raw() & Self::ADDRESS_MASK) | flags)
    }

    /// The bits that must be zero in a present entry at `level` under `cpu` (SDM §4.5).
    pub const fn reserved_mask(self, level: Level, cpu: &CpuState) -> u64 {
        let mut mask = cpu.above_maxphyaddr_mask();
        if !cpu.nxe {
            mask |= Self::NO_EXECUTE;
        }
        match level {
            // PS is reserved in PML5 and PML4 entries.
            Level::Pml5 | Level::Pml4 => mask |= Self::PAGE_SIZE,
            // 1 GiB leaf: bits 29:13 reserved (bit 12 is PAT).
            Level::Pdpt if self.0 & Self::PAGE_SIZE != 0 => mask |= 0x3fff_e000,
            // 2 MiB leaf: bits 20:13 reserved.
            Level::Pd if self.0 & Self::PAGE_SIZE != 0 => mask |= 0x001f_e000,
            _ => {}
        }
        mask
    }

    /// Decodes the entry as it would be used at `level` (no reserved-bit check).
    pub fn kind<P: PhysAddr>(self, level: Level) -> PteKind<P> {
        if !self.has(Self::PRESENT) {
            return PteKind::NotPresent;
        }
        let leaf_size = match level {
            Level::Pt => Some(PageSize::Size4K),
            Level::Pd | Level::Pdpt if self.has(Self::PAGE_SIZE) => level.leaf_size(),
            _ => None,
        };
        match leaf_size {
            Some(size) => {
                PteKind::Leaf { frame: P::from_raw(self.0 & Self::ADDRESS_MASK & !(size.bytes() - 1)), size }
            }
            None => PteKind::Table(P::from_raw(self.0 & Self::ADDRESS_MASK)),
        }
    }
}

/// A decoded entry.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum PteKind<P> {
    /// P = 0.
    NotPresent,
    /// Points at the next-lower table.
    Table(P),
    /// Maps a page of `size` starting at `frame`.
    Leaf {
        /// The first byte of the page.
        frame: P,
        /// The size of the page.
        size: PageSize,
    },
}

impl fmt::Debug for Pte {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Pte({:#018x} {})", self.0, self)
    }
}

impl fmt::Display for Pte {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let flags = [
            (Self::PRESENT, "P"),
            (Self::WRITABLE, "W"),
            (Self::USER, "U"),
            (Self::ACCESSED, "A"),
            (Self::DIRTY, "D"),
            (Self::PAGE_SIZE, "PS"),
            (Self::GLOBAL, "G"),
            (Self::NO_EXECUTE, "XD"),
        ];
        let mut first = true;
        for (bit, name) in flags {
            if self.0 & bit != 0 {
                if !first {
                    f.write_str("|")?;
                }
                f.write_str(name)?;
                first = false;
            }
        }
        if first {
            f.write_str("-")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::addr::Hpa;

    #[test]
    fn golden_bytes_of_a_user_leaf() {
        // A writable user 4 KiB page at 0x1234_5000, accessed and dirty, not executable.
        let pte = Pte::new(
            Hpa::new(0x1234_5000),
            Pte::PRESENT | Pte::WRITABLE | Pte::USER | Pte::ACCESSED | Pte::DIRTY | Pte::NO_EXECUTE,
        );
        assert_eq!(pte.0, 0x8000_0000_1234_5067);
        assert_eq!(pte.0.to_le_bytes(), [0x67, 0x50, 0x34, 0x12, 0, 0, 0, 0x80]);
    }

    #[test]
    fn decoding_by_level() {
        let large = Pte(0x4020_0000 | Pte::PRESENT | Pte::PAGE_SIZE | Pte::LARGE_PAT);
        assert_eq!(
            large.kind::<Hpa>(Level::Pd),
            PteKind::Leaf { frame: Hpa::new(0x4020_0000), size: PageSize::Size2M }
        );
        assert_eq!(
            large.kind::<Hpa>(Level::Pdpt),
            PteKind::Leaf { frame: Hpa::new(0x4000_0000), size: PageSize::Size1G }
        );
        // In a PTE bit 7 is PAT, so this is still a 4 KiB leaf.
        assert_eq!(
            Pte(0x5000 | Pte::PRESENT | Pte::PAGE_SIZE).kind::<Hpa>(Level::Pt),
            PteKind::Leaf { frame: Hpa::new(0x5000), size: PageSize::Size4K }
        );
        assert_eq!(Pte(0x5000).kind::<Hpa>(Level::Pt), PteKind::NotPresent);
    }

    #[test]
    fn reserved_masks() {
        let mut cpu = CpuState { phys_bits: 40, ..CpuState::default() };
        let table = Pte(Pte::PRESENT);
        assert_eq!(table.reserved_mask(Level::Pml4, &cpu), 0x000f_ff00_0000_0000 | Pte::PAGE_SIZE);
        assert_eq!(table.reserved_mask(Level::Pt, &cpu), 0x000f_ff00_0000_0000);
        cpu.nxe = false;
        assert!(table.reserved_mask(Level::Pt, &cpu) & Pte::NO_EXECUTE != 0);
        let large = Pte(Pte::PRESENT | Pte::PAGE_SIZE);
        assert_eq!(large.reserved_mask(Level::Pd, &cpu) & 0xff_ffff, 0x1f_e000);
    }
}
