//! prof's own cost: BPF run-time statistics (`BPF_ENABLE_STATS`) and what each program's
//! `bpf_prog_info` says it ran.

use std::os::fd::OwnedFd;
use std::time::Duration;

use super::BpfError;

/// How long the sampling program has run in the kernel, from its `bpf_prog_info`. Only
/// counted while BPF run-time statistics are on ([`RunStatsGuard`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RunStats {
    /// Total time spent in the program (`run_time_ns`).
    pub run_time: Duration,
    /// Times the program ran (`run_cnt`): one per sample, before the target filter.
    pub runs: u64,
}

impl RunStats {
    /// Mean nanoseconds per run, if the program ran.
    pub fn ns_per_run(&self) -> Option<f64> {
        (self.runs > 0).then(|| self.run_time.as_nanos() as f64 / self.runs as f64)
    }
}

/// BPF run-time statistics stay on while this lives. They are system-wide: every BPF
/// program on the machine pays two clock reads per run while any holder keeps them on.
#[derive(Debug)]
pub struct RunStatsGuard {
    _fd: OwnedFd,
}

/// Turns on BPF run-time statistics (`bpf(BPF_ENABLE_STATS, BPF_STATS_RUN_TIME)`) until the
/// guard is dropped.
pub fn enable_run_stats() -> Result<RunStatsGuard, BpfError> {
    aya::sys::enable_stats(aya::sys::Stats::RunTime)
        .map(|fd| RunStatsGuard { _fd: fd })
        .map_err(|err| BpfError::EnableStats(err.io_error))
}
