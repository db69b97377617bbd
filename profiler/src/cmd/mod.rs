//! The commands: wiring of the library's stages, in order. No stage logic lives here.
pub mod agent;
pub mod diff;
pub mod list;
pub mod record;
pub mod report;

use std::io::{self, Write};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::Result;
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};

use prof::interrupt;

/// The signals that end a command: Ctrl-C, `kill`, and the terminal going away.
const STOP_SIGNALS: [i32; 3] = [SIGINT, SIGTERM, SIGHUP];

/// A flag that Ctrl-C, SIGTERM or SIGHUP sets, so the command can finish its work. A second
/// signal ends prof at once with status 128 + the signal: the outputs being written are
/// removed, and the line set with [`interrupt::set_message`] says what was discarded.
pub fn stop_on_signals() -> Result<Arc<AtomicBool>> {
    let stop = Arc::new(AtomicBool::new(false));
    interrupt::set_message("prof: interrupted again: quit at once");
    for signal in STOP_SIGNALS {
        let flag = Arc::clone(&stop);
        // SAFETY: the action is async-signal-safe: an atomic swap, then `interrupt::abandon`,
        // which only unlinks, writes and _exits with memory prepared beforehand.
        unsafe {
            signal_hook::low_level::register(signal, move || {
                if flag.swap(true, Ordering::SeqCst) {
                    interrupt::abandon(128 + signal);
                }
            })
        }?;
    }
    Ok(stop)
}

/// For commands that have nothing to finish (report, diff): the first Ctrl-C, SIGTERM or
/// SIGHUP removes the outputs being written, prints `message` and ends prof with status
/// 128 + the signal.
pub fn quit_on_signals(message: &str) -> Result<()> {
    interrupt::set_message(message);
    for signal in STOP_SIGNALS {
        // SAFETY: `interrupt::abandon` is async-signal-safe (see there).
        unsafe {
            signal_hook::low_level::register(signal, move || interrupt::abandon(128 + signal))
        }?;
    }
    Ok(())
}

/// Writes `text` to stderr as it is, ignoring a failed write (see `say!`).
pub fn tell(text: &str) {
    let _ = io::stderr().write_all(text.as_bytes());
}

/// The line a signal that ends prof at once prints: which outputs were written and which
/// were discarded.
pub fn discarded_line(prefix: &str, written: &[PathBuf], discarded: &[PathBuf]) -> String {
    let list = |paths: &[PathBuf]| {
        let names: Vec<String> = paths.iter().map(|p| p.display().to_string()).collect();
        names.join(", ")
    };
    match (written.is_empty(), discarded.is_empty()) {
        (true, _) => format!("prof: {prefix}: quit without writing {}", list(discarded)),
        (false, false) => format!(
            "prof: {prefix}: quit after writing {}; discarded {}",
            list(written),
            list(discarded)
        ),
        (false, true) => format!("prof: {prefix}: quit after writing {}", list(written)),
    }
}
