//! Measuring how fast memvirt simulates: accesses per second per mode, each beside a floor
//! loop that does only the irreducible work on the same accesses (read each access from the
//! workload, one hash lookup of its page), measured in the same run so the ratio is
//! meaningful on a noisy machine. Wall-clock time is used here and only here: it is what a
//! benchmark measures, and nothing it produces feeds back into a simulation.
//!
//! A workload's set-up (everything before its `StartMeasuring` mark, such as writing every
//! page of a buffer) is left out of every figure, as the run leaves it out of its counters.

use std::time::Instant;

use rustc_hash::FxHashMap;
use serde::Serialize;

use crate::sim::compare::WorkloadFactory;
use crate::sim::run::{run, ModeName, SimConfig, SimError};
use crate::workload::feed::Feed;
use crate::workload::{Op, Workload, WorkloadError};

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

/// A workload timed from the end of its set-up: a batch holding the `StartMeasuring` mark
/// ends with it, and the clock starts again when the next batch is asked for, by which time
/// whoever reads the workload has done everything before the mark. Without a mark, the clock
/// runs from when the workload was wrapped.
pub struct Clocked<W> {
    workload: W,
    /// Operations read after the mark, handed out with the next batch.
    held: Vec<Op>,
    at_mark: bool,
    start: Instant,
}

impl<W: Workload> Clocked<W> {
    /// Wraps `workload`, starting the clock.
    pub fn new(workload: W) -> Self {
        Self { workload, held: Vec::new(), at_mark: false, start: Instant::now() }
    }

    /// Seconds since the clock last started.
    pub fn seconds(&self) -> f64 {
        self.start.elapsed().as_secs_f64()
    }

    fn restart_after_mark(&mut self) {
        if std::mem::take(&mut self.at_mark) {
            self.start = Instant::now();
        }
    }
}

impl<W: Workload> Workload for Clocked<W> {
    fn next_op(&mut self) -> Result<Option<Op>, WorkloadError> {
        self.restart_after_mark();
        let op = if self.held.is_empty() { self.workload.next_op()? } else { Some(self.held.remove(0)) };
        self.at_mark = op == Some(Op::StartMeasuring);
        Ok(op)
    }

    fn next_batch(&mut self, out: &mut Vec<Op>) -> Result<(), WorkloadError> {
        self.restart_after_mark();
        if self.held.is_empty() {
            self.workload.next_batch(out)?;
        } else {
            out.clear();
            out.append(&mut self.held);
        }
        if let Some(mark) = out.iter().position(|op| *op == Op::StartMeasuring) {
            self.held.extend(out.drain(mark + 1..));
            self.at_mark = true;
        }
        Ok(())
    }
}

/// Reading alone: every operation of the workload after its set-up, counted and nothing
/// else. Returns (operations, seconds).
pub fn read_only(factory: &WorkloadFactory<'_>) -> Result<(u64, f64), SimError> {
    let mut workload = Clocked::new(factory()?);
    let mut operations = 0u64;
    Feed::new(&mut workload).for_each_batch(|ops| -> Result<(), SimError> {
        operations += ops.len() as u64;
        if ops.last() == Some(&Op::StartMeasuring) {
            operations = 0;
        }
        Ok(())
    })?;
    Ok((operations, workload.seconds()))
}

/// The floor: reads every operation and looks each access's page up in a hash map (the
/// set-up's accesses too, uncounted and untimed). Returns (accesses, seconds).
pub fn floor(factory: &WorkloadFactory<'_>) -> Result<(u64, f64), SimError> {
    let mut workload = Clocked::new(factory()?);
    let mut pages: FxHashMap<(u32, u64), u32> = FxHashMap::default();
    let mut accesses = 0u64;
    Feed::new(&mut workload).for_each_batch(|ops| -> Result<(), SimError> {
        for op in ops {
            match *op {
                Op::Access { pid, va, .. } => {
                    accesses += 1;
                    *pages.entry((pid, va.vpn())).or_insert(0) += 1;
                }
                Op::StartMeasuring => accesses = 0,
                _ => {}
            }
        }
        Ok(())
    })?;
    let seconds = workload.seconds();
    std::hint::black_box(&pages);
    Ok((accesses, seconds))
}

/// One run of `mode` over a workload of `factory`, timed from the end of its set-up.
/// Returns (accesses counted, seconds).
pub fn timed_run(
    mode: ModeName,
    config: &SimConfig,
    factory: &WorkloadFactory<'_>,
) -> Result<(u64, f64), SimError> {
    let mut workload = Clocked::new(factory()?);
    let report = run(mode, config, &mut workload)?;
    Ok((report.stats.accesses, workload.seconds()))
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
            let (accesses, seconds) = timed_run(modes[index], config, factory)?;
            if seconds < best[index].1 {
                best[index] = (accesses, seconds);
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::addr::PageSize;
    use crate::workload::scenario::{self, Params, ScenarioContext};

    fn populated() -> Result<Box<dyn Workload>, WorkloadError> {
        let params: Params = [("size", "64k"), ("accesses", "100"), ("populate", "yes")]
            .iter()
            .map(|(k, v)| ((*k).to_string(), (*v).to_string()))
            .collect();
        scenario::build("uniform-random", &params, &ScenarioContext { seed: 5, page_size: PageSize::Size4K })
    }

    /// Every batch a feed hands out.
    fn batches<W: Workload>(workload: W) -> Vec<Vec<Op>> {
        let mut out = Vec::new();
        Feed::new(workload)
            .for_each_batch(|ops| -> Result<(), WorkloadError> {
                out.push(ops.to_vec());
                Ok(())
            })
            .expect("reads");
        out
    }

    #[test]
    fn the_clock_leaves_the_set_up_out_and_every_operation_in() {
        let plain = batches(populated().expect("builds"));
        let clocked = batches(Clocked::new(populated().expect("builds")));
        // Same operations in the same order; the batch with the mark ends with it.
        assert_eq!(plain.concat(), clocked.concat());
        let with_mark: Vec<&Vec<Op>> = clocked.iter().filter(|b| b.contains(&Op::StartMeasuring)).collect();
        assert_eq!(with_mark.len(), 1);
        assert_eq!(with_mark[0].last(), Some(&Op::StartMeasuring));
        // 16 set-up writes, then the mark, then 100 accesses.
        let mark = plain.concat().iter().position(|op| *op == Op::StartMeasuring).expect("marked");
        assert_eq!(mark, 2 + 16);
    }

    #[test]
    fn every_measurement_counts_only_what_follows_the_set_up() {
        assert_eq!(read_only(&populated).expect("reads").0, 100);
        assert_eq!(floor(&populated).expect("floor").0, 100);
        for mode in [ModeName::Native, ModeName::Shadow, ModeName::Ept] {
            assert_eq!(timed_run(mode, &SimConfig::default(), &populated).expect("runs").0, 100);
        }
    }
}
