//! The EPT paging-structure entry (SDM Vol. 3C §29.3.2, tables 29-1 to 29-6).

use std::fmt;

use crate::addr::{Hpa, Level, PageSize};

/// A raw EPT entry.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct EptEntry(pub u64);

impl EptEntry {
    /// Bit 0: reads allowed.
    pub const READ: u64 = 1 << 0;
    /// Bit 1: writes allowed.
    pub const WRITE: u64 = 1 << 1;
    /// Bit 2: instruction fetches allowed (supervisor fetches with mode-based execute control).
    pub const EXECUTE: u64 = 1 << 2;
    /// Bits 2:0: the entry is present when any is set.
    pub const RWX: u64 = 0b111;
    /// Bits 5:3 of a leaf: the EPT memory type.
    pub const MEMORY_TYPE_SHIFT: u32 = 3;
    /// Bits 5:3 as a mask.
    pub const MEMORY_TYPE_MASK: u64 = 0b111 << 3;
    /// Bit 6 of a leaf: ignore the guest PAT memory type.
    pub const IGNORE_PAT: u64 = 1 << 6;
    /// Bit 7 of a PDE/PDPTE: maps a 2 MiB / 1 GiB page.
    pub const LARGE: u64 = 1 << 7;
    /// Bit 8: accessed (with EPT A/D enabled in the EPTP).
    pub const ACCESSED: u64 = 1 << 8;
    /// Bit 9 of a leaf: dirty (with EPT A/D enabled).
    pub const DIRTY: u64 = 1 << 9;
    /// Bit 10: user-mode execute (mode-based execute control only; not used here).
    pub const USER_EXECUTE: u64 = 1 << 10;
    /// Bit 63: suppress #VE.
    pub const SUPPRESS_VE: u64 = 1 << 63;
    /// Bits 51:12: the physical address of the next table or page.
    pub const ADDRESS_MASK: u64 = 0x000f_ffff_ffff_f000;

    /// Memory type uncacheable.
    pub const MT_UC: u64 = 0;
    /// Memory type write-back.
    pub const MT_WB: u64 = 6;

    /// A table pointer with full rights, as a VMM builds them.
    pub fn table(next: Hpa) -> EptEntry {
        EptEntry((next.as_u64() & Self::ADDRESS_MASK) | Self::RWX)
    }

    /// A read-write-execute write-back leaf mapping `page` as a page of `size`.
    pub fn leaf(page: Hpa, size: PageSize) -> EptEntry {
        let large = if size == PageSize::Size4K { 0 } else { Self::LARGE };
        EptEntry(
            (page.as_u64() & Self::ADDRESS_MASK)
                | Self::RWX
                | (Self::MT_WB << Self::MEMORY_TYPE_SHIFT)
                | large,
        )
    }

    /// Whether any of R, W, X is set.
    pub const fn is_present(self) -> bool {
        self.0 & Self::RWX != 0
    }

    /// Whether this entry, at `level`, maps a page.
    pub const fn is_leaf(self, level: Level) -> bool {
        match level {
            Level::Pt => true,
            Level::Pd | Level::Pdpt => self.0 & Self::LARGE != 0,
            Level::Pml4 | Level::Pml5 => false,
        }
    }

    /// Whether a present entry at `level` is misconfigured (SDM §29.3.3.1): write without
    /// read, a reserved bit set (above `phys_bits`; 7:3 in a non-leaf; 20:12 / 29:12 in a
    /// 2 MiB / 1 GiB leaf), or a reserved memory type (2, 3 or 7) in a leaf. Execute-only
    /// entries are allowed, as on processors that report that capability.
    #[inline]
    pub fn is_misconfigured(self, level: Level, phys_bits: u8) -> bool {
        let raw = self.0;
        if raw & (Self::READ | Self::WRITE) == Self::WRITE {
            return true;
        }
        let bits = u32::from(phys_bits.min(52));
        let mut reserved = ((1u64 << 52) - 1) & !((1u64 << bits) - 1);
        if self.is_leaf(level) {
            match level {
                Level::Pd => reserved |= 0x1f_f000,
                Level::Pdpt => reserved |= 0x3fff_f000,
                _ => {}
            }
            let memory_type = (raw & Self::MEMORY_TYPE_MASK) >> Self::MEMORY_TYPE_SHIFT;
            if matches!(memory_type, 2 | 3 | 7) {
                return true;
            }
        } else {
            reserved |= 0xf8;
        }
        raw & reserved != 0
    }
}

impl fmt::Debug for EptEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "EptEntry({:#018x} {})", self.0, self)
    }
}

impl fmt::Display for EptEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let r = if self.0 & Self::READ != 0 { "R" } else { "-" };
        let w = if self.0 & Self::WRITE != 0 { "W" } else { "-" };
        let x = if self.0 & Self::EXECUTE != 0 { "X" } else { "-" };
        write!(f, "{r}{w}{x}")?;
        if self.0 & Self::LARGE != 0 {
            f.write_str("|L")?;
        }
        if self.0 & Self::ACCESSED != 0 {
            f.write_str("|A")?;
        }
        if self.0 & Self::DIRTY != 0 {
            f.write_str("|D")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn golden_leaf_and_table_bytes() {
        // RWX, memory type WB (6 << 3 = 0x30), 2 MiB page at 0x4020_0000.
        assert_eq!(EptEntry::leaf(Hpa::new(0x4020_0000), PageSize::Size2M).0, 0x4020_00b7);
        assert_eq!(EptEntry::leaf(Hpa::new(0x5000), PageSize::Size4K).0, 0x5037);
        assert_eq!(EptEntry::table(Hpa::new(0x9000)).0, 0x9007);
    }

    #[test]
    fn misconfigurations() {
        let ok = EptEntry::leaf(Hpa::new(0x5000), PageSize::Size4K);
        assert!(!ok.is_misconfigured(Level::Pt, 46));
        // Write without read.
        assert!(EptEntry(0x5000 | EptEntry::WRITE).is_misconfigured(Level::Pt, 46));
        // Execute-only is fine.
        assert!(!EptEntry(0x5000 | EptEntry::EXECUTE).is_misconfigured(Level::Pt, 46));
        // Memory types 2, 3 and 7 are reserved.
        for memory_type in [2u64, 3, 7] {
            assert!(EptEntry(0x5000 | 7 | memory_type << 3).is_misconfigured(Level::Pt, 46));
        }
        // Bits 7:3 of a non-leaf entry are reserved.
        assert!(EptEntry(0x5000 | 7 | 1 << 4).is_misconfigured(Level::Pml4, 46));
        // Address bits above MAXPHYADDR.
        assert!(EptEntry(1 << 46 | 7).is_misconfigured(Level::Pml4, 46));
        // A 2 MiB leaf with bit 12 set.
        assert!(EptEntry(0x20_1000 | 0xb7).is_misconfigured(Level::Pd, 46));
    }
}
