//! perf_event setup: the sampling events the BPF program is linked to, the side-band event
//! that reports process lifecycles and mappings, and availability probes for `prof list`.
//!
//! In: [`Event`]s, a sampling rate and CPUs. Out: open (disabled) perf events, which
//! [`crate::bpf`] links its program to, and side-band ring buffers. All `perf_event_open`
//! calls go through perf-event2.

use std::io;
use std::os::fd::{AsRawFd, RawFd};

use perf_event::events::Software;
use perf_event::{Builder, Clock, Counter, SampleFlag, Sampler};
use perf_event_open_sys::bindings::perf_event_attr;
use thiserror::Error;

use crate::events::Event;

/// How often an event samples.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sampling {
    /// About this many samples per second per CPU; the kernel adjusts the period (`-F`).
    Frequency(u64),
    /// One sample every this many events (`-c`).
    Period(u64),
}

/// A failed perf or BPF syscall, naming the call and what it was for.
#[derive(Debug, Error)]
pub enum PerfError {
    /// `perf_event_open` failed for a sampling event.
    #[error("perf_event_open for `{event}` on CPU {cpu} failed")]
    Open {
        /// The event name.
        event: String,
        /// The CPU.
        cpu: u32,
        /// The errno.
        source: io::Error,
    },
    /// `ioctl(PERF_EVENT_IOC_ENABLE)` failed.
    #[error("ioctl(PERF_EVENT_IOC_ENABLE) for `{event}` on CPU {cpu} failed")]
    Enable {
        /// The event name.
        event: String,
        /// The CPU.
        cpu: u32,
        /// The errno.
        source: io::Error,
    },
    /// Opening or mapping the side-band event failed.
    #[error("perf_event_open/mmap of the side-band event on CPU {cpu} failed")]
    SideBand {
        /// The CPU.
        cpu: u32,
        /// The errno.
        source: io::Error,
    },
}

impl PerfError {
    /// The underlying errno.
    pub fn io_error(&self) -> &io::Error {
        match self {
            PerfError::Open { source, .. }
            | PerfError::Enable { source, .. }
            | PerfError::SideBand { source, .. } => source,
        }
    }
}

/// Programs an [`Event`] into a `perf_event_attr`.
struct Programmed<'a>(&'a Event);

impl perf_event::events::Event for Programmed<'_> {
    fn update_attrs(self, attr: &mut perf_event_attr) {
        attr.type_ = self.0.kind.perf_type();
        attr.config = self.0.config;
    }
}

fn builder(event: &Event) -> Builder<'static> {
    let mut builder = Builder::new(Programmed(event));
    // A tracepoint fires in the kernel; its modifiers choose stacks, not privilege levels.
    if event.kind.is_sampled() {
        builder
            .exclude_user(!event.modifiers.user)
            .exclude_kernel(!event.modifiers.kernel)
            .exclude_hv(true);
    }
    builder
}

/// Opens `event` as a counting event on the calling process to see whether this machine
/// supports it. Kernel counting is left out so the probe works without privileges (a
/// tracepoint, which counts kernel hits, is probed as it will be opened).
pub fn probe(event: &Event) -> io::Result<()> {
    let mut builder = builder(event);
    if event.kind.is_sampled() {
        builder.exclude_kernel(true).exclude_user(false);
    }
    builder.observe_self().any_cpu();
    builder.build().map(drop)
}

/// A perf event a BPF program is linked to, for all processes, opened disabled: a sampling
/// event on one CPU, or a tracepoint event.
#[derive(Debug)]
pub struct SamplingEvent {
    counter: Counter,
    cpu: u32,
    name: String,
}

impl SamplingEvent {
    /// Opens `event` on `cpu` for every process. It stays disabled until
    /// [`SamplingEvent::enable`].
    pub fn open(event: &Event, sampling: Sampling, cpu: u32) -> Result<SamplingEvent, PerfError> {
        SamplingEvent::open_with(event, cpu, |builder| {
            match sampling {
                Sampling::Frequency(hz) => builder.sample_frequency(hz),
                Sampling::Period(period) => builder.sample_period(period),
            };
        })
    }

    /// Opens `event` on `cpu` for every process, disabled, with `configure` applied.
    fn open_with(
        event: &Event,
        cpu: u32,
        configure: impl FnOnce(&mut Builder<'static>),
    ) -> Result<SamplingEvent, PerfError> {
        let mut builder = builder(event);
        builder.any_pid().one_cpu(cpu as usize).enabled(false);
        configure(&mut builder);
        let counter = builder.build().map_err(|source| PerfError::Open {
            event: event.name(),
            cpu,
            source,
        })?;
        Ok(SamplingEvent {
            counter,
            cpu,
            name: event.name(),
        })
    }

    /// Opens tracepoint `event` (its id looked up) as a counting event on `cpu` for every
    /// process, disabled. The programs linked to it run on every hit on any CPU: the kernel
    /// keeps them in the tracepoint's run array, not in the event. Its modifiers only choose
    /// the stacks the program takes.
    pub fn open_tracepoint(event: &Event, cpu: u32) -> Result<SamplingEvent, PerfError> {
        debug_assert!(!event.kind.is_sampled() && event.config != 0);
        SamplingEvent::open_with(event, cpu, |_| {})
    }

    /// The CPU this event samples.
    pub fn cpu(&self) -> u32 {
        self.cpu
    }

    /// The event's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The perf event's file descriptor, for `BPF_LINK_CREATE`.
    pub fn raw_fd(&self) -> RawFd {
        self.counter.as_raw_fd()
    }

    /// Starts sampling (`PERF_EVENT_IOC_ENABLE`).
    pub fn enable(&mut self) -> Result<(), PerfError> {
        self.counter.enable().map_err(|source| PerfError::Enable {
            event: self.name.clone(),
            cpu: self.cpu,
            source,
        })
    }
}

/// Size of each CPU's side-band ring buffer: about 2,000 mapping records, drained every
/// 20 ms. It stays within the kernel's per-user allowance for locked perf buffers
/// (kernel.perf_event_mlock_kb per CPU), so prof also runs with capabilities instead of root.
const SIDE_BAND_BYTES: usize = 256 << 10;

/// Opens the side-band event on `cpu`: a dummy software event that reports every process's
/// executable mappings (MMAP2, with build ids where the kernel can), names (COMM), forks and
/// exits, all timestamped with CLOCK_MONOTONIC so records from different CPUs can be ordered.
/// With `wake_on_each`, a reader polling the ring wakes on every record rather than only on
/// its own schedule: the unwinder needs a new mapping within microseconds, not 20 ms.
pub fn open_side_band(cpu: u32, wake_on_each: bool) -> Result<Sampler, PerfError> {
    let open = |with_build_id: bool| -> io::Result<Sampler> {
        let mut builder = Builder::new(Software::DUMMY);
        builder
            .any_pid()
            .one_cpu(cpu as usize)
            .mmap(true)
            .mmap2(true)
            .comm(true)
            .comm_exec(true)
            .task(true)
            .sample_id_all(true)
            .sample(SampleFlag::TIME)
            .clockid(Clock::MONOTONIC)
            .build_id(with_build_id)
            .enabled(true);
        if wake_on_each {
            builder.wakeup_watermark(1);
        }
        builder.build()?.sampled(SIDE_BAND_BYTES)
    };
    // Build ids in MMAP2 need Linux 5.12; older kernels give EINVAL, and inode ids do.
    open(true)
        .or_else(|err| {
            if err.raw_os_error() == Some(libc::EINVAL) {
                open(false)
            } else {
                Err(err)
            }
        })
        .map_err(|source| PerfError::SideBand { cpu, source })
}
