//! The EPT pointer (SDM Vol. 3C §25.6.11).

use crate::addr::{Hpa, PagingLevels};

/// An EPTP value: memory type (2:0), page-walk length minus one (5:3), A/D enable (6), and
/// the root table's address (51:12).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Eptp(pub u64);

impl Eptp {
    /// Bit 6: accessed and dirty flags for EPT enabled.
    pub const AD_ENABLE: u64 = 1 << 6;

    /// A write-back EPTP for a table of `levels` levels rooted at `root`.
    pub fn new(root: Hpa, levels: PagingLevels, ad: bool) -> Eptp {
        let length = u64::from(levels.count() - 1) << 3;
        let ad = if ad { Self::AD_ENABLE } else { 0 };
        Eptp((root.as_u64() & 0x000f_ffff_ffff_f000) | length | ad | crate::ept::EptEntry::MT_WB)
    }

    /// The root table.
    pub fn root(self) -> Hpa {
        Hpa::new(self.0 & 0x000f_ffff_ffff_f000)
    }

    /// The walk length: 4 or 5 (any other encoding reads as 4).
    pub fn levels(self) -> PagingLevels {
        if (self.0 >> 3) & 0b111 == 4 {
            PagingLevels::Five
        } else {
            PagingLevels::Four
        }
    }

    /// Whether EPT A/D flags are enabled.
    pub fn ad_enabled(self) -> bool {
        self.0 & Self::AD_ENABLE != 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn golden_eptp() {
        let eptp = Eptp::new(Hpa::new(0x1234_5000), PagingLevels::Four, true);
        assert_eq!(eptp.0, 0x1234_505e);
        assert_eq!(eptp.levels(), PagingLevels::Four);
        assert!(eptp.ad_enabled());
        let five = Eptp::new(Hpa::new(0x1000), PagingLevels::Five, false);
        assert_eq!(five.0, 0x1026);
        assert_eq!(five.levels(), PagingLevels::Five);
        assert_eq!(five.root(), Hpa::new(0x1000));
    }
}
