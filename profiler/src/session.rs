//! The setup that `prof record` and `prof agent` share, in the order it must happen:
//!
//! 1. [`plan`]: check the request against this machine before anything is attached (the ids
//!    of tracepoint events looked up in tracefs, events probed, the sampling rate against the
//!    kernel's limit, the CPUs online);
//! 2. [`start_side_band`]: the side band, first, so that no fork, exec or mmap of a target is
//!    missed (a command is started only after this);
//! 3. [`attach`]: the BPF object loaded with its maps sized, the target set filled and kept
//!    current, the sampling program linked to every (CPU, sampling event), still disabled,
//!    and the tracepoint and off-CPU programs linked once to their tracepoints (those run
//!    from then on: a tracepoint's programs do not wait for its perf event to be enabled);
//! 4. [`start_unwinder`]: with unwind tables, the thread that builds them and follows every
//!    process's mappings through the side band;
//! 5. [`BpfProfiler::enable`], by the caller, once it is ready for samples.
//!
//! In: the requested events, the sampling rate, the CPUs, a [`BpfConfig`] and the initial
//! targets. Out: a [`Plan`], a [`SideBand`], a loaded [`BpfProfiler`], an [`Unwinder`].

use crossbeam_channel::Receiver;
use thiserror::Error;

use crate::bpf::{BpfConfig, BpfError, BpfProfiler, CpuMask};
use crate::cpus::{self, CpuError};
use crate::events::{self, Event, EventError, EventKind};
use crate::perf::{self, PerfError, Sampling};
use crate::procs::TimedEvent;
use crate::sideband::SideBandReader;
use crate::tracefs::{Tracefs, TracefsError};
use crate::unwind::{Interest, Unwinder};

/// Why a recording cannot start as asked.
#[derive(Debug, Error)]
pub enum SessionError {
    /// An event cannot be recorded here.
    #[error(transparent)]
    Event(#[from] EventError),
    /// A tracepoint event's id could not be looked up.
    #[error(transparent)]
    Tracepoint(TracefsError),
    /// The off-CPU event's tracepoint could not be looked up.
    #[error("--off-cpu needs the sched:sched_switch tracepoint")]
    OffCpu(#[source] TracefsError),
    /// The CPU list is bad or names an offline CPU.
    #[error(transparent)]
    Cpu(#[from] CpuError),
    /// `-F` is above what the kernel allows.
    #[error(
        "-F {hz} is above kernel.perf_event_max_sample_rate ({max}): lower -F, or raise the \
         limit with `sudo sysctl -w kernel.perf_event_max_sample_rate={hz}`"
    )]
    SampleRate {
        /// The requested frequency.
        hz: u64,
        /// The kernel's limit.
        max: u64,
    },
}

/// A request checked against this machine.
#[derive(Debug)]
pub struct Plan {
    /// The events to record, after probing (e.g. `cycles` fallen back to `cpu-clock`).
    pub events: Vec<Event>,
    /// One line each for the user: what probing changed.
    pub warnings: Vec<String>,
    /// How often each event samples.
    pub sampling: Sampling,
    /// The CPUs to sample.
    pub cpus: Vec<u32>,
}

/// Probes the `requested` events, checks `sampling` against the kernel's limit and selects
/// the CPUs (`cpus` as `-C` gives them; every online CPU when `None`).
pub fn plan(
    requested: &[Event],
    sampling: Sampling,
    cpus: Option<&str>,
) -> Result<Plan, SessionError> {
    let mut requested = requested.to_vec();
    look_up_tracepoints(&mut requested)?;
    let resolved = events::resolve(&requested, perf::probe)?;
    check_sample_rate(sampling)?;
    let cpus = cpus::select(cpus)?;
    Ok(Plan {
        events: resolved.events,
        warnings: resolved.warnings,
        sampling,
        cpus,
    })
}

/// Sets the tracepoint id of every tracepoint and off-CPU event, read from tracefs (mounted
/// privately for the look-up if it is not mounted).
fn look_up_tracepoints(events: &mut [Event]) -> Result<(), SessionError> {
    let mut tracefs: Option<Tracefs> = None;
    for event in events.iter_mut() {
        let Some((category, name)) = event.tracepoint() else {
            continue;
        };
        let wrap = |err| match event.kind {
            EventKind::OffCpu => SessionError::OffCpu(err),
            _ => SessionError::Tracepoint(err),
        };
        let fs = match &tracefs {
            Some(fs) => fs,
            None => tracefs.insert(Tracefs::open().map_err(wrap)?),
        };
        event.config = fs.id(category, name).map_err(wrap)?;
    }
    Ok(())
}

/// `-F` above `kernel.perf_event_max_sample_rate` is refused by the kernel with a bare
/// EINVAL; say which sysctl limits it instead.
fn check_sample_rate(sampling: Sampling) -> Result<(), SessionError> {
    let Sampling::Frequency(hz) = sampling else {
        return Ok(());
    };
    let max: u64 = std::fs::read_to_string("/proc/sys/kernel/perf_event_max_sample_rate")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(u64::MAX);
    if hz > max {
        return Err(SessionError::SampleRate { hz, max });
    }
    Ok(())
}

/// The side band, and what it tells the unwinder.
#[derive(Debug)]
pub struct SideBand {
    /// The reader, whose log builds the process table at the end.
    pub reader: SideBandReader,
    /// Each pass's events, for the unwinder, until it takes them.
    tap: Option<Receiver<Vec<TimedEvent>>>,
}

/// Opens the side band on every CPU of the plan and starts reading it. With `for_unwinder`,
/// it hands its events to the unwinder as they come; with `wake_on_each` too, it wakes on
/// every record rather than every 20 ms, so that a new process's mappings reach the unwinder
/// within microseconds (for a short command; the agent can wait).
pub fn start_side_band(
    plan: &Plan,
    for_unwinder: bool,
    wake_on_each: bool,
) -> Result<SideBand, PerfError> {
    let samplers = plan
        .cpus
        .iter()
        .map(|&cpu| perf::open_side_band(cpu, for_unwinder && wake_on_each))
        .collect::<Result<Vec<_>, _>>()?;
    let (sender, tap) = match for_unwinder {
        true => {
            let (sender, receiver) = crossbeam_channel::unbounded();
            (Some(sender), Some(receiver))
        }
        false => (None, None),
    };
    Ok(SideBand {
        reader: SideBandReader::spawn(samplers, sender),
        tap,
    })
}

/// Starts the unwinder over the maps of `bpf`, if it was loaded with unwind tables and the
/// side band was opened for it. `initial` describes the processes that already run.
pub fn start_unwinder(
    bpf: &mut BpfProfiler,
    side_band: &mut SideBand,
    interest: Interest,
    initial: Vec<TimedEvent>,
) -> Option<Unwinder> {
    let maps = bpf.take_unwind_maps()?;
    let tap = side_band.tap.take()?;
    Some(Unwinder::start(maps, interest, initial, tap))
}

/// Loads the BPF object with `config`, fills the target set with `targets` and follows
/// their forks (when `config` filters by tgid), links the sampling program to every (CPU,
/// sampling event) of the plan, and the tracepoint and off-CPU programs once to their
/// tracepoints. The plan decides the CPUs the tracepoint programs count on and their period
/// (`-c N` counts one hit in N). Nothing is sampled until [`BpfProfiler::enable`], but the
/// tracepoint programs run once linked (they count targets only, and a command is released
/// after this).
pub fn attach(plan: &Plan, config: &BpfConfig, targets: &[u32]) -> Result<BpfProfiler, BpfError> {
    let off_cpu = plan.events.iter().any(|e| e.kind == EventKind::OffCpu);
    let config = BpfConfig {
        tracepoint_period: match plan.sampling {
            Sampling::Period(period) => period,
            Sampling::Frequency(_) => 1,
        },
        cpus: CpuMask::of(&plan.cpus),
        // The map of blocked threads is preallocated: keep it tiny when unused.
        off_cpu_tasks: if off_cpu { config.off_cpu_tasks } else { 1 },
        ..*config
    };
    let mut bpf = BpfProfiler::load(&config)?;
    if config.filter_tgids {
        bpf.add_targets(targets)?;
        bpf.follow_forks()?;
    }
    // Any CPU of the recording will do: a tracepoint's programs run on every CPU.
    let first_cpu = plan.cpus.first().copied().unwrap_or(0);
    for (index, event) in plan.events.iter().enumerate() {
        match event.kind {
            EventKind::Tracepoint => bpf.attach_tracepoint(index, event, first_cpu)?,
            EventKind::OffCpu => bpf.attach_off_cpu(index, event, first_cpu)?,
            _ => bpf.attach(index, event, plan.sampling, &plan.cpus)?,
        }
    }
    Ok(bpf)
}
