//! The four address spaces of a virtualized access, as distinct types.
//!
//! A guest access travels GVA -> GPA -> HVA -> HPA. Each space has its own newtype so that a
//! guest-physical address can never be handed to code that wants a host-physical one: the only
//! way from one space to another is a translation function (a walker, a memory slot, the host
//! page tables). Arithmetic is checked; nothing wraps silently.

use std::fmt;

/// The number of bytes in the smallest (4 KiB) page and in a page-table frame.
pub const PAGE_BYTES: u64 = 4096;
/// log2 of [`PAGE_BYTES`].
pub const PAGE_SHIFT: u32 = 12;

/// A physical-address space whose addresses page-table entries hold (guest-physical for guest
/// tables, host-physical for shadow, host and native tables).
///
/// The walker is generic over this trait so one walker serves every kind of table.
pub trait PhysAddr: Copy + Eq + Ord + std::hash::Hash + fmt::Debug + fmt::LowerHex {
    /// Wraps a raw value taken from a table entry or a control register.
    fn from_raw(raw: u64) -> Self;
    /// The raw value.
    fn raw(self) -> u64;
}

macro_rules! address_type {
    ($(#[$doc:meta])* $name:ident, $frame:ident, $frame_doc:literal) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
        pub struct $name(u64);

        impl $name {
            /// Wraps a raw address.
            pub const fn new(raw: u64) -> Self {
                Self(raw)
            }
            /// The raw address.
            pub const fn as_u64(self) -> u64 {
                self.0
            }
            /// `self + bytes`, or `None` on overflow.
            pub fn checked_add(self, bytes: u64) -> Option<Self> {
                self.0.checked_add(bytes).map(Self)
            }
            /// `self - bytes`, or `None` on underflow.
            pub fn checked_sub(self, bytes: u64) -> Option<Self> {
                self.0.checked_sub(bytes).map(Self)
            }
            /// The distance in bytes from `base` up to `self`, or `None` if `self < base`.
            pub fn offset_from(self, base: Self) -> Option<u64> {
                self.0.checked_sub(base.0)
            }
            /// The address rounded down to a multiple of `size`.
            pub const fn align_down(self, size: PageSize) -> Self {
                Self(self.0 & !(size.bytes() - 1))
            }
            /// The byte offset of the address inside its `size` page.
            pub const fn page_offset(self, size: PageSize) -> u64 {
                self.0 & (size.bytes() - 1)
            }
            /// The 4 KiB frame holding this address.
            pub const fn frame(self) -> $frame {
                $frame(self.0 >> PAGE_SHIFT)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, concat!(stringify!($name), "({:#x})"), self.0)
            }
        }
        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{:#x}", self.0)
            }
        }
        impl serde::Serialize for $name {
            /// As a `0x`-prefixed hexadecimal string.
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(&format!("{:#x}", self.0))
            }
        }
        impl fmt::LowerHex for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::LowerHex::fmt(&self.0, f)
            }
        }

        #[doc = $frame_doc]
        #[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Debug)]
        pub struct $frame(u64);

        impl $frame {
            /// Wraps a frame number.
            pub const fn new(number: u64) -> Self {
                Self(number)
            }
            /// The frame number.
            pub const fn number(self) -> u64 {
                self.0
            }
            /// The address of the frame's first byte.
            pub const fn start(self) -> $name {
                $name(self.0 << PAGE_SHIFT)
            }
        }
    };
}

address_type!(
    /// A guest-physical address: what the guest believes is RAM.
    Gpa, Gfn, "A guest-physical 4 KiB frame number."
);
address_type!(
    /// A host-virtual address: where the VMM process keeps guest RAM.
    Hva, Hvpn, "A host-virtual 4 KiB page number."
);
address_type!(
    /// A host-physical address: real memory.
    Hpa, Hfn, "A host-physical 4 KiB frame number."
);

impl PhysAddr for Gpa {
    fn from_raw(raw: u64) -> Self {
        Self(raw)
    }
    fn raw(self) -> u64 {
        self.0
    }
}

impl PhysAddr for Hpa {
    fn from_raw(raw: u64) -> Self {
        Self(raw)
    }
    fn raw(self) -> u64 {
        self.0
    }
}

/// A guest-virtual (linear) address, canonical by construction.
///
/// Canonical here means canonical for 5-level paging (bits 63:57 copy bit 56), the widest form;
/// [`Gva::is_canonical_for`] tells whether it is also canonical for a narrower walk.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Gva(u64);

/// A linear address that is not canonical for 5-level paging.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct NonCanonical(pub u64);

impl fmt::Display for NonCanonical {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "linear address {:#x} is not canonical", self.0)
    }
}

impl std::error::Error for NonCanonical {}

impl Gva {
    /// Checks that `raw` is canonical for 5-level paging.
    pub fn try_new(raw: u64) -> Result<Self, NonCanonical> {
        if Self::canonical_with_bits(raw, 57) {
            Ok(Self(raw))
        } else {
            Err(NonCanonical(raw))
        }
    }

    /// Sign-extends bit 56 into bits 63:57, giving a canonical address.
    #[allow(clippy::cast_possible_wrap, clippy::cast_sign_loss)]
    pub const fn new_truncate(raw: u64) -> Self {
        // Shift the 57 significant bits to the top, then arithmetic-shift back to sign-extend.
        Self((((raw << 7) as i64) >> 7) as u64)
    }

    /// The raw address.
    pub const fn as_u64(self) -> u64 {
        self.0
    }

    /// Whether the address is canonical for a walk of `levels` levels (48 bits for 4, 57 for 5).
    pub fn is_canonical_for(self, levels: PagingLevels) -> bool {
        Self::canonical_with_bits(self.0, levels.linear_bits())
    }

    fn canonical_with_bits(raw: u64, bits: u32) -> bool {
        let shift = 64 - bits;
        #[allow(clippy::cast_possible_wrap, clippy::cast_sign_loss)]
        let extended = (((raw << shift) as i64) >> shift) as u64;
        extended == raw
    }

    /// `self + bytes`, or `None` if the result overflows or is not canonical.
    pub fn checked_add(self, bytes: u64) -> Option<Self> {
        self.0.checked_add(bytes).and_then(|raw| Self::try_new(raw).ok())
    }

    /// The address rounded down to a multiple of `size`.
    pub const fn align_down(self, size: PageSize) -> Self {
        Self(self.0 & !(size.bytes() - 1))
    }

    /// The byte offset of the address inside its `size` page.
    pub const fn page_offset(self, size: PageSize) -> u64 {
        self.0 & (size.bytes() - 1)
    }

    /// The 4 KiB virtual page number (the address shifted right by 12, sign bits dropped).
    pub const fn vpn(self) -> u64 {
        (self.0 & ((1u64 << 57) - 1)) >> PAGE_SHIFT
    }

    /// The 9-bit table index this address selects at `level`.
    pub const fn table_index(self, level: Level) -> TableIndex {
        TableIndex(((self.0 >> level.shift()) & 0x1ff) as u16)
    }
}

impl serde::Serialize for Gva {
    /// As a `0x`-prefixed hexadecimal string.
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format!("{:#x}", self.0))
    }
}

impl fmt::Debug for Gva {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Gva({:#x})", self.0)
    }
}

impl fmt::Display for Gva {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:#x}", self.0)
    }
}

/// An index into a 512-entry page table: 0..512 by construction.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub struct TableIndex(u16);

impl TableIndex {
    /// Keeps the low 9 bits of `raw`.
    pub const fn new_truncate(raw: u64) -> Self {
        Self((raw & 0x1ff) as u16)
    }
    /// The index, 0..512.
    pub const fn get(self) -> u64 {
        self.0 as u64
    }
    /// The byte offset of the entry inside its table.
    pub const fn byte_offset(self) -> u64 {
        (self.0 as u64) * 8
    }
}

/// A level of an x86-64 (or EPT) paging hierarchy, 1 (page table) to 5 (PML5).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub enum Level {
    /// Level 1: the page table (PT), whose entries map 4 KiB pages.
    Pt = 1,
    /// Level 2: the page directory (PD), whose entries may map 2 MiB pages.
    Pd = 2,
    /// Level 3: the page-directory-pointer table (PDPT), whose entries may map 1 GiB pages.
    Pdpt = 3,
    /// Level 4: the PML4 table.
    Pml4 = 4,
    /// Level 5: the PML5 table (LA57 only).
    Pml5 = 5,
}

impl Level {
    /// Every level, lowest first (index = level number - 1).
    pub const ALL: [Level; 5] = [Level::Pt, Level::Pd, Level::Pdpt, Level::Pml4, Level::Pml5];

    /// The level below, or `None` at the page table.
    pub const fn next_lower(self) -> Option<Level> {
        match self {
            Level::Pml5 => Some(Level::Pml4),
            Level::Pml4 => Some(Level::Pdpt),
            Level::Pdpt => Some(Level::Pd),
            Level::Pd => Some(Level::Pt),
            Level::Pt => None,
        }
    }

    /// The number, 1 to 5.
    pub const fn number(self) -> u8 {
        self as u8
    }

    /// The lowest linear-address bit this level's index uses (12, 21, 30, 39, 48).
    pub const fn shift(self) -> u32 {
        12 + 9 * (self as u32 - 1)
    }

    /// The page size a leaf at this level maps, if a leaf may stand here.
    pub const fn leaf_size(self) -> Option<PageSize> {
        match self {
            Level::Pt => Some(PageSize::Size4K),
            Level::Pd => Some(PageSize::Size2M),
            Level::Pdpt => Some(PageSize::Size1G),
            Level::Pml4 | Level::Pml5 => None,
        }
    }

    /// The conventional short name of a table at this level.
    pub const fn table_name(self) -> &'static str {
        match self {
            Level::Pt => "PT",
            Level::Pd => "PD",
            Level::Pdpt => "PDPT",
            Level::Pml4 => "PML4",
            Level::Pml5 => "PML5",
        }
    }
}

/// How many levels a walk has: 4 (48-bit linear addresses) or 5 (LA57, 57-bit).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Default, serde::Serialize, serde::Deserialize)]
#[serde(into = "u8", try_from = "u8")]
pub enum PagingLevels {
    /// 4-level paging.
    #[default]
    Four,
    /// 5-level paging.
    Five,
}

impl PagingLevels {
    /// From a count given on the command line.
    pub fn from_count(count: u8) -> Option<Self> {
        match count {
            4 => Some(Self::Four),
            5 => Some(Self::Five),
            _ => None,
        }
    }
    /// The number of levels.
    pub const fn count(self) -> u8 {
        match self {
            Self::Four => 4,
            Self::Five => 5,
        }
    }
    /// The level of the root table.
    pub const fn root(self) -> Level {
        match self {
            Self::Four => Level::Pml4,
            Self::Five => Level::Pml5,
        }
    }
    /// The number of significant linear-address bits.
    pub const fn linear_bits(self) -> u32 {
        match self {
            Self::Four => 48,
            Self::Five => 57,
        }
    }
}

impl From<PagingLevels> for u8 {
    fn from(levels: PagingLevels) -> u8 {
        levels.count()
    }
}

impl TryFrom<u8> for PagingLevels {
    type Error = String;
    fn try_from(count: u8) -> Result<Self, String> {
        Self::from_count(count).ok_or_else(|| format!("paging levels must be 4 or 5, not {count}"))
    }
}

/// A page size known only at run time, as a walk reports it.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, serde::Serialize, serde::Deserialize)]
pub enum PageSize {
    /// 4 KiB.
    #[serde(rename = "4k")]
    Size4K,
    /// 2 MiB.
    #[serde(rename = "2m")]
    Size2M,
    /// 1 GiB.
    #[serde(rename = "1g")]
    Size1G,
}

impl PageSize {
    /// The size in bytes.
    pub const fn bytes(self) -> u64 {
        1u64 << self.shift()
    }
    /// log2 of the size.
    pub const fn shift(self) -> u32 {
        match self {
            Self::Size4K => 12,
            Self::Size2M => 21,
            Self::Size1G => 30,
        }
    }
    /// The level of the table whose entries map pages of this size.
    pub const fn leaf_level(self) -> Level {
        match self {
            Self::Size4K => Level::Pt,
            Self::Size2M => Level::Pd,
            Self::Size1G => Level::Pdpt,
        }
    }
    /// A short label: "4K", "2M", "1G".
    pub const fn label(self) -> &'static str {
        match self {
            Self::Size4K => "4K",
            Self::Size2M => "2M",
            Self::Size1G => "1G",
        }
    }
}

impl fmt::Display for PageSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.label())
    }
}

/// A page size known at compile time.
pub trait PageSizeType: Copy {
    /// The run-time form.
    const SIZE: PageSize;
}

/// The 4 KiB page size as a type.
#[derive(Clone, Copy, Debug)]
pub enum Size4KiB {}
/// The 2 MiB page size as a type.
#[derive(Clone, Copy, Debug)]
pub enum Size2MiB {}
/// The 1 GiB page size as a type.
#[derive(Clone, Copy, Debug)]
pub enum Size1GiB {}

impl PageSizeType for Size4KiB {
    const SIZE: PageSize = PageSize::Size4K;
}
impl PageSizeType for Size2MiB {
    const SIZE: PageSize = PageSize::Size2M;
}
impl PageSizeType for Size1GiB {
    const SIZE: PageSize = PageSize::Size1G;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_checks_follow_the_sign_bit() {
        assert!(Gva::try_new(0x0000_7fff_ffff_f000).is_ok());
        assert!(Gva::try_new(0xffff_8000_0000_0000).is_ok());
        // Canonical at 57 bits but not at 48.
        let wide = Gva::try_new(0x0000_8000_0000_0000).expect("canonical at 57 bits");
        assert!(!wide.is_canonical_for(PagingLevels::Four));
        assert!(wide.is_canonical_for(PagingLevels::Five));
        assert!(Gva::try_new(0x0100_0000_0000_0000).is_err());
        assert_eq!(Gva::new_truncate(0x0100_0000_0000_0000).as_u64(), 0xff00_0000_0000_0000);
    }

    #[test]
    fn indices_and_levels() {
        let va = Gva::try_new(0x0000_7f12_3456_7000).expect("canonical");
        let expect = |shift: u32| (0x0000_7f12_3456_7000u64 >> shift) & 0x1ff;
        for level in [Level::Pt, Level::Pd, Level::Pdpt, Level::Pml4, Level::Pml5] {
            assert_eq!(va.table_index(level).get(), expect(level.shift()));
        }
        assert_eq!(Level::Pml5.next_lower(), Some(Level::Pml4));
        assert_eq!(Level::Pt.next_lower(), None);
        assert_eq!(Level::Pd.leaf_size(), Some(PageSize::Size2M));
        for size in [PageSize::Size4K, PageSize::Size2M, PageSize::Size1G] {
            assert_eq!(size.leaf_level().leaf_size(), Some(size));
        }
        assert_eq!(Size1GiB::SIZE.bytes(), 1 << 30);
    }

    #[test]
    fn checked_arithmetic_never_wraps() {
        assert_eq!(Hpa::new(u64::MAX).checked_add(1), None);
        assert_eq!(Gpa::new(0x1000).checked_sub(0x2000), None);
        assert_eq!(Gpa::new(0x3456).frame(), Gfn::new(3));
        assert_eq!(Hfn::new(5).start(), Hpa::new(0x5000));
        assert_eq!(Gpa::new(0x20_3456).align_down(PageSize::Size2M), Gpa::new(0x20_0000));
    }
}
