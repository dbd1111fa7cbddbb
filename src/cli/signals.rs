//! SIGINT (Ctrl-C) and SIGTERM. A simulation stops at its next check and prints the results
//! so far; the exit status then says which signal stopped it, 128 + its number as a shell
//! reports a process the signal ended (130 for SIGINT, 143 for SIGTERM). A second signal, or
//! the first during a command with no partial result to give (`convert`, `record`), ends
//! the process at once, after removing any output file it had not finished.

use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, OnceLock};

use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

use crate::cli::console::noteln;

/// The exit status the first signal asked for; 0 while none came.
static STATUS: AtomicU8 = AtomicU8::new(0);

/// The flag runs check: set by the first signal.
fn flag() -> &'static Arc<AtomicBool> {
    static FLAG: OnceLock<Arc<AtomicBool>> = OnceLock::new();
    FLAG.get_or_init(|| Arc::new(AtomicBool::new(false)))
}

/// The flag a run stops at, for [`memvirt::sim::SimConfig::stop`].
pub fn stop_flag() -> Arc<AtomicBool> {
    Arc::clone(flag())
}

/// The exit status for a run a signal stopped early, or `None` if none did.
pub fn interrupted_status() -> Option<u8> {
    Some(STATUS.load(Ordering::SeqCst)).filter(|&status| status != 0)
}

/// Starts listening for SIGINT and SIGTERM. With `partial_results`, the first signal only
/// sets the stop flag; otherwise it ends the process.
pub fn install(partial_results: bool) {
    let Ok(mut signals) = Signals::new([SIGINT, SIGTERM]) else {
        // Without the handlers the signals keep their default action: the process ends.
        return;
    };
    std::thread::spawn(move || {
        for signal in signals.forever() {
            let status = 128 + u8::try_from(signal).unwrap_or(0);
            let first = STATUS.compare_exchange(0, status, Ordering::SeqCst, Ordering::SeqCst).is_ok();
            if first && partial_results {
                flag().store(true, Ordering::SeqCst);
                let (name, again) =
                    if signal == SIGINT { ("interrupted", "Ctrl-C") } else { ("terminated", "SIGTERM") };
                noteln!("\nmemvirt: {name}; finishing with the results so far ({again} again to quit)");
                continue;
            }
            // Unfinished outputs first: once valgrind is stopped, record would complete its
            // output with what it has.
            memvirt::output_file::remove_unfinished();
            memvirt::workload::recorder::stop_recording();
            std::process::exit(i32::from(status));
        }
    });
}
