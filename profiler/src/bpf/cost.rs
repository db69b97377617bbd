//! prof's own cost: BPF run-time statistics (`BPF_ENABLE_STATS`) and what each program's
//! `bpf_prog_info` says it ran.

use std::os::fd::OwnedFd;
use std::time::Duration;

use super::{BpfError, BpfProfiler, program_err};

/// One of prof's programs, for its cost.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Program {
    /// The `perf_event` program: one run per sample.
    Sampling,
    /// The tracepoint program: one run per hit of a tracepoint event.
    Tracepoint,
    /// The off-CPU program: one run per context switch.
    OffCpu,
}

impl Program {
    /// Every program whose cost prof reports.
    pub const ALL: [Program; 3] = [Program::Sampling, Program::Tracepoint, Program::OffCpu];

    /// The program's name in the object.
    pub(super) fn name(self) -> &'static str {
        match self {
            Program::Sampling => super::sampling::PROGRAM,
            Program::Tracepoint => super::tracepoint::PROGRAM,
            Program::OffCpu => super::offcpu::PROGRAM,
        }
    }
}

impl BpfProfiler {
    /// How long `program` has run and how often, from its `bpf_prog_info`; `None` if this
    /// recording never loaded it.
    pub fn program_run_stats(&self, program: Program) -> Result<Option<RunStats>, BpfError> {
        let name = program.name();
        let Some(loaded) = self.ebpf.program(name) else {
            return Ok(None);
        };
        if loaded.fd().is_err() {
            return Ok(None);
        }
        let info = loaded.info().map_err(program_err(name))?;
        Ok(Some(RunStats {
            run_time: info.run_time(),
            runs: info.run_count(),
        }))
    }
}

/// How long a program has run in the kernel, from its `bpf_prog_info`. Only
/// counted while BPF run-time statistics are on ([`RunStatsGuard`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RunStats {
    /// Total time spent in the program (`run_time_ns`).
    pub run_time: Duration,
    /// Times the program ran (`run_cnt`): one per sample, tracepoint hit or context switch,
    /// before the target filter.
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
