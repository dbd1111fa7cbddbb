//! memvirt: memory virtualization modelled bit-exactly.
//!
//! The crate follows a guest access along the chain GVA -> GPA -> HVA -> HPA:
//!
//! - [`addr`] gives each address space its own type;
//! - [`memory`] is host physical memory (4 KiB frames; only page-table frames hold bytes);
//! - [`paging`] is the x86-64 entry format and the one walker every table kind goes through;
//! - [`ept`] is Intel's extended-page-table format, its walk, violations and exit qualification;
//! - [`tlb`] caches translations the way a processor does, tagged by PCID and VPID, with
//!   paging-structure caches and a nested TLB;
//! - [`vcpu`] is the virtual CPU: control registers, TLBs, the access path;
//! - [`host`] is the VMM process: guest RAM as a memory slot, its own page tables;
//! - [`guest`] is the guest kernel that writes its own page tables;
//! - [`vmm`] is the virtualization design in between: native, shadow paging, or nested
//!   paging (EPT, NPT);
//! - [`workload`] drives the guest from builtin scenarios or real traces;
//! - [`sim`] wires these together and counts what each design costs; [`cost`] turns counts
//!   into estimated cycles; [`report`] prints them; [`output_file`] writes the files that
//!   hold them.
//!
//! # Example
//!
//! The same workload natively and under EPT: the guest sees the same faults, and a cold
//! two-dimensional walk of a 4-level guest over a 4-level EPT reads 24 entries.
//!
//! ```
//! use memvirt::addr::PageSize;
//! use memvirt::sim::{run, ModeName, SimConfig};
//! use memvirt::workload::scenario::{self, Params, ScenarioContext};
//!
//! let params: Params = [("size".to_string(), "1M".to_string())].into_iter().collect();
//! let context = ScenarioContext { seed: 1, page_size: PageSize::Size4K };
//! let config = SimConfig { walk_caches: false, ..SimConfig::default() };
//! let native = run(ModeName::Native, &config, scenario::build("seq-scan", &params, &context)?.as_mut())?;
//! let ept = run(ModeName::Ept, &config, scenario::build("seq-scan", &params, &context)?.as_mut())?;
//! assert_eq!(native.stats.guest_page_faults, ept.stats.guest_page_faults);
//! assert_eq!(native.stats.walk_refs_max, 4);
//! assert_eq!(ept.stats.walk_refs_max, 24);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

pub mod addr;
pub mod cost;
pub mod ept;
pub mod guest;
pub mod host;
pub mod memory;
pub mod output_file;
pub mod paging;
pub mod report;
pub mod sim;
pub mod tlb;
pub mod vcpu;
pub mod vmm;
pub mod workload;
