//! A vCPU under a virtualization mode: the platform the guest kernel runs on.

use crate::addr::{Gfn, Gpa, Gva};
use crate::guest::Platform;
use crate::paging::CpuState;
use crate::vcpu::{Cr3, Vcpu};
use crate::vmm::Mode;

/// One vCPU and the mode that virtualizes it.
pub struct Machine<M> {
    /// The virtualization mode (and the memory behind it).
    pub mode: M,
    /// The vCPU.
    pub vcpu: Vcpu,
}

impl<M: Mode> Platform for Machine<M> {
    fn cpu(&self) -> CpuState {
        self.vcpu.cpu
    }

    fn read_phys(&mut self, gpa: Gpa) -> u64 {
        self.mode.read_guest(gpa, &mut self.vcpu)
    }

    fn write_phys(&mut self, gpa: Gpa, value: u64) {
        self.mode.write_guest(gpa, value, &mut self.vcpu);
    }

    fn zero_frame(&mut self, gfn: Gfn) {
        self.mode.zero_guest_frame(gfn, &mut self.vcpu);
    }

    fn load_cr3(&mut self, cr3: Cr3) {
        self.vcpu.load_cr3(cr3);
        self.mode.on_cr3_load(cr3, &mut self.vcpu);
    }

    fn invlpg(&mut self, va: Gva) {
        self.vcpu.invlpg(va);
        self.mode.on_invlpg(va, &mut self.vcpu);
    }
}
