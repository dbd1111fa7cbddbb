//! Wires a guest kernel, a vCPU and a virtualization mode together and runs a workload.

pub mod machine;
pub mod run;
pub mod stats;

pub use machine::Machine;
pub use run::{run, ModeName, RunReport, SimConfig, SimError};
pub use stats::Stats;
