//! x86-64 paging as Intel SDM Vol. 3A ch. 4 defines it: entry formats, the CPU state that
//! changes what an entry allows, the page-fault error code, and one walker for 4- and 5-level
//! tables that every kind of table (guest, shadow, host, native) goes through.

pub mod access;
pub mod cpu;
pub mod entry;
pub mod permission;
pub mod walker;

pub use access::{Access, AccessKind, PfErrorCode, Privilege};
pub use cpu::CpuState;
pub use entry::Pte;
pub use permission::Rights;
pub use walker::{
    walk, walk_from, AdPolicy, PageFault, TableMemory, TableStep, Translation, WalkOutcome, WalkStart,
};
pub mod counting;
pub use counting::Counted;
pub mod builder;
pub mod trace;
pub use trace::Traced;
