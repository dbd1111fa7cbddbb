//! The budget of shadow pages and recycling within it. KVM: `make_mmu_pages_available`,
//! `kvm_mmu_zap_oldest_mmu_pages`, `kvm_mmu_calculate_default_mmu_pages` (mmu.c).
//!
//! Pages are made available *before* a fault's walk of the shadow tables begins (and before
//! a root is built), in batches, oldest first, never a root in use: so nothing a walk is
//! building can be recycled under it.

use crate::addr::{PagingLevels, PAGE_BYTES};
use crate::sim::stats::Stats;

use super::Shadow;

/// Below this many free pages, recycling starts (KVM_MIN_FREE_MMU_PAGES).
const MIN_FREE_PAGES: usize = 5;
/// Recycling frees pages until this many are free (KVM_REFILL_PAGES).
const REFILL_PAGES: usize = 25;
/// Shadow pages per thousand pages of guest memory by default (KVM_PERMILLE_MMU_PAGES).
const PERMILLE_PAGES: u64 = 20;
/// The smallest default budget (KVM_MIN_ALLOC_MMU_PAGES).
const MIN_DEFAULT_PAGES: u64 = 64;

/// KVM's default budget for a guest with `guest_ram` bytes of memory: 2 % of its pages, at
/// least 64.
pub fn default_budget(guest_ram: u64) -> usize {
    let pages = (guest_ram / PAGE_BYTES).saturating_mul(PERMILLE_PAGES) / 1000;
    usize::try_from(pages.max(MIN_DEFAULT_PAGES)).unwrap_or(usize::MAX)
}

/// The smallest budget a walk can work in: a root and one page for each level below it,
/// which one fault may need at once.
pub fn min_budget(levels: PagingLevels) -> usize {
    usize::from(levels.count())
}

impl Shadow {
    /// Pages the budget still allows.
    fn available(&self) -> usize {
        self.budget.saturating_sub(self.pages.len())
    }

    /// Whether `table` is a root in use (the current one, or one the cache of recent roots
    /// holds): KVM never zaps a page with a root count for room.
    fn is_root(&self, table: crate::addr::Hpa) -> bool {
        self.active == Some(table) || self.roots.iter().any(|&(_, _, root)| root == table)
    }

    /// Makes sure a fault (or a root load) can create every page it needs without recycling:
    /// below the low-water mark, zaps the oldest pages that are not roots in use until the
    /// refill mark is free; if roots alone fill the budget, the cached roots other than the
    /// current one are given up first (KVM frees previous roots with `kvm_mmu_free_roots`).
    pub(super) fn make_pages_available(&mut self, stats: &mut Stats) {
        let need = min_budget(self.levels);
        let low = MIN_FREE_PAGES.max(need).min(self.budget);
        if self.available() >= low {
            return;
        }
        let refill = REFILL_PAGES.max(low).min(self.budget);
        self.zap_oldest(refill - self.available(), stats);
        if self.available() < need {
            let current = self.active;
            self.roots.retain(|&(_, _, root)| Some(root) == current);
            self.zap_oldest(need.saturating_sub(self.available()), stats);
        }
    }

    /// Zaps at least `count` pages (more if a zap takes out-of-sync pages with it), oldest
    /// first, passing over roots in use.
    fn zap_oldest(&mut self, count: usize, stats: &mut Stats) {
        let before = self.pages.len();
        let mut passed = Vec::new();
        while before - self.pages.len().min(before) < count {
            let Some(table) = self.order.pop_front() else { break };
            if !self.pages.contains_key(&table) {
                continue;
            }
            if self.is_root(table) {
                passed.push(table);
                continue;
            }
            self.zap_page(table, stats);
        }
        for table in passed.into_iter().rev() {
            self.order.push_front(table);
        }
        stats.shadow.recycled += (before - self.pages.len().min(before)) as u64;
    }

    /// Drops entries of zapped pages from the age order once they outnumber live pages, so
    /// the order does not grow with every page ever created.
    pub(super) fn compact_order(&mut self) {
        if self.order.len() > 2 * self.pages.len() + 64 {
            let pages = &self.pages;
            self.order.retain(|t| pages.contains_key(t));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_budget_is_kvms() {
        // 2 % of 64 GiB of 4 KiB pages; and the floor of 64 for a small guest.
        assert_eq!(default_budget(64 << 30), 16_777_216 * 20 / 1000);
        assert_eq!(default_budget(1 << 20), 64);
    }
}
