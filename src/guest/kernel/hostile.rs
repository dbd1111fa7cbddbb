//! What a hostile guest kernel does to its own tables: arbitrary entries at any level and an
//! arbitrary CR3. The VMM must give the architecturally correct result for whatever the guest
//! writes, and keep the guest inside its memory.

use crate::addr::{Gpa, Gva, Level};
use crate::guest::kernel::{Kernel, KernelError, Pid};
use crate::guest::page_table::USER_TABLE_FLAGS;
use crate::guest::platform::Platform;
use crate::paging::builder::entry_address;
use crate::paging::Pte;

impl Kernel {
    /// Writes `value` into `pid`'s entry for `va` at `level` (1..=5, at most the root level),
    /// creating missing upper tables and following whatever upper entries already hold, then
    /// flushes what the change may have left stale (INVLPG for a PTE, a CR3 reload above).
    pub fn poke(
        &mut self,
        p: &mut impl Platform,
        pid: Pid,
        va: Gva,
        level: u8,
        value: u64,
    ) -> Result<(), KernelError> {
        let root = self.root_of(pid).ok_or(KernelError::NoSuchProcess(pid))?;
        let target = Level::ALL
            .get(usize::from(level).wrapping_sub(1))
            .copied()
            .filter(|l| *l <= self.levels.root())
            .ok_or(KernelError::BadRegion { pid, start: va.as_u64(), len: u64::from(level) })?;
        if let Some(process) = self.processes.get_mut(&pid) {
            process.hostile = true;
        }
        let mut table = root;
        let mut at = self.levels.root();
        while at > target {
            let entry = entry_address(table, va.as_u64(), at);
            let current = p.read_phys(entry);
            table = if current & Pte::PRESENT == 0 {
                let fresh = self.frames.allocate()?;
                p.zero_frame(fresh);
                self.table_frames += 1;
                p.write_phys(entry, Pte::new(fresh.start(), USER_TABLE_FLAGS).0);
                fresh.start()
            } else {
                Gpa::new(current & Pte::ADDRESS_MASK)
            };
            at = match at.next_lower() {
                Some(lower) => lower,
                None => break,
            };
        }
        p.write_phys(entry_address(table, va.as_u64(), target), value);
        // A PTE change needs only INVLPG; an upper entry covers many pages, whose TLB entries
        // only a full flush removes.
        if target == Level::Pt {
            p.invlpg(va);
        } else if self.current == Some(pid) {
            self.reload_cr3(p, pid);
        }
        Ok(())
    }

    /// Points `pid`'s CR3 at `root` (loaded at once if `pid` is running).
    pub fn set_root(&mut self, p: &mut impl Platform, pid: Pid, root: Gpa) -> Result<(), KernelError> {
        let process = self.processes.get_mut(&pid).ok_or(KernelError::NoSuchProcess(pid))?;
        process.root = root.frame();
        process.hostile = true;
        if self.current == Some(pid) {
            self.reload_cr3(p, pid);
        }
        Ok(())
    }
}
