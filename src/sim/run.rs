//! Running one workload in one mode.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::Serialize;

use crate::addr::{Gpa, Gva, PageSize, PagingLevels, PAGE_BYTES};
use crate::cost::CostModel;
use crate::guest::{FaultResolution, Kernel, KernelConfig, KernelError, Pid};
use crate::host::Host;
use crate::paging::{Access, CpuState, Privilege};
use crate::sim::explain::Explanation;
use crate::sim::machine::Machine;
use crate::sim::stats::Stats;
use crate::sim::verify::{SeenRaw, Verification, Verifier};
use crate::tlb::TlbConfig;
use crate::vcpu::{PageOutcome, Vcpu};
use crate::vmm::{Ept, Mode, Native, Nested, Npt, Shadow, ShadowConfig};
use crate::workload::{Op, Workload, WorkloadError};

/// How many times one access is retried after the guest handled a fault before the run
/// gives up on it (a guest whose fault handler makes no progress).
const MAX_ATTEMPTS: u32 = 8;

/// The virtualization designs a run can use.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum ModeName {
    /// No virtualization: the guest kernel on bare metal.
    Native,
    /// Software shadow page tables maintained by the VMM.
    Shadow,
    /// Intel EPT: hardware two-dimensional walks through extended page tables.
    Ept,
    /// AMD NPT: hardware two-dimensional walks through nested x86-64 tables.
    Npt,
}

impl fmt::Display for ModeName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Native => "native",
            Self::Ept => "ept",
            Self::Npt => "npt",
            Self::Shadow => "shadow",
        })
    }
}

/// Which translation a run explains at its end.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum ExplainTarget {
    /// This address and access.
    Address(Gva, Access),
    /// The first access the workload made.
    FirstAccess,
}

/// Everything a run is configured with.
#[derive(Clone, Debug, Serialize)]
pub struct SimConfig {
    /// The guest's paging state (levels, WP, SMEP, SMAP, NXE, PGE, PCIDE, MAXPHYADDR).
    pub cpu: CpuState,
    /// The TLB arrangement.
    pub tlb: TlbConfig,
    /// Guest RAM in bytes.
    pub guest_ram: u64,
    /// The seed of every random choice.
    pub seed: u64,
    /// The page size regions that may use large pages get.
    pub guest_page_size: PageSize,
    /// Depth of the EPT / NPT tables.
    pub nested_levels: PagingLevels,
    /// The page size the host backs guest RAM with.
    pub host_page_size: PageSize,
    /// EPT accessed/dirty flags (EPTP bit 6).
    pub ept_ad: bool,
    /// Shadow-paging options.
    pub shadow: ShadowConfig,
    /// The most simulated memory (bytes of frames holding data) a run may use before it stops
    /// with an error.
    pub max_host_memory: u64,
    /// Set from another thread (Ctrl-C) to stop the run early with the counters so far.
    #[serde(skip)]
    pub stop: Option<std::sync::Arc<std::sync::atomic::AtomicBool>>,
    /// Accesses left out of the counters at the start of the run.
    pub warmup: u64,
    /// Whether paging-structure caches and the nested TLB are on.
    pub walk_caches: bool,
    /// Cycle costs.
    pub cost: CostModel,
    /// Check every translation against the reference composition.
    pub verify: bool,
    /// After the run, explain one translation in the first process, with every translation
    /// cache bypassed.
    #[serde(skip)]
    pub explain: Option<ExplainTarget>,
    /// With `verify`: keep the translations with these indices (to locate a mismatch).
    #[serde(skip)]
    pub record: Option<std::ops::Range<u64>>,
}

impl Default for SimConfig {
    fn default() -> Self {
        Self {
            cpu: CpuState::default(),
            tlb: TlbConfig::Hierarchy,
            guest_ram: KernelConfig::default().ram_bytes,
            seed: 1,
            guest_page_size: PageSize::Size4K,
            walk_caches: true,
            warmup: 0,
            max_host_memory: 8 << 30,
            stop: None,
            nested_levels: PagingLevels::Four,
            host_page_size: PageSize::Size4K,
            ept_ad: true,
            shadow: ShadowConfig::default(),
            verify: false,
            record: None,
            explain: None,
            cost: CostModel::default(),
        }
    }
}

/// A run that could not complete.
#[derive(Debug)]
pub enum SimError {
    /// The workload could not be read.
    Workload(WorkloadError),
    /// The guest kernel failed (out of guest RAM, a bad region).
    Kernel(KernelError),
    /// A defect of the simulator itself.
    Internal(String),
    /// The run needs more memory than `--max-host-memory` allows.
    MemoryLimit {
        /// Bytes in use when the run stopped.
        used: u64,
        /// The limit.
        limit: u64,
    },
}

impl fmt::Display for SimError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Workload(e) => e.fmt(f),
            Self::Kernel(e) => e.fmt(f),
            Self::Internal(message) => f.write_str(message),
            Self::MemoryLimit { used, limit } => write!(
                f,
                "the run needs more than --max-host-memory {} MiB of simulated memory ({} MiB in use); raise the limit or shrink the workload",
                limit >> 20,
                used >> 20
            ),
        }
    }
}

impl std::error::Error for SimError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Workload(e) => Some(e),
            Self::Kernel(e) => Some(e),
            Self::Internal(_) | Self::MemoryLimit { .. } => None,
        }
    }
}

impl From<WorkloadError> for SimError {
    fn from(e: WorkloadError) -> Self {
        Self::Workload(e)
    }
}

impl From<KernelError> for SimError {
    fn from(e: KernelError) -> Self {
        Self::Kernel(e)
    }
}

/// The result of a run in one mode: its counters and estimated cycles.
#[derive(Clone, Debug, Serialize)]
pub struct RunReport {
    /// The mode.
    pub mode: ModeName,
    /// The counters.
    #[serde(flatten)]
    pub stats: Stats,
    /// Estimated cycles under the configured cost model.
    pub cycles: u64,
    /// With verification on: whether every translated access matched the reference
    /// composition.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub verified: Option<bool>,
    /// The verifier's findings (empty when verification is off).
    #[serde(skip)]
    pub verification: Verification,
    /// The explained translation, when one was asked for.
    #[serde(skip)]
    pub explanation: Option<Explanation>,
}

/// Runs `workload` in `mode`.
pub fn run(mode: ModeName, config: &SimConfig, workload: &mut dyn Workload) -> Result<RunReport, SimError> {
    run_with_progress(mode, config, workload, &AtomicU64::new(0))
}

/// Runs `workload` in `mode`, storing the number of accesses done so far in `progress` from
/// time to time (for a progress display on another thread).
pub fn run_with_progress(
    mode: ModeName,
    config: &SimConfig,
    workload: &mut dyn Workload,
    progress: &AtomicU64,
) -> Result<RunReport, SimError> {
    let (stats, verification, explanation) = match mode {
        ModeName::Native => run_with(Native::new(config.guest_ram), 0, config, workload, progress)?,
        ModeName::Ept => {
            let format = Ept { levels: config.nested_levels, ad: config.ept_ad, phys_bits: HOST_PHYS_BITS };
            run_nested(format, config, workload, progress)?
        }
        ModeName::Shadow => {
            let shadow = Shadow::new(new_host(config)?, &config.cpu, config.shadow);
            run_with(shadow, VM_VPID, config, workload, progress)?
        }
        ModeName::Npt => {
            let format = Npt { levels: config.nested_levels, phys_bits: HOST_PHYS_BITS };
            run_nested(format, config, workload, progress)?
        }
    };
    let cycles = config.cost.cycles(&stats);
    let verified = verification.mismatches == 0;
    Ok(RunReport {
        mode,
        stats,
        cycles,
        verified: config.verify.then_some(verified),
        verification,
        explanation,
    })
}

/// How often (in accesses) a run publishes its progress.
const PROGRESS_EVERY: u64 = 1 << 16;

/// The host's MAXPHYADDR.
pub const HOST_PHYS_BITS: u8 = 46;
/// The VPID of the (single) guest vCPU; 0 belongs to the host.
pub const VM_VPID: u16 = 1;

/// What a run returns before cycles are estimated.
type RunParts = (Stats, Verification, Option<Explanation>);

/// A VM under nested paging in `format` on a fresh host.
fn run_nested<F: crate::vmm::nested::NestedFormat>(
    format: F,
    config: &SimConfig,
    workload: &mut dyn Workload,
    progress: &AtomicU64,
) -> Result<RunParts, SimError> {
    let vm = Nested::new(format, new_host(config)?).map_err(KernelError::from)?;
    run_with(vm, VM_VPID, config, workload, progress)
}

/// The host a VM runs on.
pub fn new_host(config: &SimConfig) -> Result<Host, SimError> {
    Host::new(config.guest_ram, config.host_page_size)
        .map_err(|e| SimError::Kernel(KernelError::OutOfMemory(e)))
}

fn run_with<M: Mode>(
    mode: M,
    vpid: u16,
    config: &SimConfig,
    workload: &mut dyn Workload,
    progress: &AtomicU64,
) -> Result<RunParts, SimError> {
    let mut machine = Machine { mode, vcpu: Vcpu::new(config.cpu, config.tlb, vpid, config.walk_caches) };
    let mut kernel = Kernel::boot(&mut machine, KernelConfig { ram_bytes: config.guest_ram })?;
    let mut verifier = Verifier::new(config.verify, config.record.clone());
    let mut first_access = None;
    let mut total_accesses = 0u64;
    let mut interrupted = false;
    // Accesses left before the counters start (+1: the reset happens before the next one).
    let mut warmup_left = if config.warmup > 0 { config.warmup + 1 } else { 0 };
    while let Some(op) = workload.next_op()? {
        match op {
            Op::Spawn { pid, anywhere } => kernel.spawn(&mut machine, pid, anywhere)?,
            Op::Map { pid, region } => kernel.add_region(pid, region)?,
            Op::Munmap { pid, start, len } => {
                kernel.switch_to(&mut machine, pid)?;
                kernel.munmap(&mut machine, pid, start, len)?;
            }
            Op::Mprotect { pid, start, len, prot } => {
                kernel.switch_to(&mut machine, pid)?;
                kernel.mprotect(&mut machine, pid, start, len, prot)?;
            }
            Op::Fork { parent, child } => {
                kernel.switch_to(&mut machine, parent)?;
                kernel.fork(&mut machine, parent, child)?;
            }
            Op::Exec { pid } => {
                kernel.switch_to(&mut machine, pid)?;
                kernel.exec(&mut machine, pid)?;
            }
            Op::Exit { pid } => {
                kernel.switch_to(&mut machine, pid)?;
                kernel.exit(&mut machine, pid)?;
            }
            Op::Poke { pid, va, level, value } => {
                kernel.switch_to(&mut machine, pid)?;
                kernel.poke(&mut machine, pid, va, level, value)?;
            }
            Op::SetRoot { pid, root } => {
                kernel.set_root(&mut machine, pid, Gpa::new(root))?;
            }
            Op::StartMeasuring => start_measuring(&mut machine, &mut kernel),
            Op::Access { pid, va, kind, size } => {
                if warmup_left > 0 {
                    warmup_left -= 1;
                    if warmup_left == 0 {
                        start_measuring(&mut machine, &mut kernel);
                    }
                }
                kernel.switch_to(&mut machine, pid)?;
                machine.vcpu.stats.accesses += 1;
                total_accesses += 1;
                if total_accesses % PROGRESS_EVERY == 0 {
                    progress.store(total_accesses, Ordering::Relaxed);
                    let used = machine.mode.stored_bytes();
                    if used > config.max_host_memory {
                        return Err(SimError::MemoryLimit { used, limit: config.max_host_memory });
                    }
                    if config.stop.as_ref().is_some_and(|stop| stop.load(Ordering::Relaxed)) {
                        interrupted = true;
                        break;
                    }
                }
                let access = Access::new(kind, Privilege::User);
                if first_access.is_none() {
                    first_access = Some((va, access));
                }
                let last = va.as_u64().saturating_add(u64::from(size.max(1)) - 1);
                let mut page = va;
                loop {
                    access_page(&mut machine, &mut kernel, &mut verifier, pid, page, access)?;
                    let next = page.align_down(PageSize::Size4K).as_u64().saturating_add(PAGE_BYTES);
                    if next > last {
                        break;
                    }
                    match Gva::try_new(next) {
                        Ok(va) => page = va,
                        Err(_) => {
                            machine.vcpu.stats.general_protection += 1;
                            break;
                        }
                    }
                }
            }
        }
    }
    let mut stats = machine.vcpu.stats.clone();
    stats.tlb = machine.vcpu.tlb.stats();
    stats.interrupted = interrupted;
    let counters = kernel.counters();
    stats.context_switches = counters.context_switches;
    stats.pages_mapped = counters.pages_mapped;
    stats.guest = counters;
    let own = machine.mode.page_table_bytes();
    stats.page_table_bytes.guest = kernel.page_table_bytes();
    stats.page_table_bytes.shadow = own.shadow;
    stats.page_table_bytes.ept = own.ept;
    // After the counters are taken: explaining changes nothing that was counted.
    let target = match config.explain {
        Some(ExplainTarget::Address(va, access)) => Some((va, access)),
        Some(ExplainTarget::FirstAccess) => first_access,
        None => None,
    };
    let explanation = match (target, kernel.first_process()) {
        (Some((va, access)), Some(pid)) => {
            kernel.switch_to(&mut machine, pid)?;
            Some(machine.mode.explain(va, access, &mut machine.vcpu))
        }
        _ => None,
    };
    Ok((stats, verifier.finish(), explanation))
}

/// Zeroes every counter: what came before was set-up or warm-up.
fn start_measuring<M: Mode>(machine: &mut Machine<M>, kernel: &mut Kernel) {
    machine.vcpu.reset_counters();
    kernel.reset_counters();
}

/// One page translation of an access, with the guest's fault handling and retries.
fn access_page<M: Mode>(
    machine: &mut Machine<M>,
    kernel: &mut Kernel,
    verifier: &mut Verifier,
    pid: Pid,
    va: Gva,
    access: Access,
) -> Result<(), SimError> {
    let mut retry = false;
    for _ in 0..MAX_ATTEMPTS {
        let outcome = machine.vcpu.translate(&mut machine.mode, va, access, retry);
        if verifier.enabled() {
            let seen = match outcome {
                PageOutcome::Done(hpa) => SeenRaw::Translated(hpa),
                PageOutcome::Fault(fault) => SeenRaw::Fault(fault.code),
                PageOutcome::NonCanonical => SeenRaw::GeneralProtection,
                PageOutcome::Emulated => SeenRaw::Emulated,
            };
            verifier.observe(&mut machine.mode, &machine.vcpu, pid, va, access, seen);
        }
        match outcome {
            PageOutcome::Done(_) | PageOutcome::Emulated => return Ok(()),
            PageOutcome::Fault(_) => {
                machine.vcpu.stats.guest_page_faults += 1;
                match kernel.handle_fault(machine, pid, va, access)? {
                    FaultResolution::Mapped | FaultResolution::Spurious => retry = true,
                    FaultResolution::Segv => {
                        machine.vcpu.stats.segfaults += 1;
                        return Ok(());
                    }
                }
            }
            PageOutcome::NonCanonical => {
                machine.vcpu.stats.general_protection += 1;
                return Ok(());
            }
        }
    }
    machine.vcpu.stats.segfaults += 1;
    Ok(())
}
