//! The guest kernel model: processes with address-space regions, demand paging, and the page
//! tables it builds in its own (guest-physical) memory.
//!
//! The kernel never touches memory directly: every read and write of its page tables, every
//! CR3 load and INVLPG goes through [`Platform`], which the active virtualization mode
//! mediates exactly where hardware would trap.

pub mod frames;
pub mod kernel;
pub mod page_table;
pub mod platform;
pub mod region;

pub use kernel::{FaultResolution, Kernel, KernelConfig, KernelError, Pid};
pub use platform::Platform;
pub use region::{Prot, Region};
