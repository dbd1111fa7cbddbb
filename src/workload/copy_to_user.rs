//! The `copy-to-user` scenario: the guest kernel writing into a process's memory on its
//! behalf, the case a guest's CR0.WP decides. A parent fills a buffer and forks; the child
//! then `read()`s into the buffer over and over: for each page the kernel writes it
//! (`copy_to_user`, a supervisor write with EFLAGS.AC set) and the child reads it.
//!
//! The buffer's pages are shared copy-on-write, so the child's entries are read-only. With
//! CR0.WP set (Linux always sets it) the kernel's first write to each page faults and breaks
//! copy-on-write, and after that nothing is special. With `--guest-cr0-wp off` the kernel
//! writes the shared pages in place without a fault (what WP exists to prevent); natively
//! and under nested paging that costs nothing more, but under shadow paging the hardware
//! runs with WP set and the VMM emulates the guest's WP=0: each kernel write maps the page
//! kernel-writable and user-inaccessible, each user read maps it back, one hidden page
//! fault each (Documentation/virt/kvm/x86/mmu.rst, "Emulating cr0.wp").

use std::collections::VecDeque;

use crate::addr::{Gva, PageSize, PAGE_BYTES};
use crate::guest::{Pid, Prot, Region};
use crate::paging::AccessKind;
use crate::workload::{Op, Workload, WorkloadError};

/// Where the buffer starts in the user half.
const BUFFER_BASE: u64 = 0x1000_0000;
/// The parent and the child.
const PARENT: Pid = 1;
const CHILD: Pid = 2;

/// The scenario's state.
pub struct CopyToUser {
    queue: VecDeque<Op>,
    pages: u64,
    rounds_left: u64,
}

impl CopyToUser {
    /// A buffer of `pages` pages read into `rounds` times.
    pub fn new(pages: u64, rounds: u64, page_size: PageSize) -> Self {
        let region = Region {
            start: Gva::new_truncate(BUFFER_BASE),
            len: pages * PAGE_BYTES,
            prot: Prot::RW,
            user: true,
            page_size,
        };
        let mut queue =
            VecDeque::from([Op::Spawn { pid: PARENT, anywhere: false }, Op::Map { pid: PARENT, region }]);
        for page in 0..pages {
            queue.push_back(Op::Access { pid: PARENT, va: page_va(page), kind: AccessKind::Write, size: 8 });
        }
        queue.push_back(Op::Fork { parent: PARENT, child: CHILD });
        queue.push_back(Op::StartMeasuring);
        Self { queue, pages, rounds_left: rounds }
    }
}

/// The address of the buffer's page `page`.
fn page_va(page: u64) -> Gva {
    Gva::new_truncate(BUFFER_BASE + page * PAGE_BYTES)
}

impl Workload for CopyToUser {
    fn next_op(&mut self) -> Result<Option<Op>, WorkloadError> {
        if self.queue.is_empty() && self.rounds_left > 0 {
            self.rounds_left -= 1;
            for page in 0..self.pages {
                let va = page_va(page);
                self.queue.push_back(Op::KernelAccess { pid: CHILD, va, kind: AccessKind::Write, size: 8 });
                self.queue.push_back(Op::Access { pid: CHILD, va, kind: AccessKind::Read, size: 8 });
            }
        }
        Ok(self.queue.pop_front())
    }
}
