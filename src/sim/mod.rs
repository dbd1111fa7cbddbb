//! Wires a guest kernel, a vCPU and a virtualization mode together and runs a workload.

pub mod bench;
pub mod compare;
pub mod explain;
pub mod machine;
pub mod prefetch;
pub mod recent_pages;
pub mod run;
pub mod stats;
pub mod stop_together;
pub mod verify;

pub use machine::Machine;
pub use run::{run, run_vms, run_with_progress, ExplainTarget, ModeName, RunReport, SimConfig, SimError};
pub use stats::Stats;
