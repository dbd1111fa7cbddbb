//! What the guest kernel can do to the machine it runs on.

use crate::addr::{Gfn, Gpa, Gva};
use crate::paging::CpuState;
use crate::vcpu::Cr3;

/// The machine as the guest kernel sees it.
pub trait Platform {
    /// The CPU's paging state.
    fn cpu(&self) -> CpuState;
    /// Reads a word of guest-physical memory.
    fn read_phys(&mut self, gpa: Gpa) -> u64;
    /// Writes a word of guest-physical memory (page-table edits come through here).
    fn write_phys(&mut self, gpa: Gpa, value: u64);
    /// Clears a frame before it becomes a page table.
    fn zero_frame(&mut self, gfn: Gfn);
    /// MOV to CR3.
    fn load_cr3(&mut self, cr3: Cr3);
    /// INVLPG.
    fn invlpg(&mut self, va: Gva);
}
