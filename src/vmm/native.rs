//! No virtualization: the guest kernel runs on bare metal. Its "guest-physical" addresses are
//! host-physical addresses, CR3 points straight at its tables, and a TLB miss is a 1D walk.

use crate::addr::{Gfn, Gpa, Gva, Hfn, Hpa};
use crate::memory::{PhysMemory, Touches};
use crate::paging::{walk, Access, AdPolicy, Counted, Traced, WalkOutcome};
use crate::sim::explain::{Explanation, WalkRef};
use crate::vcpu::{Mapping, Resolved, Vcpu};
use crate::vmm::{guest_walk_end, Mode};

/// Bare metal.
pub struct Native {
    memory: PhysMemory,
    /// Installed RAM: physical addresses from here up have no memory behind them (reads see
    /// zeros, writes are lost), as for a guest touching addresses outside its memory slots.
    ram_bytes: u64,
}

impl Native {
    /// A machine with empty memory.
    pub fn new(ram_bytes: u64) -> Self {
        Self { memory: PhysMemory::new(), ram_bytes }
    }

    /// On bare metal the kernel's physical addresses are the machine's.
    fn host(gpa: Gpa) -> Hpa {
        Hpa::new(gpa.as_u64())
    }

    /// The machine's memory.
    pub fn memory(&self) -> &PhysMemory {
        &self.memory
    }
}

impl Mode for Native {
    fn name(&self) -> &'static str {
        "native"
    }

    fn prefetch(&self, vas: &[Gva], _found: &mut [Option<Hpa>], _near: &[Hpa], vcpu: &Vcpu) {
        let mut touches = Touches::new();
        for &va in vas {
            touches.push(guest_walk_end(&self.memory, |gpa| Some(Self::host(gpa)), vcpu, va));
        }
        self.memory.touch(&touches);
    }

    fn read_guest(&mut self, gpa: Gpa, _vcpu: &mut Vcpu) -> u64 {
        self.memory.read_u64(Self::host(gpa))
    }

    fn write_guest(&mut self, gpa: Gpa, value: u64, _vcpu: &mut Vcpu) {
        if gpa.as_u64() < self.ram_bytes {
            self.memory.write_u64(Self::host(gpa), value);
        }
    }

    fn zero_guest_frame(&mut self, gfn: Gfn, _vcpu: &mut Vcpu) {
        self.memory.zero_frame(Hfn::new(gfn.number()));
    }

    fn reference_gpa(&mut self, va: Gva, access: Access, vcpu: &Vcpu) -> Option<Gpa> {
        let root = Self::host(vcpu.cr3.root);
        match crate::paging::walk(
            &mut self.memory,
            root,
            va,
            access,
            &vcpu.cpu,
            crate::paging::AdPolicy::Leave,
        ) {
            WalkOutcome::Mapped(t) => Some(Gpa::new(t.address(va).as_u64())),
            _ => None,
        }
    }

    fn stored_bytes(&self) -> u64 {
        self.memory.stored_bytes()
    }

    fn reference_hpa(&mut self, gpa: Gpa) -> Option<Hpa> {
        Some(Self::host(gpa))
    }

    fn explain(&mut self, va: Gva, access: Access, vcpu: &mut Vcpu) -> Explanation {
        let root = Self::host(vcpu.cr3.root);
        let mut traced = Traced::new(&mut self.memory);
        let outcome = walk(&mut traced, root, va, access, &vcpu.cpu, AdPolicy::Leave);
        let refs = traced
            .reads
            .iter()
            .map(|r| WalkRef {
                table: "guest",
                level: r.level.number(),
                gpa: Some(Gpa::new(r.addr.as_u64())),
                hpa: r.addr,
                entry: r.value,
            })
            .collect();
        let (hpa, fault) = match outcome {
            WalkOutcome::Mapped(t) => (Some(t.address(va)), None),
            WalkOutcome::PageFault(f) => (None, Some(f.code)),
            _ => (None, None),
        };
        let gpa = hpa.map(|h| Gpa::new(h.as_u64()));
        Explanation { mode: "native", gva: va, access, gpa, hpa, fault, refs, vmm_refs: Vec::new() }
    }

    #[inline]
    fn translate(&mut self, va: Gva, access: Access, vcpu: &mut Vcpu) -> Resolved {
        let root = Self::host(vcpu.cr3.root);
        let mut mem = Counted::new(&mut self.memory);
        let outcome = vcpu.cached_walk(&mut mem, root, va, access);
        vcpu.stats.record_walk(mem.reads, mem.writes);
        match outcome {
            WalkOutcome::Mapped(t) => Resolved::Mapped(Mapping {
                page: t.page,
                size: t.size,
                rights: t.rights,
                global: t.global && vcpu.cpu.pge,
                dirty: t.dirty,
            }),
            WalkOutcome::PageFault(fault) => Resolved::Fault(fault),
            WalkOutcome::NonCanonical => Resolved::NonCanonical,
            WalkOutcome::Memory(never) => match never {},
        }
    }
}
