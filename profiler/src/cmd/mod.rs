//! The commands: wiring of the library's stages, in order. No stage logic lives here.
pub mod agent;
pub mod diff;
pub mod list;
pub mod record;
pub mod report;

use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use anyhow::Result;
use signal_hook::consts::{SIGINT, SIGTERM};

/// A flag that Ctrl-C or SIGTERM sets, so the command can finish its work; a second signal
/// ends prof at once, with status 130.
pub fn stop_on_signals() -> Result<Arc<AtomicBool>> {
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [SIGINT, SIGTERM] {
        signal_hook::flag::register_conditional_shutdown(signal, 130, Arc::clone(&stop))?;
        signal_hook::flag::register(signal, Arc::clone(&stop))?;
    }
    Ok(stop)
}
