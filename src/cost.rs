//! Turns counts into estimated cycles. The core only counts; what a count costs lives here,
//! in documented parameters a user can override.

use serde::{Deserialize, Serialize};

use crate::sim::stats::Stats;

/// Cycles charged per event.
///
/// Defaults are round figures for a current x86-64 server core: an L1 TLB hit is folded into
/// the load's pipeline latency (1), an L2 TLB (STLB) hit costs about 7 cycles more, a walk
/// reference mostly hits the data caches (about 20 cycles on average), a guest page fault
/// costs about a microsecond of kernel work, and a VM exit round trip about 1,200 cycles.
#[derive(Clone, Copy, PartialEq, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CostModel {
    /// Every access: the base cost of a load or store.
    pub access: f64,
    /// An L1 TLB hit.
    pub tlb_l1_hit: f64,
    /// An L2 TLB hit.
    pub tlb_l2_hit: f64,
    /// One memory reference of a page walk.
    pub walk_ref: f64,
    /// One accessed/dirty write-back by a walk.
    pub ad_write: f64,
    /// A page fault handled by the guest kernel.
    pub guest_page_fault: f64,
    /// A VM exit round trip (exit, VMM dispatch, resume), before the handler's own work.
    pub vm_exit: f64,
}

/// The most one event may cost: a millisecond at 1 GHz, far above any VM exit or fault in the
/// literature. Bounding costs keeps the total below 2^64 (where it would saturate and every
/// mode would show the same cycles) for any run of fewer than 2.6 x 10^12 events of each kind.
pub const MAX_COST: f64 = 1_000_000.0;

/// The largest cost file read: a few lines are all it ever needs.
pub const MAX_FILE_BYTES: u64 = 1 << 20;

impl Default for CostModel {
    fn default() -> Self {
        Self {
            access: 1.0,
            tlb_l1_hit: 0.0,
            tlb_l2_hit: 7.0,
            walk_ref: 20.0,
            ad_write: 20.0,
            guest_page_fault: 3000.0,
            vm_exit: 1200.0,
        }
    }
}

/// A cost file that cannot be used.
#[derive(Debug)]
pub struct CostFileError {
    /// The file.
    pub path: std::path::PathBuf,
    /// What is wrong, with the position where the TOML parser gives one.
    pub message: String,
}

impl std::fmt::Display for CostFileError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.path.display(), self.message)
    }
}

impl std::error::Error for CostFileError {}

impl CostModel {
    /// Reads overrides from a TOML file of `key = number` lines; keys not given keep their
    /// defaults, unknown keys and costs outside 0 to [`MAX_COST`] are errors.
    pub fn from_file(path: &std::path::Path) -> Result<Self, CostFileError> {
        let error = |message: String| CostFileError { path: path.to_path_buf(), message };
        // Read at most a bound, so /dev/zero or a huge file cannot grow memory without end.
        let mut text = String::new();
        std::fs::File::open(path)
            .and_then(|file| {
                std::io::Read::read_to_string(&mut std::io::Read::take(file, MAX_FILE_BYTES + 1), &mut text)
            })
            .map_err(|e| error(e.to_string()))?;
        if text.len() > usize::try_from(MAX_FILE_BYTES).unwrap_or(usize::MAX) {
            return Err(error(format!("larger than {MAX_FILE_BYTES} bytes: this is not a cost file")));
        }
        Self::from_toml(&text).map_err(error)
    }

    /// Parses overrides from TOML text.
    pub fn from_toml(text: &str) -> Result<Self, String> {
        let model: CostModel =
            toml::from_str(text).map_err(|e| e.to_string().trim_end().replace('\n', " "))?;
        let values = [
            model.access,
            model.tlb_l1_hit,
            model.tlb_l2_hit,
            model.walk_ref,
            model.ad_write,
            model.guest_page_fault,
            model.vm_exit,
        ];
        if values.iter().any(|v| !(0.0..=MAX_COST).contains(v)) {
            return Err(format!("every cost must be a number of cycles from 0 to {MAX_COST}"));
        }
        Ok(model)
    }

    /// The estimated cycles of a run.
    #[allow(clippy::cast_precision_loss, clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    pub fn cycles(&self, stats: &Stats) -> u64 {
        let c = |count: u64, each: f64| count as f64 * each;
        let total = c(stats.accesses, self.access)
            + c(stats.tlb.l1_hits, self.tlb_l1_hit)
            + c(stats.tlb.l2_hits, self.tlb_l2_hit)
            + c(stats.walk_refs, self.walk_ref)
            + c(stats.ad_writes, self.ad_write)
            + c(stats.guest_page_faults, self.guest_page_fault)
            + c(stats.vm_exits.total, self.vm_exit);
        // Non-negative, and below 2^64 while every count is (see `MAX_COST`).
        total.max(0.0).round() as u64
    }
}
