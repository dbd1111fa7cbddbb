//! Changing a running process's address space: `munmap`, `mprotect`, and the splitting of
//! 2 MiB mappings they need when they cover part of one.

use crate::addr::{Gpa, Gva, PageSize, PAGE_BYTES};
use crate::guest::kernel::{Kernel, KernelError, Pid};
use crate::guest::page_table::{self, USER_TABLE_FLAGS};
use crate::guest::platform::Platform;
use crate::guest::region::{Prot, Region};
use crate::paging::builder::Slot;
use crate::paging::Pte;

/// Beyond this many pages, a range change flushes the whole TLB instead of page by page (the
/// threshold Linux uses for `flush_tlb_range`, `tlb_single_page_flush_ceiling`).
const FLUSH_CEILING: u64 = 33;

impl Kernel {
    /// Checks a user range and returns its end.
    fn user_range(&self, pid: Pid, start: Gva, len: u64) -> Result<u64, KernelError> {
        let bad = KernelError::BadRegion { pid, start: start.as_u64(), len };
        let end = start.as_u64().checked_add(len).ok_or(bad.clone())?;
        if len == 0 || start.as_u64() % PAGE_BYTES != 0 || len % PAGE_BYTES != 0 || end > self.user_end() {
            return Err(bad);
        }
        Ok(end)
    }

    /// The present leaves of `pid`'s tables in `[start, end)`, splitting any 2 MiB mapping
    /// that the range covers only in part. Each comes with its page's first address.
    fn leaves_in(
        &mut self,
        p: &mut impl Platform,
        pid: Pid,
        start: u64,
        end: u64,
    ) -> Result<Vec<(Gva, Slot<Gpa>)>, KernelError> {
        let root = self.root_of(pid).ok_or(KernelError::NoSuchProcess(pid))?;
        let mut leaves = Vec::new();
        let mut va = start;
        while va < end {
            let slot = page_table::lookup(p, root, Gva::new_truncate(va), self.levels);
            let span = 1u64 << slot.level.shift();
            let first = va & !(span - 1);
            if slot.leaf {
                if span > PAGE_BYTES && (first < start || first + span > end) {
                    self.split_large(p, slot, Gva::new_truncate(first))?;
                    continue;
                }
                leaves.push((Gva::new_truncate(first), slot));
            }
            va = first + span;
        }
        Ok(leaves)
    }

    /// Replaces a 2 MiB mapping by a page table of 512 4 KiB entries over the same frame
    /// (a shared frame is first copied, so each 4 KiB piece has one owner).
    fn split_large(&mut self, p: &mut impl Platform, slot: Slot<Gpa>, va: Gva) -> Result<(), KernelError> {
        let old = Pte(slot.value);
        let mut frame = Gpa::new(old.0 & Pte::ADDRESS_MASK & !(PageSize::Size2M.bytes() - 1));
        if self.extra_refs(frame) > 0 {
            self.drop_ref(frame, PageSize::Size2M);
            frame = Gpa::new(self.frames.allocate_large()?.start_raw());
        }
        let table = self.frames.allocate()?;
        p.zero_frame(table);
        self.table_frames += 1;
        // The large leaf's flags, without PS and the large PAT bit, on every piece.
        let flags = old.0 & !(Pte::ADDRESS_MASK | Pte::PAGE_SIZE);
        for i in 0..512u64 {
            let piece = Pte::new(Gpa::new(frame.as_u64() + i * PAGE_BYTES), flags);
            p.write_phys(Gpa::new(table.start().as_u64() + i * 8), piece.0);
        }
        p.write_phys(slot.entry, Pte::new(table.start(), USER_TABLE_FLAGS).0);
        self.frames.split(frame.as_u64() >> PageSize::Size2M.shift());
        p.invlpg(va);
        self.counters.large_splits += 1;
        Ok(())
    }

    /// Flushes the translations of `pages` pages starting at each of `vas`: page by page, or
    /// the whole TLB past the ceiling (a CR3 reload without no-flush).
    fn flush_range(&mut self, p: &mut impl Platform, pid: Pid, vas: &[Gva]) {
        if vas.len() as u64 > FLUSH_CEILING {
            self.reload_cr3(p, pid);
        } else {
            for &va in vas {
                p.invlpg(va);
            }
        }
    }

    /// Removes `[start, start + len)` from `pid`'s address space: regions, mappings and the
    /// frames no other mapping shares, then flushes the stale translations.
    pub fn munmap(
        &mut self,
        p: &mut impl Platform,
        pid: Pid,
        start: Gva,
        len: u64,
    ) -> Result<(), KernelError> {
        let end = self.user_range(pid, start, len)?;
        self.edit_regions(pid, start.as_u64(), end, None)?;
        if self.is_hostile(pid) {
            // Tables a hostile guest wrote are not the kernel's to edit; drop every
            // translation instead.
            self.reload_cr3(p, pid);
            return Ok(());
        }
        let leaves = self.leaves_in(p, pid, start.as_u64(), end)?;
        let mut flushed = Vec::with_capacity(leaves.len());
        for (va, slot) in leaves {
            let size = slot.level.leaf_size().unwrap_or(PageSize::Size4K);
            let frame = Gpa::new(slot.value & Pte::ADDRESS_MASK & !(size.bytes() - 1));
            p.write_phys(slot.entry, 0);
            self.drop_ref(frame, size);
            flushed.push(va);
        }
        self.flush_range(p, pid, &flushed);
        self.counters.munmaps += 1;
        Ok(())
    }

    /// Changes the rights of `[start, start + len)` to `prot`, rewriting present entries and
    /// flushing the translations whose rights shrank.
    pub fn mprotect(
        &mut self,
        p: &mut impl Platform,
        pid: Pid,
        start: Gva,
        len: u64,
        prot: Prot,
    ) -> Result<(), KernelError> {
        let end = self.user_range(pid, start, len)?;
        self.edit_regions(pid, start.as_u64(), end, Some(prot))?;
        if self.is_hostile(pid) {
            self.reload_cr3(p, pid);
            return Ok(());
        }
        let leaves = self.leaves_in(p, pid, start.as_u64(), end)?;
        let mut shrunk = Vec::new();
        for (va, slot) in leaves {
            let old = Pte(slot.value);
            let size = slot.level.leaf_size().unwrap_or(PageSize::Size4K);
            let frame = Gpa::new(old.0 & Pte::ADDRESS_MASK & !(size.bytes() - 1));
            let mut new = old.0 & !(Pte::WRITABLE | Pte::NO_EXECUTE);
            // A page still shared copy-on-write stays read-only.
            if prot.write && self.extra_refs(frame) == 0 {
                new |= Pte::WRITABLE;
            }
            if self.nxe && !prot.exec {
                new |= Pte::NO_EXECUTE;
            }
            if new != old.0 {
                p.write_phys(slot.entry, new);
                let lost_write = old.has(Pte::WRITABLE) && new & Pte::WRITABLE == 0;
                let lost_exec = !old.has(Pte::NO_EXECUTE) && new & Pte::NO_EXECUTE != 0;
                if lost_write || lost_exec {
                    shrunk.push(va);
                }
            }
        }
        self.flush_range(p, pid, &shrunk);
        self.counters.mprotects += 1;
        Ok(())
    }

    /// Cuts `[start, end)` out of `pid`'s regions; with `prot`, puts it back with those rights
    /// wherever a region covered it.
    fn edit_regions(
        &mut self,
        pid: Pid,
        start: u64,
        end: u64,
        prot: Option<Prot>,
    ) -> Result<(), KernelError> {
        let process = self.processes.get_mut(&pid).ok_or(KernelError::NoSuchProcess(pid))?;
        let mut kept = Vec::with_capacity(process.regions.len() + 2);
        for region in process.regions.drain(..) {
            let r_start = region.start.as_u64();
            let r_end = r_start + region.len;
            if r_end <= start || r_start >= end {
                kept.push(region);
                continue;
            }
            let piece = |from: u64, to: u64, prot: Prot| Region {
                start: Gva::new_truncate(from),
                len: to - from,
                prot,
                ..region
            };
            if r_start < start {
                kept.push(piece(r_start, start, region.prot));
            }
            if let Some(prot) = prot {
                kept.push(piece(r_start.max(start), r_end.min(end), prot));
            }
            if r_end > end {
                kept.push(piece(end, r_end, region.prot));
            }
        }
        process.regions = kept;
        Ok(())
    }
}
