//! The guest kernel's behaviour through the builtin scenarios: every mode stays correct under
//! fork, copy-on-write, exec, exit, munmap, mprotect and process switches, and the shadow
//! VMM's exits follow what the kernel does.

use std::sync::atomic::AtomicU64;

use memvirt::addr::Gva;
use memvirt::addr::PageSize;
use memvirt::paging::AccessKind;
use memvirt::sim::compare::compare;
use memvirt::sim::{run, ModeName, RunReport, SimConfig};
use memvirt::workload::scenario::{self, Params, ScenarioContext};
use memvirt::workload::{Op, Workload, WorkloadError};

const ALL: [ModeName; 4] = [ModeName::Native, ModeName::Shadow, ModeName::Ept, ModeName::Npt];

fn build(name: &str, params: &[(&str, &str)], page_size: PageSize) -> Box<dyn Workload> {
    let params: Params = params.iter().map(|(k, v)| ((*k).to_string(), (*v).to_string())).collect();
    scenario::build(name, &params, &ScenarioContext { seed: 9, page_size }).expect("scenario")
}

fn verified(name: &str, params: &[(&str, &str)], config: &SimConfig, page_size: PageSize) -> Vec<RunReport> {
    let mut config = config.clone();
    config.verify = true;
    let factory = || Ok(build(name, params, page_size));
    let progress: Vec<AtomicU64> = ALL.iter().map(|_| AtomicU64::new(0)).collect();
    let comparison = compare(&ALL, &config, &factory, &progress).expect("runs");
    assert!(comparison.mismatch.is_none(), "{name}: modes disagree: {:?}", comparison.mismatch);
    for report in &comparison.reports {
        assert_eq!(
            report.verified,
            Some(true),
            "{name} {}: {:?}",
            report.mode,
            report.verification.first_mismatch
        );
        assert_eq!(report.stats.segfaults, 0, "{name} {}", report.mode);
    }
    comparison.reports
}

#[test]
fn every_scenario_is_correct_in_every_mode() {
    let cases: [(&str, &[(&str, &str)]); 6] = [
        ("fork-storm", &[("forks", "20"), ("work", "300")]),
        ("mmap-churn", &[("ops", "300"), ("live", "8"), ("max-pages", "600")]),
        ("multi-process", &[("processes", "4"), ("size", "8M"), ("accesses", "40000"), ("quantum", "500")]),
        ("gups", &[("size", "32M"), ("updates", "20000")]),
        ("mixed", &[("forks", "10"), ("size", "16M"), ("updates", "20000")]),
        ("seq-scan", &[("size", "4M")]),
    ];
    for (name, params) in cases {
        for page_size in [PageSize::Size4K, PageSize::Size2M] {
            verified(name, params, &SimConfig::default(), page_size);
            // Every shadowed guest table kept write-protected (unsync off).
            let synced = SimConfig {
                shadow: memvirt::vmm::ShadowConfig { unsync: false, ..Default::default() },
                ..SimConfig::default()
            };
            verified(name, params, &synced, page_size);
            // Host pages as large as the guest's: shadow paging may use large shadow entries.
            let large_host = SimConfig { host_page_size: PageSize::Size2M, ..SimConfig::default() };
            verified(name, params, &large_host, page_size);
        }
    }
}

fn shadow_and_ept(name: &str, params: &[(&str, &str)]) -> (RunReport, RunReport) {
    let config = SimConfig::default();
    let shadow =
        run(ModeName::Shadow, &config, build(name, params, PageSize::Size4K).as_mut()).expect("runs");
    let ept = run(ModeName::Ept, &config, build(name, params, PageSize::Size4K).as_mut()).expect("runs");
    (shadow, ept)
}

#[test]
fn shadow_exits_rise_with_forks_switches_and_unmaps_while_nested_exits_do_not() {
    let (few, few_ept) = shadow_and_ept("fork-storm", &[("forks", "5"), ("work", "100")]);
    let (many, many_ept) = shadow_and_ept("fork-storm", &[("forks", "40"), ("work", "100")]);
    for reason in ["pt_write", "cr3_write", "invlpg"] {
        let get = |r: &RunReport| match reason {
            "pt_write" => r.stats.vm_exits.pt_write,
            "cr3_write" => r.stats.vm_exits.cr3_write,
            _ => r.stats.vm_exits.invlpg,
        };
        assert!(get(&many) > 4 * get(&few), "{reason}: {} forks 40 vs {} forks 5", get(&many), get(&few));
    }
    // Under nested paging the only exits are first touches of guest frames, which a kernel
    // reusing freed frames keeps low; the guest's own table work causes none.
    for ept in [&few_ept, &many_ept] {
        let exits = ept.stats.vm_exits;
        assert_eq!(exits.total, exits.ept_violation);
        assert!(exits.total * 10 < many.stats.vm_exits.total);
    }
    assert_eq!(many.stats.guest.forks, 40);
    assert_eq!(many.stats.guest.cow_breaks, many_ept.stats.guest.cow_breaks);
    assert!(many.stats.context_switches >= 80, "{}", many.stats.context_switches);

    let (churn, _) = shadow_and_ept("mmap-churn", &[("ops", "200"), ("live", "4"), ("max-pages", "8")]);
    assert!(churn.stats.guest.munmaps > 0);
    assert!(churn.stats.vm_exits.invlpg > 0, "munmap flushes single pages with INVLPG");
}

#[test]
fn gups_measures_only_the_update_phase_and_warmup_leaves_accesses_out() {
    let report = run(
        ModeName::Native,
        &SimConfig::default(),
        build("gups", &[("size", "16M"), ("updates", "5000")], PageSize::Size4K).as_mut(),
    )
    .expect("runs");
    assert_eq!(report.stats.accesses, 5000);
    assert_eq!(report.stats.guest_page_faults, 0, "the table was initialised before measuring");

    let config = SimConfig { warmup: 1000, ..SimConfig::default() };
    let report = run(
        ModeName::Native,
        &config,
        build("seq-scan", &[("size", "1M"), ("stride", "4096"), ("passes", "4")], PageSize::Size4K).as_mut(),
    )
    .expect("runs");
    assert_eq!(report.stats.accesses, 1024 - 1000);
    assert_eq!(report.stats.guest_page_faults, 0);
}

/// A fixed list of operations.
struct Script(std::vec::IntoIter<Op>);

impl Workload for Script {
    fn next_op(&mut self) -> Result<Option<Op>, WorkloadError> {
        Ok(self.0.next())
    }
}

#[test]
fn warmup_restarts_the_counters_right_before_the_first_measured_access() {
    // Three accesses, a fork, two accesses by the child. A warm-up of three accesses ends
    // right before the fourth access, after the fork: the fork is part of the warm-up.
    let touch = |pid, page: u64| Op::Access {
        pid,
        va: Gva::new_truncate(0x40_0000 + page * 4096),
        kind: AccessKind::Write,
        size: 8,
    };
    let script = || {
        vec![
            Op::Spawn { pid: 1, anywhere: true },
            touch(1, 0),
            touch(1, 1),
            touch(1, 2),
            Op::Fork { parent: 1, child: 2 },
            touch(2, 0),
            touch(2, 3),
        ]
    };
    for mode in ALL {
        let cold = run(mode, &SimConfig::default(), &mut Script(script().into_iter())).expect("runs");
        assert_eq!((cold.stats.accesses, cold.stats.guest.forks), (5, 1), "{mode}: no warm-up");
        let config = SimConfig { warmup: 3, ..SimConfig::default() };
        let warm = run(mode, &config, &mut Script(script().into_iter())).expect("runs");
        assert_eq!((warm.stats.accesses, warm.stats.guest.forks), (2, 0), "{mode}: warm-up of 3");
        // The child's first write breaks copy-on-write: a measured fault.
        assert!(warm.stats.guest_page_faults >= 1, "{mode}");
    }
}

#[test]
fn large_pages_split_on_partial_unmap_and_protect() {
    // 600-page mappings in 2 MiB-aligned slots, some protected or unmapped in part of a
    // large page by the churn; results must stay right (checked above) and splits happen.
    let reports = verified(
        "mmap-churn",
        &[("ops", "200"), ("live", "4"), ("max-pages", "1024")],
        &SimConfig::default(),
        PageSize::Size2M,
    );
    assert!(reports[0].stats.guest.large_splits > 0, "{:?}", reports[0].stats.guest);
}

#[test]
fn the_crossover_table_updates_favour_nested_tlb_misses_favour_shadow() {
    // Table-update heavy: shadow pays VM exits for every page-table write, CR3 load and INVLPG.
    let (shadow, ept) = shadow_and_ept("fork-storm", &[("forks", "30"), ("work", "500")]);
    assert!(shadow.cycles > ept.cycles, "fork-storm: shadow {} vs ept {}", shadow.cycles, ept.cycles);
    // TLB-miss heavy with stable tables: each nested miss walks two dimensions.
    let (shadow, ept) = shadow_and_ept("gups", &[("size", "256M"), ("updates", "100000")]);
    assert!(ept.cycles > shadow.cycles, "gups: ept {} vs shadow {}", ept.cycles, shadow.cycles);
    let per_walk = |r: &RunReport| r.stats.refs_per_walk();
    assert!(per_walk(&ept) > 2.0 * per_walk(&shadow));
}

#[test]
fn prefetching_walks_changes_nothing_a_run_reports() {
    // Workloads whose walks come in long runs (so prefetching happens), with several
    // processes, forks, unmapping and large pages among them, and walks over tables already
    // filled (no faults: what nested paging's second prefetch stage and shadow paging's
    // prefetch without the guest's tables serve).
    type Case<'a> = (&'a str, &'a [(&'a str, &'a str)], PageSize);
    let cases: [Case; 6] = [
        ("uniform-random", &[("size", "1G"), ("accesses", "30000")], PageSize::Size4K),
        ("pointer-chase", &[("size", "256M"), ("accesses", "30000"), ("populate", "yes")], PageSize::Size4K),
        ("fork-storm", &[("forks", "20"), ("work", "300")], PageSize::Size4K),
        ("mmap-churn", &[("ops", "300"), ("live", "8"), ("max-pages", "600")], PageSize::Size4K),
        (
            "multi-process",
            &[("processes", "4"), ("size", "64M"), ("accesses", "40000"), ("quantum", "7")],
            PageSize::Size4K,
        ),
        ("mixed", &[("forks", "10"), ("size", "64M"), ("updates", "20000")], PageSize::Size2M),
    ];
    for (name, params, page_size) in cases {
        for mode in ALL {
            for verify in [false, true] {
                let report = |prefetch: usize| {
                    let config = SimConfig { prefetch, verify, ..SimConfig::default() };
                    run(mode, &config, build(name, params, page_size).as_mut()).expect("run")
                };
                let (without, with) = (report(0), report(SimConfig::default().prefetch));
                assert!(without.stats.walks > 1000, "{name} {mode:?}: too few walks to prefetch any");
                assert_eq!(without.stats, with.stats, "{name} {mode:?} verify {verify}");
                assert_eq!(without.verified, with.verified, "{name} {mode:?}");
                // The most a prefetch covers, and beyond.
                assert_eq!(report(1000).stats, with.stats, "{name} {mode:?} verify {verify}");
            }
        }
    }
}

#[test]
fn large_pages_are_mapped_from_the_first_fault_of_a_fresh_range() {
    // Linux's THP fault path (do_huge_pmd_anonymous_page) allocates the missing upper tables
    // and maps a huge page; it does not need a page directory to exist already. 8 MiB of
    // 2 MiB pages is four faults, four large mappings.
    let reports =
        verified("seq-scan", &[("size", "8M"), ("passes", "1")], &SimConfig::default(), PageSize::Size2M);
    for report in &reports {
        assert_eq!(report.stats.guest_page_faults, 4, "{}", report.mode);
        assert_eq!(report.stats.pages_mapped, 4 * 512, "{}", report.mode);
    }
}
