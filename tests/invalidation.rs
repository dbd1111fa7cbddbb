//! The host moving guest pages, and the invalidations the VMM must make for it (SDM Vol. 3C
//! §29.4.3: INVEPT for guest-physical and combined mappings, INVVPID for linear and combined
//! ones), in every mode with every access verified.

use std::sync::atomic::AtomicU64;

use memvirt::addr::PageSize;
use memvirt::sim::compare::compare;
use memvirt::sim::{ModeName, RunReport, SimConfig};
use memvirt::workload::scenario::{self, Params, ScenarioContext};
use memvirt::workload::Workload;

const ALL: [ModeName; 4] = [ModeName::Native, ModeName::Shadow, ModeName::Ept, ModeName::Npt];

fn build() -> Box<dyn Workload> {
    let params: Params = [("forks", "10"), ("size", "32M"), ("updates", "20000")]
        .iter()
        .map(|(k, v)| ((*k).to_string(), (*v).to_string()))
        .collect();
    scenario::build("mixed", &params, &ScenarioContext { seed: 4, page_size: PageSize::Size4K })
        .expect("scenario")
}

fn verified(config: &SimConfig) -> Vec<RunReport> {
    let mut config = config.clone();
    config.verify = true;
    let factory = || Ok(build());
    let progress: Vec<AtomicU64> = ALL.iter().map(|_| AtomicU64::new(0)).collect();
    let comparison = compare(&ALL, &config, &factory, &progress).expect("runs");
    assert!(comparison.mismatch.is_none(), "{:?}", comparison.mismatch);
    for report in &comparison.reports {
        assert_eq!(report.verified, Some(true), "{}: {:?}", report.mode, report.verification.first_mismatch);
    }
    comparison.reports
}

#[test]
fn a_page_the_host_moves_is_unmapped_and_invalidated_as_the_manuals_say() {
    let still = verified(&SimConfig::default());
    let moving = verified(&SimConfig { host_migrate_every: 50, ..SimConfig::default() });
    let (native, shadow, ept, npt) = (&moving[0].stats, &moving[1].stats, &moving[2].stats, &moving[3].stats);
    // Bare metal has no host to move its pages.
    assert_eq!(native.host_migrations, 0);
    assert_eq!(native.invalidations.invept_single + native.invalidations.invvpid_single, 0);
    // The same pages move in every VM: the choice depends on the guest alone.
    assert!(ept.host_migrations > 100, "{}", ept.host_migrations);
    assert_eq!(shadow.host_migrations, ept.host_migrations);
    assert_eq!(npt.host_migrations, ept.host_migrations);
    for (nested, before) in [(ept, &still[2].stats), (npt, &still[3].stats)] {
        // One INVEPT single-context per move, and the next touch of the page exits once to
        // map its new frame.
        assert_eq!(nested.invalidations.invept_single, nested.host_migrations);
        assert_eq!(nested.invalidations.invvpid_single, 0);
        assert_eq!(nested.vm_exits.ept_violation, before.vm_exits.ept_violation + nested.host_migrations);
        assert_eq!(before.invalidations.invept_single, 0);
    }
    // Shadow paging zaps the shadow entries of the moved page and flushes with INVVPID; the
    // guest notices nothing.
    assert!(
        shadow.invalidations.invvpid_single
            >= shadow.host_migrations + still[1].stats.invalidations.invvpid_single
    );
    assert_eq!(shadow.invalidations.invvpid_single, shadow.shadow.remote_flushes);
    assert_eq!(shadow.invalidations.invept_single, 0);
    for (after, before) in moving.iter().zip(&still) {
        assert_eq!(after.stats.guest_page_faults, before.stats.guest_page_faults, "{}", after.mode);
    }
}
