//! prof: a sampling profiler for Linux built on perf_event and eBPF.
//!
//! The library holds the stages of the pipeline; the `prof` binary wires them together:
//!
//! ```text
//! perf setup ──► BPF program + maps ──► drain ──► symbolize ──► export
//! (perf, cpus)   (bpf)                  (drain)   (symbolize)   (export, summary)
//!       side band (sideband) ──► process table (procs) ──┘
//! ```
//!
//! Every stage takes plain data and returns plain data; only the command layer in the binary
//! knows their order.
pub mod agent;
pub mod binaries;
pub mod bpf;
pub mod cpus;
pub mod drain;
pub mod events;
pub mod export;
pub mod interrupt;
pub mod jit;
pub mod map_memory;
pub mod perf;
pub mod privilege;
pub mod procs;
pub mod profile;
pub mod session;
pub mod sideband;
pub mod summary;
pub mod symbolize;
pub mod text;
pub mod tracefs;
pub mod unwind;
pub mod workload;
