//! `prof agent`'s plain-data pieces: its configuration, the HTTP routes, the push queue, the
//! directory rotation, process labels, windows of profiles and the metrics. The command layer
//! (`cmd/agent` in the binary) wires them to the sampling loop, the server and the pusher.
//!
//! ```text
//! every window: flip the BPF generation ──► drain the old one ──► symbolize (cached) ──► Profile
//!   ──► pprof ──► push queue (drop oldest) ──► Pyroscope /ingest
//!             ──► directory (rotated)
//!   ──► recent windows ──► /flamegraph.svg;   captures ──► /debug/pprof/profile
//! ```
pub mod config;
pub mod http;
pub mod labels;
pub mod metrics;
pub mod push;
pub mod queue;
pub mod rotation;
pub mod window;
