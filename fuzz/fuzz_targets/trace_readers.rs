//! Arbitrary bytes as a lackey trace and as a compact trace: errors, never panics.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use memvirt::workload::compact::CompactTrace;
use memvirt::workload::lackey::LackeyTrace;
use memvirt::workload::Workload;

fuzz_target!(|data: &[u8]| {
    let mut lackey = LackeyTrace::from_reader(Path::new("fuzz"), data, 1);
    while let Ok(Some(_)) = lackey.next_op() {}
    let mut compact = CompactTrace::from_reader(Path::new("fuzz"), data, 1);
    while let Ok(Some(_)) = compact.next_op() {}
});
