//! Inputs and situations a hostile or careless user brings: each case once broke memvirt (a
//! hang, a panic, a replaced file, a wrong answer) and is kept here so it stays fixed. Every
//! run of the binary is bounded: a process that outlives its time is killed and the test fails.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// How long any one command here may take; the cases are tiny, so this only catches hangs.
const LIMIT: Duration = Duration::from_secs(60);

/// A directory of this test process's own.
fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("memvirt-adversarial-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir.join(name)
}

fn memvirt() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_memvirt"));
    command.stdin(Stdio::null());
    command
}

/// Waits for `child` at most `limit`, killing it past that; panics if it had to be killed.
fn finish_within(mut child: Child, limit: Duration, what: &str) -> Output {
    let started = Instant::now();
    loop {
        match child.try_wait().expect("waits") {
            Some(_) => return child.wait_with_output().expect("collects output"),
            None if started.elapsed() > limit => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("{what} did not finish within {limit:?}");
            }
            None => std::thread::sleep(Duration::from_millis(20)),
        }
    }
}

/// Runs memvirt with `args`, bounded by [`LIMIT`].
fn run(args: &[&str]) -> Output {
    let child =
        memvirt().args(args).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("starts memvirt");
    finish_within(child, LIMIT, &format!("memvirt {}", args.join(" ")))
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn path_str(path: &Path) -> &str {
    path.to_str().expect("UTF-8 temp path")
}

/// Item 1: an access whose bytes run past 2^64 ends (the page loop once saturated at the top
/// and never passed its last byte), in every command, from lackey text and from a record.
#[test]
fn access_past_the_top_of_the_address_space_ends() {
    let lackey = scratch("top.lackey");
    std::fs::write(&lackey, " L fffffffffffffff8,16\n L 0000000000401000,8\n").expect("writes");
    let compact = scratch("top.mvt");
    let out = run(&["convert", path_str(&lackey), "-o", path_str(&compact)]);
    assert!(out.status.success(), "{}", stderr(&out));
    for trace in [&lackey, &compact] {
        let trace = path_str(trace);
        let out = run(&["run", "--trace", trace, "--json"]);
        assert!(out.status.success(), "{}", stderr(&out));
        let report: serde_json::Value = serde_json::from_str(&stdout(&out)).expect("JSON");
        assert_eq!(report["accesses"], 2);
        // The page at 0xfffffffffffff000 is the kernel half: a user access there faults; the
        // bytes past 2^64 are not translated.
        assert_eq!(report["segfaults"], 1, "{report}");
        assert_eq!(report["general_protection"], 1, "{report}");
        let out = run(&["compare", "--trace", trace]);
        assert!(out.status.success(), "{}", stderr(&out));
        let out = run(&["explain", "--trace", trace, "--gva", "0x401000"]);
        assert!(out.status.success(), "{}", stderr(&out));
        let out = run(&["bench", "--trace", trace, "--cases", "trace", "--rounds", "1"]);
        assert!(out.status.success(), "{}", stderr(&out));
    }
}

/// Item 6: a reader that stops reading (`memvirt workloads | head -1`) ends memvirt quietly
/// with its usual status; a full disk is an error message, not a panic.
#[test]
fn closed_or_full_standard_output() {
    // The reader is gone before memvirt writes, as in `(sleep .2; memvirt workloads) | true`.
    for args in ["workloads", "run --workload seq-scan --param size=1M --json"] {
        let script = format!("(sleep 0.3; exec \"$0\" {args}) | true; echo \"status ${{PIPESTATUS[0]}}\"");
        let child = Command::new("bash")
            .args(["-c", &script, env!("CARGO_BIN_EXE_memvirt")])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starts bash");
        let out = finish_within(child, LIMIT, args);
        assert_eq!(stdout(&out).trim(), "status 0", "memvirt {args}: {}", stderr(&out));
        assert_eq!(stderr(&out), "", "memvirt {args}");
    }
    let full = std::fs::OpenOptions::new().write(true).open("/dev/full").expect("/dev/full");
    let child = memvirt()
        .args(["run", "--workload", "seq-scan", "--param", "size=1M", "--json"])
        .stdout(full)
        .stderr(Stdio::piped())
        .spawn()
        .expect("starts memvirt");
    let out = finish_within(child, LIMIT, "run > /dev/full");
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert_eq!(stderr(&out), "memvirt: error: standard output: No space left on device (os error 28)\n");
}
