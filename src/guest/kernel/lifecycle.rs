//! Process life cycle: `fork` with copy-on-write, `exec`, `exit`, and tearing an address
//! space down.

use crate::addr::{Gpa, Level, PageSize};
use crate::guest::kernel::{Kernel, KernelError, Pid, Process};
use crate::guest::page_table::{GuestTables, USER_TABLE_FLAGS};
use crate::guest::platform::Platform;
use crate::paging::builder::{self, EntryFormat, InstallError};
use crate::paging::Pte;

impl Kernel {
    /// Forks `parent` into a new process `child`: the same regions, and every present user
    /// page mapped in both, read-only on both sides where it was writable (copy-on-write).
    /// The parent's TLB is flushed afterwards, as Linux does after `copy_page_range`.
    pub fn fork(&mut self, p: &mut impl Platform, parent: Pid, child: Pid) -> Result<(), KernelError> {
        let source = self.processes.get(&parent).ok_or(KernelError::NoSuchProcess(parent))?;
        let (regions, anywhere, parent_root) = (source.regions.clone(), source.anywhere, source.root.start());
        if source.hostile {
            // Its tables cannot be trusted to describe memory it owns: the child starts empty.
            self.spawn(p, child, anywhere)?;
            self.counters.forks += 1;
            return Ok(());
        }
        self.spawn(p, child, anywhere)?;
        if let Some(process) = self.processes.get_mut(&child) {
            process.regions = regions;
        }
        let child_root = self.root_of(child).ok_or(KernelError::NoSuchProcess(child))?;
        let mut leaves = Vec::new();
        self.user_leaves(p, parent_root, self.levels.root(), 0, &mut leaves);
        for (va, entry, value, level) in leaves {
            let size = level.leaf_size().unwrap_or(PageSize::Size4K);
            let frame = Gpa::new(value & Pte::ADDRESS_MASK & !(size.bytes() - 1));
            let shared = value & !Pte::WRITABLE;
            if value != shared {
                p.write_phys(entry, shared);
            }
            *self.shared.entry(frame).or_insert(0) += 1;
            let mut tables = GuestTables { platform: p, frames: &mut self.frames };
            let installed = builder::install(
                &mut tables,
                EntryFormat::X86,
                child_root,
                self.levels,
                va,
                size,
                shared,
                USER_TABLE_FLAGS,
            );
            match installed {
                Ok((created, _)) => self.table_frames += created,
                Err(InstallError::OutOfMemory(e)) => return Err(e.into()),
                Err(InstallError::LargePageInTheWay) => {}
            }
        }
        if self.current == Some(parent) {
            self.reload_cr3(p, parent);
        }
        self.counters.forks += 1;
        Ok(())
    }

    /// Every present leaf of the user half under `table` (a table at `level` covering
    /// addresses from `base`): (address, entry address, entry, level).
    fn user_leaves(
        &self,
        p: &mut impl Platform,
        table: Gpa,
        level: Level,
        base: u64,
        out: &mut Vec<(u64, Gpa, u64, Level)>,
    ) {
        let count = if level == self.levels.root() { 256 } else { 512 };
        for index in 0..count {
            let entry = Gpa::new(table.as_u64() + index * 8);
            let value = p.read_phys(entry);
            if value & Pte::PRESENT == 0 {
                continue;
            }
            let va = base | (index << level.shift());
            if EntryFormat::X86.is_leaf(value, level) {
                out.push((va, entry, value, level));
            } else if let Some(lower) = level.next_lower() {
                self.user_leaves(p, Gpa::new(value & Pte::ADDRESS_MASK), lower, va, out);
            }
        }
    }

    /// Frees the user half under the table at `table` (of `level`): clears every entry, drops
    /// the data frames, frees the lower tables. Linux clears each entry as it zaps a range.
    fn tear_down(&mut self, p: &mut impl Platform, table: Gpa, level: Level) {
        let count = if level == self.levels.root() { 256 } else { 512 };
        for index in 0..count {
            let entry = Gpa::new(table.as_u64() + index * 8);
            let value = p.read_phys(entry);
            if value & Pte::PRESENT == 0 {
                continue;
            }
            if EntryFormat::X86.is_leaf(value, level) {
                let size = level.leaf_size().unwrap_or(PageSize::Size4K);
                self.drop_ref(Gpa::new(value & Pte::ADDRESS_MASK & !(size.bytes() - 1)), size);
            } else if let Some(lower) = level.next_lower() {
                let child = Gpa::new(value & Pte::ADDRESS_MASK);
                self.tear_down(p, child, lower);
                self.frames.free(child.frame());
                self.table_frames -= 1;
            }
            p.write_phys(entry, 0);
        }
    }

    /// Replaces `pid`'s program: the user half is torn down and the regions dropped; the
    /// process keeps its identity. Its PCID's translations are stale, so it is flushed.
    pub fn exec(&mut self, p: &mut impl Platform, pid: Pid) -> Result<(), KernelError> {
        let root = self.root_of(pid).ok_or(KernelError::NoSuchProcess(pid))?;
        if !self.is_hostile(pid) {
            self.tear_down(p, root, self.levels.root());
        }
        if let Some(process) = self.processes.get_mut(&pid) {
            process.regions.clear();
        }
        self.forget_pcid(pid);
        if self.current == Some(pid) {
            self.reload_cr3(p, pid);
        }
        self.counters.execs += 1;
        Ok(())
    }

    /// Ends `pid`: its user half, its tables and its root are freed.
    pub fn exit(&mut self, p: &mut impl Platform, pid: Pid) -> Result<(), KernelError> {
        let root = self.root_of(pid).ok_or(KernelError::NoSuchProcess(pid))?;
        let hostile = self.is_hostile(pid);
        if !hostile {
            self.tear_down(p, root, self.levels.root());
        }
        self.forget_pcid(pid);
        if let Some(Process { root, .. }) = self.processes.remove(&pid) {
            // A hostile process's tables (and whatever its CR3 points at) are left alone.
            if !hostile {
                self.frames.free(root);
                self.table_frames -= 1;
            }
        }
        if self.current == Some(pid) {
            self.current = None;
        }
        self.counters.exits += 1;
        Ok(())
    }

    /// Makes the next CR3 load of `pid` flush its PCID.
    fn forget_pcid(&mut self, pid: Pid) {
        for owner in &mut self.pcid_owner {
            if *owner == Some(pid) {
                *owner = None;
            }
        }
    }

    /// Reloads `pid`'s CR3 without no-flush: every non-global translation of its PCID goes.
    pub(super) fn reload_cr3(&mut self, p: &mut impl Platform, pid: Pid) {
        self.forget_pcid(pid);
        if self.current == Some(pid) {
            self.current = None;
            // Switching to the running process again is not a context switch.
            let switches = self.counters.context_switches;
            let _ = self.switch_to(p, pid);
            self.counters.context_switches = switches;
        }
    }
}
