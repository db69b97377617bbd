//! The in-memory profile: symbolized stacks with their sample counts and estimated event
//! counts, per event, plus everything that was lost or could not be resolved.
//!
//! The model follows pprof's: a stack is a list of [`Location`]s (an address in a
//! [`Mapping`], with one [`Line`] per function, inlined ones included), and each stack
//! belongs to a set of [`Labels`] (pid, comm, ...). Locations, mappings and labels are
//! interned in per-profile [`Table`]s, so a stack is a short list of ids and every event of
//! a recording shares them, as in a pprof file.
//!
//! In: built by [`crate::symbolize`], or read from a file by [`crate::export::pprof`] and
//! [`crate::export::folded`]. Out: read by the exporters and the summary.

use std::borrow::Cow;
use std::collections::BTreeMap;

// Fx hashing: these maps hold millions of small keys of the profile itself, where
// SipHash's protection against chosen keys buys nothing and costs a third of the time.
use indexmap::IndexSet;
use rustc_hash::{FxBuildHasher, FxHashMap as HashMap, FxHashSet as HashSet};
use std::fmt;
use std::hash::{Hash, Hasher};
use std::ops::AddAssign;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use crate::events::Unit;

/// One frame's display name: `comm`, a function, or a kernel function ending in `_[k]`.
pub type Frame = Arc<str>;

/// The name of a frame that could not be resolved.
pub const UNKNOWN_FRAME: &str = "[unknown]";

/// The suffix that marks kernel frames.
pub const KERNEL_SUFFIX: &str = "_[k]";

/// How much of an event a stack got.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Value {
    /// Number of samples.
    pub samples: u64,
    /// Sum of the sample periods: the estimated event count (nanoseconds for clocks).
    pub period: u64,
}

/// The largest total an event may have: pprof stores values as int64, so a profile whose
/// totals go past this could not be written back as pprof. The readers refuse such files.
pub const MAX_TOTAL: u64 = i64::MAX as u64;

impl Value {
    /// The sum, unless either count goes past [`MAX_TOTAL`].
    pub fn checked_add(self, other: Value) -> Option<Value> {
        let sum = |a: u64, b: u64| a.checked_add(b).filter(|&n| n <= MAX_TOTAL);
        Some(Value {
            samples: sum(self.samples, other.samples)?,
            period: sum(self.period, other.period)?,
        })
    }
}

/// Sums saturate rather than wrap: the readers refuse profiles whose totals pass
/// [`MAX_TOTAL`], so a saturated sum is only reached by hand-built profiles, and it still
/// never shows a share above 100%.
impl AddAssign for Value {
    fn add_assign(&mut self, other: Value) {
        self.samples = self.samples.saturating_add(other.samples);
        self.period = self.period.saturating_add(other.period);
    }
}

/// Why a frame is `[unknown]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum UnknownReason {
    /// The stack was not stored: the stack map was full.
    StackMapFull,
    /// No stack could be taken for the sample.
    NoStack,
    /// Nothing is known about the process (it was neither in `/proc` nor in the side band).
    ProcessUnknown,
    /// The address lies in no executable mapping of the process.
    Unmapped,
    /// The address lies in anonymous executable memory (JIT code) and the process has no
    /// perf map (`/tmp/perf-<pid>.map`) to name it.
    Anonymous,
    /// The address lies in JIT code, but the process's perf map names no function there.
    JitUnnamed,
    /// The address lies in the vDSO.
    Vdso,
    /// The mapped file could not be read.
    FileUnreadable,
    /// The process exited, and the file now at its path is not the one it mapped (another
    /// build id or inode: rebuilt, or the process ran in another mount namespace).
    FileChanged,
    /// The file has no symbol that covers the address.
    NoSymbol,
    /// No kernel symbol covers the address.
    KernelNoSymbol,
}

impl UnknownReason {
    /// A few words for summaries.
    pub fn describe(self) -> &'static str {
        match self {
            UnknownReason::StackMapFull => "stack not stored, stack map full",
            UnknownReason::NoStack => "no stack could be taken",
            UnknownReason::ProcessUnknown => "process never seen",
            UnknownReason::Unmapped => "address in no executable mapping",
            UnknownReason::Anonymous => "JIT or anonymous code without a perf map",
            UnknownReason::JitUnnamed => "JIT code its perf map does not name",
            UnknownReason::Vdso => "vDSO",
            UnknownReason::FileUnreadable => "binary could not be read",
            UnknownReason::FileChanged => "binary replaced since the process exited",
            UnknownReason::NoSymbol => "no symbol in the binary",
            UnknownReason::KernelNoSymbol => "no kernel symbol",
        }
    }
}

impl UnknownReason {
    /// Every reason, in order.
    pub const ALL: [UnknownReason; 11] = [
        UnknownReason::StackMapFull,
        UnknownReason::NoStack,
        UnknownReason::ProcessUnknown,
        UnknownReason::Unmapped,
        UnknownReason::Anonymous,
        UnknownReason::JitUnnamed,
        UnknownReason::Vdso,
        UnknownReason::FileUnreadable,
        UnknownReason::FileChanged,
        UnknownReason::NoSymbol,
        UnknownReason::KernelNoSymbol,
    ];

    /// A stable machine-readable name, used in pprof comments.
    pub fn key(self) -> &'static str {
        match self {
            UnknownReason::StackMapFull => "stack_map_full",
            UnknownReason::NoStack => "no_stack",
            UnknownReason::ProcessUnknown => "process_unknown",
            UnknownReason::Unmapped => "unmapped",
            UnknownReason::Anonymous => "anonymous",
            UnknownReason::JitUnnamed => "jit_unnamed",
            UnknownReason::Vdso => "vdso",
            UnknownReason::FileUnreadable => "file_unreadable",
            UnknownReason::FileChanged => "file_changed",
            UnknownReason::NoSymbol => "no_symbol",
            UnknownReason::KernelNoSymbol => "kernel_no_symbol",
        }
    }

    /// The reason named `key`.
    pub fn from_key(key: &str) -> Option<UnknownReason> {
        UnknownReason::ALL.into_iter().find(|r| r.key() == key)
    }
}

impl fmt::Display for UnknownReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.describe())
    }
}

/// Why a table-driven walk of a user stack stopped before the outermost frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum UnwindStop {
    /// The process's tables were not loaded yet: its stack was walked by frame pointer.
    NotLoaded,
    /// A pc had no table row, and its frame pointer led nowhere.
    NoTable,
    /// A row's rule is one the walk cannot follow.
    Unsupported,
    /// User memory a rule pointed at could not be read.
    Unreadable,
    /// The stack was deeper than the 127 frames a stack holds.
    FrameLimit,
    /// A file's table did not fit in the table maps (`--unwind-table-size`).
    TablesFull,
}

impl UnwindStop {
    /// Every reason, in order.
    pub const ALL: [UnwindStop; 6] = [
        UnwindStop::NotLoaded,
        UnwindStop::NoTable,
        UnwindStop::Unsupported,
        UnwindStop::Unreadable,
        UnwindStop::FrameLimit,
        UnwindStop::TablesFull,
    ];

    /// A stable machine-readable name, for pprof comments and metrics.
    pub fn key(self) -> &'static str {
        match self {
            UnwindStop::NotLoaded => "not_loaded",
            UnwindStop::NoTable => "no_table",
            UnwindStop::Unsupported => "unsupported_rule",
            UnwindStop::Unreadable => "unreadable",
            UnwindStop::FrameLimit => "frame_limit",
            UnwindStop::TablesFull => "tables_full",
        }
    }

    /// A few words for summaries.
    pub fn describe(self) -> &'static str {
        match self {
            UnwindStop::NotLoaded => "unwind table not loaded yet",
            UnwindStop::NoTable => "no table for the pc",
            UnwindStop::Unsupported => "unsupported rule",
            UnwindStop::Unreadable => "user memory unreadable",
            UnwindStop::FrameLimit => "frame limit",
            UnwindStop::TablesFull => "tables full",
        }
    }

    /// The reason named `key`.
    pub fn from_key(key: &str) -> Option<UnwindStop> {
        UnwindStop::ALL.into_iter().find(|r| r.key() == key)
    }
}

/// How many samples' user-stack walks stopped early, by reason.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct UnwindStops([u64; 6]);

impl UnwindStops {
    /// The samples of one reason.
    pub fn get(&self, reason: UnwindStop) -> u64 {
        self.0[reason as usize]
    }

    /// Sets the samples of one reason.
    pub fn set(&mut self, reason: UnwindStop, samples: u64) {
        self.0[reason as usize] = samples;
    }

    /// Every reason with its samples, in order.
    pub fn iter(&self) -> impl Iterator<Item = (UnwindStop, u64)> + '_ {
        UnwindStop::ALL.into_iter().map(|r| (r, self.get(r)))
    }

    /// All reasons together.
    pub fn total(&self) -> u64 {
        self.0.iter().sum()
    }

    /// What was added since `earlier` (the counters only grow).
    pub fn since(&self, earlier: &UnwindStops) -> UnwindStops {
        UnwindStops(std::array::from_fn(|i| {
            self.0[i].saturating_sub(earlier.0[i])
        }))
    }
}

impl AddAssign for UnwindStops {
    fn add_assign(&mut self, other: UnwindStops) {
        for (a, b) in self.0.iter_mut().zip(other.0) {
            *a = a.saturating_add(b);
        }
    }
}

/// Samples lost in the kernel, from its counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Losses {
    /// Samples the BPF program saw (after the target filter).
    pub kernel_samples: u64,
    /// Samples whose stack was not stored because the stack map was full (kept, as
    /// `[unknown]`).
    pub stack_map_full: u64,
    /// Samples without any stack (kept, as `[unknown]`).
    pub no_stack: u64,
    /// Samples dropped because the counts map was full (not in the profile).
    pub map_full: u64,
    /// Off-CPU: blocks shorter than `--off-cpu-min-us`, left out as asked (not in the
    /// profile, not counted as lost).
    pub blocks_short: u64,
    /// Off-CPU: blocks forgotten because more threads were blocked at once than the kernel's
    /// map of blocked threads holds (not in the profile).
    pub blocks_dropped: u64,
    /// Samples whose user stack was walked with the unwind tables and stopped early (kept,
    /// with the frames walked so far).
    pub unwind: UnwindStops,
}

impl Losses {
    /// Samples whose stack is missing or which were dropped.
    pub fn lost(&self) -> u64 {
        self.stack_map_full + self.no_stack + self.map_full + self.blocks_dropped
    }
}

impl AddAssign for Losses {
    fn add_assign(&mut self, other: Losses) {
        self.kernel_samples += other.kernel_samples;
        self.stack_map_full += other.stack_map_full;
        self.no_stack += other.no_stack;
        self.map_full += other.map_full;
        self.blocks_short += other.blocks_short;
        self.blocks_dropped += other.blocks_dropped;
        self.unwind += other.unwind;
    }
}

/// A mapped file (or the kernel): what a location's address belongs to.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Mapping {
    /// The file as the process saw it, or a pseudo-name such as `[kernel.kallsyms]`.
    pub file: Arc<str>,
    /// The GNU build id, in hex.
    pub build_id: Option<Arc<str>>,
    /// First address of the mapping.
    pub start: u64,
    /// One past its last address.
    pub limit: u64,
    /// Offset in the file of `start`.
    pub offset: u64,
    /// Whether its addresses went through symbolization (pprof's `HasFunctions`): prof sets
    /// it on every mapping it tried to name, resolved or not, so readers such as `go tool
    /// pprof` never try again (and never ask a server's `/debug/pprof/symbol`).
    pub has_functions: bool,
    /// Whether source files and lines were looked up too (pprof's `HasFilenames`,
    /// `HasLineNumbers` and `HasInlineFrames`): only when DWARF was read.
    pub has_lines: bool,
}

/// The name of the kernel's pseudo-mapping, as perf names it.
pub const KERNEL_MAPPING: &str = "[kernel.kallsyms]";

/// One function of a location, and where in its source the location lies.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Line {
    /// The (demangled) function name.
    pub function: Arc<str>,
    /// The source file, where debug information tells it.
    pub file: Option<Arc<str>>,
    /// The source line (0: unknown).
    pub line: u32,
}

impl Line {
    /// This line's frame name in a location of kernel code (`kernel`) or not: the
    /// function, with `_[k]` for the kernel, `;` and line breaks replaced (they separate
    /// frames and stacks in folded stacks), and `[unknown]` for a function with no name.
    pub fn frame_name(&self, kernel: bool) -> Cow<'_, str> {
        let name = &*self.function;
        // A name of nothing (pprof allows it) would be an empty frame, which folded stacks
        // cannot hold.
        if name.trim().is_empty() {
            return Cow::Borrowed(UNKNOWN_FRAME);
        }
        let plain = !name.contains([';', '\n', '\r']);
        if !kernel && plain {
            return Cow::Borrowed(name);
        }
        let mut text = if plain {
            name.to_owned()
        } else {
            name.replace(';', ":").replace(['\n', '\r'], " ")
        };
        if kernel {
            text.push_str(KERNEL_SUFFIX);
        }
        Cow::Owned(text)
    }
}

/// An address and the functions it lies in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Location {
    /// The instruction address (0: none, e.g. a lost stack).
    pub address: u64,
    /// The mapping, by id in [`Profile::mappings`].
    pub mapping: Option<u32>,
    /// The functions, outermost first: inlined functions follow the function they were
    /// inlined into. Empty when the address could not be resolved.
    pub lines: Vec<Line>,
    /// Whether this is kernel code.
    pub kernel: bool,
}

/// Hashes what tells symbolized locations apart cheaply (address, mapping, side), and the
/// lines only of locations without an address (named ones, as folded stacks give them): so
/// interning a symbolized location does not hash its function names and source paths.
/// Equal locations still hash alike, the hashed fields being a subset of those compared.
impl Hash for Location {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.address.hash(state);
        self.mapping.hash(state);
        self.kernel.hash(state);
        if self.address == 0 {
            self.lines.hash(state);
        }
    }
}

impl Location {
    /// An unresolved location without an address.
    pub fn unknown() -> Location {
        Location {
            address: 0,
            mapping: None,
            lines: Vec::new(),
            kernel: false,
        }
    }

    /// A location of just a function name, as folded stacks give them: a `_[k]` suffix marks
    /// kernel functions and `[unknown]` unresolved frames.
    pub fn named(name: &str) -> Location {
        if name == UNKNOWN_FRAME {
            return Location::unknown();
        }
        let (function, kernel) = match name.strip_suffix(KERNEL_SUFFIX) {
            Some(function) => (function, true),
            None => (name, false),
        };
        Location {
            address: 0,
            mapping: None,
            lines: vec![Line {
                function: Arc::from(function),
                file: None,
                line: 0,
            }],
            kernel,
        }
    }

    /// The frame names of this location, outermost first: one per line (kernel ones with
    /// `_[k]`), or `[unknown]` (also for a line whose function has no name). `;` and line
    /// breaks are replaced, as they separate frames and stacks in folded stacks.
    pub fn frame_names(&self) -> Vec<Cow<'_, str>> {
        if self.lines.is_empty() {
            return vec![Cow::Borrowed(UNKNOWN_FRAME)];
        }
        self.lines
            .iter()
            .map(|line| line.frame_name(self.kernel))
            .collect()
    }

    /// The innermost frame's name.
    pub fn leaf_name(&self) -> Cow<'_, str> {
        self.frame_names()
            .pop()
            .unwrap_or(Cow::Borrowed(UNKNOWN_FRAME))
    }
}

/// Who a stack belongs to: the pprof labels of its samples.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct Labels {
    /// The process id.
    pub pid: Option<u32>,
    /// The process name.
    pub comm: Option<Arc<str>>,
    /// Any other labels (executable, cgroup, or what another program wrote).
    pub extra: Vec<(Arc<str>, Arc<str>)>,
}

impl Labels {
    /// The flame graph's root frame for these labels: the comm, with `per_pid` also the pid
    /// (`comm (pid)`); `[pid N]` when only the pid is known; none when neither is.
    pub fn root_frame(&self, per_pid: bool) -> Option<String> {
        let comm = self.comm.as_deref().map(|c| c.replace(';', ":"));
        match (comm, self.pid) {
            (Some(comm), Some(pid)) if per_pid => Some(format!("{comm} ({pid})")),
            (Some(comm), _) => Some(comm),
            (None, Some(pid)) => Some(format!("[pid {pid}]")),
            (None, None) => None,
        }
    }
}

/// Interned values with dense `u32` ids, in insertion order. Each value is stored once (an
/// index set, whose index is the id), not once in a list and again as a map's key.
#[derive(Clone, Debug)]
pub struct Table<T> {
    items: IndexSet<T, FxBuildHasher>,
}

impl<T> Default for Table<T> {
    fn default() -> Self {
        Table {
            items: IndexSet::default(),
        }
    }
}

impl<T: Clone + Eq + Hash> Table<T> {
    /// The id of `item`, adding it if it is new.
    pub fn intern(&mut self, item: T) -> u32 {
        let (id, _) = self.items.insert_full(item);
        u32::try_from(id).expect("fewer than 2^32 table entries")
    }

    /// The item with `id`, which this table handed out.
    pub fn get(&self, id: u32) -> &T {
        &self.items[id as usize]
    }

    /// Every item, by id.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = (u32, &T)> {
        self.items.iter().enumerate().map(|(i, t)| (i as u32, t))
    }

    /// How many items there are.
    pub fn len(&self) -> usize {
        self.items.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }
}

/// A stack and whose it is.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Stack {
    /// The labels, by id in [`Profile::labels`].
    pub labels: u32,
    /// Locations by id in [`Profile::locations`], root (outermost) first, leaf last.
    pub locations: Box<[u32]>,
}

/// The profile of one event.
#[derive(Clone, Debug)]
pub struct EventProfile {
    /// The event's name, e.g. `cpu-clock:u`.
    pub name: String,
    /// What the periods add up to.
    pub unit: Unit,
    /// Stacks with what they got.
    pub stacks: HashMap<Stack, Value>,
    /// Kernel-side losses.
    pub losses: Losses,
    /// Samples with at least one `[unknown]` frame, by reason (a sample with frames unknown
    /// for two reasons counts under both).
    pub unknown: BTreeMap<UnknownReason, u64>,
}

impl EventProfile {
    /// An empty profile for an event.
    pub fn new(name: String, unit: Unit) -> EventProfile {
        EventProfile {
            name,
            unit,
            stacks: HashMap::default(),
            losses: Losses::default(),
            unknown: BTreeMap::new(),
        }
    }

    /// Adds `value` to `stack`.
    pub fn add(&mut self, stack: Stack, value: Value) {
        *self.stacks.entry(stack).or_default() += value;
    }

    /// Everything recorded.
    pub fn total(&self) -> Value {
        let mut total = Value::default();
        for value in self.stacks.values() {
            total += *value;
        }
        total
    }

    /// Samples with any `[unknown]` frame, counted once per reason.
    pub fn unknown_total(&self) -> u64 {
        self.unknown.values().sum()
    }
}

/// A function's share of an event.
#[derive(Clone, Debug, PartialEq)]
pub struct FunctionShare {
    /// The frame name.
    pub name: String,
    /// Share of the estimated count in stacks where it is the leaf.
    pub self_share: f64,
    /// Share of the estimated count in stacks where it appears at all.
    pub total_share: f64,
}

/// A whole recording: every event's stacks, and the tables they refer to.
#[derive(Clone, Debug, Default)]
pub struct Profile {
    /// One per event, in the order recorded.
    pub events: Vec<EventProfile>,
    /// Mapped files.
    pub mappings: Table<Mapping>,
    /// Locations.
    pub locations: Table<Location>,
    /// Label sets.
    pub labels: Table<Labels>,
    /// When sampling started.
    pub start: Option<SystemTime>,
    /// How long sampling ran.
    pub duration: Duration,
    /// Children of targets the kernel could not add to the target set.
    pub forks_untracked: u64,
    /// Side-band records the kernel dropped (mappings of new processes may be missing).
    pub side_band_lost: u64,
    /// Free-form comments from the file the profile was read from.
    pub comments: Vec<String>,
    /// What sampling cost in the kernel, when `prof record` could turn BPF run-time
    /// statistics on.
    pub sampling_cost: Option<SamplingCost>,
    /// What the unwind tables held, when user stacks were walked with them.
    pub unwind_tables: Option<UnwindTables>,
    /// What the tracepoint and off-CPU programs cost, for those that ran.
    pub tracing_costs: Vec<TracingCost>,
}

/// Which program a [`TracingCost`] is of.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TracingProgram {
    /// The program of tracepoint events: one run per hit.
    Tracepoint,
    /// The off-CPU program: one run per context switch.
    OffCpu,
}

/// What a tracepoint program cost while recording.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TracingCost {
    /// The program.
    pub program: TracingProgram,
    /// Its run time and runs, over the recording's CPUs.
    pub cost: SamplingCost,
}

/// What the unwind tables held at the end of a recording.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct UnwindTables {
    /// Files with their table in place.
    pub files: u64,
    /// Rows in use.
    pub rows: u64,
    /// Rows the maps hold.
    pub capacity: u64,
    /// Kernel memory reserved for rows and file slots, in bytes.
    pub reserved_bytes: u64,
    /// Kernel memory the per-process mapping lists may take at most, in bytes.
    pub process_bytes_at_most: u64,
    /// Time spent building tables.
    pub build_time: Duration,
    /// Files evicted to make room.
    pub evictions: u64,
    /// Files that did not fit.
    pub files_full: u64,
}

/// What the BPF program cost while recording, from BPF run-time statistics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SamplingCost {
    /// Time the program ran, summed over CPUs.
    pub run_time: Duration,
    /// Times it ran: one per sample on the sampled CPUs, including samples of processes the
    /// target filter then dropped.
    pub runs: u64,
    /// How many CPUs were sampled.
    pub cpus: usize,
}

impl SamplingCost {
    /// Mean nanoseconds in the kernel per sample.
    pub fn ns_per_sample(&self) -> Option<f64> {
        (self.runs > 0).then(|| self.run_time.as_nanos() as f64 / self.runs as f64)
    }

    /// The share of the sampled CPUs' time that the program took over `wall` time.
    pub fn cpu_share(&self, wall: Duration) -> Option<f64> {
        let available = wall.as_secs_f64() * self.cpus as f64;
        (available > 0.0).then(|| self.run_time.as_secs_f64() / available)
    }
}

impl Profile {
    /// The frame names of `stack`, root first: the root frame of its labels (see
    /// [`Labels::root_frame`]), then every location's frames.
    pub fn frame_names(&self, stack: &Stack, per_pid: bool) -> Vec<String> {
        let mut names: Vec<String> = self
            .labels
            .get(stack.labels)
            .root_frame(per_pid)
            .into_iter()
            .collect();
        for &location in stack.locations.iter() {
            names.extend(
                self.locations
                    .get(location)
                    .frame_names()
                    .into_iter()
                    .map(Cow::into_owned),
            );
        }
        names
    }

    /// Adds a stack of frame names (root first, as in a folded line) with these labels to
    /// event `event`.
    pub fn add_named(&mut self, event: usize, labels: Labels, frames: &[&str], value: Value) {
        let labels = self.labels.intern(labels);
        let locations = frames
            .iter()
            .map(|name| self.locations.intern(Location::named(name)))
            .collect();
        self.events[event].add(Stack { labels, locations }, value);
    }

    /// The index of the event called `name`.
    pub fn event_index(&self, name: &str) -> Option<usize> {
        self.events.iter().position(|e| e.name == name)
    }

    /// Events `indices` added up into one event called `name`: every stack gets the sum of
    /// what it got in each, and the losses add up. The stacks of one recording share their
    /// locations and labels, so the same stack in two events is one stack of the sum. That is
    /// how `cpu-clock+off-cpu` shows all of a thread's time, running and blocked, in one
    /// graph. The events must count the same unit.
    pub fn sum_events(&self, indices: &[usize], name: String) -> Result<EventProfile, String> {
        let first = &self.events[indices[0]];
        let mut sum = EventProfile::new(name, first.unit);
        for &index in indices {
            let event = &self.events[index];
            if event.unit != first.unit {
                return Err(format!(
                    "cannot add `{}` ({}) to `{}` ({}): a sum needs events of one unit, \
                     e.g. cpu-clock+off-cpu",
                    event.name,
                    event.unit.as_str(),
                    first.name,
                    first.unit.as_str()
                ));
            }
            for (stack, value) in &event.stacks {
                sum.add(stack.clone(), *value);
            }
            sum.losses += event.losses;
            for (reason, samples) in &event.unknown {
                *sum.unknown.entry(*reason).or_default() += samples;
            }
        }
        Ok(sum)
    }

    /// Functions of event `event` ranked by self share of the estimated count (ties by
    /// name), with their total share. A stack with no location has no function to blame.
    pub fn function_shares(&self, event: usize) -> Vec<FunctionShare> {
        let profile = &self.events[event];
        let total = profile.total().period.max(1) as f64;
        // Names get ids, and each location its names' ids, once: stacks share locations.
        let mut ids: HashMap<Cow<'_, str>, usize> = HashMap::default();
        let mut names: Vec<(Cow<'_, str>, u64, u64)> = Vec::new();
        let mut of_location: HashMap<u32, Box<[usize]>> = HashMap::default();
        let mut seen: HashSet<usize> = HashSet::default();
        for (stack, value) in &profile.stacks {
            let Some(&leaf) = stack.locations.last() else {
                continue;
            };
            seen.clear();
            for &location in stack.locations.iter() {
                let location_names = of_location.entry(location).or_insert_with(|| {
                    self.locations
                        .get(location)
                        .frame_names()
                        .into_iter()
                        .map(|name| {
                            let next = names.len();
                            *ids.entry(name.clone()).or_insert_with(|| {
                                names.push((name, 0, 0));
                                next
                            })
                        })
                        .collect()
                });
                seen.extend(location_names.iter().copied());
            }
            // The leaf location's innermost name, as `Location::leaf_name` gives it.
            if let Some(&name) = of_location[&leaf].last() {
                names[name].1 += value.period;
            }
            for &name in &seen {
                names[name].2 += value.period;
            }
        }
        let mut ranked: Vec<FunctionShare> = names
            .into_iter()
            .map(|(name, self_period, total_period)| FunctionShare {
                name: name.into_owned(),
                self_share: self_period as f64 / total,
                total_share: total_period as f64 / total,
            })
            .collect();
        ranked.sort_by(|a, b| {
            b.self_share
                .total_cmp(&a.self_share)
                .then_with(|| b.total_share.total_cmp(&a.total_share))
                .then_with(|| a.name.cmp(&b.name))
        });
        ranked
    }

    /// The `n` functions with the largest self share of event `event`, largest first (ties
    /// by name). Periods are summed per leaf location first, so each distinct leaf is named
    /// once, not once per stack: the summary calls this for every recording.
    pub fn hottest_self(&self, event: usize, n: usize) -> Vec<(String, f64)> {
        let profile = &self.events[event];
        let total = profile.total().period.max(1) as f64;
        let mut by_leaf: HashMap<u32, u64> = HashMap::default();
        for (stack, value) in &profile.stacks {
            if let Some(&leaf) = stack.locations.last() {
                *by_leaf.entry(leaf).or_default() += value.period;
            }
        }
        let mut by_name: HashMap<Cow<'_, str>, u64> = HashMap::default();
        for (leaf, period) in by_leaf {
            *by_name
                .entry(self.locations.get(leaf).leaf_name())
                .or_default() += period;
        }
        let mut ranked: Vec<(Cow<'_, str>, u64)> =
            by_name.into_iter().filter(|&(_, p)| p > 0).collect();
        ranked.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        ranked
            .into_iter()
            .take(n)
            .map(|(name, period)| (name.into_owned(), period as f64 / total))
            .collect()
    }

    /// The `n` user functions that hold the largest share of event `event` as the innermost
    /// user frame of their stacks, largest first (ties by name). For off-CPU time, whose
    /// stacks all end in the scheduler, that is where in the program threads blocked.
    pub fn hottest_user_leaves(&self, event: usize, n: usize) -> Vec<(String, f64)> {
        let profile = &self.events[event];
        let total = profile.total().period.max(1) as f64;
        let mut shares: HashMap<String, u64> = HashMap::default();
        for (stack, value) in &profile.stacks {
            let leaf = stack
                .locations
                .iter()
                .rev()
                .map(|&id| self.locations.get(id))
                .find(|location| !location.kernel);
            if let Some(leaf) = leaf {
                *shares.entry(leaf.leaf_name().into_owned()).or_default() += value.period;
            }
        }
        let mut ranked: Vec<(String, f64)> = shares
            .into_iter()
            .map(|(name, period)| (name, period as f64 / total))
            .collect();
        ranked.sort_by(|a, b| b.1.total_cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        ranked.truncate(n);
        ranked
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one_event(name: &str, unit: Unit) -> Profile {
        Profile {
            events: vec![EventProfile::new(name.into(), unit)],
            ..Profile::default()
        }
    }

    fn value(samples: u64, period: u64) -> Value {
        Value { samples, period }
    }

    /// Self shares come from leaf frames, weighted by period, and merge across stacks;
    /// total shares count a function once per stack, however often it recurses.
    #[test]
    fn function_shares_rank_leaves_by_period() {
        let mut profile = one_event("cpu-clock", Unit::Nanoseconds);
        let app = Labels {
            pid: Some(7),
            comm: Some("app".into()),
            extra: Vec::new(),
        };
        profile.add_named(0, app.clone(), &["main", "a"], value(3, 300));
        profile.add_named(0, app.clone(), &["main", "b"], value(1, 100));
        profile.add_named(0, app.clone(), &["other", "a", "other", "a"], value(1, 100));
        profile.add_named(0, app, &[], value(5, 500));
        let hottest = profile.hottest_self(0, 5);
        assert_eq!(hottest, vec![("a".to_owned(), 0.4), ("b".to_owned(), 0.1)]);
        let shares = profile.function_shares(0);
        let main = shares.iter().find(|s| s.name == "main").unwrap();
        assert_eq!((main.self_share, main.total_share), (0.0, 0.4));
        let other = shares.iter().find(|s| s.name == "other").unwrap();
        assert_eq!(other.total_share, 0.1);
        assert_eq!(profile.events[0].total(), value(10, 1000));
    }

    /// A sum of two events adds each stack's values, shares the stacks both have, adds the
    /// losses, and refuses events of different units.
    #[test]
    fn sums_of_events() {
        let mut profile = Profile {
            events: vec![
                EventProfile::new("cpu-clock".into(), Unit::Nanoseconds),
                EventProfile::new("off-cpu".into(), Unit::Nanoseconds),
                EventProfile::new("page-faults".into(), Unit::Events),
            ],
            ..Profile::default()
        };
        profile.add_named(0, Labels::default(), &["main", "work"], value(3, 30));
        profile.add_named(0, Labels::default(), &["main", "wait"], value(1, 10));
        profile.add_named(1, Labels::default(), &["main", "wait"], value(2, 500));
        profile.events[1].losses.blocks_dropped = 4;
        let wall = profile
            .sum_events(&[0, 1], "cpu-clock+off-cpu".into())
            .unwrap();
        assert_eq!(wall.name, "cpu-clock+off-cpu");
        assert_eq!(wall.stacks.len(), 2);
        assert_eq!(wall.total(), value(6, 540));
        assert_eq!(wall.losses.blocks_dropped, 4);
        assert_eq!(wall.losses.lost(), 4);
        let err = profile.sum_events(&[0, 2], "x".into()).unwrap_err();
        assert!(err.contains("one unit"), "{err}");
    }

    /// The innermost user frame of each stack ranks user functions, past the kernel's frames.
    #[test]
    fn user_leaves_skip_kernel_frames() {
        let mut profile = one_event("off-cpu", Unit::Nanoseconds);
        let frames = ["main", "wait", "read_[k]", "schedule_[k]"];
        profile.add_named(0, Labels::default(), &frames, value(1, 300));
        profile.add_named(0, Labels::default(), &["main", "nap_[k]"], value(1, 100));
        profile.add_named(0, Labels::default(), &["idle_[k]"], value(1, 100));
        assert_eq!(
            profile.hottest_user_leaves(0, 5),
            [("wait".to_owned(), 0.6), ("main".to_owned(), 0.2)]
        );
    }

    /// Adding the same names again accumulates into one stack: locations and labels are
    /// interned.
    #[test]
    fn add_accumulates() {
        let mut profile = one_event("page-faults", Unit::Events);
        profile.add_named(0, Labels::default(), &["f", "g_[k]"], value(1, 7));
        profile.add_named(0, Labels::default(), &["f", "g_[k]"], value(2, 9));
        assert_eq!(profile.events[0].stacks.len(), 1);
        assert_eq!(profile.locations.len(), 2);
        let (stack, total) = profile.events[0].stacks.iter().next().unwrap();
        assert_eq!(*total, value(3, 16));
        assert_eq!(profile.frame_names(stack, false), ["f", "g_[k]"]);
        assert!(profile.locations.get(stack.locations[1]).kernel);
    }

    /// The root frame is the comm, `comm (pid)` per pid, `[pid N]` without a comm.
    #[test]
    fn root_frames() {
        let labels = Labels {
            pid: Some(42),
            comm: Some("a;b".into()),
            extra: Vec::new(),
        };
        assert_eq!(labels.root_frame(false).as_deref(), Some("a:b"));
        assert_eq!(labels.root_frame(true).as_deref(), Some("a:b (42)"));
        let pid_only = Labels {
            pid: Some(42),
            ..Labels::default()
        };
        assert_eq!(pid_only.root_frame(false).as_deref(), Some("[pid 42]"));
        assert_eq!(Labels::default().root_frame(true), None);
    }

    /// Inlined functions are frames of their own, outermost first; unresolved locations are
    /// `[unknown]`.
    #[test]
    fn location_frame_names() {
        let line = |f: &str| Line {
            function: f.into(),
            file: None,
            line: 0,
        };
        let location = Location {
            address: 0x1000,
            mapping: None,
            lines: vec![line("outer"), line("inlined")],
            kernel: false,
        };
        assert_eq!(location.frame_names(), ["outer", "inlined"]);
        assert_eq!(location.leaf_name(), "inlined");
        assert_eq!(Location::unknown().frame_names(), [UNKNOWN_FRAME]);
        let odd = Location {
            lines: vec![line(""), line(" "), line("a;b\nc")],
            ..location.clone()
        };
        assert_eq!(odd.frame_names(), [UNKNOWN_FRAME, UNKNOWN_FRAME, "a:b c"]);
        assert_eq!(Location::named(UNKNOWN_FRAME), Location::unknown());
        assert_eq!(UnknownReason::from_key("vdso"), Some(UnknownReason::Vdso));
        for reason in UnknownReason::ALL {
            assert_eq!(UnknownReason::from_key(reason.key()), Some(reason));
        }
    }
}
