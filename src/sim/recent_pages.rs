//! The run loop's memory of the last page each side of the TLB (fetches, data) served on the
//! fast path. A fast hit is a hit on the most recently used entry of its set, which changes
//! nothing; so until something else happens (an access that takes the general path, any other
//! operation), the same process touching the same 4 KiB page again on the same side hits that
//! same entry, and an access kind the entry allowed is allowed again. Real programs touch the
//! page they touched last most of the time: those accesses are answered here by two compares.

use crate::addr::Gva;
use crate::guest::Pid;
use crate::paging::AccessKind;

/// One side's last page: its address shifted right by 12 (every `Gva` is canonical, so two
/// are equal exactly when their 4 KiB pages are, with no need to mask off the sign bits as
/// the page number does) and the access kinds its entry lets a user access do without a
/// walk (one bit per [`AccessKind`]).
#[derive(Clone, Copy)]
struct Page {
    number: u64,
    kinds: u8,
}

/// The page of `va` as [`Page::number`] holds it.
#[inline(always)]
fn page_of(va: Gva) -> u64 {
    va.as_u64() >> 12
}

/// No page: no page number reaches `u64::MAX`, and no kind is allowed.
const NO_PAGE: Page = Page { number: u64::MAX, kinds: 0 };

/// The last fast hit on each side, for one process (meaningless while both are [`NO_PAGE`]).
pub struct RecentPages {
    pid: Pid,
    /// Data side first, fetch side second.
    pages: [Page; 2],
}

impl Default for RecentPages {
    fn default() -> Self {
        Self { pid: 0, pages: [NO_PAGE; 2] }
    }
}

impl RecentPages {
    /// Whether a one-page user access of `kind` at `va` by `pid` hits the page its side
    /// last hit, with a kind allowed there.
    #[inline(always)]
    pub fn hit(&self, pid: Pid, va: Gva, kind: AccessKind) -> bool {
        let page = self.pages[usize::from(kind == AccessKind::Fetch)];
        page.number == page_of(va) && page.kinds & 1 << kind as u8 != 0 && self.pid == pid
    }

    /// Remembers a fast hit by `pid` on `va`'s page, whose entry allows `kinds`.
    #[inline(always)]
    pub fn remember(&mut self, pid: Pid, va: Gva, kind: AccessKind, kinds: u8) {
        if self.pid != pid {
            *self = Self { pid, ..Self::default() };
        }
        self.pages[usize::from(kind == AccessKind::Fetch)] = Page { number: page_of(va), kinds };
    }

    /// Forgets both pages: something other than a fast hit happened.
    #[inline(always)]
    pub fn forget(&mut self) {
        *self = Self::default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hits_only_the_same_page_side_process_and_allowed_kind() {
        let mut recent = RecentPages::default();
        let va = Gva::new_truncate(0x7000_1234);
        assert!(!recent.hit(1, va, AccessKind::Read));
        // A clean data page: reads allowed, writes not.
        recent.remember(1, va, AccessKind::Read, 1 << AccessKind::Read as u8);
        assert!(recent.hit(1, Gva::new_truncate(0x7000_1ff8), AccessKind::Read));
        assert!(!recent.hit(1, va, AccessKind::Write));
        assert!(!recent.hit(1, Gva::new_truncate(0x7000_2000), AccessKind::Read));
        assert!(!recent.hit(2, va, AccessKind::Read));
        // The fetch side is separate.
        assert!(!recent.hit(1, va, AccessKind::Fetch));
        recent.remember(1, va, AccessKind::Fetch, 1 << AccessKind::Fetch as u8);
        assert!(recent.hit(1, va, AccessKind::Fetch) && recent.hit(1, va, AccessKind::Read));
        // Another process starts afresh.
        recent.remember(2, va, AccessKind::Read, 1 << AccessKind::Read as u8);
        assert!(!recent.hit(1, va, AccessKind::Read) && !recent.hit(2, va, AccessKind::Fetch));
        recent.forget();
        assert!(!recent.hit(2, va, AccessKind::Read));
        // Upper-half (sign-extended) addresses: the same page, and the next one.
        let high = Gva::new_truncate(0xffff_8000_0000_1008);
        recent.remember(1, high, AccessKind::Read, 1 << AccessKind::Read as u8);
        assert!(recent.hit(1, Gva::new_truncate(0xffff_8000_0000_1ff8), AccessKind::Read));
        assert!(!recent.hit(1, Gva::new_truncate(0xffff_8000_0000_2000), AccessKind::Read));
        assert!(!recent.hit(1, Gva::new_truncate(0x0000_8000_0000_1008), AccessKind::Read));
    }
}
