//! The `perf_event` program (`on_sample`): linked to every (CPU, event) sampling event
//! through a BPF perf link whose bpf_cookie names the event and the stacks to take. The
//! links themselves ([`PerfLink`]) serve the tracepoint programs too.
//!
//! In: the events, their sampling rate, the CPUs. Out: [`PerfLink`]s held by the
//! [`BpfProfiler`] until [`BpfProfiler::detach`].

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use aya::Ebpf;
use aya::programs::PerfEvent;

use super::abi::cookie;
use super::cost::RunStats;
use super::{BpfError, BpfProfiler, program_err, sys};
use crate::events::{Event, MAX_EVENTS};
use crate::perf::{Sampling, SamplingEvent};

pub(super) const PROGRAM: &str = "on_sample";

/// Loads the sampling program into the kernel.
pub(super) fn load(ebpf: &mut Ebpf) -> Result<(), BpfError> {
    let program: &mut PerfEvent = ebpf
        .program_mut(PROGRAM)
        .expect("the object defines on_sample")
        .try_into()
        .map_err(program_err(PROGRAM))?;
    program.load().map_err(program_err(PROGRAM))
}

fn program(ebpf: &Ebpf) -> Result<&PerfEvent, BpfError> {
    ebpf.program(PROGRAM)
        .expect("the object defines on_sample")
        .try_into()
        .map_err(program_err(PROGRAM))
}

/// A perf event with a BPF program linked to it. Dropping it detaches the program and closes
/// the event.
#[derive(Debug)]
pub struct PerfLink {
    // Field order matters: the link is closed before the event it points at.
    _link: OwnedFd,
    event: SamplingEvent,
}

impl PerfLink {
    /// Links `program` to `event` with `cookie` (`BPF_LINK_CREATE`, attach type
    /// BPF_PERF_EVENT).
    pub fn create(
        program: &'static str,
        prog_fd: BorrowedFd<'_>,
        event: SamplingEvent,
        cookie: u64,
    ) -> Result<PerfLink, BpfError> {
        let link =
            sys::link_create(prog_fd, event.raw_fd(), cookie).map_err(|source| BpfError::Link {
                program,
                event: event.name().to_owned(),
                cpu: event.cpu(),
                source,
            })?;
        Ok(PerfLink { _link: link, event })
    }

    /// Starts the event.
    pub fn enable(&mut self) -> Result<(), BpfError> {
        Ok(self.event.enable()?)
    }
}

impl BpfProfiler {
    /// Opens `event` on each CPU and links the sampling program to it, with the cookie for
    /// `index`. The events stay disabled until [`BpfProfiler::enable`].
    pub fn attach(
        &mut self,
        index: usize,
        event: &Event,
        sampling: Sampling,
        cpus: &[u32],
    ) -> Result<(), BpfError> {
        assert!(
            index < MAX_EVENTS,
            "events are limited to MAX_EVENTS when parsed"
        );
        let fd = program(&self.ebpf)?.fd().map_err(program_err(PROGRAM))?;
        for &cpu in cpus {
            let perf_event = match SamplingEvent::open(event, sampling, cpu) {
                Ok(perf_event) => perf_event,
                // The CPU went offline since we listed them, as bcc's profile tolerates.
                Err(err) if err.io_error().raw_os_error() == Some(libc::ENODEV) => continue,
                Err(err) => return Err(err.into()),
            };
            self.links.push(PerfLink::create(
                PROGRAM,
                fd.as_fd(),
                perf_event,
                cookie(index, event),
            )?);
        }
        Ok(())
    }

    /// Starts sampling on every attached event.
    pub fn enable(&mut self) -> Result<(), BpfError> {
        for link in &mut self.links {
            link.enable()?;
        }
        Ok(())
    }

    /// How many links are attached: one per (CPU, sampling event), one per tracepoint event.
    pub fn link_count(&self) -> usize {
        self.links.len()
    }

    /// Stops sampling: closes every link and perf event. The maps stay readable.
    pub fn detach(&mut self) {
        self.links.clear();
    }

    /// The sampling program's run time and run count so far (`BPF_OBJ_GET_INFO_BY_FD`).
    pub fn run_stats(&self) -> Result<RunStats, BpfError> {
        let info = program(&self.ebpf)?.info().map_err(program_err(PROGRAM))?;
        Ok(RunStats {
            run_time: info.run_time(),
            runs: info.run_count(),
        })
    }
}
