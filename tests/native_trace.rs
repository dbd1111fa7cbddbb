//! End to end: `memvirt run --mode native` on a real program's lackey trace, checked against
//! an independent LRU model written here from the trace text alone.

use std::collections::HashSet;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;

fn data(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data").join(name)
}

/// The 4 KiB page numbers each access of a lackey trace touches, in order.
fn pages_of_trace(path: &Path) -> Vec<u64> {
    let mut text = String::new();
    flate2::read::GzDecoder::new(std::fs::File::open(path).expect("fixture"))
        .read_to_string(&mut text)
        .expect("gzip text");
    let mut pages = Vec::new();
    for line in text.lines() {
        let body = if let Some(rest) = line.strip_prefix("I ") {
            rest
        } else if line.starts_with(" L ") || line.starts_with(" S ") || line.starts_with(" M ") {
            &line[3..]
        } else {
            continue;
        };
        let (address, size) = body.trim().split_once(',').expect("ADDRESS,SIZE");
        let address = u64::from_str_radix(address, 16).expect("hex");
        let size: u64 = size.trim().parse().expect("size");
        for page in (address >> 12)..=((address + size - 1) >> 12) {
            pages.push(page);
        }
    }
    pages
}

/// Misses of an LRU cache of `entries` entries, `ways`-way, set = page mod sets.
fn lru_misses(pages: &[u64], entries: usize, ways: usize) -> u64 {
    let sets = entries / ways;
    let mut cache: Vec<Vec<u64>> = vec![Vec::new(); sets];
    let mut misses = 0;
    for &page in pages {
        let set = &mut cache[usize::try_from(page % sets as u64).expect("small")];
        if let Some(at) = set.iter().position(|&p| p == page) {
            set.remove(at);
        } else {
            misses += 1;
            if set.len() == ways {
                set.pop();
            }
        }
        set.insert(0, page);
    }
    misses
}

fn run_json(args: &[&str]) -> serde_json::Value {
    let out = Command::new(env!("CARGO_BIN_EXE_memvirt")).args(args).output().expect("runs");
    assert!(out.status.success(), "memvirt {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).expect("one JSON object")
}

#[test]
fn tlb_misses_and_faults_match_an_independent_model() {
    let trace = data("true.lackey.gz");
    let pages = pages_of_trace(&trace);
    let distinct: HashSet<u64> = pages.iter().copied().collect();
    for (entries, ways) in [(64, 4), (16, 1), (32, 32), (1536, 12)] {
        let json = run_json(&[
            "run",
            "--mode",
            "native",
            "--trace",
            trace.to_str().expect("utf-8 path"),
            "--tlb-entries",
            &entries.to_string(),
            "--tlb-ways",
            &ways.to_string(),
            "--no-walk-caches",
            "--json",
        ]);
        let expected = lru_misses(&pages, entries, ways);
        assert_eq!(json["tlb_misses"], expected, "{entries} entries, {ways} ways");
        assert_eq!(json["tlb_hits"], pages.len() as u64 - expected);
        assert_eq!(json["guest_page_faults"], distinct.len() as u64);
        assert_eq!(json["mode"], "native");
        assert_eq!(json["vm_exits"]["total"], 0);
        // Every miss walks once and every fault adds one retry walk; a write to a page first
        // cached clean walks once more to set D.
        let walks = json["walks"].as_u64().expect("walks");
        assert!(walks >= expected + distinct.len() as u64, "walks {walks}");
        // A walk that maps reads all four levels; one that faults stops at the first
        // non-present entry, after one to four reads.
        let faults = distinct.len() as u64;
        let refs = json["walk_refs"].as_u64().expect("walk_refs");
        assert!((4 * (walks - faults) + faults..=4 * walks).contains(&refs), "refs {refs}, walks {walks}");
        assert_eq!(json["walk_refs_max"], 4);
    }
}

#[test]
fn five_level_walks_read_five_entries() {
    let trace = data("true.lackey.gz");
    let path = trace.to_str().expect("utf-8");
    let json = run_json(&["run", "--trace", path, "--guest-levels", "5", "--no-walk-caches", "--json"]);
    let walks = json["walks"].as_u64().expect("walks");
    let faults = json["guest_page_faults"].as_u64().expect("faults");
    let refs = json["walk_refs"].as_u64().expect("walk_refs");
    assert!((5 * (walks - faults) + faults..=5 * walks).contains(&refs), "refs {refs}, walks {walks}");
    assert_eq!(json["walk_refs_max"], 5);
    // The paging-structure caches shorten walks without changing what is translated.
    let cached = run_json(&["run", "--trace", path, "--guest-levels", "5", "--json"]);
    assert!(cached["walk_refs"].as_u64() < json["walk_refs"].as_u64());
    assert_eq!(cached["tlb_misses"], json["tlb_misses"]);
    assert_eq!(cached["guest_page_faults"], json["guest_page_faults"]);
    assert!(cached["walk_caches"]["psc_hits"].as_u64() > Some(0));
}

#[test]
fn the_same_seed_gives_the_same_output_byte_for_byte() {
    let run = |seed: &str| {
        Command::new(env!("CARGO_BIN_EXE_memvirt"))
            .args([
                "run",
                "--workload",
                "uniform-random",
                "--param",
                "accesses=20000",
                "--seed",
                seed,
                "--json",
            ])
            .output()
            .expect("runs")
            .stdout
    };
    assert_eq!(run("7"), run("7"));
    assert_ne!(run("7"), run("8"));
}

fn run_err(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_memvirt")).args(args).output().expect("runs");
    assert!(!out.status.success(), "memvirt {args:?} should fail");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!stderr.contains("panicked"), "{stderr}");
    stderr
}

#[test]
fn bad_input_gives_a_clear_error() {
    let dir = std::env::temp_dir().join(format!("memvirt-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let bad = dir.join("bad.lackey");
    std::fs::write(&bad, "I  1000,4\n L 2000,8\n S 30g0,8\n").expect("write");
    let message = run_err(&["run", "--trace", bad.to_str().expect("utf-8")]);
    assert!(message.contains("bad.lackey:3: expected a hexadecimal address"), "{message}");

    let empty = dir.join("empty.lackey");
    std::fs::write(&empty, "==1== nothing here\n").expect("write");
    assert!(run_err(&["run", "--trace", empty.to_str().expect("utf-8")]).contains("no memory accesses"));

    let missing = dir.join("missing.lackey");
    assert!(run_err(&["run", "--trace", missing.to_str().expect("utf-8")]).contains("missing.lackey"));

    assert!(run_err(&["run", "--workload", "nope"]).contains("unknown workload 'nope'"));
    assert!(run_err(&["run", "--tlb-entries", "10", "--tlb-ways", "4"]).contains("multiple of ways"));
    assert!(run_err(&["run", "--mode", "warp"]).contains("invalid value 'warp'"));
    assert!(run_err(&["run", "--param", "size=huge"]).contains("size=huge"));
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn workloads_lists_each_scenario_on_one_line() {
    let out = Command::new(env!("CARGO_BIN_EXE_memvirt")).arg("workloads").output().expect("runs");
    let text = String::from_utf8(out.stdout).expect("utf-8");
    for name in ["seq-scan", "uniform-random", "pointer-chase"] {
        assert!(text.lines().any(|line| line.starts_with(name)), "{name} missing from:\n{text}");
    }
}

#[test]
fn walk_cache_sizes_are_set_from_the_command_line_and_reported() {
    // A PDE cache (linear and guest-physical) large enough for gups's table makes every EPT
    // walk start at the guest's page table: one guest reference, one nested one (the EPT PTE
    // of the data page), against more with the default 32 entries.
    let small = run_json(&[
        "run",
        "--mode",
        "ept",
        "--workload",
        "gups",
        "--param",
        "size=256M",
        "--param",
        "updates=20000",
        "--json",
    ]);
    let large = run_json(&[
        "run",
        "--mode",
        "ept",
        "--workload",
        "gups",
        "--param",
        "size=256M",
        "--param",
        "updates=20000",
        "--psc",
        "4,4,512",
        "--nested-psc",
        "4,4,512",
        "--nested-tlb",
        "64x4",
        "--json",
    ]);
    let per_walk =
        |v: &serde_json::Value| v["walk_refs"].as_f64().expect("refs") / v["walks"].as_f64().expect("walks");
    assert!(per_walk(&large) < per_walk(&small), "{} vs {}", per_walk(&large), per_walk(&small));
    assert!(per_walk(&large) <= 2.0 + 1e-9, "{}", per_walk(&large));
    let sizes = &large["config"]["walk_cache_sizes"];
    assert_eq!(sizes["psc"]["pde"], 512);
    assert_eq!(sizes["nested_psc"]["pde"], 512);
    assert_eq!(
        (sizes["nested_tlb_entries"].as_u64(), sizes["nested_tlb_ways"].as_u64()),
        (Some(64), Some(4))
    );
    assert_eq!(small["config"]["walk_cache_sizes"]["psc"]["pde"], 32);
    for (flag, value, expected) in [
        ("--psc", "4,4", "expected three sizes"),
        ("--nested-psc", "4,0,32", "from 1 to 65536"),
        ("--nested-tlb", "100x3", "multiple of ways"),
        ("--nested-tlb", "128", "ENTRIESxWAYS"),
    ] {
        let err = run_err(&["run", "--workload", "seq-scan", flag, value]);
        assert!(err.contains(expected), "{flag} {value}: {err}");
    }
}
