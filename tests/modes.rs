//! Every mode on the same work: the guest must see the same thing in each, every HPA must be
//! the reference composition, and the counts must follow the designs' rules.

use std::path::Path;
use std::sync::atomic::AtomicU64;

use memvirt::addr::{PageSize, PagingLevels};
use memvirt::sim::compare::compare;
use memvirt::sim::{run, ModeName, RunReport, SimConfig};
use memvirt::tlb::TlbConfig;
use memvirt::vmm::ShadowConfig;
use memvirt::workload::open::open_trace;
use memvirt::workload::scenario::{self, Params, ScenarioContext};
use memvirt::workload::Workload;

/// Builds a fresh copy of a workload for each mode.
type Maker = Box<dyn Fn() -> Box<dyn Workload> + Sync>;

const ALL: [ModeName; 4] = [ModeName::Native, ModeName::Shadow, ModeName::Ept, ModeName::Npt];

fn trace_path() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/true.lackey.gz")
}

fn trace() -> Box<dyn Workload> {
    open_trace(&trace_path(), 1).expect("fixture")
}

fn scenario(name: &str, params: &[(&str, &str)], page_size: PageSize) -> Box<dyn Workload> {
    let params: Params = params.iter().map(|(k, v)| ((*k).to_string(), (*v).to_string())).collect();
    scenario::build(name, &params, &ScenarioContext { seed: 5, page_size }).expect("scenario")
}

fn verified_comparison(config: &SimConfig, make: &(dyn Fn() -> Box<dyn Workload> + Sync)) -> Vec<RunReport> {
    let mut config = config.clone();
    config.verify = true;
    let factory = || Ok(make());
    let progress: Vec<AtomicU64> = ALL.iter().map(|_| AtomicU64::new(0)).collect();
    let comparison = compare(&ALL, &config, &factory, &progress).expect("runs");
    assert!(comparison.mismatch.is_none(), "modes disagree: {:?}", comparison.mismatch);
    for report in &comparison.reports {
        assert_eq!(report.verified, Some(true), "{}: {:?}", report.mode, report.verification.first_mismatch);
        assert!(report.verification.checked > 0);
    }
    assert!(comparison.verified);
    comparison.reports
}

#[test]
fn every_mode_agrees_on_the_trace_and_the_scenarios() {
    let small = |name: &'static str, params: &'static [(&'static str, &'static str)], size| {
        move || scenario(name, params, size)
    };
    let config = SimConfig::default();
    let cases: Vec<(&str, Maker)> = vec![
        ("trace", Box::new(trace)),
        ("seq-scan", Box::new(small("seq-scan", &[("size", "8M")], PageSize::Size4K))),
        (
            "random",
            Box::new(small("uniform-random", &[("size", "256M"), ("accesses", "50000")], PageSize::Size4K)),
        ),
        (
            "chase 2M",
            Box::new(small("pointer-chase", &[("size", "64M"), ("accesses", "50000")], PageSize::Size2M)),
        ),
    ];
    for (name, make) in &cases {
        let reports = verified_comparison(&config, make.as_ref());
        let native = &reports[0];
        for report in &reports[1..] {
            assert_eq!(
                report.stats.guest_page_faults, native.stats.guest_page_faults,
                "{name} {}",
                report.mode
            );
            assert_eq!(report.stats.accesses, native.stats.accesses, "{name} {}", report.mode);
            assert_eq!(report.stats.segfaults, 0, "{name} {}", report.mode);
        }
    }
}

#[test]
fn five_level_guests_and_nested_tables_and_large_host_pages_agree_too() {
    for (guest, nested, host) in [
        (PagingLevels::Five, PagingLevels::Five, PageSize::Size4K),
        (PagingLevels::Four, PagingLevels::Five, PageSize::Size2M),
        (PagingLevels::Five, PagingLevels::Four, PageSize::Size1G),
    ] {
        let mut config = SimConfig { nested_levels: nested, host_page_size: host, ..SimConfig::default() };
        config.cpu.levels = guest;
        verified_comparison(&config, &trace);
    }
}

#[test]
fn shadow_options_keep_every_access_correct() {
    let random = || scenario("uniform-random", &[("size", "64M"), ("accesses", "40000")], PageSize::Size4K);
    // Out-of-sync leaf tables (the default): far fewer page-table write exits, same results.
    let mut config = SimConfig::default();
    config.shadow.unsync = false;
    let synced = verified_comparison(&config, &random);
    config.shadow.unsync = true;
    let unsynced = verified_comparison(&config, &random);
    let (synced, unsynced) = (&synced[1].stats, &unsynced[1].stats);
    assert!(unsynced.shadow.unsync > 0);
    assert_eq!(synced.shadow.unsync, 0);
    assert!(
        unsynced.vm_exits.pt_write * 10 < synced.vm_exits.pt_write,
        "{} vs {}",
        unsynced.vm_exits.pt_write,
        synced.vm_exits.pt_write
    );
    // A tiny page budget: pages are recycled, results stay right.
    let mut config = SimConfig::default();
    config.shadow.max_pages = Some(6);
    let reports = verified_comparison(&config, &trace);
    let shadow = &reports[1].stats.shadow;
    assert!(shadow.recycled > 0 && shadow.peak_pages <= 6, "{shadow:?}");
}

fn run_trace(mode: ModeName, config: &SimConfig) -> RunReport {
    run(mode, config, trace().as_mut()).expect("runs")
}

#[test]
fn cold_two_dimensional_walks_cost_n_plus_one_times_m_plus_one_minus_one() {
    for (guest, nested, expected) in [
        (PagingLevels::Four, PagingLevels::Four, 24),
        (PagingLevels::Five, PagingLevels::Five, 35),
        (PagingLevels::Four, PagingLevels::Five, 29),
        (PagingLevels::Five, PagingLevels::Four, 29),
    ] {
        let mut config = SimConfig { walk_caches: false, nested_levels: nested, ..SimConfig::default() };
        config.cpu.levels = guest;
        for mode in [ModeName::Ept, ModeName::Npt] {
            let report = run_trace(mode, &config);
            assert_eq!(report.stats.walk_refs_max, expected, "{mode} {guest:?} over {nested:?}");
        }
        // Shadow and native walks read one entry per guest level.
        for mode in [ModeName::Native, ModeName::Shadow] {
            let report = run_trace(mode, &config);
            assert_eq!(report.stats.walk_refs_max, u64::from(guest.count()), "{mode}");
        }
    }
}

#[test]
fn guest_page_faults_cause_no_exit_under_nested_paging() {
    let report = run_trace(ModeName::Ept, &SimConfig::default());
    let exits = report.stats.vm_exits;
    assert!(report.stats.guest_page_faults > 0);
    // Every exit is the first touch of a guest frame (data page or table frame).
    assert_eq!(exits.total, exits.ept_violation);
    let guest_frames = report.stats.pages_mapped + report.stats.page_table_bytes.guest / 4096;
    assert_eq!(exits.ept_violation, guest_frames);
    assert_eq!(exits.cr3_write + exits.invlpg + exits.page_fault + exits.pt_write, 0);
}

#[test]
fn shadow_exits_follow_the_rules() {
    let report = run_trace(ModeName::Shadow, &SimConfig::default());
    let s = &report.stats;
    let exits = s.vm_exits;
    // Every guest CR3 load exits; every guest page fault went through a page-fault exit and
    // was injected; a PTE write into a shadowed table exits only to let a leaf table out of
    // sync or to be emulated.
    assert_eq!(exits.cr3_write, s.cr3_loads);
    assert_eq!(s.shadow.injected_faults, s.guest_page_faults);
    assert_eq!(exits.page_fault, s.shadow.injected_faults + s.shadow.hidden_faults);
    assert!(exits.pt_write <= s.shadow.unsync + s.shadow.emulated_writes, "{:?}", s.shadow);
    // With every shadowed table kept write-protected, each PTE the kernel wrote into one
    // exited.
    let config = SimConfig {
        shadow: ShadowConfig { unsync: false, ..ShadowConfig::default() },
        ..SimConfig::default()
    };
    let synced = run_trace(ModeName::Shadow, &config).stats;
    assert!(
        synced.vm_exits.pt_write >= synced.guest_page_faults,
        "each demand fault writes a PTE into a shadowed table"
    );
    assert_eq!(exits.ept_violation, 0);
    assert_eq!(exits.total, exits.cr3_write + exits.invlpg + exits.page_fault + exits.pt_write);
    assert_eq!(s.page_table_bytes.shadow, s.shadow.pages * 4096);
}

#[test]
fn shadow_faults_follow_present_links_without_the_hash() {
    // A scan of 2,048 pages faults each one in under four levels of tables; the upper shadow
    // entries are linked once, so (as in KVM's fault path) later faults follow them and look
    // nothing up. A lookup per level per fault would make at least three per hidden fault.
    let mut workload = scenario("seq-scan", &[("size", "8M"), ("passes", "1")], PageSize::Size4K);
    let report = run(ModeName::Shadow, &SimConfig::default(), workload.as_mut()).expect("run");
    let shadow = &report.stats.shadow;
    let lookups = shadow.hash_hits + shadow.hash_misses;
    assert!(shadow.hidden_faults >= 2048, "{shadow:?}");
    assert!(
        lookups < shadow.hidden_faults / 10,
        "{lookups} hash lookups for {} hidden faults",
        shadow.hidden_faults
    );
    assert_eq!(shadow.hash_misses, shadow.created);
}

#[test]
fn an_exact_tlb_gives_the_same_misses_in_every_mode_without_flushes() {
    let config = SimConfig {
        tlb: TlbConfig::Single { entries: 64, ways: 4, split_large: false },
        ..SimConfig::default()
    };
    let misses: Vec<u64> = ALL.iter().map(|&mode| run_trace(mode, &config).stats.tlb_misses).collect();
    assert!(misses.iter().all(|&m| m == misses[0]), "{misses:?}");
}

/// A set-associative TLB with true LRU replacement over 4 KiB page numbers, written from the
/// definition alone: `sets` sets of `ways` pages, set = page number mod sets, a hit makes its
/// page most recent, a miss brings its page in and evicts the least recently used.
struct LruModel {
    sets: Vec<Vec<u64>>,
    ways: usize,
    hits: u64,
    misses: u64,
}

impl LruModel {
    fn new(entries: usize, ways: usize) -> Self {
        Self { sets: vec![Vec::new(); entries / ways], ways, hits: 0, misses: 0 }
    }

    fn touch(&mut self, page: u64) {
        self.touch_keyed(page, page);
    }

    /// Touches the entry `key`, which lives in set `number mod sets`.
    fn touch_keyed(&mut self, number: u64, page: u64) {
        let count = self.sets.len() as u64;
        let set = &mut self.sets[usize::try_from(number % count).expect("small")];
        if let Some(at) = set.iter().position(|&p| p == page) {
            set.remove(at);
            self.hits += 1;
        } else {
            if set.len() == self.ways {
                set.pop();
            }
            self.misses += 1;
        }
        set.insert(0, page);
    }
}

#[test]
fn a_single_level_tlb_hits_and_misses_exactly_as_an_lru_model_does() {
    // One process, no flushes: every translation is a lookup of its 4 KiB page (a write to a
    // clean page, refused and refilled, leaves the page most recent, as a hit would).
    for (entries, ways) in [(64, 4), (16, 16), (60, 4)] {
        let mut model = LruModel::new(entries, ways);
        let mut workload = trace();
        while let Some(op) = workload.next_op().expect("reads") {
            if let memvirt::workload::Op::Access { va, size, .. } = op {
                let first = va.as_u64() >> 12;
                let last = (va.as_u64() + u64::from(size.max(1)) - 1) >> 12;
                (first..=last).for_each(|page| model.touch(page));
            }
        }
        let config = SimConfig {
            tlb: TlbConfig::Single { entries, ways, split_large: false },
            ..SimConfig::default()
        };
        for mode in ALL {
            let tlb = run_trace(mode, &config).stats.tlb;
            assert_eq!(
                (tlb.l1_hits, tlb.misses),
                (model.hits, model.misses),
                "{mode}, {entries} entries {ways}-way: (hits, misses) against the LRU model"
            );
        }
    }
}

/// Hits and misses of a single LRU level of `entries` entries, `ways`-way, holding each page
/// as one entry of its own size, over a workload of one process with no flushes. Which pages
/// are 2 MiB follows the guest kernel's rule (docs/guest-kernel.md): a 2 MiB block of a region
/// that asks for 2 MiB pages and contains the whole block; every other page is 4 KiB. Counts
/// restart where the workload starts measuring.
fn sized_lru_model(workload: &mut dyn Workload, entries: usize, ways: usize) -> (u64, u64) {
    use memvirt::workload::Op;
    // A page as (size shift, page number): the model's key and set number (mod sets).
    let mut model = LruModel::new(entries, ways);
    let mut regions = Vec::new();
    let key = |shift: u32, page: u64| (page << 2) | u64::from(shift == 21);
    while let Some(op) = workload.next_op().expect("reads") {
        match op {
            Op::Map { region, .. } => regions.push(region),
            Op::StartMeasuring => (model.hits, model.misses) = (0, 0),
            Op::Access { va, size, .. } => {
                let (first, last) = (va.as_u64(), va.as_u64() + u64::from(size.max(1)) - 1);
                let mut at = first;
                while at <= last {
                    let block = at & !((2 << 20) - 1);
                    let large = regions.iter().any(|r: &memvirt::guest::Region| {
                        r.page_size == PageSize::Size2M
                            && r.start.as_u64() <= block
                            && block + (2 << 20) <= r.start.as_u64() + r.len
                    });
                    let shift = if large { 21 } else { 12 };
                    model.touch_keyed(at >> shift, key(shift, at >> shift));
                    at = (at >> shift << shift) + (1 << shift);
                }
            }
            Op::Spawn { .. } => {}
            other => panic!("the model knows no {other:?}"),
        }
    }
    (model.hits, model.misses)
}

/// A scenario, its parameters and its page size.
type Case = (&'static str, &'static [(&'static str, &'static str)], PageSize);

#[test]
fn a_single_level_tlb_holds_each_large_page_as_one_entry_as_an_lru_model_does() {
    // 2 MiB pages only, 4 KiB pages only, and both in one process (99 MiB of 2 MiB pages ends
    // in a 1 MiB piece of 4 KiB pages): the single level agrees
    // with the model exactly in every mode (nothing here flushes a TLB).
    let cases: [Case; 3] = [
        ("gups", &[("size", "64M"), ("updates", "30000")], PageSize::Size2M),
        ("uniform-random", &[("size", "24M"), ("accesses", "30000")], PageSize::Size4K),
        ("pointer-chase", &[("size", "99M"), ("accesses", "30000")], PageSize::Size2M),
    ];
    for (name, params, page_size) in cases {
        for (entries, ways) in [(16, 4), (64, 8), (32, 32)] {
            let (hits, misses) = sized_lru_model(scenario(name, params, page_size).as_mut(), entries, ways);
            // Host pages as large as the guest's, so a nested translation is as large as the
            // guest's page (over 4 KiB host pages the TLB could only hold 4 KiB pieces).
            let config = SimConfig {
                tlb: TlbConfig::Single { entries, ways, split_large: false },
                host_page_size: PageSize::Size2M,
                ..SimConfig::default()
            };
            for mode in [ModeName::Native, ModeName::Ept, ModeName::Npt] {
                let report = run(mode, &config, scenario(name, params, page_size).as_mut()).expect("runs");
                let tlb = report.stats.tlb;
                assert_eq!((tlb.l1_hits, tlb.misses), (hits, misses), "{name} {entries}x{ways} {mode}");
            }
        }
    }
    // With the large pages split, 2 MiB pages miss as 4 KiB ones do.
    let split = SimConfig {
        tlb: TlbConfig::Single { entries: 64, ways: 8, split_large: true },
        ..SimConfig::default()
    };
    let whole = SimConfig {
        tlb: TlbConfig::Single { entries: 64, ways: 8, split_large: false },
        ..SimConfig::default()
    };
    let gups = || scenario("gups", &[("size", "64M"), ("updates", "30000")], PageSize::Size2M);
    let split_misses = run(ModeName::Native, &split, gups().as_mut()).expect("runs").stats.tlb_misses;
    let whole_misses = run(ModeName::Native, &whole, gups().as_mut()).expect("runs").stats.tlb_misses;
    assert!(whole_misses * 10 < split_misses, "{whole_misses} vs {split_misses}");
}
