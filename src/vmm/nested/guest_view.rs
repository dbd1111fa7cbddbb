//! The guest's tables as the hardware reaches them under nested paging: every guest-physical
//! address of a guest paging-structure entry is translated through the nested tables (or the
//! nested TLB) before it is read. This is what makes the walk two-dimensional.

use crate::addr::{Gpa, Hpa, Level, PageSize};
use crate::ept::NestedAccess;
use crate::memory::PhysMemory;
use crate::paging::{Counted, TableMemory};
use crate::sim::explain::WalkRef;
use crate::tlb::{NestedPagingStructureCache, NestedTlb};
use crate::vmm::nested::format::{NestedFault, NestedFormat, NestedOutcome, NestedStart};

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
    /// The guest-physical paging-structure caches, if on.
    pub nested_psc: Option<&'a mut NestedPagingStructureCache>,
    /// Nested walks the guest-physical paging-structure caches shortened.
    pub nested_psc_hits: u64,
    /// Nested walks from the nested root.
    pub nested_psc_misses: u64,
    /// When set, every reference is recorded here (for `explain`).
    pub trace: Option<Vec<WalkRef>>,
    /// The guest entries read in this walk and where they live: the A/D write-back is part of
    /// the same locked access and needs no second nested translation.
    read: [(Gpa, Hpa); 5],
    read_len: usize,
    /// The guest table a combined paging-structure cache located (its GPA and HPA pages):
    /// reading it needs no nested translation.
    entered: Option<(u64, u64)>,
}

impl<'a, F: NestedFormat> GuestView<'a, F> {
    /// A view with zeroed counters.
    pub fn new(
        format: &'a F,
        root: Hpa,
        memory: &'a mut PhysMemory,
        nested_tlb: Option<&'a mut NestedTlb>,
    ) -> Self {
        Self {
            format,
            root,
            memory,
            nested_tlb,
            guest_refs: 0,
            nested_refs: 0,
            ad_writes: 0,
            nested_tlb_hits: 0,
            nested_tlb_misses: 0,
            nested_psc: None,
            nested_psc_hits: 0,
            nested_psc_misses: 0,
            trace: None,
            read: [(Gpa::new(0), Hpa::new(0)); 5],
            read_len: 0,
            entered: None,
        }
    }

    /// Translates `gpa` through the nested TLB, or the nested tables from as low as the
    /// guest-physical paging-structure caches allow.
    pub fn nested(&mut self, gpa: Gpa, access: NestedAccess) -> Result<(Hpa, PageSize), NestedExit> {
        let ep4ta = self.root.as_u64();
        let dirty_bit = self.format.dirty_bit();
        let write = access.kind == crate::paging::AccessKind::Write;
        if let Some(tlb) = self.nested_tlb.as_deref_mut() {
            if let Some(found) = tlb.lookup(ep4ta, gpa, write && dirty_bit != 0) {
                self.nested_tlb_hits += 1;
                return Ok(found);
            }
            self.nested_tlb_misses += 1;
        }
        let start = match self.nested_psc.as_deref_mut().map(|psc| psc.lookup(ep4ta, gpa)) {
            Some(Some(cached)) => {
                self.nested_psc_hits += 1;
                NestedStart { table: cached.table, level: cached.level, perms: cached.perms }
            }
            Some(None) => {
                self.nested_psc_misses += 1;
                self.format.root_start(self.root)
            }
            None => self.format.root_start(self.root),
        };
        let name = self.format.name();
        let mut tracer =
            Tracer { inner: Counted::new(self.memory), gpa, name, trace: self.trace.as_mut(), last: 0 };
        // The non-leaf entries a successful walk used (at most four, with five levels).
        let mut steps: [Option<(Level, Hpa, u64)>; 4] = [None; 4];
        let mut count = 0;
        let outcome =
            self.format.translate_from(&mut tracer, start, gpa, access, &mut |level, next, perms| {
                if let Some(slot) = steps.get_mut(count) {
                    *slot = Some((level, next, perms));
                    count += 1;
                }
            });
        self.nested_refs += tracer.inner.reads;
        self.ad_writes += tracer.inner.writes;
        let leaf = tracer.last;
        match outcome {
            NestedOutcome::Mapped { page, size } => {
                let hpa = Hpa::new(page.as_u64() | gpa.page_offset(size));
                if let Some(psc) = self.nested_psc.as_deref_mut() {
                    for &(level, next, perms) in steps.iter().flatten() {
                        psc.fill(ep4ta, gpa, level, next, perms);
                    }
                }
                if let Some(tlb) = self.nested_tlb.as_deref_mut() {
                    // The leaf as read, or as this write makes it.
                    let dirty = dirty_bit == 0 || write || leaf & dirty_bit != 0;
                    tlb.insert(ep4ta, gpa, hpa, size, dirty);
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
        let page = addr.as_u64() & !PAGE_MASK;
        let hpa = match self.entered {
            Some((table, host)) if table == page => Hpa::new(host | (addr.as_u64() & PAGE_MASK)),
            _ => {
                let access =
                    NestedAccess { kind: self.format.guest_table_access(), final_translation: false };
                self.nested(addr, access)?.0
            }
        };
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

    fn table_host(&self, table: Gpa) -> Option<u64> {
        let page = table.as_u64() & !PAGE_MASK;
        self.read[..self.read_len]
            .iter()
            .find(|(gpa, _)| gpa.as_u64() & !PAGE_MASK == page)
            .map(|(_, hpa)| hpa.as_u64() & !PAGE_MASK)
    }

    fn enter_table(&mut self, table: Gpa, host: u64) {
        self.entered = Some((table.as_u64() & !PAGE_MASK, host & !PAGE_MASK));
    }
}

/// The offset bits of a 4 KiB page.
const PAGE_MASK: u64 = 0xfff;

/// Counts nested references and, for `explain`, records them.
struct Tracer<'a, 'b> {
    inner: Counted<'a, PhysMemory>,
    gpa: Gpa,
    name: &'static str,
    trace: Option<&'b mut Vec<WalkRef>>,
    /// The last entry read: a successful walk's leaf.
    last: u64,
}

impl TableMemory<Hpa> for Tracer<'_, '_> {
    type Error = std::convert::Infallible;

    #[inline]
    fn read_entry(&mut self, addr: Hpa, level: Level) -> Result<u64, Self::Error> {
        let value = self.inner.read_entry(addr, level)?;
        self.last = value;
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
