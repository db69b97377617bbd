//! The BPF side: one object (`ebpf/profile.bpf.c`) holds every program and map of prof, and
//! one loader ([`BpfProfiler::load`]) creates its maps, sized from the flags, and loads the
//! programs a recording needs. Each program type has a module of its own:
//!
//! - [`sampling`]: the `perf_event` program, linked to every (CPU, event) perf event with a
//!   bpf_cookie that says which event fired and which stacks to take;
//! - [`tracepoint`]: the `tracepoint` program, linked once to each tracepoint event with the
//!   same kind of cookie;
//! - [`offcpu`]: the off-CPU program on the scheduler's switch, and the threads blocked now;
//! - [`targets`]: the raw tracepoints that keep the target set current across fork and exit;
//! - [`maps`]: reading and clearing what the programs counted, in two generations;
//! - [`unwind`]: the maps of the table-driven user-stack walk;
//! - [`cost`]: BPF run-time statistics, prof's own cost;
//! - [`sys`]: the raw `bpf()` calls aya does not offer;
//! - [`abi`]: the layouts shared with the C side, checked against the compiled object.
//!
//! In: a [`BpfConfig`], the events and CPUs to sample, the target tgids. Out: the `counts`
//! entries ([`SampleKey`] → [`SampleValue`]), stacks by id, and the in-kernel counters
//! ([`KernelStats`]).

pub mod abi;
pub mod cost;
pub mod maps;
pub mod offcpu;
pub mod sampling;
pub mod sys;
pub mod targets;
pub mod tracepoint;
pub mod unwind;

use std::io;
use std::time::Duration;

use aya::maps::{Map, MapError};
use aya::programs::ProgramError;
use aya::{Ebpf, EbpfError, EbpfLoader};
use thiserror::Error;

use crate::perf::PerfError;

pub use abi::{
    COOKIE_EVENT_MASK, COOKIE_KERNEL_STACK, COOKIE_USER_STACK, CpuMask, MAX_CPUS, MAX_STACK_DEPTH,
    OffCpuBlock, PROGRAM_OBJECT, STACK_ID_MIN, STACK_NOT_TAKEN, SampleKey, SampleValue, StackTrace,
    cookie,
};
pub use cost::{Program, RunStats, RunStatsGuard, enable_run_stats};
pub use maps::{EventStats, Generation, KernelStats, Taken};
pub use sampling::PerfLink;
pub use unwind::{UnwindMaps, UnwindSizes};

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
    /// while the other is drained (`prof record` and the agent). Otherwise only generation 0 is usable.
    pub double_buffer: bool,
    /// Count one tracepoint hit in this many, with this weight (`-c N`); 1 counts every hit.
    pub tracepoint_period: u64,
    /// The CPUs the tracepoint and off-CPU programs count on: they run on whichever CPU the
    /// tracepoint fires.
    pub cpus: CpuMask,
    /// Blocks shorter than this are not counted as off-CPU time (`--off-cpu-min-us`).
    pub off_cpu_min: Duration,
    /// Blocked threads the off-CPU program can follow at once (`--off-cpu-tasks`).
    pub off_cpu_tasks: u32,
    /// Walk user stacks with unwind tables, with maps of these sizes; `None`: frame pointers
    /// only (`--unwind fp`).
    pub unwind: Option<UnwindSizes>,
}

/// Blocked threads the off-CPU program follows at once by default: about 2 MB of kernel
/// memory.
pub const DEFAULT_OFF_CPU_TASKS: u32 = 16384;

impl Default for BpfConfig {
    /// 32,768 stacks and 65,536 counts in one generation, no target filter, every tracepoint hit
    /// counted on every CPU, every block counted, and user stacks walked by frame pointer.
    fn default() -> BpfConfig {
        BpfConfig {
            filter_tgids: false,
            stack_storage_size: 32768,
            counts_map_size: 65536,
            double_buffer: false,
            tracepoint_period: 1,
            cpus: CpuMask::ALL,
            off_cpu_min: Duration::ZERO,
            off_cpu_tasks: DEFAULT_OFF_CPU_TASKS,
            unwind: None,
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
    /// `bpf(BPF_LINK_CREATE)` failed.
    #[error("bpf(BPF_LINK_CREATE) of `{program}` to `{event}` on CPU {cpu} failed")]
    Link {
        /// The program linked.
        program: &'static str,
        /// The event name.
        event: String,
        /// The CPU.
        cpu: u32,
        /// The errno.
        source: io::Error,
    },
    /// Off-CPU profiling cannot be set up here.
    #[error(
        "--off-cpu: cannot link the off-CPU program to sched:sched_switch (it needs tracepoint \
         programs with BPF perf links, Linux 5.15 or later)"
    )]
    OffCpu(#[source] Box<BpfError>),
    /// A batch read of a map failed.
    #[error("bpf({command}) of BPF map `{map}` failed")]
    Batch {
        /// The command: `BPF_MAP_LOOKUP_BATCH` or `BPF_MAP_LOOKUP_AND_DELETE_BATCH`.
        command: &'static str,
        /// The map's name.
        map: &'static str,
        /// The errno.
        source: io::Error,
    },
    /// Mapping a BPF map into memory failed.
    #[error("mmap of BPF map `{map}` failed")]
    Mmap {
        /// The map's name.
        map: &'static str,
        /// The errno.
        source: io::Error,
    },
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
        if let BpfError::EnableStats(err)
        | BpfError::Link { source: err, .. }
        | BpfError::Mmap { source: err, .. } = self
        {
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

pub(crate) fn map_err(map: &'static str) -> impl FnOnce(MapError) -> BpfError {
    move |source| BpfError::Map { map, source }
}

pub(crate) fn program_err(program: &'static str) -> impl FnOnce(ProgramError) -> BpfError {
    move |source| BpfError::Program { program, source }
}

/// Processes the target set holds at once: the command or `-p` processes and their live
/// descendants.
const TARGETS: u32 = 16384;

/// The loaded object, its maps, and the links that attach its programs.
#[derive(Debug)]
pub struct BpfProfiler {
    ebpf: Ebpf,
    links: Vec<PerfLink>,
    generation: Generation,
    /// The index of the off-CPU event, once [`BpfProfiler::attach_off_cpu`] linked it.
    off_cpu_event: Option<usize>,
    unwind: Option<UnwindMaps>,
}

impl BpfProfiler {
    /// Creates every map with `config` applied (globals and map sizes are set before load)
    /// and loads the sampling program. The other programs are loaded by the modules that
    /// attach them, only when a recording needs them.
    pub fn load(config: &BpfConfig) -> Result<BpfProfiler, BpfError> {
        let filter = u8::from(config.filter_tgids);
        let period = config.tracepoint_period.max(1);
        let off_cpu_min_ns = u64::try_from(config.off_cpu_min.as_nanos()).unwrap_or(u64::MAX);
        // The stack map is preallocated: an unused generation gets one entry, not 35 MB.
        let (second_stacks, second_counts) = if config.double_buffer {
            (config.stack_storage_size, config.counts_map_size)
        } else {
            (1, 1)
        };
        let unwind_tables = u8::from(config.unwind.is_some());
        // Unused unwind maps get one entry each: they reserve nothing.
        let sizes = config.unwind.unwrap_or(UnwindSizes {
            rows: 1,
            files: 1,
            processes: 1,
        });
        let mut ebpf = EbpfLoader::new()
            .override_global("filter_tgids", &filter, true)
            .override_global("tracepoint_period", &period, true)
            .override_global("off_cpu_min_ns", &off_cpu_min_ns, true)
            .override_global("sampled_cpus", &config.cpus.0, true)
            .override_global("unwind_tables", &unwind_tables, true)
            .map_max_entries(unwind::ROWS, sizes.rows)
            .map_max_entries(unwind::FILES, sizes.files)
            .map_max_entries(unwind::PROCS, sizes.processes)
            .map_max_entries("stacks_0", config.stack_storage_size)
            .map_max_entries("counts_0", config.counts_map_size)
            .map_max_entries("stacks_1", second_stacks)
            .map_max_entries("counts_1", second_counts)
            // The target set is preallocated; without a filter it is never read.
            .map_max_entries("targets", if config.filter_tgids { TARGETS } else { 1 })
            .map_max_entries("off_cpu_blocks", config.off_cpu_tasks.max(1))
            .load(PROGRAM_OBJECT)?;
        sampling::load(&mut ebpf)?;
        let unwind = match config.unwind {
            Some(sizes) => {
                let mut take = |name| ebpf.take_map(name).expect("the object defines the map");
                let (rows, files, procs) =
                    (take(unwind::ROWS), take(unwind::FILES), take(unwind::PROCS));
                Some(UnwindMaps::new(rows, files, procs, sizes)?)
            }
            None => None,
        };
        Ok(BpfProfiler {
            ebpf,
            links: Vec::new(),
            generation: Generation::First,
            off_cpu_event: None,
            unwind,
        })
    }

    /// The unwinder's maps, for the one who keeps the tables current; `None` without
    /// tables, or once taken.
    pub fn take_unwind_maps(&mut self) -> Option<UnwindMaps> {
        self.unwind.take()
    }

    /// The map `name`, which the object defines.
    fn map(&self, name: &'static str) -> &Map {
        self.ebpf
            .map(name)
            .unwrap_or_else(|| panic!("the BPF object defines the map {name}"))
    }

    /// The map `name`, which the object defines, for writing.
    fn map_mut(&mut self, name: &'static str) -> &mut Map {
        self.ebpf
            .map_mut(name)
            .unwrap_or_else(|| panic!("the BPF object defines the map {name}"))
    }
}
