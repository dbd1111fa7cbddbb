//! Arbitrary bytes as a lackey trace and as a compact trace: errors, never panics; and read
//! one operation at a time or in batches, the same operations and the same error.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use memvirt::workload::compact::CompactTrace;
use memvirt::workload::lackey::LackeyTrace;
use memvirt::workload::{Op, Workload};

/// Every operation up to the end or the first error, read one at a time.
fn one_by_one(workload: &mut dyn Workload) -> (Vec<Op>, Option<String>) {
    let mut ops = Vec::new();
    loop {
        match workload.next_op() {
            Ok(Some(op)) => ops.push(op),
            Ok(None) => return (ops, None),
            Err(e) => return (ops, Some(e.to_string())),
        }
    }
}

/// The same, read in batches.
fn batched(workload: &mut dyn Workload) -> (Vec<Op>, Option<String>) {
    let mut ops = Vec::new();
    let mut batch = Vec::new();
    loop {
        let result = workload.next_batch(&mut batch);
        ops.extend_from_slice(&batch);
        match result {
            Err(e) => return (ops, Some(e.to_string())),
            Ok(()) if batch.is_empty() => return (ops, None),
            Ok(()) => {}
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let path = Path::new("fuzz");
    assert_eq!(
        one_by_one(&mut LackeyTrace::from_reader(path, data, 1)),
        batched(&mut LackeyTrace::from_reader(path, data, 1))
    );
    assert_eq!(
        one_by_one(&mut CompactTrace::from_reader(path, data, 1)),
        batched(&mut CompactTrace::from_reader(path, data, 1))
    );
});
