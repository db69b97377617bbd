//! The commands: wiring of the library's stages, in order. No stage logic lives here.
pub mod agent;
pub mod diff;
pub mod list;
pub mod record;
pub mod report;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::Result;
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};

use prof::interrupt;
use prof::perf;
use prof::sideband::SideBandReader;

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

/// Opens the side band on every CPU in `cpus` and starts reading it.
pub fn start_side_band(cpus: &[u32]) -> Result<SideBandReader> {
    let samplers = cpus
        .iter()
        .map(|&cpu| perf::open_side_band(cpu))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(SideBandReader::spawn(samplers))
}
