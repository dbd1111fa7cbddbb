//! Arbitrary text as a cost file: a model or an error, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use memvirt::cost::CostModel;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(model) = CostModel::from_toml(text) {
            let _ = model.cycles(&memvirt::sim::Stats::default());
        }
    }
});
