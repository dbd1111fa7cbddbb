//! Builtin scenarios that behave like programs on a real kernel: several processes, fork,
//! exec and exit, mmap and munmap. Each generates its operations a step at a time into a
//! small queue, so memory does not grow with the run.

use std::collections::VecDeque;

use crate::addr::{Gva, PageSize, PAGE_BYTES};
use crate::guest::{Pid, Prot, Region};
use crate::paging::{AccessKind, Pte};
use crate::workload::rng::Rng;
use crate::workload::{Op, Workload, WorkloadError};

/// Where program images and heaps go in the user half (Linux-like).
const TEXT_BASE: u64 = 0x40_0000;
const DATA_BASE: u64 = 0x100_0000;
const HEAP_BASE: u64 = 0x1000_0000;
const MMAP_BASE: u64 = 0x7f00_0000_0000;
const STACK_TOP: u64 = 0x7fff_f000_0000;

/// A scenario as a step function that refills an operation queue.
pub struct Program<S> {
    queue: VecDeque<Op>,
    state: S,
    step: fn(&mut S, &mut VecDeque<Op>) -> bool,
}

impl<S: Send> Program<S> {
    /// A program whose `step` pushes the next operations and returns false when done.
    pub fn new(state: S, step: fn(&mut S, &mut VecDeque<Op>) -> bool) -> Self {
        Self { queue: VecDeque::new(), state, step }
    }
}

impl<S: Send> Workload for Program<S> {
    fn next_op(&mut self) -> Result<Option<Op>, WorkloadError> {
        while self.queue.is_empty() {
            if !(self.step)(&mut self.state, &mut self.queue) {
                return Ok(None);
            }
        }
        Ok(self.queue.pop_front())
    }
}

/// `len` rounded up to whole pages; a length too large to round is kept as it is, so the
/// kernel refuses the region showing the size asked for (not the 0 the rounding wraps to).
pub(crate) fn whole_pages(len: u64) -> u64 {
    len.checked_next_multiple_of(PAGE_BYTES).unwrap_or(len)
}

fn region(start: u64, len: u64, prot: Prot, page_size: PageSize) -> Region {
    Region { start: Gva::new_truncate(start), len: whole_pages(len), prot, user: true, page_size }
}

fn access(pid: Pid, va: u64, kind: AccessKind) -> Op {
    Op::Access { pid, va: Gva::new_truncate(va), kind, size: 8 }
}

/// Touches every page of `[start, start + len)` once with `kind`.
fn touch(queue: &mut VecDeque<Op>, pid: Pid, start: u64, len: u64, kind: AccessKind) {
    let mut va = start;
    while va < start + len {
        queue.push_back(access(pid, va, kind));
        va += PAGE_BYTES;
    }
}

/// A program initialising its data before the part a study measures: one write to each
/// 4 KiB page of `[start, start + len)` in order, then the `StartMeasuring` mark.
pub struct Populate {
    pid: Pid,
    start: u64,
    len: u64,
    /// The offset of the next page to write; `None` once the mark has been given.
    next: Option<u64>,
}

impl Populate {
    /// The set-up of `pid`'s buffer at `start`, `len` bytes long.
    pub fn new(pid: Pid, start: u64, len: u64) -> Self {
        Self { pid, start, len, next: Some(0) }
    }

    /// The set-up's next operation; `None` after the mark.
    pub fn next_op(&mut self) -> Option<Op> {
        let offset = self.next?;
        if offset < self.len {
            self.next = Some(offset + PAGE_BYTES);
            Some(access(self.pid, self.start + offset, AccessKind::Write))
        } else {
            self.next = None;
            Some(Op::StartMeasuring)
        }
    }
}

// ---- gups --------------------------------------------------------------------------------

/// GUPS state.
pub struct Gups {
    rng: Rng,
    size: u64,
    updates: u64,
    page_size: PageSize,
    started: bool,
    initialising: Populate,
}

impl Gups {
    /// Random updates over a `size`-byte table; the table is first initialised (one write per
    /// page) and the counters start with the update phase.
    pub fn new(seed: u64, size: u64, updates: u64, page_size: PageSize) -> Self {
        let initialising = Populate::new(1, HEAP_BASE, size);
        Self { rng: Rng::new(seed), size, updates, page_size, started: false, initialising }
    }

    fn step(&mut self, queue: &mut VecDeque<Op>) -> bool {
        if !self.started {
            self.started = true;
            queue.push_back(Op::Spawn { pid: 1, anywhere: false });
            queue.push_back(Op::Map {
                pid: 1,
                region: region(HEAP_BASE, self.size, Prot::RW, self.page_size),
            });
            return true;
        }
        // A batch of the initialising writes at a time: a table of gigabytes has millions.
        let before = queue.len();
        queue.extend(std::iter::from_fn(|| self.initialising.next_op()).take(1024));
        if queue.len() > before {
            return true;
        }
        if self.updates == 0 {
            return false;
        }
        for _ in 0..self.updates.min(1024) {
            let offset = self.rng.below(self.size / 8) * 8;
            queue.push_back(access(1, HEAP_BASE + offset, AccessKind::Write));
            self.updates -= 1;
        }
        true
    }
}

// ---- multi-process ------------------------------------------------------------------------

/// Several processes, each with its own buffer, switching every `quantum` accesses.
pub struct MultiProcess {
    rng: Rng,
    processes: u32,
    size: u64,
    left: u64,
    quantum: u64,
    page_size: PageSize,
    next: u32,
    started: bool,
    /// The process whose turn it is and the accesses of its quantum still to queue (queued
    /// [`WORK_STEP`] at a time, so a huge quantum never sits in memory at once).
    turn: (Pid, u64),
}

impl MultiProcess {
    /// `processes` processes of `size` bytes each, `accesses` in all, `quantum` per slice.
    pub fn new(
        seed: u64,
        processes: u32,
        size: u64,
        accesses: u64,
        quantum: u64,
        page_size: PageSize,
    ) -> Self {
        Self {
            rng: Rng::new(seed),
            processes,
            size,
            left: accesses,
            quantum,
            page_size,
            next: 0,
            started: false,
            turn: (1, 0),
        }
    }

    fn step(&mut self, queue: &mut VecDeque<Op>) -> bool {
        if !self.started {
            self.started = true;
            for pid in 1..=self.processes {
                queue.push_back(Op::Spawn { pid, anywhere: false });
                queue.push_back(Op::Map {
                    pid,
                    region: region(HEAP_BASE, self.size, Prot::RW, self.page_size),
                });
            }
            return true;
        }
        if self.left == 0 {
            return false;
        }
        if self.turn.1 == 0 {
            self.turn = (self.next % self.processes + 1, self.quantum);
            self.next += 1;
        }
        let (pid, turn_left) = self.turn;
        let now = turn_left.min(self.left).min(WORK_STEP);
        for _ in 0..now {
            let offset = self.rng.below(self.size / 8) * 8;
            let kind = if self.rng.below(4) == 0 { AccessKind::Write } else { AccessKind::Read };
            queue.push_back(access(pid, HEAP_BASE + offset, kind));
            self.left -= 1;
        }
        self.turn.1 -= now;
        true
    }
}

// ---- fork-storm ---------------------------------------------------------------------------

/// A shell running short commands: fork, a few copy-on-write breaks, exec, a small program,
/// exit — the page-table churn of a build or a shell script.
pub struct ForkStorm {
    rng: Rng,
    forks: u64,
    work: u64,
    page_size: PageSize,
    next_pid: Pid,
    started: bool,
    /// The command running now and the accesses of its work still to queue: the work is
    /// queued [`WORK_STEP`] accesses at a time, so `work=100m` never sits in memory at once.
    working: Option<(Pid, u64)>,
}

/// Accesses of a command's work queued per step.
const WORK_STEP: u64 = 1024;

impl ForkStorm {
    /// `forks` commands of `work` accesses each.
    pub fn new(seed: u64, forks: u64, work: u64, page_size: PageSize) -> Self {
        Self { rng: Rng::new(seed), forks, work, page_size, next_pid: 2, started: false, working: None }
    }

    /// Maps a program image (text, data, heap, stack) into `pid` and touches its start-up
    /// pages.
    fn load(&self, queue: &mut VecDeque<Op>, pid: Pid, scale: u64) {
        let text = 256 * 1024 * scale;
        let data = 64 * 1024 * scale;
        let heap = 512 * 1024 * scale;
        let stack = 64 * 1024;
        let ps = self.page_size;
        queue.push_back(Op::Map { pid, region: region(TEXT_BASE, text, Prot::RX, PageSize::Size4K) });
        queue.push_back(Op::Map { pid, region: region(DATA_BASE, data, Prot::RW, PageSize::Size4K) });
        queue.push_back(Op::Map { pid, region: region(HEAP_BASE, heap, Prot::RW, ps) });
        queue
            .push_back(Op::Map { pid, region: region(STACK_TOP - stack, stack, Prot::RW, PageSize::Size4K) });
        touch(queue, pid, TEXT_BASE, text / 2, AccessKind::Fetch);
        touch(queue, pid, DATA_BASE, data, AccessKind::Write);
        touch(queue, pid, HEAP_BASE, heap / 2, AccessKind::Write);
        touch(queue, pid, STACK_TOP - 4 * PAGE_BYTES, 4 * PAGE_BYTES, AccessKind::Write);
    }

    fn step(&mut self, queue: &mut VecDeque<Op>) -> bool {
        if !self.started {
            self.started = true;
            queue.push_back(Op::Spawn { pid: 1, anywhere: false });
            self.load(queue, 1, 4);
            return true;
        }
        let (child, left) = match self.working {
            Some(working) => working,
            None => {
                if self.forks == 0 {
                    return false;
                }
                self.forks -= 1;
                let child = self.next_pid;
                self.next_pid += 1;
                queue.push_back(Op::Fork { parent: 1, child });
                // The child writes its stack and some data before exec: copy-on-write breaks.
                touch(queue, child, STACK_TOP - 2 * PAGE_BYTES, 2 * PAGE_BYTES, AccessKind::Write);
                queue.push_back(access(child, DATA_BASE, AccessKind::Write));
                queue.push_back(Op::Exec { pid: child });
                self.load(queue, child, 1);
                (child, self.work)
            }
        };
        let heap = 256 * 1024;
        let now = left.min(WORK_STEP);
        for _ in 0..now {
            let offset = self.rng.below(heap / 8) * 8;
            let kind = if self.rng.below(3) == 0 { AccessKind::Write } else { AccessKind::Read };
            queue.push_back(access(child, HEAP_BASE + offset, kind));
        }
        if left > now {
            self.working = Some((child, left - now));
            return true;
        }
        self.working = None;
        queue.push_back(Op::Exit { pid: child });
        // The shell runs a little between commands, writing its own stack (copy-on-write
        // breaks on the parent's side too, while a child still shares it).
        queue.push_back(access(1, STACK_TOP - PAGE_BYTES, AccessKind::Write));
        queue.push_back(access(1, TEXT_BASE + self.rng.below(64) * PAGE_BYTES, AccessKind::Fetch));
        true
    }
}

// ---- mmap-churn ---------------------------------------------------------------------------

/// An allocator mapping and returning memory: mmap, touch, occasionally mprotect, munmap the
/// oldest once too many are live.
pub struct MmapChurn {
    rng: Rng,
    ops: u64,
    live_max: usize,
    max_pages: u64,
    page_size: PageSize,
    next_va: u64,
    live: VecDeque<(u64, u64)>,
    started: bool,
}

impl MmapChurn {
    /// `ops` mappings of up to `max_pages` pages, at most `live_max` live at once.
    pub fn new(seed: u64, ops: u64, live_max: usize, max_pages: u64, page_size: PageSize) -> Self {
        Self {
            rng: Rng::new(seed),
            ops,
            live_max,
            max_pages,
            page_size,
            next_va: MMAP_BASE,
            live: VecDeque::new(),
            started: false,
        }
    }

    fn step(&mut self, queue: &mut VecDeque<Op>) -> bool {
        if !self.started {
            self.started = true;
            queue.push_back(Op::Spawn { pid: 1, anywhere: false });
            return true;
        }
        if self.ops == 0 {
            return false;
        }
        self.ops -= 1;
        let pages = 1 + self.rng.below(self.max_pages);
        let len = pages.saturating_mul(PAGE_BYTES);
        let start = self.next_va;
        // Leave a guard gap, and keep large mappings 2 MiB-aligned as an allocator would
        // (saturating: past the user half the kernel refuses the region anyway).
        self.next_va = start.saturating_add(len).saturating_add(PageSize::Size2M.bytes())
            & !(PageSize::Size2M.bytes() - 1);
        queue.push_back(Op::Map { pid: 1, region: region(start, len, Prot::RW, self.page_size) });
        touch(queue, 1, start, len, AccessKind::Write);
        for _ in 0..pages {
            queue.push_back(access(1, start + self.rng.below(len / 8) * 8, AccessKind::Read));
        }
        self.live.push_back((start, len));
        if self.rng.below(8) == 0 {
            // Make the first half of one live mapping read-only (a sealed arena), then read it.
            let (at, l) = self.live[usize::try_from(self.rng.below(self.live.len() as u64)).unwrap_or(0)];
            let half = (l / 2).div_ceil(PAGE_BYTES).max(1) * PAGE_BYTES;
            let read_only = Prot { read: true, write: false, exec: false };
            queue.push_back(Op::Mprotect {
                pid: 1,
                start: Gva::new_truncate(at),
                len: half,
                prot: read_only,
            });
            queue.push_back(access(1, at, AccessKind::Read));
        }
        while self.live.len() > self.live_max {
            if let Some((at, l)) = self.live.pop_front() {
                queue.push_back(Op::Munmap { pid: 1, start: Gva::new_truncate(at), len: l });
            }
        }
        true
    }
}

/// Step functions as plain `fn`s for [`Program`].
pub mod steps {
    use super::*;

    /// GUPS.
    pub fn gups(s: &mut Gups, q: &mut VecDeque<Op>) -> bool {
        s.step(q)
    }
    /// Multi-process.
    pub fn multi_process(s: &mut MultiProcess, q: &mut VecDeque<Op>) -> bool {
        s.step(q)
    }
    /// Fork storm.
    pub fn fork_storm(s: &mut ForkStorm, q: &mut VecDeque<Op>) -> bool {
        s.step(q)
    }
    /// mmap churn.
    pub fn mmap_churn(s: &mut MmapChurn, q: &mut VecDeque<Op>) -> bool {
        s.step(q)
    }
}

// ---- hostile ------------------------------------------------------------------------------

/// Guest-physical frames the hostile cases point entries at: inside guest RAM but never handed
/// out by the kernel in a small run, and far outside every memory slot.
const HOSTILE_FRAME: u64 = 0x7000_0000;
const UNBACKED: u64 = 1 << 44;

/// A guest kernel that writes its page tables arbitrarily: one process per case, each case a
/// few raw entry writes followed by a read, a write and a fetch of the address they affect.
pub struct Hostile {
    cases: VecDeque<Vec<Op>>,
}

impl Hostile {
    /// The builtin cases.
    pub fn new() -> Self {
        let p = Pte::PRESENT | Pte::WRITABLE | Pte::USER;
        let mut cases = VecDeque::new();
        let mut pid: Pid = 0;
        let mut case = |pokes: &dyn Fn(Pid, u64) -> Vec<Op>, offset: u64| {
            pid += 1;
            let va = 0x10_0000_0000 + u64::from(pid) * (1 << 30) + offset;
            let mut ops = vec![Op::Spawn { pid, anywhere: false }];
            ops.extend(pokes(pid, va));
            for kind in [AccessKind::Read, AccessKind::Write, AccessKind::Fetch] {
                ops.push(access(pid, va, kind));
            }
            cases.push_back(ops);
        };
        let poke = |pid: Pid, va: u64, level: u8, value: u64| Op::Poke {
            pid,
            va: Gva::new_truncate(va),
            level,
            value,
        };
        // A reserved bit (51) in a PTE; then every reserved bit above MAXPHYADDR.
        case(&|pid, va| vec![poke(pid, va, 1, HOSTILE_FRAME | p | (1 << 51))], 0);
        case(&|pid, va| vec![poke(pid, va, 1, 0x000f_c000_0000_0000 | HOSTILE_FRAME | p)], 0);
        // Every reserved bit set but P clear: not present wins.
        case(&|pid, va| vec![poke(pid, va, 1, 0x000f_c000_0000_0000 | HOSTILE_FRAME | Pte::WRITABLE)], 0);
        // A 2 MiB leaf with reserved bits 20:13; PS in a PML4 entry.
        case(&|pid, va| vec![poke(pid, va, 2, HOSTILE_FRAME | p | Pte::PAGE_SIZE | (1 << 13))], 0);
        case(&|pid, va| vec![poke(pid, va, 4, HOSTILE_FRAME | p | Pte::PAGE_SIZE)], 0);
        // A page outside every memory slot (MMIO); a page table outside every slot.
        case(&|pid, va| vec![poke(pid, va, 1, UNBACKED | p)], 0);
        case(&|pid, va| vec![poke(pid, va, 2, UNBACKED | p)], 0);
        // A PD entry pointing at its own PD: with equal PD and PT indices the walk ends on the
        // same entry, mapping the table itself as a writable page.
        case(
            &|pid, va| vec![poke(pid, va, 1, HOSTILE_FRAME | p), poke(pid, va, 2, 0)],
            (5 << 21) | (5 << 12),
        );
        // One table aliased at two levels: the PD entry points at the PD itself as its PT.
        case(
            &|pid, va| {
                vec![
                    poke(pid, va, 1, HOSTILE_FRAME | p),
                    Op::Poke { pid, va: Gva::new_truncate(va), level: 2, value: HOSTILE_FRAME | p },
                ]
            },
            (7 << 21) | (3 << 12),
        );
        // A frame mapped writable that is also a page table (its own PT), then rewritten
        // repeatedly while in use (a write flood), each time with INVLPG.
        case(
            &|pid, va| {
                let mut ops = vec![poke(pid, va, 1, HOSTILE_FRAME | p)];
                for i in 0..6 {
                    ops.push(poke(pid, va, 1, (HOSTILE_FRAME + (i % 2) * 0x1000) | p));
                    ops.push(access(pid, va, AccessKind::Read));
                }
                ops
            },
            0,
        );
        // CR3 switched to garbage: outside every slot, then a data frame of zeros.
        case(&|pid, _| vec![Op::SetRoot { pid, root: UNBACKED }], 0);
        case(&|pid, _| vec![Op::SetRoot { pid, root: HOSTILE_FRAME + 0x5000 }], 0);
        Self { cases }
    }

    fn step(&mut self, queue: &mut VecDeque<Op>) -> bool {
        match self.cases.pop_front() {
            Some(ops) => {
                queue.extend(ops);
                true
            }
            None => false,
        }
    }
}

impl Default for Hostile {
    fn default() -> Self {
        Self::new()
    }
}

/// The hostile guest's step.
pub fn hostile_step(s: &mut Hostile, q: &mut VecDeque<Op>) -> bool {
    s.step(q)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gups_initialises_every_page_in_order_a_bounded_batch_at_a_time() {
        let pages = 3000;
        let mut gups = Gups::new(1, pages * PAGE_BYTES, 5, PageSize::Size4K);
        let mut ops = Vec::new();
        let mut queue = VecDeque::new();
        while steps::gups(&mut gups, &mut queue) {
            assert!(queue.len() <= 1025, "one step queued {} operations", queue.len());
            ops.extend(queue.drain(..));
        }
        assert!(matches!(ops[..2], [Op::Spawn { pid: 1, .. }, Op::Map { pid: 1, .. }]));
        let writes: Vec<Op> =
            (0..pages).map(|page| access(1, HEAP_BASE + page * PAGE_BYTES, AccessKind::Write)).collect();
        let mark = 2 + writes.len();
        assert_eq!(&ops[2..mark], &writes[..]);
        assert_eq!(ops[mark], Op::StartMeasuring);
        assert_eq!(ops.len(), mark + 1 + 5);
    }
}
