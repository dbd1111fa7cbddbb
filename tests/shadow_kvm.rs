//! Shadow paging as KVM does it, through whole runs: any shadow-page budget a walk can work in
//! keeps every access right in every scenario (KVM's make_mmu_pages_available), and a guest
//! with CR0.WP clear is emulated as mmu.rst describes. The rules one by one are tested in
//! `src/vmm/shadow/tests.rs`.

use std::process::Command;
use std::sync::atomic::AtomicU64;

use memvirt::addr::{PageSize, PagingLevels};
use memvirt::sim::compare::compare;
use memvirt::sim::{ModeName, RunReport, SimConfig};
use memvirt::vmm::ShadowConfig;
use memvirt::workload::scenario::{self, Params, ScenarioContext};
use memvirt::workload::Workload;
use proptest::prelude::*;

fn build(name: &str, params: &[(&str, &str)], page_size: PageSize) -> Box<dyn Workload> {
    let params: Params = params.iter().map(|(k, v)| ((*k).to_string(), (*v).to_string())).collect();
    scenario::build(name, &params, &ScenarioContext { seed: 3, page_size }).expect("scenario")
}

/// `modes` on scenario `name`, every access verified; the reports.
fn verified(
    modes: &[ModeName],
    name: &str,
    params: &[(&str, &str)],
    config: &SimConfig,
    page_size: PageSize,
) -> Vec<RunReport> {
    let mut config = config.clone();
    config.verify = true;
    let factory = || Ok(build(name, params, page_size));
    let progress: Vec<AtomicU64> = modes.iter().map(|_| AtomicU64::new(0)).collect();
    let comparison = compare(modes, &config, &factory, &progress).expect("runs");
    assert!(comparison.mismatch.is_none(), "{name}: modes disagree: {:?}", comparison.mismatch);
    for report in &comparison.reports {
        assert_eq!(
            report.verified,
            Some(true),
            "{name} {}: {:?}",
            report.mode,
            report.verification.first_mismatch
        );
    }
    comparison.reports
}

fn budget(pages: usize, unsync: bool) -> SimConfig {
    SimConfig { shadow: ShadowConfig { max_pages: Some(pages), unsync }, ..SimConfig::default() }
}

const NATIVE_SHADOW: [ModeName; 2] = [ModeName::Native, ModeName::Shadow];

/// Small versions of every scenario.
const SCENARIOS: [(&str, &[(&str, &str)]); 10] = [
    ("fork-storm", &[("forks", "15"), ("work", "200")]),
    ("mmap-churn", &[("ops", "150")]),
    ("multi-process", &[("processes", "4"), ("size", "4M"), ("accesses", "20000"), ("quantum", "500")]),
    ("gups", &[("size", "32M"), ("updates", "10000")]),
    ("mixed", &[("forks", "8"), ("size", "16M"), ("updates", "10000")]),
    ("seq-scan", &[("size", "4M")]),
    ("uniform-random", &[("size", "32M"), ("accesses", "10000")]),
    ("pointer-chase", &[("size", "8M"), ("accesses", "10000")]),
    ("hostile", &[]),
    ("copy-to-user", &[("pages", "16"), ("rounds", "20")]),
];

#[test]
fn the_budgets_that_let_a_guest_reach_its_shadow_tables_are_verified_now() {
    // The commands that failed verification (or gave wrong counters) when recycling ran
    // inside the fault path and could zap the table being linked into.
    let fork_storm =
        verified(&NATIVE_SHADOW, "fork-storm", &[("forks", "60")], &budget(8, true), PageSize::Size4K);
    verified(
        &NATIVE_SHADOW,
        "mixed",
        &[("forks", "20"), ("updates", "60000")],
        &budget(64, true),
        PageSize::Size4K,
    );
    verified(&NATIVE_SHADOW, "mmap-churn", &[("ops", "100")], &budget(8, true), PageSize::Size4K);
    let gups = verified(
        &NATIVE_SHADOW,
        "gups",
        &[("size", "64M"), ("updates", "50000")],
        &budget(16, true),
        PageSize::Size4K,
    );
    for reports in [&fork_storm, &gups] {
        let shadow = &reports[1].stats.shadow;
        assert!(shadow.recycled > 0 && shadow.peak_pages <= shadow.max_pages, "{shadow:?}");
        assert_eq!(reports[0].stats.guest_page_faults, reports[1].stats.guest_page_faults);
        // The pages held at the end, even where the workload restarted the counters (gups
        // measures after its initialisation).
        assert!(shadow.pages > 0 && shadow.pages <= shadow.max_pages);
        assert_eq!(reports[1].stats.page_table_bytes.shadow, shadow.pages * 4096);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(160))]
    /// Any budget from the least a walk needs up, any scenario, unsync on or off, 4 KiB or
    /// 2 MiB guest pages, 4 or 5 levels: shadow paging agrees with native on every access
    /// and never holds more pages than the budget.
    #[test]
    fn any_budget_is_correct_in_every_scenario(
        scenario in 0..SCENARIOS.len(),
        extra in 0usize..61,
        unsync in any::<bool>(),
        large in any::<bool>(),
        five_levels in any::<bool>(),
    ) {
        let (name, params) = SCENARIOS[scenario];
        let levels = if five_levels { PagingLevels::Five } else { PagingLevels::Four };
        let pages = usize::from(levels.count()) + extra;
        let mut config = budget(pages, unsync);
        config.cpu.levels = levels;
        let page_size = if large { PageSize::Size2M } else { PageSize::Size4K };
        let reports = verified(&NATIVE_SHADOW, name, params, &config, page_size);
        let shadow = &reports[1].stats.shadow;
        prop_assert!(shadow.peak_pages <= pages as u64, "{name}: {shadow:?}");
        prop_assert_eq!(reports[0].stats.guest_page_faults, reports[1].stats.guest_page_faults);
    }
}

#[test]
fn a_cr0_wp_off_guest_is_emulated_under_shadow_paging_and_free_elsewhere() {
    // mmu.rst, "Emulating cr0.wp": each kernel write to the child's read-only (copy-on-write)
    // page maps it kernel-writable, each user read maps it back: one hidden fault each.
    let (pages, rounds) = (16u64, 20u64);
    let params = [("pages", "16"), ("rounds", "20")];
    let all = [ModeName::Native, ModeName::Shadow, ModeName::Ept, ModeName::Npt];
    let mut config = SimConfig::default();
    config.cpu.wp = false;
    let reports = verified(&all, "copy-to-user", &params, &config, PageSize::Size4K);
    let shadow = &reports[1].stats;
    assert_eq!(shadow.shadow.wp_emulations, pages * rounds);
    assert_eq!(shadow.shadow.hidden_faults, 2 * pages * rounds);
    for report in [&reports[0], &reports[2], &reports[3]] {
        assert_eq!(report.stats.guest_page_faults, 0, "{}: the kernel writes in place", report.mode);
        assert_eq!(report.stats.vm_exits.page_fault, 0);
    }
    // With WP set, the kernel's first write to each page breaks copy-on-write, and that is all.
    let reports = verified(&all, "copy-to-user", &params, &SimConfig::default(), PageSize::Size4K);
    for report in &reports {
        assert_eq!(report.stats.guest_page_faults, pages, "{}", report.mode);
        assert_eq!(report.stats.guest.cow_breaks, pages, "{}", report.mode);
    }
    assert_eq!(reports[1].stats.shadow.wp_emulations, 0);
}

fn memvirt(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_memvirt")).args(args).output().expect("memvirt runs")
}

#[test]
fn the_command_line_speaks_of_kvms_defaults() {
    // A budget below what a walk needs is refused with the reason.
    let out = memvirt(&["run", "--mode", "shadow", "--workload", "seq-scan", "--shadow-max-pages", "3"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--shadow-max-pages 3") && err.contains("at least 4"), "{err}");
    let out = memvirt(&[
        "run",
        "--mode",
        "shadow",
        "--workload",
        "seq-scan",
        "--guest-levels",
        "5",
        "--shadow-max-pages",
        "4",
    ]);
    assert_eq!(out.status.code(), Some(1), "a 5-level walk needs 5");
    // The old flag still works, and says it is the default now.
    let out = memvirt(&[
        "run",
        "--mode",
        "shadow",
        "--workload",
        "seq-scan",
        "--param",
        "size=1M",
        "--shadow-unsync",
    ]);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("default"));
    // JSON reports what the shadow MMU did.
    let out = memvirt(&[
        "run",
        "--mode",
        "shadow",
        "--workload",
        "copy-to-user",
        "--param",
        "rounds=3",
        "--guest-cr0-wp",
        "off",
        "--json",
    ]);
    assert!(out.status.success());
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    for key in [
        "prefetched",
        "unsync",
        "resynced",
        "zapped",
        "recycled",
        "flooded",
        "remote_flushes",
        "wp_emulations",
    ] {
        assert!(json["shadow"][key].is_u64(), "shadow.{key} missing");
    }
    assert_eq!(json["shadow"]["wp_emulations"], 64 * 3);
    assert_eq!(json["config"]["cpu"]["wp"], false);
    let out = memvirt(&["run", "--mode", "shadow", "--workload", "seq-scan", "--guest-cr0-wp", "maybe"]);
    assert_eq!(out.status.code(), Some(2));
}
