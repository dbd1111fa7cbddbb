//! memvirt: memory virtualization modelled bit-exactly.
//!
//! The crate follows a guest access along the chain GVA -> GPA -> HVA -> HPA:
//!
//! - [`addr`] gives each address space its own type;
//! - [`memory`] is host physical memory (4 KiB frames; only page-table frames hold bytes);
//! - [`paging`] is the x86-64 entry format and the one walker every table kind goes through;
//! - [`tlb`] caches translations the way a processor does, tagged by PCID and VPID;
//! - [`guest`] is the guest kernel that writes its own page tables;
//! - [`vmm`] is the virtualization mode in between (native today);
//! - [`workload`] drives the guest from builtin scenarios or real traces;
//! - [`sim`] wires these together and counts what each design costs; [`cost`] turns counts
//!   into estimated cycles; [`report`] prints them.

pub mod addr;
pub mod cost;
pub mod ept;
pub mod guest;
pub mod host;
pub mod memory;
pub mod paging;
pub mod report;
pub mod sim;
pub mod tlb;
pub mod vcpu;
pub mod vmm;
pub mod workload;
