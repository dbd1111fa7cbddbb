//! The main job: one workload through several modes, side by side, with every access checked.
//!
//! Each mode runs on its own thread with its own copy of the workload (rebuilt from the same
//! description, so every mode sees the same operations). Within each mode the verifier checks
//! every translated access against the reference composition; across modes the digests of
//! what the guest saw (GPAs and faults) must agree. When they do not, the first differing
//! chunk is run again in both modes with recording on, to name the first differing access.

use std::sync::atomic::AtomicU64;

use serde::Serialize;

use crate::sim::run::{run_vms, ModeName, RunReport, SimConfig, SimError};
use crate::sim::stop_together::StopTogether;
use crate::sim::verify::{Observed, CHUNK};
use crate::workload::{Workload, WorkloadError};

/// Builds a fresh copy of the workload.
pub type WorkloadFactory<'a> = dyn Fn() -> Result<Box<dyn Workload>, WorkloadError> + Sync + 'a;

/// Two modes that disagreed about what the guest saw.
#[derive(Clone, Debug, Serialize)]
pub struct CrossMismatch {
    /// The mode taken as reference (the first one listed).
    pub reference: ModeName,
    /// Its answer.
    pub expected: Option<Observed>,
    /// The mode that disagreed.
    pub mode: ModeName,
    /// Its answer.
    pub found: Option<Observed>,
}

/// The result of a comparison.
#[derive(Clone, Debug, Serialize)]
pub struct Comparison {
    /// One report per mode, in the order asked.
    pub reports: Vec<RunReport>,
    /// Whether verification ran.
    pub verify: bool,
    /// Whether every check passed.
    pub verified: bool,
    /// The first cross-mode disagreement, if any.
    pub mismatch: Option<CrossMismatch>,
    /// Interrupted: every mode stopped after the same number of accesses, and the counters
    /// and the verification cover those.
    pub interrupted: bool,
}

/// Runs the workload in every mode of `modes`, in parallel; `progress[i]` counts mode `i`'s
/// accesses as it goes.
pub fn compare(
    modes: &[ModeName],
    config: &SimConfig,
    factory: &WorkloadFactory<'_>,
    progress: &[AtomicU64],
) -> Result<Comparison, SimError> {
    let fallback = AtomicU64::new(0);
    // Interrupted, every mode stops at the same access count, so the counters and the
    // verification cover the same work.
    let mut config = config.clone();
    if config.stop.is_some() {
        config.stop_together = Some(std::sync::Arc::new(StopTogether::new(modes.len())));
    }
    let config = &config;
    let results: Vec<Result<RunReport, SimError>> = std::thread::scope(|scope| {
        let handles: Vec<_> = modes
            .iter()
            .enumerate()
            .map(|(i, &mode)| {
                let counter = progress.get(i).unwrap_or(&fallback);
                scope.spawn(move || run_copies(mode, config, factory, counter))
            })
            .collect();
        handles
            .into_iter()
            .map(|handle| {
                handle.join().unwrap_or_else(|_| {
                    Err(SimError::Internal("a mode's thread panicked; please report this as a bug".into()))
                })
            })
            .collect()
    });
    let reports = results.into_iter().collect::<Result<Vec<_>, _>>()?;
    let mut verified = reports.iter().all(|r| r.verified != Some(false));
    let mut mismatch = None;
    if config.verify && reports.len() > 1 {
        let reference = &reports[0];
        for other in &reports[1..] {
            let (a, b) = (&reference.verification.digests, &other.verification.digests);
            let differs = a.len() != b.len() || a.iter().zip(b).any(|(x, y)| x != y);
            if differs {
                verified = false;
                let chunk = a.iter().zip(b).position(|(x, y)| x != y).unwrap_or(a.len().min(b.len())) as u64;
                mismatch = Some(locate(reference.mode, other.mode, chunk, config, factory)?);
                break;
            }
        }
    }
    let interrupted = reports.iter().any(|r| r.stats.interrupted);
    Ok(Comparison { reports, verify: config.verify, verified, mismatch, interrupted })
}

/// Runs `mode` with one fresh copy of the workload per VM.
fn run_copies(
    mode: ModeName,
    config: &SimConfig,
    factory: &WorkloadFactory<'_>,
    progress: &AtomicU64,
) -> Result<RunReport, SimError> {
    let mut copies = (0..config.vms.max(1)).map(|_| factory()).collect::<Result<Vec<_>, _>>()?;
    let mut workloads: Vec<&mut dyn Workload> =
        copies.iter_mut().map(|w| w.as_mut() as &mut dyn Workload).collect();
    run_vms(mode, config, &mut workloads, progress)
}

/// Runs chunk `chunk` again in both modes with recording on and finds the first translation
/// where they differ.
fn locate(
    reference: ModeName,
    mode: ModeName,
    chunk: u64,
    config: &SimConfig,
    factory: &WorkloadFactory<'_>,
) -> Result<CrossMismatch, SimError> {
    let mut recording = config.clone();
    // The chunk is recorded even after an interrupt (a second one still ends the process).
    recording.stop = None;
    recording.stop_together = None;
    recording.record = Some(chunk * CHUNK..(chunk + 1) * CHUNK);
    let record = |m: ModeName| -> Result<Vec<Observed>, SimError> {
        let report = run_copies(m, &recording, factory, &AtomicU64::new(0))?;
        Ok(report.verification.recorded)
    };
    let (a, b) = (record(reference)?, record(mode)?);
    let same = |x: &Observed, y: &Observed| x.pid == y.pid && x.gva == y.gva && x.seen == y.seen;
    let at = a.iter().zip(&b).position(|(x, y)| !same(x, y)).unwrap_or(a.len().min(b.len()));
    Ok(CrossMismatch { reference, expected: a.get(at).copied(), mode, found: b.get(at).copied() })
}
