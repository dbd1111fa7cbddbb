//! Recording a real program's memory accesses: the program runs under valgrind's lackey tool
//! and its trace is converted on the fly into the compact format.

use std::ffi::OsString;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};

use crate::workload::lackey::parse_line;
use crate::workload::open::write_compact;
use crate::workload::WorkloadError;

/// Runs `command` under `valgrind --tool=lackey --trace-mem=yes` (with `valgrind` the path or
/// name of the valgrind program) and writes its accesses to `output` in the compact format.
/// valgrind's log goes to the pipe memvirt reads (the program's own stderr shares it; its
/// lines are not accesses and are skipped). Returns the number of records.
pub fn record(
    valgrind: &Path,
    command: &[OsString],
    output: &Path,
    progress: &mut dyn FnMut(u64),
) -> Result<u64, WorkloadError> {
    if command.is_empty() {
        return Err(WorkloadError::Other("record needs a command to run, after --".into()));
    }
    let mut child = Command::new(valgrind)
        .args(["--tool=lackey", "--trace-mem=yes", "--log-fd=2"])
        .args(command)
        .stdin(Stdio::inherit())
        .stdout(Stdio::inherit())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                WorkloadError::Other(format!(
                    "{} was not found; install valgrind (for example `apt-get install valgrind`) to record traces",
                    valgrind.display()
                ))
            } else {
                WorkloadError::Other(format!("could not start {}: {e}", valgrind.display()))
            }
        })?;
    let Some(stderr) = child.stderr.take() else {
        return Err(WorkloadError::Other("valgrind's log pipe was not opened".into()));
    };
    let mut log = BufReader::with_capacity(1 << 20, stderr);
    let mut complaints = Vec::new();
    let result = write_compact(
        output,
        &mut |sink| {
            let mut line = Vec::new();
            loop {
                line.clear();
                let read = log
                    .read_until(b'\n', &mut line)
                    .map_err(|e| WorkloadError::Other(format!("reading valgrind's output: {e}")))?;
                if read == 0 {
                    return Ok(());
                }
                let text = line.strip_suffix(b"\n").unwrap_or(&line);
                match parse_line(text) {
                    Ok(Some(access)) => sink(access.kind, access.address, access.size)?,
                    // Not an access: valgrind's banner, or the program's own stderr.
                    Ok(None) | Err(_) => {
                        if text.starts_with(b"==") && complaints.len() < 20 {
                            complaints.push(String::from_utf8_lossy(text).into_owned());
                        }
                    }
                }
            }
        },
        progress,
    );
    let status = child.wait().map_err(|e| WorkloadError::Other(format!("waiting for valgrind: {e}")))?;
    match result {
        Err(WorkloadError::Empty { .. }) => Err(WorkloadError::Other(format!(
            "valgrind recorded no memory accesses (exit status {status}); its messages:\n{}",
            complaints.join("\n")
        ))),
        other => other,
    }
}
