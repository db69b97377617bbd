//! The `tracepoint` program (`on_tracepoint`), for tracepoint events (`-e
//! sched:sched_switch`): linked once to each tracepoint through a BPF perf link whose cookie
//! names the event and the stacks to take, the same cookie as the sampling program's.
//!
//! The kernel keeps the programs linked to a tracepoint's perf events in the tracepoint's own
//! run array (`tp_event->prog_array`), shared by all of them, and runs the whole array on every
//! hit on any CPU: the CPU an event was opened on does not filter it. So each tracepoint event
//! gets one perf event and one link, and the program checks the CPU against the recording's
//! CPUs itself. Linking it once per CPU would run it once per CPU on every hit.
//!
//! In: the event (its tracepoint id looked up), its index, a CPU to open the perf event on.
//! Out: a [`PerfLink`] held by the [`BpfProfiler`] until [`BpfProfiler::detach`].

use std::os::fd::AsFd;

use aya::programs::TracePoint;

use super::abi::cookie;
use super::{BpfError, BpfProfiler, PerfLink, program_err};
use crate::events::{Event, MAX_EVENTS};
use crate::perf::SamplingEvent;

pub(super) const PROGRAM: &str = "on_tracepoint";

impl BpfProfiler {
    /// Links the tracepoint program to tracepoint `event`, once, with the cookie for `index`.
    /// `cpu` is where the perf event is opened; the program counts hits on the CPUs of
    /// [`super::BpfConfig::cpus`], wherever they happen.
    pub fn attach_tracepoint(
        &mut self,
        index: usize,
        event: &Event,
        cpu: u32,
    ) -> Result<(), BpfError> {
        self.link_tracepoint(PROGRAM, index, event, cpu)
    }

    /// Links `program`, a tracepoint program, to tracepoint `event` (loading it first if this
    /// recording has not): one perf event on `cpu`, one link with the cookie for `index`.
    pub(super) fn link_tracepoint(
        &mut self,
        program: &'static str,
        index: usize,
        event: &Event,
        cpu: u32,
    ) -> Result<(), BpfError> {
        assert!(
            index < MAX_EVENTS,
            "events are limited to MAX_EVENTS when parsed"
        );
        let loaded: &mut TracePoint = self
            .ebpf
            .program_mut(program)
            .expect("the object defines the tracepoint programs")
            .try_into()
            .map_err(program_err(program))?;
        if loaded.fd().is_err() {
            loaded.load().map_err(program_err(program))?;
        }
        let fd = loaded.fd().map_err(program_err(program))?;
        let perf_event = SamplingEvent::open_tracepoint(event, cpu)?;
        let link = PerfLink::create(program, fd.as_fd(), perf_event, cookie(index, event))?;
        self.links.push(link);
        Ok(())
    }
}
