//! Running one workload in one mode.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::Serialize;

use crate::addr::{Gpa, Gva, PageSize, PagingLevels, PAGE_BYTES};
use crate::cost::CostModel;
use crate::guest::{FaultResolution, Kernel, KernelConfig, KernelError, Pid};
use crate::host::Host;
use crate::paging::{Access, AccessKind, CpuState, Privilege};
use crate::sim::explain::Explanation;
use crate::sim::machine::Machine;
use crate::sim::prefetch::Prefetcher;
use crate::sim::recent_pages::RecentPages;
use crate::sim::stats::Stats;
use crate::sim::stop_together::Member;
use crate::sim::verify::{SeenRaw, Verification, Verifier};
use crate::tlb::TlbConfig;
use crate::vcpu::{PageOutcome, Vcpu};
use crate::vmm::{Ept, Mode, Native, Nested, Npt, Shadow, ShadowConfig};
use crate::workload::feed::Feed;
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
    /// How many bytes the process uses now, checked against `max_host_memory` (the command
    /// line counts every allocation); without it, the bytes of frames the mode stores.
    #[serde(skip)]
    pub memory_in_use: Option<fn() -> u64>,
    /// Set from another thread (Ctrl-C) to stop the run early with the counters so far.
    #[serde(skip)]
    pub stop: Option<std::sync::Arc<std::sync::atomic::AtomicBool>>,
    /// With `stop`, in a comparison: where the modes agree on the access count they all stop
    /// at (see [`crate::sim::stop_together`]); without it a run stops where it is.
    #[serde(skip)]
    pub stop_together: Option<std::sync::Arc<crate::sim::stop_together::StopTogether>>,
    /// Guests on the host, each running its own copy of the workload (1 unless `--vms`).
    pub vms: usize,
    /// Accesses left out of the counters at the start of the run.
    pub warmup: u64,
    /// Whether paging-structure caches and the nested TLB are on.
    pub walk_caches: bool,
    /// Their sizes.
    pub walk_cache_sizes: crate::tlb::WalkCacheSizes,
    /// Every this many accesses (0: never), the host migrates the page the running process
    /// is about to access to another frame (as NUMA balancing or compaction would).
    pub host_migrate_every: u64,
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
    /// How many upcoming accesses have their walks prefetched in a run of walks (0: none; see
    /// [`crate::sim::prefetch`]). The simulator's speed alone: nothing a run reports depends
    /// on it.
    #[serde(skip)]
    pub prefetch: usize,
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
            walk_cache_sizes: crate::tlb::WalkCacheSizes::default(),
            host_migrate_every: 0,
            warmup: 0,
            vms: 1,
            max_host_memory: 8 << 30,
            stop: None,
            memory_in_use: None,
            stop_together: None,
            nested_levels: PagingLevels::Four,
            host_page_size: PageSize::Size4K,
            ept_ad: true,
            shadow: ShadowConfig::default(),
            verify: false,
            record: None,
            explain: None,
            cost: CostModel::default(),
            prefetch: 16,
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
    /// `--warmup` covers every access of the workload: none would be counted.
    WarmupCoversAll {
        /// The accesses to leave out.
        warmup: u64,
        /// The accesses the workload made.
        accesses: u64,
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
                "the run needs more memory than --max-host-memory {} MiB allows ({} MiB in use); raise the limit or shrink the workload",
                limit >> 20,
                used >> 20
            ),
            Self::WarmupCoversAll { warmup, accesses } => write!(
                f,
                "--warmup {warmup} leaves out every access: the workload makes only {accesses}; give a smaller warm-up"
            ),
        }
    }
}

impl std::error::Error for SimError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Workload(e) => Some(e),
            Self::Kernel(e) => Some(e),
            Self::Internal(_) | Self::MemoryLimit { .. } | Self::WarmupCoversAll { .. } => None,
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
    run_vms(mode, config, &mut [workload], progress)
}

/// Runs one VM per workload on one host in `mode` (natively: one machine each), in
/// round-robin slices of [`VM_QUANTUM`] accesses. The report adds the VMs' counters up.
pub fn run_vms(
    mode: ModeName,
    config: &SimConfig,
    workloads: &mut [&mut dyn Workload],
    progress: &AtomicU64,
) -> Result<RunReport, SimError> {
    let count = workloads.len().max(1);
    let (stats, verification, explanation) = match mode {
        ModeName::Native => {
            let machines = (0..count).map(|_| (Native::new(config.guest_ram), 0)).collect();
            run_with(machines, config, workloads, progress)?
        }
        ModeName::Ept => {
            let format = Ept { levels: config.nested_levels, ad: config.ept_ad, phys_bits: HOST_PHYS_BITS };
            run_nested(format, config, workloads, progress)?
        }
        ModeName::Npt => {
            let format = Npt { levels: config.nested_levels, phys_bits: HOST_PHYS_BITS };
            run_nested(format, config, workloads, progress)?
        }
        ModeName::Shadow => {
            let vms = new_hosts(config, count)?
                .into_iter()
                .map(|(host, vpid)| (Shadow::new(host, &config.cpu, config.shadow, config.guest_ram), vpid))
                .collect();
            run_with(vms, config, workloads, progress)?
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

/// How often (in accesses) a run publishes its progress and looks at the stop flag.
const PROGRESS_EVERY: u64 = 1 << 16;

/// How often (in accesses) a run checks its memory against `max_host_memory`: often enough
/// that it stops close to the limit (page tables grow by at most a few frames per access),
/// rarely enough to cost nothing measurable. A divisor of [`PROGRESS_EVERY`].
const MEMORY_CHECK_EVERY: u64 = 1 << 10;

/// With several VMs, the accesses each runs before the next one's turn.
pub const VM_QUANTUM: u64 = 10_000;

/// The host's MAXPHYADDR.
pub const HOST_PHYS_BITS: u8 = 46;

/// What a run returns before cycles are estimated.
type RunParts = (Stats, Verification, Option<Explanation>);

/// `count` VMs on one host, each with its own VMM process and VPID (1, 2, ...; 0 is the
/// host's).
pub fn new_hosts(config: &SimConfig, count: usize) -> Result<Vec<(Host, u16)>, SimError> {
    let oom = |e| SimError::Kernel(KernelError::OutOfMemory(e));
    let first = Host::new(config.guest_ram, config.host_page_size).map_err(oom)?;
    let mut hosts = Vec::with_capacity(count);
    for _ in 1..count {
        let last = hosts.last().map_or(&first, |(host, _): &(Host, u16)| host);
        let next = last.another_vm(config.guest_ram).map_err(oom)?;
        hosts.push((next, 0));
    }
    hosts.insert(0, (first, 0));
    for (i, (_, vpid)) in hosts.iter_mut().enumerate() {
        *vpid = u16::try_from(i + 1).unwrap_or(u16::MAX);
    }
    Ok(hosts)
}

/// One VM per workload under nested paging in `format`, all on one host.
fn run_nested<F: crate::vmm::nested::NestedFormat + Copy>(
    format: F,
    config: &SimConfig,
    workloads: &mut [&mut dyn Workload],
    progress: &AtomicU64,
) -> Result<RunParts, SimError> {
    let vms = new_hosts(config, workloads.len().max(1))?
        .into_iter()
        .map(|(host, vpid)| Nested::new(format, host).map(|vm| (vm, vpid)))
        .collect::<Result<_, _>>()
        .map_err(KernelError::from)?;
    run_with(vms, config, workloads, progress)
}

/// One guest: its vCPU and mode, its kernel, its first access (for `explain`).
struct Guest<M> {
    machine: Machine<M>,
    kernel: Kernel,
    first_access: Option<(Gva, Access)>,
}

fn run_with<M: Mode>(
    modes: Vec<(M, u16)>,
    config: &SimConfig,
    workloads: &mut [&mut dyn Workload],
    progress: &AtomicU64,
) -> Result<RunParts, SimError> {
    let mut guests = Vec::with_capacity(modes.len());
    for (mode, vpid) in modes {
        let mut machine = Machine {
            mode,
            vcpu: Vcpu::new(
                config.cpu,
                config.tlb,
                vpid,
                config.walk_caches.then_some(config.walk_cache_sizes),
            ),
        };
        machine.vcpu.hw = machine.mode.hardware_cpu(config.cpu);
        machine.vcpu.ep4ta = machine.mode.ep4ta();
        let kernel = Kernel::boot(&mut machine, KernelConfig { ram_bytes: config.guest_ram })?;
        guests.push(Guest { machine, kernel, first_access: None });
    }
    let mut member = Member::new(config.stop_together.as_deref());
    let mut feeds: Vec<_> = workloads.iter_mut().map(|w| Feed::new(&mut **w)).collect();
    let mut verifier = Verifier::new(config.verify, config.record.clone());
    let mut total_accesses = 0u64;
    let mut interrupted = false;
    let mut warming_up = config.warmup > 0;
    let mut ended = vec![false; guests.len()];
    let shared = guests.len() > 1;
    let (mut turn, mut used) = (0usize, 0u64);
    // Slices of one VM's operations, between the points where something outside that VM
    // happens: the end of the warm-up, a progress report, another VM's turn.
    while ended.iter().any(|e| !e) {
        if ended[turn] {
            turn = (turn + 1) % guests.len();
            continue;
        }
        // The warm-up's end: the counters restart right before the next access.
        let restart = warming_up && total_accesses == config.warmup;
        let mut budget = MEMORY_CHECK_EVERY - total_accesses % MEMORY_CHECK_EVERY;
        if warming_up && !restart {
            budget = budget.min(config.warmup - total_accesses);
        }
        if shared {
            budget = budget.min(VM_QUANTUM - used);
        }
        let every = config.host_migrate_every;
        if every > 0 {
            budget = budget.min(every - total_accesses % every);
        }
        let (guest, feed) = (&mut guests[turn], &mut feeds[turn]);
        // The warm-up's end is handled on its own, so the slice loop tests nothing for it.
        let (done, end) = if restart {
            (0, up_to_next_access(guest, feed)?)
        } else {
            run_slice(guest, feed, &mut verifier, budget, config.prefetch)?
        };
        total_accesses += done;
        used += done;
        match end {
            SliceEnd::Ended => ended[turn] = true,
            SliceEnd::StartMeasuring => guests.iter_mut().for_each(start_measuring),
            SliceEnd::WarmedUp => {
                warming_up = false;
                guests.iter_mut().for_each(start_measuring);
            }
            SliceEnd::Budget => {}
        }
        if done > 0 && every > 0 && total_accesses % every == 0 {
            let (guest, feed) = (&mut guests[turn], &mut feeds[turn]);
            migrate_next_page(guest, feed)?;
        }
        if done > 0 && total_accesses % MEMORY_CHECK_EVERY == 0 {
            // The whole process when the caller counts it; else this host's stored frames
            // (VMs on one host share its memory: the largest view is the whole).
            let used_bytes = config
                .memory_in_use
                .map_or_else(|| guests[turn].machine.mode.stored_bytes(), |in_use| in_use());
            if used_bytes > config.max_host_memory {
                return Err(SimError::MemoryLimit { used: used_bytes, limit: config.max_host_memory });
            }
        }
        if done > 0 && total_accesses % PROGRESS_EVERY == 0 {
            progress.store(total_accesses, Ordering::Relaxed);
            if config.stop.as_ref().is_some_and(|stop| stop.load(Ordering::Relaxed))
                && member.stop_now(total_accesses)
            {
                interrupted = true;
                break;
            }
        }
        if ended[turn] || (shared && used >= VM_QUANTUM) {
            used = 0;
            turn = (turn + 1) % guests.len();
        }
    }
    member.ended(total_accesses);
    // The warm-up never ended: nothing was measured. (An interrupted run reports what it has.)
    if warming_up && !interrupted {
        return Err(SimError::WarmupCoversAll { warmup: config.warmup, accesses: total_accesses });
    }
    let mut total = Stats::default();
    for guest in &guests {
        total.absorb(&guest_stats(guest));
    }
    total.interrupted = interrupted;
    // After the counters are taken: explaining changes nothing that was counted.
    let Some(first) = guests.first_mut() else {
        return Ok((total, verifier.finish(), None));
    };
    let target = match config.explain {
        Some(ExplainTarget::Address(va, access)) => Some((va, access)),
        Some(ExplainTarget::FirstAccess) => first.first_access,
        None => None,
    };
    let explanation = match (target, first.kernel.first_process()) {
        (Some((va, access)), Some(pid)) => {
            first.kernel.switch_to(&mut first.machine, pid)?;
            Some(first.machine.mode.explain(va, access, &mut first.machine.vcpu))
        }
        _ => None,
    };
    Ok((total, verifier.finish(), explanation))
}

/// One guest's counters, with what its kernel and mode report.
fn guest_stats<M: Mode>(guest: &Guest<M>) -> Stats {
    let mut stats = guest.machine.vcpu.stats.clone();
    stats.tlb = guest.machine.vcpu.tlb.stats();
    // Every translation but a retry after a fault is one TLB lookup, counted by the TLB.
    stats.tlb_hits = stats.tlb.l1_hits + stats.tlb.l2_hits;
    stats.tlb_misses = stats.tlb.misses;
    stats.translations = stats.tlb_hits + stats.tlb_misses;
    let counters = guest.kernel.counters();
    stats.context_switches = counters.context_switches;
    stats.pages_mapped = counters.pages_mapped;
    stats.guest = counters;
    guest.machine.mode.note_state(&mut stats);
    let own = guest.machine.mode.page_table_bytes();
    stats.page_table_bytes.guest = guest.kernel.page_table_bytes();
    stats.page_table_bytes.shadow = own.shadow;
    stats.page_table_bytes.ept = own.ept;
    stats
}

/// Zeroes every counter of a guest: what came before was set-up or warm-up.
fn start_measuring<M: Mode>(guest: &mut Guest<M>) {
    guest.machine.vcpu.reset_counters();
    guest.kernel.reset_counters();
}

/// The host migrates the page of `guest`'s next access, if the running process makes it and
/// its guest tables map it now (the same choice in every mode: it depends on the guest alone).
fn migrate_next_page<M: Mode>(guest: &mut Guest<M>, feed: &mut Feed<impl Workload>) -> Result<(), SimError> {
    let next = feed.pending()?.iter().find_map(|op| match *op {
        Op::Access { pid, va, .. } | Op::KernelAccess { pid, va, .. } => Some((pid, va)),
        _ => None,
    });
    let Some((pid, va)) = next else { return Ok(()) };
    if guest.kernel.current() != Some(pid) {
        return Ok(());
    }
    let machine = &mut guest.machine;
    let Some(gpa) = machine.mode.reference_gpa(va, Access::USER_READ, &machine.vcpu) else { return Ok(()) };
    if machine.mode.host_migrate(gpa, &mut machine.vcpu) {
        machine.vcpu.stats.host_migrations += 1;
    }
    Ok(())
}

/// Why a slice of one VM's operations ended.
enum SliceEnd {
    /// It did as many accesses as it was allowed.
    Budget,
    /// The workload marked the start of measuring: every VM's counters restart.
    StartMeasuring,
    /// The next access is the first after the warm-up: every VM's counters restart.
    WarmedUp,
    /// The workload has no more operations.
    Ended,
}

/// At the warm-up's end: carries out `guest`'s operations from `feed` up to its next access,
/// where the counters restart. Returns why it stopped: at that access, or because the workload
/// started measuring or ended first.
fn up_to_next_access<M: Mode>(
    guest: &mut Guest<M>,
    feed: &mut Feed<impl Workload>,
) -> Result<SliceEnd, SimError> {
    loop {
        let Some(op) = feed.pending()?.first().copied() else { return Ok(SliceEnd::Ended) };
        if matches!(op, Op::Access { .. } | Op::KernelAccess { .. }) {
            return Ok(SliceEnd::WarmedUp);
        }
        feed.consume(1);
        if op == Op::StartMeasuring {
            return Ok(SliceEnd::StartMeasuring);
        }
        apply(&mut guest.machine, &mut guest.kernel, op)?;
    }
}

/// Carries out `guest`'s operations from `feed` until `budget` accesses are done (at least
/// one) or the workload ends or starts measuring. Returns the accesses done and why it
/// stopped. This is the hot loop of every run.
fn run_slice<M: Mode>(
    guest: &mut Guest<M>,
    feed: &mut Feed<impl Workload>,
    verifier: &mut Verifier,
    budget: u64,
    ahead: usize,
) -> Result<(u64, SliceEnd), SimError> {
    let mut done = 0;
    // Verification observes every translation, so it takes the general path throughout.
    let fast_hits = !verifier.enabled();
    let mut prefetcher = Prefetcher::new(ahead);
    let mut recent = RecentPages::default();
    while done < budget {
        let ops = feed.pending()?;
        if ops.is_empty() {
            return Ok((done, SliceEnd::Ended));
        }
        // Operations of this batch carried out so far.
        let mut used = 0;
        let mut stop = None;
        prefetcher.new_batch();
        for op in ops {
            let Op::Access { pid, va, kind, size } = *op else {
                used += 1;
                if *op == Op::StartMeasuring {
                    stop = Some(SliceEnd::StartMeasuring);
                    break;
                }
                recent.forget();
                if other_op(guest, verifier, *op)? {
                    done += 1;
                    if done == budget {
                        stop = Some(SliceEnd::Budget);
                        break;
                    }
                }
                continue;
            };
            used += 1;
            if fast_hits && recent.hit(pid, va, kind) && within_one_page(va, size) {
                guest.count_fast_hit();
            } else if let Some(kinds) = fast_hits.then(|| guest.unchanged_hit(pid, va, kind, size)).flatten()
            {
                recent.remember(pid, va, kind, kinds);
            } else {
                recent.forget();
                // This access is operation `used - 1` of the batch.
                general_access(guest, verifier, &mut prefetcher, ops, used - 1)?;
            }
            done += 1;
            if done == budget {
                stop = Some(SliceEnd::Budget);
                break;
            }
        }
        feed.consume(used);
        if let Some(end) = stop {
            return Ok((done, end));
        }
    }
    Ok((done, SliceEnd::Budget))
}

/// Access `at` of `ops` by the general path, prefetching the walks of the accesses after it
/// when walks come in a run. Out of line, so the fast path keeps the operation's fields in
/// registers.
#[inline(never)]
fn general_access<M: Mode>(
    guest: &mut Guest<M>,
    verifier: &mut Verifier,
    prefetcher: &mut Prefetcher,
    ops: &[Op],
    at: usize,
) -> Result<(), SimError> {
    let Some(&Op::Access { pid, va, kind, size }) = ops.get(at) else {
        return Ok(());
    };
    prefetcher.before(&guest.machine, guest.kernel.current(), ops, at);
    let walks = guest.machine.vcpu.stats.walks;
    access(guest, verifier, pid, va, Access::new(kind, Privilege::User), size)?;
    prefetcher.after(at, guest.machine.vcpu.stats.walks > walks);
    Ok(())
}

/// An operation of the run loop other than a process's own access or the start of measuring;
/// returns whether it was an access (a kernel access counts as one). Out of line: the loop's
/// common path is a process's access.
#[inline(never)]
fn other_op<M: Mode>(guest: &mut Guest<M>, verifier: &mut Verifier, op: Op) -> Result<bool, SimError> {
    if let Op::KernelAccess { pid, va, kind, size } = op {
        kernel_access(guest, verifier, pid, va, kind, size)?;
        return Ok(true);
    }
    apply(&mut guest.machine, &mut guest.kernel, op)?;
    Ok(false)
}

/// An access the guest kernel makes to a process's memory on its behalf: at CPL 0, with
/// EFLAGS.AC set for its duration (STAC ... CLAC, as `copy_to_user` does), so SMAP lets it
/// through. Every page goes through the general path.
fn kernel_access<M: Mode>(
    guest: &mut Guest<M>,
    verifier: &mut Verifier,
    pid: Pid,
    va: Gva,
    kind: AccessKind,
    size: u32,
) -> Result<(), SimError> {
    let vcpu = &mut guest.machine.vcpu;
    let (guest_ac, hw_ac) = (vcpu.cpu.ac, vcpu.hw.ac);
    vcpu.cpu.ac = true;
    vcpu.hw.ac = true;
    let result = access(guest, verifier, pid, va, Access::new(kind, Privilege::Supervisor), size);
    let vcpu = &mut guest.machine.vcpu;
    vcpu.cpu.ac = guest_ac;
    vcpu.hw.ac = hw_ac;
    result
}

impl<M: Mode> Guest<M> {
    /// The common case done inline: a one-page user access by the running process that hits
    /// the most recent entry of its TLB set. The entry's allowed kinds (see
    /// [`crate::tlb::TlbEntry::user_kinds`]), or `None` (with nothing changed) to leave the
    /// access to [`access`].
    #[inline]
    fn unchanged_hit(&mut self, pid: Pid, va: Gva, kind: AccessKind, size: u32) -> Option<u8> {
        if !within_one_page(va, size) || self.kernel.current() != Some(pid) {
            return None;
        }
        let entry = self.machine.vcpu.unchanged_hit(va, Access::new(kind, Privilege::User))?;
        self.machine.vcpu.stats.accesses += 1;
        Some(entry.user_kinds())
    }

    /// Counts a fast hit [`RecentPages`] answered: the L1 hit [`Guest::unchanged_hit`] would
    /// have counted.
    #[inline(always)]
    fn count_fast_hit(&mut self) {
        self.machine.vcpu.stats.accesses += 1;
        self.machine.vcpu.tlb.count_unchanged_hit();
    }
}

/// Carries out an operation of the workload other than an access or the start of measuring.
pub(crate) fn apply<M: Mode>(machine: &mut Machine<M>, kernel: &mut Kernel, op: Op) -> Result<(), SimError> {
    match op {
        Op::Spawn { pid, anywhere } => kernel.spawn(machine, pid, anywhere)?,
        Op::Map { pid, region } => kernel.add_region(pid, region)?,
        Op::Munmap { pid, start, len } => {
            kernel.switch_to(machine, pid)?;
            kernel.munmap(machine, pid, start, len)?;
        }
        Op::Mprotect { pid, start, len, prot } => {
            kernel.switch_to(machine, pid)?;
            kernel.mprotect(machine, pid, start, len, prot)?;
        }
        Op::Fork { parent, child } => {
            kernel.switch_to(machine, parent)?;
            kernel.fork(machine, parent, child)?;
        }
        Op::Exec { pid } => {
            kernel.switch_to(machine, pid)?;
            kernel.exec(machine, pid)?;
        }
        Op::Exit { pid } => {
            kernel.switch_to(machine, pid)?;
            kernel.exit(machine, pid)?;
        }
        Op::Poke { pid, va, level, value } => {
            kernel.switch_to(machine, pid)?;
            kernel.poke(machine, pid, va, level, value)?;
        }
        Op::SetRoot { pid, root } => kernel.set_root(machine, pid, Gpa::new(root))?,
        Op::StartMeasuring | Op::Access { .. } | Op::KernelAccess { .. } => {
            return Err(SimError::Internal(format!("{op:?} is not carried out by apply")))
        }
    }
    Ok(())
}

/// Whether an access of `size` bytes at `va` stays inside one 4 KiB page (a size of 0 counts
/// as 1).
#[inline]
fn within_one_page(va: Gva, size: u32) -> bool {
    va.page_offset(PageSize::Size4K) + u64::from(size.max(1)) <= PAGE_BYTES
}

/// One access of `size` bytes at `va` by `pid`: every 4 KiB page it touches is translated.
#[inline(never)]
fn access<M: Mode>(
    guest: &mut Guest<M>,
    verifier: &mut Verifier,
    pid: Pid,
    va: Gva,
    access: Access,
    size: u32,
) -> Result<(), SimError> {
    let (machine, kernel) = (&mut guest.machine, &mut guest.kernel);
    kernel.switch_to(machine, pid)?;
    machine.vcpu.stats.accesses += 1;
    if guest.first_access.is_none() {
        guest.first_access = Some((va, access));
    }
    if within_one_page(va, size) {
        return access_page(machine, kernel, verifier, pid, va, access);
    }
    // The access's last byte, or `None` when its bytes run past 2^64: the pages below the top
    // of the address space are translated, and the rest counts as a #GP, as past the canonical
    // boundary (the page loop must not compare saturated addresses, which never pass the end).
    let last = va.as_u64().checked_add(u64::from(size.max(1)) - 1);
    let mut page = va;
    loop {
        access_page(machine, kernel, verifier, pid, page, access)?;
        let number = page.as_u64() / PAGE_BYTES;
        if last.is_some_and(|last| number >= last / PAGE_BYTES) {
            return Ok(());
        }
        let next = number.checked_add(1).and_then(|n| n.checked_mul(PAGE_BYTES)).map(Gva::try_new);
        match next {
            Some(Ok(va)) => page = va,
            Some(Err(_)) | None => {
                machine.vcpu.stats.general_protection += 1;
                return Ok(());
            }
        }
    }
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
