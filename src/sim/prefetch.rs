//! Prefetching walks, for the simulator's own speed: a program touching memory at random makes
//! walk after walk whose last entries (spread over many page-table frames) miss the host's
//! caches, one stall per walk. Once walks come in a run, the run loop asks the mode to touch
//! the last entries of the next accesses' walks together (see [`Mode::prefetch`]), so their
//! misses overlap; one prefetch later, when those accesses are near, it hands back what the
//! mode found for them, for entries that can only be found once the first ones are cached.
//! A TLB-friendly program's few walks, alone or in pairs, find their entries cached already
//! and never pay for it. Nothing a run reports depends on prefetching.

use std::ops::Range;

use crate::addr::{Gva, Hpa};
use crate::guest::Pid;
use crate::memory::Touches;
use crate::sim::machine::Machine;
use crate::vmm::Mode;
use crate::workload::Op;

/// Walks in a row after which the next accesses' walks are prefetched.
const AFTER_WALKS: u32 = 4;

/// The most upcoming accesses one prefetch covers (shadow paging touches two entries each).
pub const MOST_AHEAD: usize = Touches::MOST / 2;

/// Slots for what was found ahead: the near operations and those ahead of them span at most
/// two prefetches' worth.
const FOUND_RING: usize = 2 * MOST_AHEAD;

/// When to prefetch, within one batch of operations at a time.
pub struct Prefetcher {
    /// Accesses covered by one prefetch (0: never prefetch).
    ahead: usize,
    /// Operations of the batch before this index have been prefetched.
    covered: usize,
    /// Operations before this index have been prefetched as near ones too.
    near_covered: usize,
    /// What the mode found ahead for each operation, by index mod [`FOUND_RING`], handed back
    /// when the operation comes near.
    found: [Option<Hpa>; FOUND_RING],
    /// The operation that walked last, and how many accesses in a row up to it walked.
    last_walked: usize,
    in_a_row: u32,
}

impl Prefetcher {
    /// Prefetching `ahead` accesses at a time (at most [`MOST_AHEAD`]; 0 turns it off).
    pub fn new(ahead: usize) -> Self {
        Self {
            ahead: ahead.min(MOST_AHEAD),
            covered: 0,
            near_covered: 0,
            found: [None; FOUND_RING],
            last_walked: 0,
            in_a_row: 0,
        }
    }

    /// A new batch: its operations are numbered from 0 again.
    #[inline]
    pub fn new_batch(&mut self) {
        self.covered = 0;
        self.near_covered = 0;
        self.in_a_row = 0;
    }

    /// Before operation `at` of `ops`, an access, takes the general path: in a run of walks,
    /// prefetches the walks of the next accesses not yet prefetched that `running` (the
    /// process on the CPU) makes, and as near ones those the call before prefetched.
    #[cold]
    pub fn before<M: Mode>(&mut self, machine: &Machine<M>, running: Option<Pid>, ops: &[Op], at: usize) {
        if !self.due(at) {
            return;
        }
        let (near_range, ahead_range) = self.next_ranges(at, ops.len());
        let (near, near_count) = self.found_for(near_range);
        let mut vas = [Gva::new_truncate(0); MOST_AHEAD];
        let mut indexes = [0; MOST_AHEAD];
        let mut count = 0;
        for index in ahead_range.clone() {
            if let (Op::Access { pid, va, .. }, Some(slot)) = (ops[index], vas.get_mut(count)) {
                if Some(pid) == running {
                    (*slot, indexes[count]) = (va, index);
                    count += 1;
                }
            }
        }
        let mut found = [None; MOST_AHEAD];
        machine.mode.prefetch(&vas[..count], &mut found[..count], &near[..near_count], &machine.vcpu);
        self.keep_found(ahead_range, &indexes[..count], &found[..count]);
    }

    /// What the mode found ahead for the operations of `range`, in order.
    fn found_for(&self, range: Range<usize>) -> ([Hpa; MOST_AHEAD], usize) {
        let mut near = [Hpa::new(0); MOST_AHEAD];
        let mut count = 0;
        for index in range {
            if let (Some(found), Some(slot)) = (self.found[index % FOUND_RING], near.get_mut(count)) {
                *slot = found;
                count += 1;
            }
        }
        (near, count)
    }

    /// Keeps what the mode found for operations `indexes` of `range` (and nothing for the
    /// rest of it).
    fn keep_found(&mut self, range: Range<usize>, indexes: &[usize], found: &[Option<Hpa>]) {
        for index in range {
            self.found[index % FOUND_RING] = None;
        }
        for (&index, &found) in indexes.iter().zip(found) {
            self.found[index % FOUND_RING] = found;
        }
    }

    /// The operations a prefetch before operation `at` of `len` covers: near ones (prefetched
    /// ahead by the call before, not yet as near ones) and the next `ahead` not yet covered.
    fn next_ranges(&mut self, at: usize, len: usize) -> (Range<usize>, Range<usize>) {
        let from = self.covered.max(at + 1).min(len);
        let near = self.near_covered.max(at + 1).min(from)..from;
        self.near_covered = from;
        self.covered = (from + self.ahead).min(len);
        (near, from..self.covered)
    }

    /// Whether operation `at` starts a prefetch: prefetching is on, the accesses right before
    /// it walked, and the prefetched operations end less than half a prefetch ahead of it, so
    /// an entry is touched 8 to 24 accesses (at 16 a time) before its walk needs it: early
    /// enough for the miss to be over.
    fn due(&self, at: usize) -> bool {
        self.ahead > 0 && self.in_a_row >= AFTER_WALKS && at + self.ahead / 2 >= self.covered
    }

    /// After operation `at` took the general path: whether it walked.
    #[inline]
    pub fn after(&mut self, at: usize, walked: bool) {
        let follows = self.in_a_row > 0 && self.last_walked + 1 == at;
        self.in_a_row = match (walked, follows) {
            (false, _) => 0,
            (true, true) => self.in_a_row + 1,
            (true, false) => 1,
        };
        self.last_walked = at;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefetches_only_in_a_run_of_walks() {
        let mut p = Prefetcher::new(8);
        // Three walks in a row, then a hit on the general path: no run yet.
        for at in 0..3 {
            p.after(at, true);
        }
        assert!(!p.due(3));
        p.after(3, false);
        // Walks 4..8 are a run of four, but 9 does not follow 7 (operation 8 was a fast hit).
        for at in 4..8 {
            p.after(at, true);
        }
        assert!(p.due(8));
        p.after(9, true);
        assert!(!p.due(10));
        // A new batch starts counting again.
        for at in 10..14 {
            p.after(at, true);
        }
        assert!(p.due(14));
        p.new_batch();
        assert!(!p.due(0));
        // Off: never due.
        let mut off = Prefetcher::new(0);
        for at in 0..10 {
            off.after(at, true);
        }
        assert!(!off.due(10));
    }

    #[test]
    fn near_accesses_are_those_the_call_before_prefetched_ahead() {
        let mut p = Prefetcher::new(16);
        // The first prefetch of a batch has nothing near yet.
        assert_eq!(p.next_ranges(4, 1024), (5..5, 5..21));
        // Eight later: the rest of what the first covered is near; the next 16 are ahead.
        assert_eq!(p.next_ranges(13, 1024), (14..21, 21..37));
        // A prefetch that finds the covered ones already passed starts from the access after.
        assert_eq!(p.next_ranges(40, 1024), (41..41, 41..57));
        // Near the end of the batch, what is ahead stops at its last operation.
        assert_eq!(p.next_ranges(1020, 1024), (1021..1021, 1021..1024));
        p.new_batch();
        assert_eq!(p.next_ranges(0, 10), (1..1, 1..10));
    }

    #[test]
    fn what_was_found_ahead_comes_back_when_near() {
        let mut p = Prefetcher::new(16);
        let hpa = |n: u64| Hpa::new(n << 12);
        let (near, ahead) = p.next_ranges(4, 1024);
        assert_eq!(p.found_for(near).1, 0);
        // Operations 6 and 9 of the 16 ahead were accesses the mode found something for.
        p.keep_found(ahead, &[6, 9, 12], &[Some(hpa(6)), Some(hpa(9)), None]);
        let (near, ahead) = p.next_ranges(7, 1024);
        assert_eq!(near, 8..21);
        // 6 has gone by; 9 is near.
        let (found, count) = p.found_for(near);
        assert_eq!(&found[..count], &[hpa(9)]);
        // Near ones are always ones the call before kept something or nothing for.
        p.keep_found(ahead, &[], &[]);
        let (near, _) = p.next_ranges(20, 1024);
        assert_eq!(near, 21..37);
        assert_eq!(p.found_for(near).1, 0);
    }
}
