//! The in-memory profile: symbolized stacks with their sample counts and estimated event
//! counts, per event, plus everything that was lost or could not be resolved.
//!
//! In: built by [`crate::symbolize`]. Out: read by the exporters and the summary.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::ops::AddAssign;
use std::sync::Arc;
use std::time::Duration;

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

impl AddAssign for Value {
    fn add_assign(&mut self, other: Value) {
        self.samples += other.samples;
        self.period += other.period;
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
    /// The address lies in anonymous executable memory (JIT code).
    Anonymous,
    /// The address lies in the vDSO.
    Vdso,
    /// The mapped file could not be read.
    FileUnreadable,
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
            UnknownReason::Anonymous => "anonymous executable memory (JIT)",
            UnknownReason::Vdso => "vDSO",
            UnknownReason::FileUnreadable => "binary could not be read",
            UnknownReason::NoSymbol => "no symbol in the binary",
            UnknownReason::KernelNoSymbol => "no kernel symbol",
        }
    }
}

impl fmt::Display for UnknownReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.describe())
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
}

/// The profile of one event.
#[derive(Clone, Debug)]
pub struct EventProfile {
    /// The event's name, e.g. `cpu-clock:u`.
    pub name: String,
    /// What the periods add up to.
    pub unit: Unit,
    /// Stacks, root (comm) first, leaf last, with what they got.
    pub stacks: HashMap<Vec<Frame>, Value>,
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
            stacks: HashMap::new(),
            losses: Losses::default(),
            unknown: BTreeMap::new(),
        }
    }

    /// Adds `value` to `stack`.
    pub fn add(&mut self, stack: Vec<Frame>, value: Value) {
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

    /// Stacks in a stable order (by frames), for deterministic output.
    pub fn sorted_stacks(&self) -> Vec<(&[Frame], Value)> {
        let mut stacks: Vec<(&[Frame], Value)> = self
            .stacks
            .iter()
            .map(|(frames, value)| (frames.as_slice(), *value))
            .collect();
        stacks.sort_by(|a, b| a.0.cmp(b.0));
        stacks
    }

    /// The `n` functions with the largest self share of the estimated count, largest first.
    /// A function's self share is the period of the stacks it is the leaf of, over the total.
    pub fn hottest_self(&self, n: usize) -> Vec<(Frame, f64)> {
        let total = self.total().period.max(1) as f64;
        let mut by_leaf: HashMap<&Frame, u64> = HashMap::new();
        for (frames, value) in &self.stacks {
            // A stack of just the comm has no function to blame.
            if frames.len() > 1
                && let Some(leaf) = frames.last()
            {
                *by_leaf.entry(leaf).or_default() += value.period;
            }
        }
        let mut ranked: Vec<(Frame, f64)> = by_leaf
            .into_iter()
            .map(|(frame, period)| (Arc::clone(frame), period as f64 / total))
            .collect();
        ranked.sort_by(|a, b| b.1.total_cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        ranked.truncate(n);
        ranked
    }

    /// Samples with any `[unknown]` frame, counted once per reason.
    pub fn unknown_total(&self) -> u64 {
        self.unknown.values().sum()
    }
}

/// A whole recording.
#[derive(Clone, Debug, Default)]
pub struct Profile {
    /// One per event, in the order recorded.
    pub events: Vec<EventProfile>,
    /// How long sampling ran.
    pub duration: Duration,
    /// Children of targets the kernel could not add to the target set.
    pub forks_untracked: u64,
    /// Side-band records the kernel dropped (mappings of new processes may be missing).
    pub side_band_lost: u64,
    /// What sampling cost in the kernel, when BPF run-time statistics could be turned on.
    pub sampling_cost: Option<SamplingCost>,
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

#[cfg(test)]
mod tests {
    use super::*;

    fn stack(frames: &[&str]) -> Vec<Frame> {
        frames.iter().map(|f| Frame::from(*f)).collect()
    }

    /// Self shares come from leaf frames, weighted by period, and merge across stacks.
    #[test]
    fn hottest_self_ranks_leaves_by_period() {
        let mut profile = EventProfile::new("cpu-clock".into(), Unit::Nanoseconds);
        profile.add(
            stack(&["app", "main", "a"]),
            Value {
                samples: 3,
                period: 300,
            },
        );
        profile.add(
            stack(&["app", "main", "b"]),
            Value {
                samples: 1,
                period: 100,
            },
        );
        profile.add(
            stack(&["app", "other", "a"]),
            Value {
                samples: 1,
                period: 100,
            },
        );
        profile.add(
            stack(&["app"]),
            Value {
                samples: 5,
                period: 500,
            },
        );
        let hottest = profile.hottest_self(5);
        assert_eq!(hottest[0], (Frame::from("a"), 0.4));
        assert_eq!(hottest[1], (Frame::from("b"), 0.1));
        assert_eq!(hottest.len(), 2);
        assert_eq!(
            profile.total(),
            Value {
                samples: 10,
                period: 1000
            }
        );
    }

    /// Adding to an existing stack accumulates.
    #[test]
    fn add_accumulates() {
        let mut profile = EventProfile::new("page-faults".into(), Unit::Events);
        profile.add(
            stack(&["app", "f"]),
            Value {
                samples: 1,
                period: 7,
            },
        );
        profile.add(
            stack(&["app", "f"]),
            Value {
                samples: 2,
                period: 9,
            },
        );
        assert_eq!(profile.stacks.len(), 1);
        assert_eq!(
            profile.sorted_stacks()[0].1,
            Value {
                samples: 3,
                period: 16
            }
        );
    }
}
