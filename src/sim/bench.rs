//! Measuring how fast memvirt simulates: accesses per second per mode, each beside a floor
//! loop that does only the irreducible work on the same accesses (read each access from the
//! workload, one hash lookup of its page), measured in the same run so the ratio is
//! meaningful on a noisy machine. Wall-clock time is used here and only here: it is what a
//! benchmark measures, and nothing it produces feeds back into a simulation.

use std::time::Instant;

use rustc_hash::FxHashMap;
use serde::Serialize;

use crate::sim::compare::WorkloadFactory;
use crate::sim::run::{run, ModeName, SimConfig, SimError};
use crate::workload::feed::Feed;
use crate::workload::Op;

/// One mode's throughput on one workload.
#[derive(Clone, Debug, Serialize)]
pub struct ModeSpeed {
    /// The mode.
    pub mode: ModeName,
    /// Accesses simulated.
    pub accesses: u64,
    /// Seconds taken.
    pub seconds: f64,
    /// Accesses per second.
    pub per_second: f64,
    /// Throughput relative to the floor loop.
    pub ratio_to_floor: f64,
}

/// One workload's measurements.
#[derive(Clone, Debug, Serialize)]
pub struct WorkloadSpeed {
    /// What was run.
    pub workload: String,
    /// The floor loop's accesses per second.
    pub floor_per_second: f64,
    /// Operations per second the workload is read at, with nothing done with them (for a
    /// trace: its records per second).
    pub read_per_second: f64,
    /// Each mode.
    pub modes: Vec<ModeSpeed>,
}

/// Reading alone: every operation of the workload, counted and nothing else.
/// Returns (operations, seconds).
pub fn read_only(factory: &WorkloadFactory<'_>) -> Result<(u64, f64), SimError> {
    let mut workload = factory()?;
    let mut feed = Feed::new(workload.as_mut());
    let start = Instant::now();
    let mut operations = 0u64;
    feed.for_each_batch(|ops| -> Result<(), SimError> {
        operations += ops.len() as u64;
        Ok(())
    })?;
    Ok((operations, start.elapsed().as_secs_f64()))
}

/// The floor: reads every operation and looks each access's page up in a hash map.
/// Returns (accesses, seconds).
pub fn floor(factory: &WorkloadFactory<'_>) -> Result<(u64, f64), SimError> {
    let mut workload = factory()?;
    let mut feed = Feed::new(workload.as_mut());
    let mut pages: FxHashMap<(u32, u64), u32> = FxHashMap::default();
    let start = Instant::now();
    let mut accesses = 0u64;
    feed.for_each_batch(|ops| -> Result<(), SimError> {
        for op in ops {
            if let Op::Access { pid, va, .. } = *op {
                accesses += 1;
                *pages.entry((pid, va.vpn())).or_insert(0) += 1;
            }
        }
        Ok(())
    })?;
    let seconds = start.elapsed().as_secs_f64();
    std::hint::black_box(&pages);
    Ok((accesses, seconds))
}

/// Measures every mode of `modes` on one workload, one after another on this thread, in
/// `rounds` rounds that each measure the floor first and every mode after it (starting from a
/// different mode each round); each keeps its best (shortest) time, the one least disturbed by
/// whatever else the machine was doing.
pub fn measure(
    name: &str,
    modes: &[ModeName],
    config: &SimConfig,
    factory: &WorkloadFactory<'_>,
    rounds: u32,
) -> Result<WorkloadSpeed, SimError> {
    let mut floor_best = (0, f64::INFINITY);
    let mut read_best = (0, f64::INFINITY);
    let mut best: Vec<(u64, f64)> = vec![(0, f64::INFINITY); modes.len()];
    for round in 0..rounds.max(1) as usize {
        let (operations, seconds) = read_only(factory)?;
        if seconds < read_best.1 {
            read_best = (operations, seconds);
        }
        let (accesses, seconds) = floor(factory)?;
        if seconds < floor_best.1 {
            floor_best = (accesses, seconds);
        }
        // Each round starts from another mode, so none always runs right after the floor.
        for i in 0..modes.len() {
            let index = (i + round) % modes.len();
            let (mode, best) = (modes[index], &mut best[index]);
            let mut workload = factory()?;
            let start = Instant::now();
            let report = run(mode, config, workload.as_mut())?;
            let seconds = start.elapsed().as_secs_f64();
            if seconds < best.1 {
                *best = (report.stats.accesses, seconds);
            }
        }
    }
    let per_second = |(accesses, seconds): (u64, f64)| {
        #[allow(clippy::cast_precision_loss)]
        let accesses = accesses as f64;
        accesses / seconds.max(1e-9)
    };
    let floor_per_second = per_second(floor_best);
    let modes = modes
        .iter()
        .zip(best)
        .map(|(&mode, (accesses, seconds))| {
            let per_second = per_second((accesses, seconds));
            ModeSpeed { mode, accesses, seconds, per_second, ratio_to_floor: per_second / floor_per_second }
        })
        .collect();
    Ok(WorkloadSpeed {
        workload: name.to_string(),
        floor_per_second,
        read_per_second: per_second(read_best),
        modes,
    })
}
