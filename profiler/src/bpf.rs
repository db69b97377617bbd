//! The BPF side: load the embedded program, size its maps, keep the target set, link the
//! program to every (CPU, event) perf event with a cookie, and read its maps and counters.
//!
//! In: a [`BpfConfig`], the events and CPUs to sample, the target tgids. Out: the `counts`
//! entries ([`SampleKey`] → [`SampleValue`]), stacks by id, and the in-kernel counters
//! ([`KernelStats`]).
//!
//! Counts and stacks come in two generations (`counts_0`/`stacks_0`, `counts_1`/`stacks_1`);
//! the program writes the one the `generation` map names. `prof record` uses generation 0
//! only (generation 1 is sized to one entry). `prof agent` loads both at full size and, at the
//! end of each window, [flips](BpfProfiler::flip) the generation, then reads and
//! [clears](BpfProfiler::clear) the one it left. The layouts here mirror `ebpf/profile.h`; the test at the bottom checks
//! them against the compiled object.

use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::time::Duration;

use aya::maps::{Array, HashMap, MapData, MapError, PerCpuArray};
use aya::programs::{PerfEvent, ProgramError, RawTracePoint};
use aya::{Ebpf, EbpfError, EbpfLoader};
use thiserror::Error;

use crate::events::{Event, MAX_EVENTS};
use crate::perf::{PerfError, PerfLink, Sampling, SamplingEvent};

/// The compiled `ebpf/profile.bpf.c`, built by `build.rs`.
pub static PROGRAM_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/profile.bpf.o"));

/// Deepest stack the kernel hands over (`PROF_MAX_STACK_DEPTH`).
pub const MAX_STACK_DEPTH: usize = 127;
/// Cookie bits 0..15: the event's index (`PROF_COOKIE_EVENT_MASK`).
pub const COOKIE_EVENT_MASK: u64 = 0xffff;
/// Cookie bit: take the user stack (`PROF_COOKIE_USER_STACK`).
pub const COOKIE_USER_STACK: u64 = 1 << 32;
/// Cookie bit: take the kernel stack (`PROF_COOKIE_KERNEL_STACK`).
pub const COOKIE_KERNEL_STACK: u64 = 1 << 33;
/// Stack id of a stack that was not asked for (`PROF_STACK_NOT_TAKEN`).
pub const STACK_NOT_TAKEN: u64 = 0;
/// Stack ids below this are errnos, not stacks (`PROF_STACK_ID_MIN`).
pub const STACK_ID_MIN: u64 = 4096;
/// Counters per event row in `stats` (`PROF_STAT_COUNT`).
const STAT_COUNT: u32 = 4;
const STAT_SAMPLES: u32 = 0;
const STAT_STACK_MAP_FULL: u32 = 1;
const STAT_NO_STACK: u32 = 2;
const STAT_MAP_FULL: u32 = 3;
/// Row of `stats` for counters not tied to an event (`PROF_GLOBAL_ROW`).
const GLOBAL_ROW: u32 = MAX_EVENTS as u32;
const GLOBAL_FORKS_UNTRACKED: u32 = 0;

/// Key of the `counts` map (`struct sample_key`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct SampleKey {
    /// The sampled process.
    pub tgid: u32,
    /// Index of the event in the recording.
    pub event: u32,
    /// Id in the stack map (a hash of the stack), or [`STACK_NOT_TAKEN`], or an errno
    /// below [`STACK_ID_MIN`].
    pub user_stack: u64,
    /// Likewise for the kernel stack.
    pub kernel_stack: u64,
}

/// Value of the `stacks` map (`struct stack_trace`): innermost frame first, zero-padded.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct StackTrace {
    /// Instruction pointers.
    pub ips: [u64; MAX_STACK_DEPTH],
}

/// Value of the `counts` map (`struct sample_value`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct SampleValue {
    /// Number of samples.
    pub samples: u64,
    /// Sum of the sample periods: the estimated number of events.
    pub period: u64,
}

// SAFETY: both are repr(C) structs of plain integers without padding (checked against the
// BPF object by `abi_matches_the_bpf_object`), so any bit pattern is a valid value.
unsafe impl aya::Pod for SampleKey {}
// SAFETY: as above.
unsafe impl aya::Pod for SampleValue {}
// SAFETY: as above (an array of u64).
unsafe impl aya::Pod for StackTrace {}

/// The cookie of the link for event `index`: the index plus which stacks to take.
pub fn cookie(index: usize, event: &Event) -> u64 {
    let mut cookie = index as u64 & COOKIE_EVENT_MASK;
    if event.modifiers.user {
        cookie |= COOKIE_USER_STACK;
    }
    if event.modifiers.kernel {
        cookie |= COOKIE_KERNEL_STACK;
    }
    cookie
}

/// How to load the program.
#[derive(Clone, Copy, Debug)]
pub struct BpfConfig {
    /// Sample only the tgids in the target set (commands and `-p`), instead of everything.
    pub filter_tgids: bool,
    /// Distinct stacks the stack map holds (`--stack-storage-size`).
    pub stack_storage_size: u32,
    /// Entries of the counts map (`--counts-map-size`).
    pub counts_map_size: u32,
    /// Size both generations of the counts and stack maps, so that sampling can go on in one
    /// while the other is drained (the agent). Otherwise only generation 0 is usable.
    pub double_buffer: bool,
}

/// One of the two generations of the counts and stack maps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Generation {
    /// `counts_0` and `stacks_0`: the only one `prof record` uses.
    First,
    /// `counts_1` and `stacks_1`.
    Second,
}

impl Generation {
    /// The other generation.
    pub fn other(self) -> Generation {
        match self {
            Generation::First => Generation::Second,
            Generation::Second => Generation::First,
        }
    }

    fn index(self) -> u32 {
        match self {
            Generation::First => 0,
            Generation::Second => 1,
        }
    }

    fn counts_map(self) -> &'static str {
        match self {
            Generation::First => "counts_0",
            Generation::Second => "counts_1",
        }
    }

    fn stacks_map(self) -> &'static str {
        match self {
            Generation::First => "stacks_0",
            Generation::Second => "stacks_1",
        }
    }
}

/// What went wrong on the BPF side.
#[derive(Debug, Error)]
pub enum BpfError {
    /// Loading the object (creating maps, relocating) failed.
    #[error("loading the BPF object failed")]
    Load(#[from] EbpfError),
    /// Loading or attaching a program failed.
    #[error("BPF program `{program}`")]
    Program {
        /// The program's name.
        program: &'static str,
        /// The aya error.
        source: ProgramError,
    },
    /// A map operation failed.
    #[error("BPF map `{map}`")]
    Map {
        /// The map's name.
        map: &'static str,
        /// The aya error.
        source: MapError,
    },
    /// A perf syscall failed.
    #[error(transparent)]
    Perf(#[from] PerfError),
    /// `bpf(BPF_ENABLE_STATS)` failed.
    #[error("turning on BPF run-time statistics (bpf BPF_ENABLE_STATS) failed")]
    EnableStats(#[source] io::Error),
}

impl BpfError {
    /// The errno underneath, where there is one (to tell permission problems apart).
    pub fn io_error(&self) -> Option<&io::Error> {
        use std::error::Error as _;
        let mut source: Option<&(dyn std::error::Error + 'static)> = self.source();
        if let BpfError::Perf(err) = self {
            return Some(err.io_error());
        }
        if let BpfError::EnableStats(err) = self {
            return Some(err);
        }
        while let Some(err) = source {
            if let Some(io) = err.downcast_ref::<io::Error>() {
                return Some(io);
            }
            source = err.source();
        }
        None
    }
}

fn map_err(map: &'static str) -> impl FnOnce(MapError) -> BpfError {
    move |source| BpfError::Map { map, source }
}

fn program_err(program: &'static str) -> impl FnOnce(ProgramError) -> BpfError {
    move |source| BpfError::Program { program, source }
}

/// In-kernel counters of one event.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EventStats {
    /// Samples that passed the target filter.
    pub samples: u64,
    /// Samples with a new stack that found the stack map full.
    pub stack_map_full: u64,
    /// Samples for which no stack could be taken.
    pub no_stack: u64,
    /// Samples dropped because the counts map was full.
    pub map_full: u64,
}

/// All in-kernel counters.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KernelStats {
    /// One per event, in recording order.
    pub events: Vec<EventStats>,
    /// Children of targets that could not join the target set.
    pub forks_untracked: u64,
}

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

fn sample_program(ebpf: &Ebpf) -> Result<&PerfEvent, BpfError> {
    ebpf.program(SAMPLE_PROGRAM)
        .expect("the object defines on_sample")
        .try_into()
        .map_err(program_err(SAMPLE_PROGRAM))
}

/// Processes the target set holds at once: the command or `-p` processes and their live
/// descendants.
const TARGETS: u32 = 16384;

const SAMPLE_PROGRAM: &str = "on_sample";
const FORK_PROGRAM: &str = "on_process_fork";
const EXIT_PROGRAM: &str = "on_process_exit";

/// The loaded program, its maps, and the links that attach it.
#[derive(Debug)]
pub struct BpfProfiler {
    ebpf: Ebpf,
    links: Vec<PerfLink>,
    generation: Generation,
}

impl BpfProfiler {
    /// Loads the program with `config` applied (globals and map sizes are set before load).
    pub fn load(config: &BpfConfig) -> Result<BpfProfiler, BpfError> {
        let filter = u8::from(config.filter_tgids);
        // The stack map is preallocated: an unused generation gets one entry, not 35 MB.
        let (second_stacks, second_counts) = if config.double_buffer {
            (config.stack_storage_size, config.counts_map_size)
        } else {
            (1, 1)
        };
        let mut ebpf = EbpfLoader::new()
            .override_global("filter_tgids", &filter, true)
            .map_max_entries("stacks_0", config.stack_storage_size)
            .map_max_entries("counts_0", config.counts_map_size)
            .map_max_entries("stacks_1", second_stacks)
            .map_max_entries("counts_1", second_counts)
            // The target set is preallocated; without a filter it is never read.
            .map_max_entries("targets", if config.filter_tgids { TARGETS } else { 1 })
            .load(PROGRAM_OBJECT)?;
        let program: &mut PerfEvent = ebpf
            .program_mut(SAMPLE_PROGRAM)
            .expect("the object defines on_sample")
            .try_into()
            .map_err(program_err(SAMPLE_PROGRAM))?;
        program.load().map_err(program_err(SAMPLE_PROGRAM))?;
        Ok(BpfProfiler {
            ebpf,
            links: Vec::new(),
            generation: Generation::First,
        })
    }

    /// Adds processes to the target set.
    pub fn add_targets(&mut self, tgids: &[u32]) -> Result<(), BpfError> {
        let mut targets: HashMap<&mut MapData, u32, u8> = HashMap::try_from(
            self.ebpf
                .map_mut("targets")
                .expect("the object defines targets"),
        )
        .map_err(map_err("targets"))?;
        for &tgid in tgids {
            targets.insert(tgid, 1, 0).map_err(map_err("targets"))?;
        }
        Ok(())
    }

    /// Makes children forked by targets join the target set, and exited targets leave it.
    pub fn follow_forks(&mut self) -> Result<(), BpfError> {
        for (program, tracepoint) in [
            (FORK_PROGRAM, "sched_process_fork"),
            (EXIT_PROGRAM, "sched_process_exit"),
        ] {
            let raw: &mut RawTracePoint = self
                .ebpf
                .program_mut(program)
                .expect("the object defines the fork and exit programs")
                .try_into()
                .map_err(program_err(program))?;
            raw.load().map_err(program_err(program))?;
            raw.attach(tracepoint).map_err(program_err(program))?;
        }
        Ok(())
    }

    /// Opens `event` on each CPU and links the program to it, with the cookie for `index`.
    /// The events stay disabled until [`BpfProfiler::enable`].
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
        let fd = sample_program(&self.ebpf)?
            .fd()
            .map_err(program_err(SAMPLE_PROGRAM))?;
        for &cpu in cpus {
            let perf_event = match SamplingEvent::open(event, sampling, cpu) {
                Ok(perf_event) => perf_event,
                // The CPU went offline since we listed them, as bcc's profile tolerates.
                Err(err) if err.io_error().raw_os_error() == Some(libc::ENODEV) => continue,
                Err(err) => return Err(err.into()),
            };
            self.links
                .push(perf_event.link(event, fd.as_fd(), cookie(index, event))?);
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

    /// How many (CPU, event) links are attached.
    pub fn link_count(&self) -> usize {
        self.links.len()
    }

    /// The sampling program's run time and run count so far (`BPF_OBJ_GET_INFO_BY_FD`).
    pub fn run_stats(&self) -> Result<RunStats, BpfError> {
        let info = sample_program(&self.ebpf)?
            .info()
            .map_err(program_err(SAMPLE_PROGRAM))?;
        Ok(RunStats {
            run_time: info.run_time(),
            runs: info.run_count(),
        })
    }

    /// Stops sampling: closes every link and perf event. The maps stay readable.
    pub fn detach(&mut self) {
        self.links.clear();
    }

    /// Reads the in-kernel counters of the first `events` events, summed over CPUs.
    pub fn stats(&self, events: usize) -> Result<KernelStats, BpfError> {
        let stats: PerCpuArray<&MapData, u64> =
            PerCpuArray::try_from(self.ebpf.map("stats").expect("the object defines stats"))
                .map_err(map_err("stats"))?;
        let read = |row: u32, stat: u32| -> Result<u64, BpfError> {
            let values = stats
                .get(&(row * STAT_COUNT + stat), 0)
                .map_err(map_err("stats"))?;
            Ok(values.iter().sum())
        };
        let mut result = KernelStats::default();
        for row in 0..events as u32 {
            result.events.push(EventStats {
                samples: read(row, STAT_SAMPLES)?,
                stack_map_full: read(row, STAT_STACK_MAP_FULL)?,
                no_stack: read(row, STAT_NO_STACK)?,
                map_full: read(row, STAT_MAP_FULL)?,
            });
        }
        result.forks_untracked = read(GLOBAL_ROW, GLOBAL_FORKS_UNTRACKED)?;
        Ok(result)
    }

    /// Every entry of the counts map (generation 0, the one `prof record` uses).
    pub fn counts(&self) -> Result<Vec<(SampleKey, SampleValue)>, BpfError> {
        self.counts_in(Generation::First)
    }

    /// The stack with `id` in generation 0, innermost frame first; `None` if the id is not
    /// in the map.
    pub fn stack(&self, id: u64) -> Result<Option<Vec<u64>>, BpfError> {
        self.stack_in(Generation::First, id)
    }

    /// The generation samples go to now.
    pub fn generation(&self) -> Generation {
        self.generation
    }

    /// Sends new samples to the other generation and returns the one they went to until now.
    /// A sample that was being counted on another CPU during the flip may still land in the
    /// old generation for a few microseconds; read it after a short pause.
    pub fn flip(&mut self) -> Result<Generation, BpfError> {
        let old = self.generation;
        let new = old.other();
        let mut generation: Array<&mut MapData, u32> = Array::try_from(
            self.ebpf
                .map_mut("generation")
                .expect("the object defines generation"),
        )
        .map_err(map_err("generation"))?;
        generation
            .set(0, new.index(), 0)
            .map_err(map_err("generation"))?;
        self.generation = new;
        Ok(old)
    }

    /// Every entry of one generation's counts map.
    pub fn counts_in(
        &self,
        generation: Generation,
    ) -> Result<Vec<(SampleKey, SampleValue)>, BpfError> {
        let name = generation.counts_map();
        let counts: HashMap<&MapData, SampleKey, SampleValue> =
            HashMap::try_from(self.ebpf.map(name).expect("the object defines counts_N"))
                .map_err(map_err(name))?;
        counts
            .iter()
            .collect::<Result<Vec<_>, _>>()
            .map_err(map_err(name))
    }

    /// The stack with `id` in one generation, innermost frame first; `None` if the id is not
    /// in the map.
    pub fn stack_in(&self, generation: Generation, id: u64) -> Result<Option<Vec<u64>>, BpfError> {
        let name = generation.stacks_map();
        let stacks: HashMap<&MapData, u64, StackTrace> =
            HashMap::try_from(self.ebpf.map(name).expect("the object defines stacks_N"))
                .map_err(map_err(name))?;
        match stacks.get(&id, 0) {
            Ok(trace) => Ok(Some(
                trace
                    .ips
                    .iter()
                    .copied()
                    .take_while(|&ip| ip != 0)
                    .collect(),
            )),
            Err(MapError::KeyNotFound) => Ok(None),
            Err(source) => Err(BpfError::Map { map: name, source }),
        }
    }

    /// Empties one generation's counts and stack maps. Call it only for the generation that
    /// samples do not go to.
    pub fn clear(&mut self, generation: Generation) -> Result<(), BpfError> {
        assert_ne!(
            generation, self.generation,
            "the generation being written is never cleared"
        );
        self.clear_map::<SampleKey, SampleValue>(generation.counts_map())?;
        self.clear_map::<u64, StackTrace>(generation.stacks_map())
    }

    fn clear_map<K: aya::Pod, V: aya::Pod>(&mut self, name: &'static str) -> Result<(), BpfError> {
        let mut map: HashMap<&mut MapData, K, V> =
            HashMap::try_from(self.ebpf.map_mut(name).expect("the object defines the map"))
                .map_err(map_err(name))?;
        let keys = map
            .keys()
            .collect::<Result<Vec<_>, _>>()
            .map_err(map_err(name))?;
        for key in keys {
            match map.remove(&key) {
                Ok(()) | Err(MapError::KeyNotFound) => {}
                Err(MapError::SyscallError(err))
                    if err.io_error.raw_os_error() == Some(libc::ENOENT) => {}
                Err(source) => return Err(BpfError::Map { map: name, source }),
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::mem::{offset_of, size_of};

    use object::{Object, ObjectSection, ObjectSymbol};

    use super::*;

    /// Reads `abi_<name>` from the compiled BPF object's .rodata.
    fn abi(name: &str) -> u64 {
        let file = object::File::parse(PROGRAM_OBJECT).expect("the BPF object is ELF");
        let symbol = file
            .symbols()
            .find(|s| s.name() == Ok(&format!("abi_{name}")))
            .unwrap_or_else(|| panic!("abi_{name} is in the object"));
        let section = file
            .section_by_index(symbol.section_index().unwrap())
            .unwrap();
        let data = section.data().unwrap();
        let at = symbol.address() as usize;
        u64::from_le_bytes(data[at..at + 8].try_into().unwrap())
    }

    /// The Rust twins of the BPF structs and constants match what clang built for the BPF
    /// target, field by field.
    #[test]
    fn abi_matches_the_bpf_object() {
        let expect = |name: &str, rust: u64| assert_eq!(abi(name), rust, "abi_{name}");
        expect("sample_key_size", size_of::<SampleKey>() as u64);
        expect("sample_key_tgid", offset_of!(SampleKey, tgid) as u64);
        expect("sample_key_event", offset_of!(SampleKey, event) as u64);
        expect(
            "sample_key_user_stack",
            offset_of!(SampleKey, user_stack) as u64,
        );
        expect(
            "sample_key_kernel_stack",
            offset_of!(SampleKey, kernel_stack) as u64,
        );
        expect("sample_value_size", size_of::<SampleValue>() as u64);
        expect(
            "sample_value_samples",
            offset_of!(SampleValue, samples) as u64,
        );
        expect(
            "sample_value_period",
            offset_of!(SampleValue, period) as u64,
        );
        expect("max_stack_depth", MAX_STACK_DEPTH as u64);
        expect("max_events", MAX_EVENTS as u64);
        expect("cookie_event_mask", COOKIE_EVENT_MASK);
        expect("cookie_user_stack", COOKIE_USER_STACK);
        expect("cookie_kernel_stack", COOKIE_KERNEL_STACK);
        expect("stack_trace_size", size_of::<StackTrace>() as u64);
        expect("stack_not_taken", STACK_NOT_TAKEN);
        expect("stack_id_min", STACK_ID_MIN);
        expect("stat_count", u64::from(STAT_COUNT));
        expect("stat_stack_map_full", u64::from(STAT_STACK_MAP_FULL));
        expect("stat_no_stack", u64::from(STAT_NO_STACK));
        expect("stat_map_full", u64::from(STAT_MAP_FULL));
        expect("global_forks_untracked", u64::from(GLOBAL_FORKS_UNTRACKED));
    }

    /// Cookies carry the event index and the stacks the modifiers ask for.
    #[test]
    fn cookies() {
        let both = Event::parse("cpu-clock").unwrap();
        let user = Event::parse("page-faults:u").unwrap();
        assert_eq!(
            cookie(3, &both),
            3 | COOKIE_USER_STACK | COOKIE_KERNEL_STACK
        );
        assert_eq!(cookie(1, &user), 1 | COOKIE_USER_STACK);
    }
}
