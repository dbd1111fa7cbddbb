//! Trace files: the compact binary format round-trips a real lackey trace, compressed inputs
//! are recognised, malformed files give clear errors (never a panic), and `record` captures a
//! real program with valgrind.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use memvirt::workload::compact::{header, record, CompactTrace};
use memvirt::workload::open::{convert, open_trace};
use memvirt::workload::{Op, Workload, WorkloadError};
use proptest::prelude::*;

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/true.lackey.gz")
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("memvirt-traces-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir.join(name)
}

fn ops(mut workload: Box<dyn Workload>) -> Result<Vec<Op>, WorkloadError> {
    let mut out = Vec::new();
    while let Some(op) = workload.next_op()? {
        out.push(op);
    }
    Ok(out)
}

/// The same operations, read a batch at a time.
fn batched_ops(mut workload: Box<dyn Workload>) -> Result<Vec<Op>, WorkloadError> {
    let mut out = Vec::new();
    let mut batch = Vec::new();
    loop {
        workload.next_batch(&mut batch)?;
        if batch.is_empty() {
            return Ok(out);
        }
        out.extend_from_slice(&batch);
    }
}

#[test]
fn compact_round_trip_of_a_real_trace() {
    let output = scratch("true.mvt");
    let count = convert(&fixture(), &output, &mut |_| {}).expect("converts");
    let lackey = ops(open_trace(&fixture(), 1).expect("opens")).expect("reads");
    let compact = ops(open_trace(&output, 1).expect("opens")).expect("reads");
    assert_eq!(lackey.len() as u64, count + 1, "a Spawn, then one op per record");
    assert_eq!(lackey, compact);
    // Read in batches (as runs read them), both formats give the same operations.
    assert_eq!(batched_ops(open_trace(&fixture(), 1).expect("opens")).expect("reads"), lackey);
    assert_eq!(batched_ops(open_trace(&output, 1).expect("opens")).expect("reads"), lackey);
    // 32-byte header, 16-byte records.
    assert_eq!(std::fs::metadata(&output).expect("file").len(), 32 + 16 * count);
    assert!(!scratch("true.mvt.partial").exists());
    // Compressed compact traces are recognised too.
    let gz = scratch("true.mvt.gz");
    let mut encoder = flate2::write::GzEncoder::new(
        std::fs::File::create(&gz).expect("create"),
        flate2::Compression::fast(),
    );
    encoder.write_all(&std::fs::read(&output).expect("read")).expect("write");
    encoder.finish().expect("finish");
    assert_eq!(ops(open_trace(&gz, 1).expect("opens")).expect("reads"), compact);
}

fn compact_error(bytes: &[u8]) -> String {
    let mut trace = CompactTrace::from_reader(Path::new("t.mvt"), bytes, 1);
    loop {
        match trace.next_op() {
            Ok(Some(_)) => {}
            Ok(None) => return String::new(),
            Err(e) => return e.to_string(),
        }
    }
}

#[test]
fn malformed_compact_traces_are_named_precisely() {
    let mut good = header(0).to_vec();
    good.extend(record(memvirt::paging::AccessKind::Read, 0x1000, 8));
    assert_eq!(compact_error(&good), "");
    assert_eq!(compact_error(b"MVTRACE"), "t.mvt: header: not a memvirt compact trace (bad header)");
    let mut version = good.clone();
    version[8] = 9;
    assert!(compact_error(&version).contains("version 9"));
    let mut kind = good.clone();
    kind[32 + 12] = 7;
    assert!(
        compact_error(&kind).starts_with("t.mvt: record 1: unknown access kind 7"),
        "{}",
        compact_error(&kind)
    );
    let mut size = good.clone();
    size[32 + 8..32 + 12].copy_from_slice(&0u32.to_le_bytes());
    assert!(compact_error(&size).contains("record 1: access size 0"));
    let mut truncated = good.clone();
    truncated.extend([1, 2, 3]);
    assert!(compact_error(&truncated).contains("record 2: truncated"));
    let mut wild = good.clone();
    wild[32..40].copy_from_slice(&0x0100_0000_0000_0000u64.to_le_bytes());
    assert!(compact_error(&wild).contains("not canonical"));
    assert!(compact_error(&header(0)).contains("no memory accesses"));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]
    #[test]
    fn arbitrary_bytes_never_panic(tail in proptest::collection::vec(any::<u8>(), 0..200), keep_header in any::<bool>()) {
        let mut bytes = if keep_header { header(0).to_vec() } else { Vec::new() };
        bytes.extend(tail);
        let _ = compact_error(&bytes);
        let mut lackey = memvirt::workload::lackey::LackeyTrace::from_reader(Path::new("t"), &bytes[..], 1);
        while let Ok(Some(_)) = lackey.next_op() {}
    }
}

#[test]
fn record_captures_a_real_program_and_reports_a_missing_valgrind() {
    let memvirt = env!("CARGO_BIN_EXE_memvirt");
    let missing = Command::new(memvirt)
        .args([
            "record",
            "-o",
            scratch("never.mvt").to_str().expect("utf-8"),
            "--valgrind",
            "/nonexistent/valgrind",
            "--",
            "/bin/true",
        ])
        .output()
        .expect("runs");
    assert!(!missing.status.success());
    assert!(String::from_utf8_lossy(&missing.stderr)
        .contains("/nonexistent/valgrind was not found; install valgrind"));
    assert!(!scratch("never.mvt").exists() && !scratch("never.mvt.partial").exists());

    if Command::new("valgrind").arg("--version").output().is_err() {
        assert!(std::env::var("CI").is_err(), "CI must have valgrind");
        eprintln!("valgrind is not installed here: recording not exercised");
        return;
    }
    let output = scratch("true-recorded.mvt");
    let out = Command::new(memvirt)
        .args(["record", "-o", output.to_str().expect("utf-8"), "--", "/bin/true"])
        .output()
        .expect("runs");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let recorded = ops(open_trace(&output, 1).expect("opens")).expect("reads");
    assert!(matches!(recorded[0], Op::Spawn { pid: 1, anywhere: true }));
    assert!(recorded.len() > 10_000, "{} ops", recorded.len());
}
