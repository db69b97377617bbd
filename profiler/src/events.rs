//! Event names ↔ perf event types and configs.
//!
//! In: the `-e` list as the user typed it. Out: [`Event`]s (perf type, config, privilege-level
//! modifiers) and, after [`resolve`] has probed them on this machine, the events that will
//! really be recorded, with the `cycles` → `cpu-clock` fallback that perf does on machines
//! without a hardware PMU.
//!
//! Names follow perf's: the generic hardware and software events with their aliases, the
//! generic hardware-cache events (`L1-dcache-load-misses`, `LLC-loads`, …), raw events `rNNNN`
//! and the `:u` / `:k` modifiers.

use std::fmt;
use std::io;
use std::path::Path;

use perf_event_open_sys::bindings as sys;
use thiserror::Error;

/// The kind of perf event, which decides `perf_event_attr.type`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EventKind {
    /// A generic hardware event, counted by the CPU's PMU.
    #[doc(alias = "PERF_TYPE_HARDWARE")]
    Hardware,
    /// A software event, counted by the kernel.
    #[doc(alias = "PERF_TYPE_SOFTWARE")]
    Software,
    /// A generic hardware-cache event, counted by the CPU's PMU.
    #[doc(alias = "PERF_TYPE_HW_CACHE")]
    HardwareCache,
    /// A raw, model-specific PMU event.
    #[doc(alias = "PERF_TYPE_RAW")]
    Raw,
    /// A kernel tracepoint, `category:name`: counted on every hit, not sampled.
    #[doc(alias = "PERF_TYPE_TRACEPOINT")]
    Tracepoint,
    /// Off-CPU time: nanoseconds threads spent blocked, measured at the scheduler's switch
    /// (the `sched:sched_switch` tracepoint).
    OffCpu,
}

impl EventKind {
    /// `perf_event_attr.type` for this kind.
    pub fn perf_type(self) -> u32 {
        match self {
            EventKind::Hardware => sys::PERF_TYPE_HARDWARE,
            EventKind::Software => sys::PERF_TYPE_SOFTWARE,
            EventKind::HardwareCache => sys::PERF_TYPE_HW_CACHE,
            EventKind::Raw => sys::PERF_TYPE_RAW,
            EventKind::Tracepoint | EventKind::OffCpu => sys::PERF_TYPE_TRACEPOINT,
        }
    }

    /// Whether the event needs a hardware PMU.
    pub fn needs_pmu(self) -> bool {
        matches!(
            self,
            EventKind::Hardware | EventKind::HardwareCache | EventKind::Raw
        )
    }

    /// Whether prof samples it with a perf event on each CPU (the others are tracepoints,
    /// whose programs run on every hit, on any CPU).
    pub fn is_sampled(self) -> bool {
        !matches!(self, EventKind::Tracepoint | EventKind::OffCpu)
    }

    /// "hardware", "software", ...
    pub fn label(self) -> &'static str {
        match self {
            EventKind::Hardware => "hardware",
            EventKind::Software => "software",
            EventKind::HardwareCache => "hardware cache",
            EventKind::Raw => "raw",
            EventKind::Tracepoint => "tracepoint",
            EventKind::OffCpu => "off-cpu",
        }
    }
}

/// Which privilege levels an event samples (`:u` and `:k`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Modifiers {
    /// Sample while the CPU runs user code.
    pub user: bool,
    /// Sample while the CPU runs kernel code.
    pub kernel: bool,
}

impl Modifiers {
    /// No modifier: both user and kernel.
    pub const BOTH: Modifiers = Modifiers {
        user: true,
        kernel: true,
    };

    fn suffix(self) -> &'static str {
        match (self.user, self.kernel) {
            (true, false) => ":u",
            (false, true) => ":k",
            _ => "",
        }
    }
}

/// An event name made safe for a file name: `cpu-clock:u` → `cpu-clock_u`.
pub fn file_name_part(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '.') {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// What an event's sample periods add up to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unit {
    /// Nanoseconds of CPU time (`cpu-clock`, `task-clock`).
    Nanoseconds,
    /// Occurrences of the event.
    Events,
    /// Bytes (memory profiles written by other programs).
    Bytes,
    /// A count of anything else (units prof does not know, in files of other programs).
    Count,
}

impl Unit {
    /// The name used in flame graph tooltips, summaries and pprof sample types.
    pub fn as_str(self) -> &'static str {
        match self {
            Unit::Nanoseconds => "nanoseconds",
            Unit::Events => "events",
            Unit::Bytes => "bytes",
            Unit::Count => "count",
        }
    }

    /// The unit a pprof sample type names.
    pub fn from_name(name: &str) -> Unit {
        match name {
            "nanoseconds" => Unit::Nanoseconds,
            "events" => Unit::Events,
            "bytes" => Unit::Bytes,
            _ => Unit::Count,
        }
    }

    /// `total` in this unit, for people: "1.23 s", "1,234 events".
    pub fn describe(self, total: u64) -> String {
        match self {
            Unit::Nanoseconds => format!("{:.2} s", total as f64 / 1e9),
            unit => format!("{} {}", crate::text::thousands(total), unit.as_str()),
        }
    }
}

/// The name of the off-CPU event, in outputs and in `-e` lists.
pub const OFF_CPU: &str = "off-cpu";

/// The tracepoint the off-CPU event hooks.
pub const SCHED_SWITCH: (&str, &str) = ("sched", "sched_switch");

/// One event as prof will program it into `perf_event_attr`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Event {
    /// The canonical base name, without modifiers (`cpu-clock`, `r1a8`).
    pub base: String,
    /// The kind, which gives `perf_event_attr.type`.
    pub kind: EventKind,
    /// `perf_event_attr.config`. For tracepoints and off-CPU, the tracepoint's id: 0 until
    /// [`crate::session::plan`] looked it up in tracefs.
    pub config: u64,
    /// The privilege levels sampled (for tracepoints and off-CPU: the stacks taken).
    pub modifiers: Modifiers,
}

impl Event {
    /// The name shown to the user: the base name plus `:u` or `:k`.
    pub fn name(&self) -> String {
        format!("{}{}", self.base, self.modifiers.suffix())
    }

    /// The off-CPU event, its tracepoint id not yet looked up.
    pub fn off_cpu() -> Event {
        Event {
            base: OFF_CPU.to_owned(),
            kind: EventKind::OffCpu,
            config: 0,
            modifiers: Modifiers::BOTH,
        }
    }

    /// The tracepoint's category and name (`sched`, `sched_switch`), for tracepoint events and
    /// the off-CPU event.
    pub fn tracepoint(&self) -> Option<(&str, &str)> {
        match self.kind {
            EventKind::Tracepoint => self.base.split_once(':'),
            EventKind::OffCpu => Some(SCHED_SWITCH),
            _ => None,
        }
    }

    /// What the sum of this event's sample periods counts.
    pub fn unit(&self) -> Unit {
        if self.kind == EventKind::OffCpu {
            return Unit::Nanoseconds;
        }
        let clock = self.kind == EventKind::Software
            && matches!(
                self.config as u32,
                sys::PERF_COUNT_SW_CPU_CLOCK | sys::PERF_COUNT_SW_TASK_CLOCK
            );
        if clock {
            Unit::Nanoseconds
        } else {
            Unit::Events
        }
    }

    /// The name made safe for a file name component (`cpu-clock:u` → `cpu-clock_u`).
    pub fn file_name_part(&self) -> String {
        file_name_part(&self.name())
    }

    /// Whether this is the generic `cycles` event, the one perf falls back from.
    fn is_cycles(&self) -> bool {
        self.kind == EventKind::Hardware && self.config == u64::from(sys::PERF_COUNT_HW_CPU_CYCLES)
    }

    /// Parses one event name with optional modifiers, e.g. `page-faults:u`, or a tracepoint,
    /// `category:name` as perf spells them (`sched:sched_switch`).
    pub fn parse(text: &str) -> Result<Event, EventError> {
        let text = text.trim();
        // `cpu-clok:u` is a misspelt event with modifiers, not a tracepoint: no tracepoint is
        // called `u` or `k`.
        if let Some((category, rest)) = text.split_once(':')
            && !category.is_empty()
            && lookup(category).is_none()
            && category != OFF_CPU
            && !rest.chars().all(|c| matches!(c, 'u' | 'k'))
        {
            return parse_tracepoint(text, category, rest);
        }
        let (base, modifiers) = match text.split_once(':') {
            Some((base, modifiers)) => (base, parse_modifiers(text, modifiers)?),
            None => (text, Modifiers::BOTH),
        };
        if base.is_empty() {
            return Err(EventError::Empty);
        }
        if base == OFF_CPU {
            return Ok(Event {
                modifiers,
                ..Event::off_cpu()
            });
        }
        let (canonical, kind, config) = lookup(base).ok_or_else(|| EventError::Unknown {
            name: base.to_owned(),
            suggestions: suggest(base),
        })?;
        Ok(Event {
            base: canonical,
            kind,
            config,
            modifiers,
        })
    }
}

impl fmt::Display for Event {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name())
    }
}

/// Parses a comma-separated `-e` list. Duplicates are an error: each event gets its own outputs.
pub fn parse_list(list: &str) -> Result<Vec<Event>, EventError> {
    let mut events = Vec::new();
    for part in list.split(',') {
        let event = Event::parse(part)?;
        if events.contains(&event) {
            return Err(EventError::Duplicate(event.name()));
        }
        events.push(event);
    }
    if events.len() > MAX_EVENTS {
        return Err(EventError::TooMany(events.len()));
    }
    Ok(events)
}

/// How many events one recording can carry; the BPF side sizes its counters for this many.
pub const MAX_EVENTS: usize = 32;

/// Why an event list was refused.
#[derive(Debug, Error)]
pub enum EventError {
    /// An empty name, e.g. from `-e cpu-clock,`.
    #[error(
        "empty event name in the -e list; separate events with single commas, e.g. -e cpu-clock,page-faults"
    )]
    Empty,
    /// A name that is not a known event.
    #[error("unknown event `{name}`{}; `prof list` shows every event", did_you_mean(.suggestions))]
    Unknown {
        /// What the user typed.
        name: String,
        /// Close names, best first.
        suggestions: Vec<String>,
    },
    /// A modifier other than `u` or `k`.
    #[error(
        "unsupported modifier `{modifier}` in `{event}`; prof supports :u (user only) and :k (kernel only)"
    )]
    Modifier {
        /// The whole event text.
        event: String,
        /// The offending modifier.
        modifier: String,
    },
    /// The same event twice.
    #[error("event `{0}` is listed twice; list each event once")]
    Duplicate(String),
    /// More than [`MAX_EVENTS`].
    #[error("{0} events requested; prof records at most 32 at once")]
    TooMany(usize),
    /// The event exists but this machine cannot count it.
    #[error(
        "event `{event}` is not supported on this machine: {reason}; `prof list` shows the events that work here"
    )]
    Unsupported {
        /// The event name.
        event: String,
        /// Why, in words.
        reason: String,
    },
    /// Opening the event was refused for lack of privilege.
    #[error("not allowed to open event `{event}` (perf_event_open)")]
    Permission {
        /// The event name.
        event: String,
        /// The errno.
        source: io::Error,
    },
}

/// `category:name[:modifiers]`: a tracepoint, whose modifiers choose the stacks taken. Its id
/// is looked up later, in tracefs.
fn parse_tracepoint(text: &str, category: &str, name: &str) -> Result<Event, EventError> {
    let word = |part: &str| {
        !part.is_empty()
            && part
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    };
    let (name, modifiers) = match name.split_once(':') {
        Some((name, modifiers)) => (name, parse_modifiers(text, modifiers)?),
        None => (name, Modifiers::BOTH),
    };
    if !word(category) || !word(name) {
        return Err(EventError::Unknown {
            name: text.to_owned(),
            suggestions: Vec::new(),
        });
    }
    Ok(Event {
        base: format!("{category}:{name}"),
        kind: EventKind::Tracepoint,
        config: 0,
        modifiers,
    })
}

/// " (did you mean `x`?)", or nothing without suggestions.
pub(crate) fn did_you_mean(suggestions: &[String]) -> String {
    match suggestions {
        [] => String::new(),
        [one] => format!(" (did you mean `{one}`?)"),
        many => {
            let quoted: Vec<String> = many.iter().map(|s| format!("`{s}`")).collect();
            format!(" (did you mean one of {}?)", quoted.join(", "))
        }
    }
}

fn parse_modifiers(event: &str, modifiers: &str) -> Result<Modifiers, EventError> {
    let refuse = |modifier: &str| EventError::Modifier {
        event: event.to_owned(),
        modifier: modifier.to_owned(),
    };
    if modifiers.is_empty() {
        return Err(refuse(""));
    }
    let mut user = false;
    let mut kernel = false;
    for c in modifiers.chars() {
        match c {
            'u' => user = true,
            'k' => kernel = true,
            other => return Err(refuse(&other.to_string())),
        }
    }
    Ok(Modifiers { user, kernel })
}

/// One named event of the catalogue, for lookups and `prof list`.
#[derive(Clone, Copy, Debug)]
pub struct NamedEvent {
    /// perf's canonical name.
    pub name: &'static str,
    /// Other names perf accepts.
    pub aliases: &'static [&'static str],
    /// The kind.
    pub kind: EventKind,
    /// `perf_event_attr.config`.
    pub config: u32,
}

const fn named(
    name: &'static str,
    aliases: &'static [&'static str],
    kind: EventKind,
    config: u32,
) -> NamedEvent {
    NamedEvent {
        name,
        aliases,
        kind,
        config,
    }
}

/// The generic hardware and software events, in the order `perf list` shows them.
pub const NAMED_EVENTS: &[NamedEvent] = &[
    named(
        "cpu-cycles",
        &["cycles"],
        EventKind::Hardware,
        sys::PERF_COUNT_HW_CPU_CYCLES,
    ),
    named(
        "instructions",
        &[],
        EventKind::Hardware,
        sys::PERF_COUNT_HW_INSTRUCTIONS,
    ),
    named(
        "cache-references",
        &[],
        EventKind::Hardware,
        sys::PERF_COUNT_HW_CACHE_REFERENCES,
    ),
    named(
        "cache-misses",
        &[],
        EventKind::Hardware,
        sys::PERF_COUNT_HW_CACHE_MISSES,
    ),
    named(
        "branch-instructions",
        &["branches"],
        EventKind::Hardware,
        sys::PERF_COUNT_HW_BRANCH_INSTRUCTIONS,
    ),
    named(
        "branch-misses",
        &[],
        EventKind::Hardware,
        sys::PERF_COUNT_HW_BRANCH_MISSES,
    ),
    named(
        "bus-cycles",
        &[],
        EventKind::Hardware,
        sys::PERF_COUNT_HW_BUS_CYCLES,
    ),
    named(
        "stalled-cycles-frontend",
        &["idle-cycles-frontend"],
        EventKind::Hardware,
        sys::PERF_COUNT_HW_STALLED_CYCLES_FRONTEND,
    ),
    named(
        "stalled-cycles-backend",
        &["idle-cycles-backend"],
        EventKind::Hardware,
        sys::PERF_COUNT_HW_STALLED_CYCLES_BACKEND,
    ),
    named(
        "ref-cycles",
        &[],
        EventKind::Hardware,
        sys::PERF_COUNT_HW_REF_CPU_CYCLES,
    ),
    named(
        "cpu-clock",
        &[],
        EventKind::Software,
        sys::PERF_COUNT_SW_CPU_CLOCK,
    ),
    named(
        "task-clock",
        &[],
        EventKind::Software,
        sys::PERF_COUNT_SW_TASK_CLOCK,
    ),
    named(
        "page-faults",
        &["faults"],
        EventKind::Software,
        sys::PERF_COUNT_SW_PAGE_FAULTS,
    ),
    named(
        "minor-faults",
        &[],
        EventKind::Software,
        sys::PERF_COUNT_SW_PAGE_FAULTS_MIN,
    ),
    named(
        "major-faults",
        &[],
        EventKind::Software,
        sys::PERF_COUNT_SW_PAGE_FAULTS_MAJ,
    ),
    named(
        "context-switches",
        &["cs"],
        EventKind::Software,
        sys::PERF_COUNT_SW_CONTEXT_SWITCHES,
    ),
    named(
        "cpu-migrations",
        &["migrations"],
        EventKind::Software,
        sys::PERF_COUNT_SW_CPU_MIGRATIONS,
    ),
    named(
        "alignment-faults",
        &[],
        EventKind::Software,
        sys::PERF_COUNT_SW_ALIGNMENT_FAULTS,
    ),
    named(
        "emulation-faults",
        &[],
        EventKind::Software,
        sys::PERF_COUNT_SW_EMULATION_FAULTS,
    ),
];

/// The caches of the generic hardware-cache events: perf's name, its aliases, and the id.
const CACHES: &[(&str, &[&str], u32)] = &[
    (
        "L1-dcache",
        &["l1-d", "l1d", "L1-data"],
        sys::PERF_COUNT_HW_CACHE_L1D,
    ),
    (
        "L1-icache",
        &["l1-i", "l1i", "L1-instruction"],
        sys::PERF_COUNT_HW_CACHE_L1I,
    ),
    ("LLC", &["L2"], sys::PERF_COUNT_HW_CACHE_LL),
    (
        "dTLB",
        &["d-tlb", "Data-TLB"],
        sys::PERF_COUNT_HW_CACHE_DTLB,
    ),
    (
        "iTLB",
        &["i-tlb", "Instruction-TLB"],
        sys::PERF_COUNT_HW_CACHE_ITLB,
    ),
    (
        "branch",
        &["branches", "bpu", "btb", "bpc"],
        sys::PERF_COUNT_HW_CACHE_BPU,
    ),
    ("node", &[], sys::PERF_COUNT_HW_CACHE_NODE),
];

/// Cache operations: the singular used before `-misses`, the plural used alone, and the id.
const CACHE_OPS: &[(&str, &str, u32)] = &[
    ("load", "loads", sys::PERF_COUNT_HW_CACHE_OP_READ),
    ("store", "stores", sys::PERF_COUNT_HW_CACHE_OP_WRITE),
    (
        "prefetch",
        "prefetches",
        sys::PERF_COUNT_HW_CACHE_OP_PREFETCH,
    ),
];

fn cache_config(cache: u32, op: u32, miss: bool) -> u64 {
    let result = if miss {
        sys::PERF_COUNT_HW_CACHE_RESULT_MISS
    } else {
        sys::PERF_COUNT_HW_CACHE_RESULT_ACCESS
    };
    u64::from(cache) | u64::from(op) << 8 | u64::from(result) << 16
}

/// Every generic hardware-cache event by perf's canonical name, e.g. `LLC-load-misses`.
pub fn cache_events() -> Vec<(String, u64)> {
    let mut events = Vec::new();
    for &(cache, _, cache_id) in CACHES {
        for &(op, ops, op_id) in CACHE_OPS {
            events.push((
                format!("{cache}-{ops}"),
                cache_config(cache_id, op_id, false),
            ));
            events.push((
                format!("{cache}-{op}-misses"),
                cache_config(cache_id, op_id, true),
            ));
        }
    }
    events
}

/// Every event name `prof list` shows, with its kind and config.
pub fn catalogue() -> Vec<Event> {
    let named = NAMED_EVENTS.iter().map(|e| Event {
        base: e.name.to_owned(),
        kind: e.kind,
        config: u64::from(e.config),
        modifiers: Modifiers::BOTH,
    });
    let cache = cache_events().into_iter().map(|(name, config)| Event {
        base: name,
        kind: EventKind::HardwareCache,
        config,
        modifiers: Modifiers::BOTH,
    });
    named.chain(cache).collect()
}

/// Finds a base name (no modifiers): the canonical name, kind and config.
fn lookup(base: &str) -> Option<(String, EventKind, u64)> {
    if let Some(e) = NAMED_EVENTS
        .iter()
        .find(|e| e.name == base || e.aliases.contains(&base))
    {
        // `cycles` is what users type and what perf prints; keep their spelling.
        let shown = if base == "cycles" { "cycles" } else { e.name };
        return Some((shown.to_owned(), e.kind, u64::from(e.config)));
    }
    if let Some(config) = parse_raw(base) {
        return Some((base.to_ascii_lowercase(), EventKind::Raw, config));
    }
    lookup_cache(base).map(|(name, config)| (name, EventKind::HardwareCache, config))
}

/// `rNNNN`: a raw PMU event, NNNN in hex.
fn parse_raw(base: &str) -> Option<u64> {
    let hex = base.strip_prefix('r')?;
    if hex.is_empty() || hex.len() > 16 {
        return None;
    }
    u64::from_str_radix(hex, 16).ok()
}

/// `<cache>-<op>s` or `<cache>-<op>-misses`, case-insensitive, with perf's cache aliases.
fn lookup_cache(base: &str) -> Option<(String, u64)> {
    let lower = base.to_ascii_lowercase();
    for &(cache, aliases, cache_id) in CACHES {
        for spelling in std::iter::once(&cache).chain(aliases) {
            let Some(rest) = lower.strip_prefix(&format!("{}-", spelling.to_ascii_lowercase()))
            else {
                continue;
            };
            for &(op, ops, op_id) in CACHE_OPS {
                if rest == ops {
                    return Some((
                        format!("{cache}-{ops}"),
                        cache_config(cache_id, op_id, false),
                    ));
                }
                if rest == format!("{op}-misses") {
                    return Some((
                        format!("{cache}-{op}-misses"),
                        cache_config(cache_id, op_id, true),
                    ));
                }
            }
        }
    }
    None
}

/// Up to three known names within a few edits of `base`, closest first.
fn suggest(base: &str) -> Vec<String> {
    let mut names: Vec<String> = NAMED_EVENTS
        .iter()
        .flat_map(|e| std::iter::once(e.name).chain(e.aliases.iter().copied()))
        .map(str::to_owned)
        .chain(cache_events().into_iter().map(|(name, _)| name))
        .chain(std::iter::once(OFF_CPU.to_owned()))
        .collect();
    names.dedup();
    let lower = base.to_ascii_lowercase();
    let budget = (lower.len() / 4).max(2);
    let mut close: Vec<(usize, String)> = names
        .into_iter()
        .map(|name| {
            (
                strsim::osa_distance(&lower, &name.to_ascii_lowercase()),
                name,
            )
        })
        .filter(|(distance, _)| *distance <= budget)
        .collect();
    close.sort();
    close.into_iter().take(3).map(|(_, name)| name).collect()
}

/// Whether this machine has a CPU PMU (hardware events need one).
pub fn hardware_pmu_present() -> bool {
    Path::new("/sys/bus/event_source/devices/cpu").exists()
        || Path::new("/sys/bus/event_source/devices/cpu_core").exists()
}

/// Whether a `perf_event_open` error means "this event does not exist here", as opposed to a
/// permission problem or a bad request.
pub fn is_unsupported_error(err: &io::Error) -> bool {
    matches!(
        err.raw_os_error(),
        Some(libc::ENOENT | libc::ENODEV | libc::EOPNOTSUPP | libc::ENOSYS)
    )
}

/// Why `event` failed to open with `err`, in words a user can act on.
pub fn unsupported_reason(event: &Event, err: &io::Error) -> String {
    let errno = errno_name(err);
    if event.kind.needs_pmu() && !hardware_pmu_present() {
        format!("no hardware PMU on this machine, as in most VMs (perf_event_open: {errno})")
    } else {
        format!("the kernel refused it (perf_event_open: {errno}: {err})")
    }
}

/// `ENOENT` and friends, for messages.
pub fn errno_name(err: &io::Error) -> &'static str {
    match err.raw_os_error() {
        Some(libc::ENOENT) => "ENOENT",
        Some(libc::ENODEV) => "ENODEV",
        Some(libc::EOPNOTSUPP) => "EOPNOTSUPP",
        Some(libc::ENOSYS) => "ENOSYS",
        Some(libc::EACCES) => "EACCES",
        Some(libc::EPERM) => "EPERM",
        Some(libc::EINVAL) => "EINVAL",
        Some(libc::EBUSY) => "EBUSY",
        Some(libc::EMFILE) => "EMFILE",
        _ => "error",
    }
}

/// The events a recording will use, after probing them on this machine.
#[derive(Debug)]
pub struct Resolved {
    /// The events to record, in the order requested, without duplicates.
    pub events: Vec<Event>,
    /// One line each, for stderr (e.g. the `cycles` fallback).
    pub warnings: Vec<String>,
}

/// Probes each requested event with `probe` (which opens it on this machine) and decides what
/// to record: `cycles` that cannot be opened falls back to `cpu-clock` with a warning, as perf
/// does; any other event that cannot be opened is an error naming it and the reason.
pub fn resolve(
    requested: &[Event],
    probe: impl Fn(&Event) -> io::Result<()>,
) -> Result<Resolved, EventError> {
    let mut events: Vec<Event> = Vec::new();
    let mut warnings = Vec::new();
    for event in requested {
        let chosen = match probe(event) {
            Ok(()) => event.clone(),
            Err(err) if is_permission_error(&err) => {
                return Err(EventError::Permission {
                    event: event.name(),
                    source: err,
                });
            }
            Err(err) if event.is_cycles() && is_unsupported_error(&err) => {
                let fallback = Event {
                    base: "cpu-clock".to_owned(),
                    kind: EventKind::Software,
                    config: u64::from(sys::PERF_COUNT_SW_CPU_CLOCK),
                    modifiers: event.modifiers,
                };
                warnings.push(format!(
                    "{} is not supported here: {}; falling back to {}",
                    event.name(),
                    unsupported_reason(event, &err),
                    fallback.name()
                ));
                fallback
            }
            Err(err) => {
                return Err(EventError::Unsupported {
                    event: event.name(),
                    reason: unsupported_reason(event, &err),
                });
            }
        };
        if events.contains(&chosen) {
            warnings.push(format!(
                "{} is already being recorded; recording it once",
                chosen.name()
            ));
        } else {
            events.push(chosen);
        }
    }
    Ok(Resolved { events, warnings })
}

/// EACCES / EPERM.
pub fn is_permission_error(err: &io::Error) -> bool {
    matches!(err.raw_os_error(), Some(libc::EACCES | libc::EPERM))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Aliases resolve to perf's canonical names and configs.
    #[test]
    fn aliases_resolve() {
        let faults = Event::parse("faults").unwrap();
        assert_eq!(faults.base, "page-faults");
        assert_eq!(faults.config, u64::from(sys::PERF_COUNT_SW_PAGE_FAULTS));
        assert_eq!(Event::parse("cs").unwrap().base, "context-switches");
        assert_eq!(Event::parse("migrations").unwrap().base, "cpu-migrations");
        assert_eq!(
            Event::parse("branches").unwrap().base,
            "branch-instructions"
        );
        let cycles = Event::parse("cycles").unwrap();
        assert_eq!((cycles.kind, cycles.config), (EventKind::Hardware, 0));
        assert_eq!(Event::parse("cpu-cycles").unwrap().config, cycles.config);
    }

    /// Modifiers select privilege levels and show in the name; unknown ones are refused.
    #[test]
    fn modifiers() {
        let user = Event::parse("cpu-clock:u").unwrap();
        assert_eq!(
            user.modifiers,
            Modifiers {
                user: true,
                kernel: false
            }
        );
        assert_eq!(user.name(), "cpu-clock:u");
        assert_eq!(user.file_name_part(), "cpu-clock_u");
        let kernel = Event::parse("page-faults:k").unwrap();
        assert_eq!(
            kernel.modifiers,
            Modifiers {
                user: false,
                kernel: true
            }
        );
        assert_eq!(
            Event::parse("cpu-clock:uk").unwrap().modifiers,
            Modifiers::BOTH
        );
        let err = Event::parse("cpu-clock:p").unwrap_err().to_string();
        assert!(err.contains("`p`") && err.contains(":u"), "{err}");
        assert!(Event::parse("cpu-clock:").is_err());
    }

    /// Cache events follow perf's `<cache>-<op>s` / `<cache>-<op>-misses` grammar.
    #[test]
    fn cache_events_parse() {
        let e = Event::parse("L1-dcache-load-misses").unwrap();
        assert_eq!(e.kind, EventKind::HardwareCache);
        assert_eq!(e.config, 0x10000);
        let e = Event::parse("LLC-loads").unwrap();
        assert_eq!(e.config, u64::from(sys::PERF_COUNT_HW_CACHE_LL));
        let e = Event::parse("dtlb-store-misses").unwrap();
        assert_eq!(e.base, "dTLB-store-misses");
        assert_eq!(e.config, 3 | 1 << 8 | 1 << 16);
        assert_eq!(
            Event::parse("l1d-prefetches").unwrap().base,
            "L1-dcache-prefetches"
        );
        assert_eq!(cache_events().len(), 42);
    }

    /// Raw events are hex after `r`.
    #[test]
    fn raw_events() {
        let e = Event::parse("r1a8").unwrap();
        assert_eq!((e.kind, e.config), (EventKind::Raw, 0x1a8));
        assert!(Event::parse("rxyz").is_err());
    }

    /// Unknown names get close suggestions and a pointer to `prof list`.
    #[test]
    fn unknown_events_suggest() {
        let err = Event::parse("cpu-clok").unwrap_err().to_string();
        assert!(err.contains("did you mean `cpu-clock`"), "{err}");
        assert!(err.contains("prof list"), "{err}");
        let err = Event::parse("LLC-load-mises").unwrap_err().to_string();
        assert!(err.contains("LLC-load-misses"), "{err}");
        let err = Event::parse("zzzzzz").unwrap_err().to_string();
        assert!(!err.contains("did you mean"), "{err}");
    }

    /// `category:name` is a tracepoint (its id looked up later), with optional modifiers;
    /// `off-cpu` is the off-CPU event; a misspelt event with modifiers stays an unknown event.
    #[test]
    fn tracepoints_and_off_cpu_parse() {
        let switch = Event::parse("sched:sched_switch").unwrap();
        assert_eq!(switch.kind, EventKind::Tracepoint);
        assert_eq!(switch.tracepoint(), Some(("sched", "sched_switch")));
        assert_eq!(switch.name(), "sched:sched_switch");
        assert_eq!(switch.unit(), Unit::Events);
        assert_eq!(switch.file_name_part(), "sched_sched_switch");
        let user = Event::parse("syscalls:sys_enter_write:u").unwrap();
        assert_eq!(user.base, "syscalls:sys_enter_write");
        assert!(!user.modifiers.kernel);
        assert!(Event::parse("sched:sched_switch:x").is_err());
        assert!(Event::parse("sched:../x").is_err());
        let off = Event::parse("off-cpu").unwrap();
        assert_eq!(
            (off.kind, off.unit()),
            (EventKind::OffCpu, Unit::Nanoseconds)
        );
        assert_eq!(off.tracepoint(), Some(SCHED_SWITCH));
        assert_eq!(Event::parse("off-cpu:u").unwrap().name(), "off-cpu:u");
        let err = Event::parse("cpu-clok:u").unwrap_err().to_string();
        assert!(err.contains("did you mean `cpu-clock`"), "{err}");
        assert!(!switch.kind.is_sampled() && !off.kind.needs_pmu());
    }

    /// Lists split on commas; duplicates and empty parts are refused.
    #[test]
    fn lists() {
        let events = parse_list("cpu-clock,page-faults").unwrap();
        assert_eq!(events.len(), 2);
        assert!(matches!(
            parse_list("cpu-clock,cpu-clock"),
            Err(EventError::Duplicate(_))
        ));
        assert!(matches!(parse_list("cpu-clock,"), Err(EventError::Empty)));
    }

    /// Units: clocks count nanoseconds, everything else counts events.
    #[test]
    fn units() {
        assert_eq!(Event::parse("cpu-clock").unwrap().unit(), Unit::Nanoseconds);
        assert_eq!(
            Event::parse("task-clock:u").unwrap().unit(),
            Unit::Nanoseconds
        );
        assert_eq!(Event::parse("page-faults").unwrap().unit(), Unit::Events);
    }

    fn no_pmu(event: &Event) -> io::Result<()> {
        if event.kind.needs_pmu() {
            Err(io::Error::from_raw_os_error(libc::ENOENT))
        } else {
            Ok(())
        }
    }

    /// Without a PMU, cycles falls back to cpu-clock (keeping modifiers) with one warning.
    #[test]
    fn cycles_falls_back() {
        let requested = parse_list("cycles:u,page-faults").unwrap();
        let resolved = resolve(&requested, no_pmu).unwrap();
        assert_eq!(resolved.events[0].name(), "cpu-clock:u");
        assert_eq!(resolved.events[1].name(), "page-faults");
        assert_eq!(resolved.warnings.len(), 1);
        assert!(resolved.warnings[0].contains("falling back to cpu-clock"));
    }

    /// Other hardware events fail, naming the event; a fallback onto a listed event dedupes.
    #[test]
    fn other_hardware_events_fail() {
        let err = resolve(&parse_list("instructions").unwrap(), no_pmu).unwrap_err();
        assert!(
            err.to_string().contains("`instructions` is not supported"),
            "{err}"
        );
        let resolved = resolve(&parse_list("cycles,cpu-clock").unwrap(), no_pmu).unwrap();
        assert_eq!(resolved.events.len(), 1);
        assert_eq!(resolved.warnings.len(), 2);
    }

    /// Permission errors are kept apart from "not supported".
    #[test]
    fn permission_errors() {
        let denied = |_: &Event| Err(io::Error::from_raw_os_error(libc::EACCES));
        let err = resolve(&parse_list("cpu-clock").unwrap(), denied).unwrap_err();
        assert!(matches!(err, EventError::Permission { .. }));
    }
}
