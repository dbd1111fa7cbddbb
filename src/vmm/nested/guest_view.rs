//! The guest's tables as the hardware reaches them under nested paging: every guest-physical
//! address of a guest paging-structure entry is translated through the nested tables (or the
//! nested TLB) before it is read. This is what makes the walk two-dimensional.

use crate::addr::{Gpa, Hpa, Level, PageSize};
use crate::ept::NestedAccess;
use crate::memory::PhysMemory;
use crate::paging::{Counted, TableMemory};
use crate::sim::explain::WalkRef;
use crate::tlb::NestedTlb;
use crate::vmm::nested::format::{NestedFault, NestedFormat, NestedOutcome};

/// A nested translation that exited.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct NestedExit {
    /// The guest-physical address being translated.
    pub gpa: Gpa,
    /// The fault.
    pub fault: NestedFault,
}

/// Guest memory as the nested walker sees it.
pub struct GuestView<'a, F> {
    /// The nested format.
    pub format: &'a F,
    /// The nested root.
    pub root: Hpa,
    /// Host memory.
    pub memory: &'a mut PhysMemory,
    /// The nested TLB, if on.
    pub nested_tlb: Option<&'a mut NestedTlb>,
    /// The VPID tagging nested TLB entries.
    pub vpid: u16,
    /// Guest-dimension references.
    pub guest_refs: u64,
    /// Nested-dimension references.
    pub nested_refs: u64,
    /// A/D write-backs in either dimension.
    pub ad_writes: u64,
    /// Nested TLB hits and misses.
    pub nested_tlb_hits: u64,
    /// Nested TLB misses.
    pub nested_tlb_misses: u64,
    /// When set, every reference is recorded here (for `explain`).
    pub trace: Option<Vec<WalkRef>>,
    /// The guest entries read in this walk and where they live: the A/D write-back is part of
    /// the same locked access and needs no second nested translation.
    read: [(Gpa, Hpa); 5],
    read_len: usize,
}

impl<'a, F: NestedFormat> GuestView<'a, F> {
    /// A view with zeroed counters.
    pub fn new(
        format: &'a F,
        root: Hpa,
        memory: &'a mut PhysMemory,
        nested_tlb: Option<&'a mut NestedTlb>,
        vpid: u16,
    ) -> Self {
        Self {
            format,
            root,
            memory,
            nested_tlb,
            vpid,
            guest_refs: 0,
            nested_refs: 0,
            ad_writes: 0,
            nested_tlb_hits: 0,
            nested_tlb_misses: 0,
            trace: None,
            read: [(Gpa::new(0), Hpa::new(0)); 5],
            read_len: 0,
        }
    }

    /// Translates `gpa` through the nested TLB or the nested tables.
    pub fn nested(&mut self, gpa: Gpa, access: NestedAccess) -> Result<(Hpa, PageSize), NestedExit> {
        if let Some(tlb) = self.nested_tlb.as_deref_mut() {
            if let Some(found) = tlb.lookup(self.vpid, gpa) {
                self.nested_tlb_hits += 1;
                return Ok(found);
            }
            self.nested_tlb_misses += 1;
        }
        let name = self.format.name();
        let mut tracer = Tracer { inner: Counted::new(self.memory), gpa, name, trace: self.trace.as_mut() };
        let outcome = self.format.translate(&mut tracer, self.root, gpa, access);
        self.nested_refs += tracer.inner.reads;
        self.ad_writes += tracer.inner.writes;
        match outcome {
            NestedOutcome::Mapped { page, size } => {
                let hpa = Hpa::new(page.as_u64() | gpa.page_offset(size));
                if let Some(tlb) = self.nested_tlb.as_deref_mut() {
                    tlb.insert(self.vpid, gpa, hpa, size);
                }
                Ok((hpa, size))
            }
            NestedOutcome::Fault(fault) => Err(NestedExit { gpa, fault }),
        }
    }
}

impl<F: NestedFormat> TableMemory<Gpa> for GuestView<'_, F> {
    type Error = NestedExit;

    fn read_entry(&mut self, addr: Gpa, level: Level) -> Result<u64, NestedExit> {
        let access = NestedAccess { kind: self.format.guest_table_access(), final_translation: false };
        let (hpa, _) = self.nested(addr, access)?;
        self.guest_refs += 1;
        // A walk reads at most five entries; any beyond are simply not remembered.
        if let Some(slot) = self.read.get_mut(self.read_len) {
            *slot = (addr, hpa);
            self.read_len += 1;
        }
        let value = self.memory.read_u64(hpa);
        if let Some(trace) = self.trace.as_mut() {
            trace.push(WalkRef { table: "guest", level: level.number(), gpa: Some(addr), hpa, entry: value });
        }
        Ok(value)
    }

    fn write_entry(&mut self, addr: Gpa, _level: Level, value: u64) -> Result<(), NestedExit> {
        let known = self.read[..self.read_len].iter().find(|(gpa, _)| *gpa == addr).map(|(_, hpa)| *hpa);
        let hpa = match known {
            Some(hpa) => hpa,
            None => {
                let access =
                    NestedAccess { kind: crate::paging::AccessKind::Write, final_translation: false };
                self.nested(addr, access)?.0
            }
        };
        self.ad_writes += 1;
        self.memory.write_u64(hpa, value);
        Ok(())
    }
}

/// Counts nested references and, for `explain`, records them.
struct Tracer<'a, 'b> {
    inner: Counted<'a, PhysMemory>,
    gpa: Gpa,
    name: &'static str,
    trace: Option<&'b mut Vec<WalkRef>>,
}

impl TableMemory<Hpa> for Tracer<'_, '_> {
    type Error = std::convert::Infallible;

    #[inline]
    fn read_entry(&mut self, addr: Hpa, level: Level) -> Result<u64, Self::Error> {
        let value = self.inner.read_entry(addr, level)?;
        if let Some(trace) = self.trace.as_mut() {
            trace.push(WalkRef {
                table: self.name,
                level: level.number(),
                gpa: Some(self.gpa),
                hpa: addr,
                entry: value,
            });
        }
        Ok(value)
    }

    fn write_entry(&mut self, addr: Hpa, level: Level, value: u64) -> Result<(), Self::Error> {
        self.inner.write_entry(addr, level, value)
    }
}
