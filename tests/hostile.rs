//! A hostile guest — reserved bits everywhere, tables that loop or alias, tables and pages
//! outside guest memory, garbage CR3, floods of rewrites — gets the architecturally correct
//! result in every mode, and never reaches a host frame outside its memory slots: every
//! translated access's HPA is checked against GVA -> GPA -> HVA -> HPA.

use std::process::Command;
use std::sync::atomic::AtomicU64;

use memvirt::sim::compare::compare;
use memvirt::sim::{ModeName, SimConfig};
use memvirt::workload::scenario::{self, Params, ScenarioContext};

#[test]
fn hostile_guests_are_handled_the_same_way_in_every_mode() {
    let modes = [ModeName::Native, ModeName::Shadow, ModeName::Ept, ModeName::Npt];
    for unsync in [false, true] {
        let mut config = SimConfig { verify: true, ..SimConfig::default() };
        config.shadow.unsync = unsync;
        let context = ScenarioContext { seed: 1, page_size: memvirt::addr::PageSize::Size4K };
        let factory = || scenario::build("hostile", &Params::new(), &context);
        let progress: Vec<AtomicU64> = modes.iter().map(|_| AtomicU64::new(0)).collect();
        let comparison = compare(&modes, &config, &factory, &progress).expect("runs");
        assert!(comparison.mismatch.is_none(), "{:?}", comparison.mismatch);
        for report in &comparison.reports {
            assert_eq!(
                report.verified,
                Some(true),
                "{}: {:?}",
                report.mode,
                report.verification.first_mismatch
            );
            assert!(report.verification.checked > 0);
        }
        let native = &comparison.reports[0].stats;
        assert!(native.guest_page_faults > 20, "most cases fault: {}", native.guest_page_faults);
        for report in &comparison.reports[1..] {
            assert_eq!(report.stats.guest_page_faults, native.guest_page_faults, "{}", report.mode);
        }
        // Accesses to pages outside every memory slot are MMIO exits under nested paging.
        for report in &comparison.reports[2..] {
            assert!(report.stats.vm_exits.mmio > 0, "{}", report.mode);
        }
    }
}

#[test]
fn check_isolation_from_the_command_line() {
    let out = Command::new(env!("CARGO_BIN_EXE_memvirt"))
        .args(["run", "--mode", "shadow", "--workload", "hostile", "--check-isolation", "--json"])
        .output()
        .expect("runs");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(json["verified"], true);
}

#[test]
fn two_vms_on_one_host_stay_apart() {
    let modes = [ModeName::Native, ModeName::Shadow, ModeName::Ept, ModeName::Npt];
    for workload in ["hostile", "fork-storm"] {
        let config = SimConfig { verify: true, vms: 2, ..SimConfig::default() };
        let context = ScenarioContext { seed: 3, page_size: memvirt::addr::PageSize::Size4K };
        let mut params = Params::new();
        if workload == "fork-storm" {
            params.insert("forks".into(), "10".into());
        }
        let factory = || scenario::build(workload, &params, &context);
        let progress: Vec<AtomicU64> = modes.iter().map(|_| AtomicU64::new(0)).collect();
        let comparison = compare(&modes, &config, &factory, &progress).expect("runs");
        assert!(comparison.mismatch.is_none(), "{workload}: {:?}", comparison.mismatch);
        for report in &comparison.reports {
            assert_eq!(
                report.verified,
                Some(true),
                "{workload} {}: {:?}",
                report.mode,
                report.verification.first_mismatch
            );
        }
        // Two guests ran: twice the single guest's faults.
        let single = SimConfig { verify: true, ..SimConfig::default() };
        let one = compare(&modes[..1], &single, &factory, &progress[..1]).expect("runs");
        assert_eq!(comparison.reports[0].stats.guest_page_faults, 2 * one.reports[0].stats.guest_page_faults);
    }
}
