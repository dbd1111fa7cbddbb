//! Recording a real program's memory accesses: the program runs under valgrind's lackey tool
//! and its trace is converted on the fly into the compact format.

use std::ffi::OsString;
use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;

use crate::output_file::OutputFile;
use crate::workload::chunks::MAX_LINE_BYTES;
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
    // Opened before valgrind starts, so a path that cannot be written fails at once.
    let file = OutputFile::create(output)
        .map_err(|source| WorkloadError::Io { path: output.to_path_buf(), source })?;
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
        let _ = child.kill();
        let _ = child.wait();
        return Err(WorkloadError::Other("valgrind's log pipe was not opened".into()));
    };
    *running() = Some(child);
    let mut log = BufReader::with_capacity(1 << 20, stderr);
    let mut messages = Messages::default();
    let result = write_compact(
        file,
        &mut |sink| {
            let mut line = Vec::new();
            // Inside a line longer than any access line: the program's own output, skipped to
            // its end a bounded piece at a time, so it cannot grow memory without end.
            let mut overlong = false;
            loop {
                line.clear();
                let read = (&mut log)
                    .take(u64::try_from(MAX_LINE_BYTES).unwrap_or(u64::MAX))
                    .read_until(b'\n', &mut line)
                    .map_err(|e| WorkloadError::Other(format!("reading valgrind's output: {e}")))?;
                if read == 0 {
                    return Ok(());
                }
                let whole = line.ends_with(b"\n");
                if overlong || (!whole && line.len() >= MAX_LINE_BYTES) {
                    overlong = !whole;
                    continue;
                }
                let text = line.strip_suffix(b"\n").unwrap_or(&line);
                match parse_line(text) {
                    Ok(Some(access)) => sink(access.kind, access.address, access.size)?,
                    // Not an access: valgrind's banner or messages, or the program's own stderr.
                    Ok(None) | Err(_) => messages.keep(text),
                }
            }
        },
        progress,
    );
    drop(log);
    match result {
        Ok(count) => {
            wait_for_valgrind()?;
            Ok(count)
        }
        // valgrind's log ended (it exited) with no access in it.
        Err(WorkloadError::Empty { .. }) => {
            let status = wait_for_valgrind()?;
            let status =
                status.code().map_or_else(|| status.to_string(), |code| format!("exit status {code}"));
            Err(WorkloadError::Other(format!(
                "{}: valgrind recorded no memory accesses ({status}){}",
                output.display(),
                messages.summary()
            )))
        }
        // Writing failed: valgrind may be blocked writing to the pipe that nobody reads any
        // more, and waiting for it would never end.
        Err(e) => {
            stop_recording();
            Err(e)
        }
    }
}

/// The valgrind of the recording under way, where [`stop_recording`] can reach it.
static RUNNING: Mutex<Option<Child>> = Mutex::new(None);

fn running() -> std::sync::MutexGuard<'static, Option<Child>> {
    RUNNING.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Ends the valgrind of the recording under way, if any: for a process about to end (a
/// signal), which would otherwise leave valgrind and the program running without a reader.
pub fn stop_recording() {
    if let Some(mut child) = running().take() {
        let _ = child.kill();
        let _ = child.wait();
    }
}

/// Waits for valgrind to end (polling, so [`stop_recording`] can take it meanwhile).
fn wait_for_valgrind() -> Result<std::process::ExitStatus, WorkloadError> {
    loop {
        {
            let mut slot = running();
            let Some(child) = slot.as_mut() else {
                return Err(WorkloadError::Other("valgrind was stopped".into()));
            };
            match child.try_wait() {
                Ok(Some(status)) => {
                    slot.take();
                    return Ok(status);
                }
                Ok(None) => {}
                Err(e) => return Err(WorkloadError::Other(format!("waiting for valgrind: {e}"))),
            }
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

/// What valgrind said besides the accesses, to show when it recorded none.
#[derive(Default)]
struct Messages {
    /// Its own complaints, `valgrind: ...` (a command not found, an unknown option).
    complaints: Vec<String>,
    /// Its log lines, `==PID== ...`: the last few.
    log: std::collections::VecDeque<String>,
}

impl Messages {
    const MOST: usize = 5;

    fn keep(&mut self, text: &[u8]) {
        let text = String::from_utf8_lossy(text).trim().to_string();
        if text.starts_with("valgrind:") && self.complaints.len() < Self::MOST {
            self.complaints.push(text);
        } else if text.starts_with("==") {
            if self.log.len() == Self::MOST {
                self.log.pop_front();
            }
            self.log.push_back(text);
        }
    }

    /// `: ` and the messages on one line, or nothing if there were none.
    fn summary(&self) -> String {
        let lines: Vec<&str> = if self.complaints.is_empty() {
            self.log.iter().map(String::as_str).collect()
        } else {
            self.complaints.iter().map(String::as_str).collect()
        };
        if lines.is_empty() {
            String::new()
        } else {
            format!(": {}", lines.join(" / "))
        }
    }
}
