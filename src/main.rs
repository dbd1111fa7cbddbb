//! The `memvirt` command line: a thin front end over the library.

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use clap::{Args, Parser, Subcommand};
use cli::console::{note, noteln, out, outln};
use memvirt::addr::{Gva, PageSize, PagingLevels};
use memvirt::output_file::OutputFile;
use memvirt::paging::{Access, AccessKind, Privilege};
use memvirt::sim::compare::WorkloadFactory;
use memvirt::sim::{self, ModeName, SimConfig};
use memvirt::tlb::{PscSizes, TlbConfig};
use memvirt::workload::open::open_trace;
use memvirt::workload::scenario::{self, parse_size, ScenarioContext, SCENARIOS};
use memvirt::workload::scheduler::Interleave;
use memvirt::workload::Workload;

mod cli;

/// Every heap allocation of the process, counted, so `--max-host-memory` is one budget for
/// the whole process: every mode of a comparison, the workloads' queues, the VMM's metadata,
/// not only the page tables each mode stores. No limit is set here (an allocation over a
/// limit would abort); the runs check the count and stop with a message.
#[global_allocator]
static ALLOCATOR: cap::Cap<std::alloc::System> = cap::Cap::new(std::alloc::System, usize::MAX);

/// Bytes the process has allocated now.
fn allocated_bytes() -> u64 {
    u64::try_from(ALLOCATOR.allocated()).unwrap_or(u64::MAX)
}

/// The largest single TLB level `--tlb-entries` builds: 32 MiB of entries. Real TLBs hold a
/// few thousand; a larger request would only exhaust memory (an allocation failure aborts).
const MAX_TLB_ENTRIES: usize = 1 << 20;

/// The scenario used when neither --workload nor --trace is given.
const DEFAULT_WORKLOAD: &str = "mixed";

#[derive(Parser)]
#[command(
    name = "memvirt",
    version,
    about = "Memory virtualization, modelled bit-exactly: native paging, shadow page tables and EPT/NPT",
    long_about = "memvirt runs a guest kernel and its processes on a modelled x86-64 MMU and VMM. \
                  Every translation goes through real page-table bytes in simulated memory, and \
                  the run counts what each design costs: TLB misses, memory references per walk, \
                  guest page faults, VM exits, page-table memory and estimated cycles.\n\n\
                  Start with `memvirt workloads` to see the builtin scenarios, then \
                  `memvirt run --mode native --workload seq-scan`."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run one workload through several modes side by side, checking every access (the main
    /// job). With no options: the default workload in native, shadow, ept and npt modes.
    Compare(CompareArgs),
    /// Run one workload in one mode and print its counters.
    Run(RunArgs),
    /// Run a workload, then show every memory reference of one translation in its first
    /// process, with all translation caches cold: the 1D walk (native, shadow) or the 2D walk
    /// (ept, npt), in both address spaces.
    Explain(ExplainArgs),
    /// List the builtin workloads: name, then what it does and its parameters.
    Workloads,
    /// Run a program under valgrind's lackey tool and write its memory accesses in memvirt's
    /// compact trace format: `memvirt record -o ls.mvt -- ls /usr/bin`.
    Record(RecordArgs),
    /// Turn a lackey text trace (plain, gzip or zstd) into the compact trace format.
    Convert(ConvertArgs),
    /// Measure simulation speed: accesses per second per mode on a real trace (TLB-friendly),
    /// uniform-random over a populated 16 GiB buffer (TLB misses) and over a fresh one (first
    /// touches), and the fork storm (table-update heavy), each against a floor loop measured
    /// in the same run.
    Bench(BenchArgs),
}

#[derive(Args)]
struct RunArgs {
    /// The virtualization design to run under.
    #[arg(long, value_enum, default_value_t = ModeName::Native)]
    mode: ModeName,
    #[command(flatten)]
    workload: WorkloadArgs,
    #[command(flatten)]
    machine: MachineArgs,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    json: bool,
    /// Check every access against the reference composition GVA -> GPA -> HVA -> HPA: a guest
    /// must never reach a host frame outside its memory slots (exit status 3 if it does).
    #[arg(long)]
    check_isolation: bool,
}

#[derive(Args)]
struct ExplainArgs {
    /// The virtualization design.
    #[arg(long, value_enum, default_value_t = ModeName::Ept)]
    mode: ModeName,
    /// The guest-virtual address to translate: hexadecimal with 0x, or decimal.
    #[arg(long, value_name = "ADDR", value_parser = parse_gva)]
    gva: Gva,
    /// The kind of access.
    #[arg(long, value_enum, default_value_t = AccessArg::Read)]
    access: AccessArg,
    #[command(flatten)]
    workload: WorkloadArgs,
    #[command(flatten)]
    machine: MachineArgs,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    json: bool,
    /// Also draw the walk as an SVG picture to FILE (1D for native and shadow, the 2D grid for
    /// ept and npt).
    #[arg(long, value_name = "FILE")]
    svg: Option<PathBuf>,
}

/// A user-mode access kind.
#[derive(Clone, Copy, clap::ValueEnum)]
enum AccessArg {
    Read,
    Write,
    Fetch,
}

#[derive(Args)]
struct RecordArgs {
    /// Where to write the trace.
    #[arg(short, long, value_name = "FILE")]
    output: PathBuf,
    /// The valgrind program to use.
    #[arg(long, value_name = "PATH", default_value = "valgrind")]
    valgrind: PathBuf,
    /// The program and its arguments, after `--`.
    #[arg(last = true, required = true, value_name = "COMMAND")]
    command: Vec<std::ffi::OsString>,
}

#[derive(Args)]
struct ConvertArgs {
    /// The lackey trace to read.
    #[arg(value_name = "INPUT")]
    input: PathBuf,
    /// Where to write the compact trace.
    #[arg(short, long, value_name = "FILE")]
    output: PathBuf,
}

#[derive(Args)]
struct BenchArgs {
    /// The real-program trace to measure (default: the bundled trace of /bin/true, if run
    /// from the source tree).
    #[arg(long, value_name = "FILE")]
    trace: Option<PathBuf>,
    /// Random accesses of each uniform-random case: over a populated 16 GiB buffer (TLB
    /// misses; writing its pages first is set-up, left out of the time), and over a fresh one
    /// (mostly first touches: page faults).
    #[arg(long, default_value_t = 2_000_000)]
    accesses: u64,
    /// Forks of the fork storm.
    #[arg(long, default_value_t = 300)]
    forks: u64,
    /// Rounds of measurement: each figure is the best of this many runs (the least
    /// disturbed by other work on the machine).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=100))]
    rounds: u32,
    /// The cases to measure, comma-separated (default: all four).
    #[arg(long, value_enum, value_delimiter = ',', default_value = "trace,misses,first-touches,fork-storm")]
    cases: Vec<BenchCase>,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

/// What `memvirt bench` can measure.
#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum BenchCase {
    /// The real program's trace (`--trace`): TLB-friendly.
    Trace,
    /// uniform-random over a populated 16 GiB buffer: a TLB miss per access.
    Misses,
    /// uniform-random over a fresh 16 GiB buffer: mostly first touches (page faults).
    FirstTouches,
    /// The fork storm: page-table updates.
    ForkStorm,
}

#[derive(Args)]
struct CompareArgs {
    /// The modes to compare, comma-separated.
    #[arg(long, value_enum, value_delimiter = ',', default_value = "native,shadow,ept,npt")]
    modes: Vec<ModeName>,
    #[command(flatten)]
    workload: WorkloadArgs,
    #[command(flatten)]
    machine: MachineArgs,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    json: bool,
    /// Also write one CSV row per mode to FILE.
    #[arg(long, value_name = "FILE")]
    csv: Option<PathBuf>,
    /// Also write a self-contained HTML report to FILE: the table, charts of cycles and exits,
    /// and pictures of the run's first translation in each design.
    #[arg(long, value_name = "FILE")]
    html: Option<PathBuf>,
    /// Skip checking every access against the reference composition (faster).
    #[arg(long)]
    no_verify: bool,
}

#[derive(Args)]
struct WorkloadArgs {
    /// A builtin scenario (see `memvirt workloads`) [default: mixed].
    #[arg(long, value_name = "NAME", conflicts_with = "trace")]
    workload: Option<String>,
    /// A memory trace: valgrind lackey text (plain or gzip) or memvirt's binary format.
    /// Repeat to run several traces as concurrent processes (pids 1, 2, ...).
    #[arg(long, value_name = "FILE")]
    trace: Vec<PathBuf>,
    /// With several traces: accesses each process runs before the next one's turn.
    #[arg(long, value_name = "N", default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..))]
    quantum: u64,
    /// Leave the first N accesses out of the counters (caches and tables stay warm).
    #[arg(long, value_name = "N", default_value_t = 0)]
    warmup: u64,
    /// A scenario parameter, e.g. `--param size=2G`; repeatable.
    #[arg(long = "param", value_name = "KEY=VALUE", value_parser = parse_param)]
    params: Vec<(String, String)>,
    /// Seed of every random choice: the same seed gives the same numbers.
    #[arg(long, default_value_t = 1)]
    seed: u64,
}

#[derive(Args)]
struct MachineArgs {
    /// Replace the TLB hierarchy with one LRU level of N entries (needs --tlb-ways).
    #[arg(long, value_name = "N", requires = "tlb_ways")]
    tlb_entries: Option<usize>,
    /// Associativity of the single TLB level (needs --tlb-entries; N/W sets).
    #[arg(long, value_name = "W", requires = "tlb_entries")]
    tlb_ways: Option<usize>,
    /// The single TLB level caches large pages as the 4 KiB pieces accesses touch, as a TLB
    /// for 4 KiB pages only would (by default each 2 MiB or 1 GiB page is one entry).
    #[arg(long, requires = "tlb_entries")]
    tlb_split_large: bool,
    /// Guest paging levels: 4 (48-bit addresses) or 5 (LA57).
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u8).range(4..=5))]
    guest_levels: u8,
    /// Page size for regions that allow large pages: 4k or 2m.
    #[arg(long, default_value = "4k", value_parser = parse_page_size)]
    guest_page_size: PageSize,
    /// Nested (EPT/NPT) table levels: 4 or 5.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u8).range(4..=5))]
    ept_levels: u8,
    /// Page size the host backs guest RAM with: 4k, 2m or 1g (nested mappings follow it).
    #[arg(long, default_value = "4k", value_parser = parse_host_page_size)]
    host_page_size: PageSize,
    /// Shadow paging: keep every shadowed guest table write-protected, so each guest PTE
    /// write exits and is emulated (by default leaf tables go out of sync while the guest
    /// writes them, and are resynchronised at its INVLPG and flushing CR3 loads, as in KVM).
    #[arg(long, conflicts_with = "shadow_unsync")]
    no_shadow_unsync: bool,
    /// Out-of-sync leaf shadow tables: the default now, so this changes nothing.
    #[arg(long, hide = true)]
    shadow_unsync: bool,
    /// Shadow paging: the most shadow pages at once (at least the guest's paging levels);
    /// beyond it the oldest are recycled. Default: KVM's, 2 % of guest RAM's pages, at
    /// least 64.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    shadow_max_pages: Option<u64>,
    /// The guest's CR0.WP: `off` lets its kernel write to read-only pages (under shadow
    /// paging the VMM emulates that, as KVM does; see the copy-to-user workload).
    #[arg(long, value_name = "on|off", default_value = "on", value_parser = parse_on_off, action = clap::ArgAction::Set)]
    guest_cr0_wp: bool,
    /// Turn off EPT accessed/dirty flags (EPTP bit 6).
    #[arg(long)]
    no_ept_ad: bool,
    /// Turn off the paging-structure caches and the nested TLB, so every walk is cold.
    #[arg(long)]
    no_walk_caches: bool,
    /// Paging-structure cache entries, PML4E,PDPTE,PDE (4-way; combined caches under nested
    /// paging, SDM Vol. 3C 29.4.1).
    #[arg(long, value_name = "PML4E,PDPTE,PDE", default_value = "4,4,32", value_parser = parse_psc)]
    psc: PscSizes,
    /// Guest-physical paging-structure cache entries of the nested dimension, PML4E,PDPTE,PDE.
    #[arg(long, value_name = "PML4E,PDPTE,PDE", default_value = "4,4,32", value_parser = parse_psc)]
    nested_psc: PscSizes,
    /// Every N accesses the host migrates the page the guest is about to touch to another
    /// frame (4 KiB host pages): the VMM drops its mappings of the old one and invalidates,
    /// INVEPT under EPT/NPT, INVVPID under shadow paging. 0: never.
    #[arg(long, value_name = "N", default_value_t = 0)]
    host_migrate_every: u64,
    /// Nested TLB (guest-physical mappings) entries and ways, as ENTRIESxWAYS.
    #[arg(long, value_name = "ENTRIESxWAYS", default_value = "128x4", value_parser = parse_shape)]
    nested_tlb: (usize, usize),
    /// Guests on one host, each running its own copy of the workload (interleaved every 10,000
    /// accesses); with verification on, a guest reaching another's frames is an error.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=8))]
    vms: u64,
    /// Cycle costs from a TOML file (keys as in docs/cost-model.md); unset keys keep their
    /// defaults.
    #[arg(long, value_name = "FILE")]
    cost: Option<PathBuf>,
    /// The most memory memvirt may allocate, all modes and workloads together, e.g. 4G
    /// [default: half of this machine's memory].
    #[arg(long, value_name = "SIZE", value_parser = parse_bytes)]
    max_host_memory: Option<u64>,
    /// Guest RAM, e.g. 64G.
    #[arg(long, default_value = "64G", value_parser = parse_bytes)]
    guest_ram: u64,
}

/// Half of the machine's memory (from /proc/meminfo), or 8 GiB where that cannot be read.
fn default_memory_limit() -> u64 {
    let total_kib = std::fs::read_to_string("/proc/meminfo").ok().and_then(|text| {
        text.lines()
            .find_map(|line| line.strip_prefix("MemTotal:"))
            .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
    });
    total_kib.map_or(8 << 30, |kib| kib * 1024 / 2)
}

fn parse_param(text: &str) -> Result<(String, String), String> {
    let (key, value) = text.split_once('=').ok_or_else(|| format!("expected KEY=VALUE, found '{text}'"))?;
    Ok((key.trim().to_string(), value.trim().to_string()))
}

fn parse_page_size(text: &str) -> Result<PageSize, String> {
    match text.to_ascii_lowercase().as_str() {
        "4k" => Ok(PageSize::Size4K),
        "2m" => Ok(PageSize::Size2M),
        _ => Err(format!("expected 4k or 2m, found '{text}'")),
    }
}

/// The most entries any walk cache `--psc`, `--nested-psc` or `--nested-tlb` builds.
const MAX_WALK_CACHE_ENTRIES: usize = 1 << 16;

/// One walk-cache size: a whole number from 1 to [`MAX_WALK_CACHE_ENTRIES`].
fn parse_entries(text: &str) -> Result<usize, String> {
    text.trim().parse::<usize>().ok().filter(|n| (1..=MAX_WALK_CACHE_ENTRIES).contains(n)).ok_or_else(|| {
        format!("expected a number of entries from 1 to {MAX_WALK_CACHE_ENTRIES}, found '{text}'")
    })
}

fn parse_psc(text: &str) -> Result<PscSizes, String> {
    let parts: Vec<&str> = text.split(',').collect();
    let [pml4e, pdpte, pde] = parts.as_slice() else {
        return Err(format!("expected three sizes PML4E,PDPTE,PDE such as 4,4,32, found '{text}'"));
    };
    Ok(PscSizes { pml4e: parse_entries(pml4e)?, pdpte: parse_entries(pdpte)?, pde: parse_entries(pde)? })
}

fn parse_shape(text: &str) -> Result<(usize, usize), String> {
    let (entries, ways) = text
        .split_once(['x', 'X'])
        .ok_or_else(|| format!("expected ENTRIESxWAYS such as 128x4, found '{text}'"))?;
    let (entries, ways) = (parse_entries(entries)?, parse_entries(ways)?);
    if entries % ways != 0 {
        return Err(format!("{entries}x{ways}: entries must be a multiple of ways"));
    }
    Ok((entries, ways))
}

fn parse_on_off(text: &str) -> Result<bool, String> {
    match text.to_ascii_lowercase().as_str() {
        "on" | "1" => Ok(true),
        "off" | "0" => Ok(false),
        _ => Err(format!("expected on or off, found '{text}'")),
    }
}

fn parse_host_page_size(text: &str) -> Result<PageSize, String> {
    match text.to_ascii_lowercase().as_str() {
        "1g" => Ok(PageSize::Size1G),
        _ => parse_page_size(text).map_err(|_| format!("expected 4k, 2m or 1g, found '{text}'")),
    }
}

/// A guest-virtual address: hexadecimal with `0x` or decimal. A bare `10000000` is decimal,
/// as everywhere else on the command line, not silently hexadecimal.
fn parse_gva(text: &str) -> Result<Gva, String> {
    let hex = text.strip_prefix("0x").or_else(|| text.strip_prefix("0X"));
    let raw = match hex {
        Some(digits) => u64::from_str_radix(digits, 16).ok(),
        None => text.parse::<u64>().ok(),
    }
    .ok_or_else(|| {
        format!("expected an address, hexadecimal with 0x (0x10000000) or decimal, found '{text}'")
    })?;
    Gva::try_new(raw).map_err(|e| e.to_string())
}

fn parse_bytes(text: &str) -> Result<u64, String> {
    parse_size(text).ok_or_else(|| format!("expected a size such as 512M or 64G, found '{text}'"))
}

impl MachineArgs {
    fn config(&self, workload: &WorkloadArgs) -> Result<SimConfig, String> {
        let seed = workload.seed;
        let mut config = SimConfig {
            seed,
            guest_ram: self.guest_ram,
            guest_page_size: self.guest_page_size,
            ..SimConfig::default()
        };
        if let Some(path) = &self.cost {
            config.cost = memvirt::cost::CostModel::from_file(path).map_err(|e| e.to_string())?;
        }
        config.max_host_memory = self.max_host_memory.unwrap_or_else(default_memory_limit);
        config.memory_in_use = Some(allocated_bytes);
        config.stop = Some(cli::signals::stop_flag());
        config.walk_caches = !self.no_walk_caches;
        config.host_migrate_every = self.host_migrate_every;
        config.walk_cache_sizes = memvirt::tlb::WalkCacheSizes {
            psc: self.psc,
            nested_psc: self.nested_psc,
            nested_tlb_entries: self.nested_tlb.0,
            nested_tlb_ways: self.nested_tlb.1,
        };
        config.vms = usize::try_from(self.vms).unwrap_or(1);
        config.warmup = workload.warmup;
        config.nested_levels = PagingLevels::from_count(self.ept_levels).unwrap_or_default();
        config.host_page_size = self.host_page_size;
        config.ept_ad = !self.no_ept_ad;
        config.shadow.unsync = !self.no_shadow_unsync;
        if self.shadow_unsync {
            noteln!("memvirt: note: --shadow-unsync is the default now; --no-shadow-unsync turns it off");
        }
        config.cpu.levels = PagingLevels::from_count(self.guest_levels).unwrap_or_default();
        config.cpu.wp = self.guest_cr0_wp;
        if let Some(pages) = self.shadow_max_pages {
            let least = memvirt::vmm::shadow::recycle::min_budget(config.cpu.levels);
            let pages = usize::try_from(pages).unwrap_or(usize::MAX);
            if pages < least {
                return Err(format!(
                    "--shadow-max-pages {pages}: a {}-level guest's walk needs at least {least} shadow pages (a root and one per level below it)",
                    config.cpu.levels.count()
                ));
            }
            config.shadow.max_pages = Some(pages);
        }
        if let (Some(entries), Some(ways)) = (self.tlb_entries, self.tlb_ways) {
            if ways == 0 || entries == 0 || entries % ways != 0 {
                return Err(format!(
                    "--tlb-entries {entries} --tlb-ways {ways}: entries must be a positive multiple of ways"
                ));
            }
            if entries > MAX_TLB_ENTRIES {
                return Err(format!(
                    "--tlb-entries {entries}: at most {MAX_TLB_ENTRIES} entries (real TLBs hold a few thousand)"
                ));
            }
            config.tlb = TlbConfig::Single { entries, ways, split_large: self.tlb_split_large };
        }
        Ok(config)
    }
}

impl WorkloadArgs {
    /// For commands that read each trace more than once (every mode of `compare`, every VM of
    /// `--vms`): each must be a file that can be read again from its start. A pipe
    /// (`cat t | memvirt compare --trace /dev/stdin`) would give each reader a different part
    /// of the trace.
    fn check_rereadable(&self, readers: &str) -> Result<(), String> {
        for path in &self.trace {
            let meta = std::fs::metadata(path).map_err(|e| format!("{}: {e}", path.display()))?;
            if !meta.is_file() {
                return Err(format!(
                    "{}: {readers} reads the trace from its start, so it must be a regular file, not a pipe or device; save it to a file first",
                    path.display()
                ));
            }
        }
        Ok(())
    }

    fn open(&self, config: &SimConfig) -> Result<(Box<dyn Workload>, serde_json::Value), String> {
        if !self.trace.is_empty() {
            if !self.params.is_empty() {
                return Err("--param applies to builtin workloads, not to --trace".to_string());
            }
            let mut streams: Vec<Box<dyn Workload>> = Vec::with_capacity(self.trace.len());
            for (pid, path) in (1..).zip(&self.trace) {
                streams.push(open_trace(path, pid).map_err(|e| e.to_string())?);
            }
            let workload: Box<dyn Workload> = if streams.len() == 1 {
                streams.remove(0)
            } else {
                Box::new(Interleave::new(streams, self.quantum))
            };
            return Ok((workload, serde_json::json!({ "traces": self.trace, "quantum": self.quantum })));
        }
        let name = self.workload.as_deref().unwrap_or(DEFAULT_WORKLOAD);
        let params: BTreeMap<String, String> = self.params.iter().cloned().collect();
        let context = ScenarioContext { seed: self.seed, page_size: config.guest_page_size };
        let workload = scenario::build(name, &params, &context).map_err(|e| e.to_string())?;
        Ok((workload, serde_json::json!({ "name": name, "params": params, "seed": self.seed })))
    }
}

fn run(args: &RunArgs) -> Result<(), String> {
    let mut config = args.machine.config(&args.workload)?;
    // Debug builds always check; release builds when asked.
    config.verify = args.check_isolation || cfg!(debug_assertions);
    if config.vms > 1 {
        args.workload.check_rereadable("each VM of --vms")?;
    }
    let (first, description) = args.workload.open(&config)?;
    let mut copies = vec![first];
    for _ in 1..config.vms {
        copies.push(args.workload.open(&config)?.0);
    }
    let mut workloads: Vec<&mut dyn Workload> =
        copies.iter_mut().map(|w| w.as_mut() as &mut dyn Workload).collect();
    let progress = AtomicU64::new(0);
    let report = sim::run_vms(args.mode, &config, &mut workloads, &progress).map_err(|e| e.to_string())?;
    if args.json {
        let mut object = serde_json::to_value(&report).map_err(|e| e.to_string())?;
        if let Some(map) = object.as_object_mut() {
            map.insert("workload".into(), description);
            map.insert("config".into(), serde_json::to_value(&config).map_err(|e| e.to_string())?);
        }
        outln!("{object}")?;
    } else {
        out!("{}", memvirt::report::run_table(&report))?;
    }
    if let Some(first) = &report.verification.first_mismatch {
        noteln!("memvirt: isolation check failed: {}", describe(Some(first)));
        std::process::exit(3);
    }
    Ok(())
}

fn compare(args: &CompareArgs) -> Result<bool, String> {
    let mut config = args.machine.config(&args.workload)?;
    config.verify = !args.no_verify;
    if args.html.is_some() {
        config.explain = Some(memvirt::sim::ExplainTarget::FirstAccess);
    }
    args.workload.check_rereadable("each mode of compare")?;
    // Open once up front so a bad trace or parameter fails before any thread starts.
    let (_, description) = args.workload.open(&config)?;
    let (csv, html) = (open_output(args.csv.as_deref())?, open_output(args.html.as_deref())?);
    let factory =
        || args.workload.open(&config).map(|(w, _)| w).map_err(memvirt::workload::WorkloadError::Other);
    let progress: Vec<AtomicU64> = args.modes.iter().map(|_| AtomicU64::new(0)).collect();
    let done = AtomicBool::new(false);
    let comparison = std::thread::scope(|scope| {
        let display = scope.spawn(|| show_progress(&args.modes, &progress, &done));
        let result = memvirt::sim::compare::compare(&args.modes, &config, &factory, &progress);
        done.store(true, Ordering::Relaxed);
        let _ = display.join();
        result
    })
    .map_err(|e| e.to_string())?;
    if args.json {
        let object = serde_json::json!({
            "workload": description,
            "config": config,
            // null when nothing was checked (--no-verify): not a claim that all matched.
            "verified": comparison.verify.then_some(comparison.verified),
            "mismatch": comparison.mismatch,
            "interrupted": comparison.interrupted,
            "modes": comparison.reports,
        });
        outln!("{object}")?;
    } else {
        if comparison.interrupted {
            let accesses = comparison.reports.first().map_or(0, |r| r.stats.accesses);
            outln!("interrupted: every mode stopped after the same {accesses} counted accesses; the figures cover those")?;
        }
        out!("{}", memvirt::report::comparison_table(&comparison))?;
        let c = &config.cost;
        outln!(
            "cycles from: access {} + L1 TLB hit {} + L2 TLB hit {} + walk reference {} + A/D write {} + guest page fault {} + VM exit {} (--cost FILE to change)",
            c.access, c.tlb_l1_hit, c.tlb_l2_hit, c.walk_ref, c.ad_write, c.guest_page_fault, c.vm_exit
        )?;
        if comparison.verify && comparison.verified {
            outln!("verified: every access gave the same GPA or fault in every mode, and every HPA matched GVA -> GPA -> HVA -> HPA")?;
        }
    }
    write_output(csv, || memvirt::report::comparison_csv(&comparison))?;
    write_output(html, || memvirt::report::comparison_html(&comparison, &description, &config))?;
    if let Some(mismatch) = &comparison.mismatch {
        noteln!(
            "memvirt: verification failed: {} and {} disagree
  {}: {}
  {}: {}",
            mismatch.reference,
            mismatch.mode,
            mismatch.reference,
            describe(mismatch.expected.as_ref()),
            mismatch.mode,
            describe(mismatch.found.as_ref())
        );
    }
    for report in &comparison.reports {
        if let Some(first) = &report.verification.first_mismatch {
            noteln!(
                "memvirt: verification failed in {}: the hardware path used a different HPA than GVA -> GPA -> HVA -> HPA
  {}",
                report.mode,
                describe(Some(first))
            );
        }
    }
    Ok(comparison.verified)
}

fn describe(observed: Option<&memvirt::sim::verify::Observed>) -> String {
    match observed {
        None => "no such access (the run ended earlier)".to_string(),
        Some(o) => {
            format!(
                "translation #{} of process {}: {} at GVA {} -> {}, HPA {}, expected HPA {}",
                o.translation,
                o.pid,
                format!("{:?} {:?}", o.access.privilege, o.access.kind).to_lowercase(),
                o.gva,
                o.seen,
                o.hpa.map_or("-".to_string(), |h| h.to_string()),
                o.expected_hpa.map_or("-".to_string(), |h| h.to_string()),
            ) + if o.unprotected_write {
                " (a write reached a write-protected guest table frame)"
            } else {
                ""
            } + if o.foreign_frame { " (the frame belongs to another VM)" } else { "" }
        }
    }
}

/// Shows each mode's progress on stderr while a comparison runs, if stderr is a terminal and
/// the run lasts more than a second.
fn show_progress(modes: &[ModeName], progress: &[AtomicU64], done: &AtomicBool) {
    let started = Instant::now();
    let terminal = std::io::stderr().is_terminal();
    let mut shown = false;
    while !done.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(100));
        if terminal && started.elapsed() > Duration::from_secs(1) {
            let parts: Vec<String> = modes
                .iter()
                .zip(progress)
                .map(|(mode, count)| format!("{mode} {}k", count.load(Ordering::Relaxed) / 1000))
                .collect();
            note!("\r\x1b[2Kaccesses done: {}", parts.join("  "));
            shown = true;
        }
    }
    if shown {
        note!("\r\x1b[2K");
    }
}

/// Opens an output file before the run that fills it, so a path that cannot be written fails
/// at once instead of after the whole simulation.
fn open_output(path: Option<&std::path::Path>) -> Result<Option<OutputFile>, String> {
    path.map(|path| OutputFile::create(path).map_err(|e| format!("{}: {e}", path.display()))).transpose()
}

/// Writes `bytes` to an output file opened by [`open_output`] and completes it.
fn write_output(output: Option<OutputFile>, bytes: impl FnOnce() -> String) -> Result<(), String> {
    let Some(output) = output else { return Ok(()) };
    let path = output.path().display().to_string();
    output.write_all_and_finish(bytes().as_bytes()).map_err(|e| format!("{path}: {e}"))
}

fn explain(args: &ExplainArgs) -> Result<(), String> {
    let mut config = args.machine.config(&args.workload)?;
    let kind = match args.access {
        AccessArg::Read => AccessKind::Read,
        AccessArg::Write => AccessKind::Write,
        AccessArg::Fetch => AccessKind::Fetch,
    };
    config.explain = Some(memvirt::sim::ExplainTarget::Address(args.gva, Access::new(kind, Privilege::User)));
    let (mut workload, _) = args.workload.open(&config)?;
    let svg = open_output(args.svg.as_deref())?;
    let report = sim::run(args.mode, &config, workload.as_mut()).map_err(|e| e.to_string())?;
    let explanation = report.explanation.ok_or("the workload created no process to translate in")?;
    if args.json {
        outln!("{}", serde_json::to_string(&explanation).map_err(|e| e.to_string())?)?;
    } else {
        out!("{}", memvirt::report::explanation_table(&explanation))?;
    }
    write_output(svg, || memvirt::report::explanation_svg(&explanation))?;
    Ok(())
}

fn bench(args: &BenchArgs) -> Result<(), String> {
    use memvirt::sim::bench::measure;
    let modes = [ModeName::Native, ModeName::Shadow, ModeName::Ept, ModeName::Npt];
    let config = SimConfig::default();
    let trace = args
        .trace
        .clone()
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/true.lackey.gz"));
    let scenario = |name: &'static str, params: Vec<(&'static str, String)>| {
        move || {
            let params: BTreeMap<String, String> =
                params.iter().map(|(k, v)| ((*k).to_string(), v.clone())).collect();
            scenario::build(name, &params, &ScenarioContext { seed: 1, page_size: PageSize::Size4K })
        }
    };
    let random = |populate: &str| {
        scenario(
            "uniform-random",
            vec![
                ("size", "16G".to_string()),
                ("accesses", args.accesses.to_string()),
                ("populate", populate.to_string()),
            ],
        )
    };
    let trace_factory = || open_trace(&trace, 1);
    let cases: [(BenchCase, String, Box<WorkloadFactory<'_>>); 4] = [
        (BenchCase::Trace, format!("trace {}", trace.display()), Box::new(trace_factory)),
        (
            BenchCase::Misses,
            "uniform-random size=16G populate=yes (TLB misses)".to_string(),
            Box::new(random("yes")),
        ),
        (
            BenchCase::FirstTouches,
            "uniform-random size=16G (first touches)".to_string(),
            Box::new(random("no")),
        ),
        (
            BenchCase::ForkStorm,
            "fork-storm".to_string(),
            Box::new(scenario("fork-storm", vec![("forks", args.forks.to_string())])),
        ),
    ];
    let terminal = std::io::stderr().is_terminal();
    let mut results = Vec::new();
    for (_, name, factory) in cases.iter().filter(|(case, ..)| args.cases.contains(case)) {
        if terminal {
            note!("\rmeasuring {name} ...\x1b[K");
        }
        results.push(measure(name, &modes, &config, factory, args.rounds).map_err(|e| e.to_string())?);
    }
    if terminal {
        note!("\r\x1b[K");
    }
    if args.json {
        outln!("{}", serde_json::to_string(&results).map_err(|e| e.to_string())?)?;
        return Ok(());
    }
    for result in &results {
        outln!(
            "{}: read alone {:.1} M operations/s; floor {:.1} M accesses/s",
            result.workload,
            result.read_per_second / 1e6,
            result.floor_per_second / 1e6
        )?;
        for m in &result.modes {
            outln!(
                "  {:<7} {:>9} accesses in {:>7.3} s = {:>7.2} M/s  ({:.3}x floor)",
                m.mode.to_string(),
                m.accesses,
                m.seconds,
                m.per_second / 1e6,
                m.ratio_to_floor
            )?;
        }
    }
    Ok(())
}

/// Prints a progress line on a terminal.
fn record_progress(verb: &'static str) -> impl FnMut(u64) {
    let terminal = std::io::stderr().is_terminal();
    move |count| {
        if terminal {
            note!("\r{verb} {:.1} M accesses", count as f64 / 1e6);
        }
    }
}

fn record(args: &RecordArgs) -> Result<(), String> {
    let mut progress = record_progress("recorded");
    let count =
        memvirt::workload::recorder::record(&args.valgrind, &args.command, &args.output, &mut progress)
            .map_err(|e| e.to_string())?;
    noteln!("\rrecorded {count} accesses to {}", args.output.display());
    Ok(())
}

fn convert(args: &ConvertArgs) -> Result<(), String> {
    let mut progress = record_progress("converted");
    let count = memvirt::workload::open::convert(&args.input, &args.output, &mut progress)
        .map_err(|e| e.to_string())?;
    noteln!("\rconverted {count} accesses to {}", args.output.display());
    Ok(())
}

fn workloads() -> Result<(), String> {
    for spec in SCENARIOS {
        let params: Vec<String> = spec.params.iter().map(|(key, value)| format!("{key}={value}")).collect();
        let params = if params.is_empty() { "no parameters".to_string() } else { params.join(" ") };
        outln!("{:<16} {} [{params}]", spec.name, spec.description)?;
    }
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // The others have no partial result to give: a signal ends them at once.
    let partial_results = matches!(cli.command, Command::Compare(_) | Command::Run(_) | Command::Explain(_));
    cli::signals::install(partial_results);
    let result = match &cli.command {
        Command::Compare(args) => match compare(args) {
            Ok(true) => Ok(()),
            Ok(false) => return ExitCode::from(3),
            Err(e) => Err(e),
        },
        Command::Run(args) => run(args),
        Command::Explain(args) => explain(args),
        Command::Bench(args) => bench(args),
        Command::Record(args) => record(args),
        Command::Convert(args) => convert(args),
        Command::Workloads => workloads(),
    };
    match result {
        // A signal is ending the process (it stopped valgrind, say, which ended this command
        // first): the status is the signal's, as if it had ended the process itself.
        Err(_) if !partial_results && cli::signals::interrupted_status().is_some() => {
            cli::signals::interrupted_status().map_or(ExitCode::FAILURE, ExitCode::from)
        }
        // Partial results were printed; say so in the status too.
        Ok(()) => cli::signals::interrupted_status().map_or(ExitCode::SUCCESS, ExitCode::from),
        Err(message) => {
            noteln!("memvirt: error: {message}");
            ExitCode::FAILURE
        }
    }
}
