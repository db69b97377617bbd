//! `prof agent`: continuous profiling of the whole machine, in windows.
//!
//! The engine and its plain pieces live here; the command layer (`cmd/agent` in the binary)
//! only wires them: it loads the BPF program, implements the [`sampler::Source`] seam with
//! its maps and the side band, and starts the server and the pusher.
//!
//! ```text
//! every window: flip the BPF generation ──► drain the old one ──► symbolize (cached) ──► Profile
//!   ──► pprof ──► push queue (drop oldest) ──► Pyroscope /ingest
//!             ──► directory (rotated)
//!   ──► recent windows ──► /flamegraph.svg;   captures ──► /debug/pprof/profile
//! ```
//!
//! - [`engine`]: the loop over windows, and what the threads share;
//! - [`sampler`]: the source seam, and what is done with each drain;
//! - [`capture`]: the spans `/debug/pprof/profile` requests collect;
//! - [`cleanup`]: what a long run forgets, and when;
//! - [`sinks`]: where finished windows go (push, directory);
//! - [`server`]: the HTTP server and its limits;
//! - [`config`], [`http`] (routes), [`labels`], [`metrics`], [`queue`], [`window`].
pub mod capture;
pub mod cleanup;
pub mod config;
pub mod engine;
pub mod http;
pub mod labels;
pub mod metrics;
pub mod queue;
pub mod sampler;
pub mod server;
pub mod sinks;
pub mod window;

/// An error and its causes, `: `-separated, for a log line.
pub fn error_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
