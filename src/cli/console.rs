//! Writing to standard output and standard error without panicking: `print!` panics when a
//! write fails, as it does into a closed pipe (`memvirt workloads | head -1`) or a full disk.

use std::fmt::Arguments;
use std::io::{ErrorKind, Write};
use std::sync::atomic::{AtomicBool, Ordering};

/// Set once standard output's reader has gone: what follows is dropped unwritten.
static STDOUT_CLOSED: AtomicBool = AtomicBool::new(false);

/// Writes to standard output. A closed pipe is not an error: whoever read it wanted no more,
/// as with other command-line tools (which SIGPIPE ends quietly). Any other failure, such as
/// a full disk, is.
pub fn write_out(text: Arguments<'_>) -> Result<(), String> {
    if STDOUT_CLOSED.load(Ordering::Relaxed) {
        return Ok(());
    }
    let mut stdout = std::io::stdout().lock();
    match stdout.write_fmt(text).and_then(|()| stdout.flush()) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == ErrorKind::BrokenPipe => {
            STDOUT_CLOSED.store(true, Ordering::Relaxed);
            Ok(())
        }
        Err(e) => Err(format!("standard output: {e}")),
    }
}

/// Writes a message or progress line to standard error; if that fails there is nowhere left
/// to say so, and the run goes on.
pub fn write_note(text: Arguments<'_>) {
    let _ = std::io::stderr().lock().write_fmt(text);
}

/// `print!` to standard output by [`write_out`]: evaluates to its `Result`.
macro_rules! out {
    ($($arg:tt)*) => { $crate::cli::console::write_out(format_args!($($arg)*)) };
}

/// `println!` to standard output by [`write_out`]: evaluates to its `Result`.
macro_rules! outln {
    ($($arg:tt)*) => { $crate::cli::console::write_out(format_args!("{}\n", format_args!($($arg)*))) };
}

/// `eprint!` by [`write_note`].
macro_rules! note {
    ($($arg:tt)*) => { $crate::cli::console::write_note(format_args!($($arg)*)) };
}

/// `eprintln!` by [`write_note`].
macro_rules! noteln {
    ($($arg:tt)*) => { $crate::cli::console::write_note(format_args!("{}\n", format_args!($($arg)*))) };
}

pub(crate) use {note, noteln, out, outln};
