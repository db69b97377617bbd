//! Drain: read the counts map and resolve stack ids into raw addresses.
//!
//! In: the loaded [`BpfProfiler`], after sampling stopped ([`drain`], for `prof record`) or
//! while it goes on in the other generation ([`drain_generation`], for `prof agent`). Out:
//! [`Drained`], one [`RawSample`] per (process, event, user stack, kernel stack) with raw
//! instruction pointers, and the kernel's loss counters (cumulative since load).

use rustc_hash::FxHashMap as HashMap;
use std::collections::hash_map::Entry;
use std::sync::Arc;

use crate::bpf::{
    BpfError, BpfProfiler, Generation, KernelStats, STACK_ID_MIN, STACK_NOT_TAKEN, SampleKey, Taken,
};
use crate::profile::Value;

/// A stack as the kernel recorded it.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum RawStack {
    /// Instruction pointers, innermost first.
    Frames(Arc<[u64]>),
    /// Not asked for (the event's modifiers exclude this side).
    NotTaken,
    /// The stack could not be taken or stored, with this errno (`EFAULT`: no stack on this
    /// side, e.g. the user stack of a kernel thread; `E2BIG`: the stack map was full).
    Failed(i32),
}

impl RawStack {
    /// The frames, if there are any.
    pub fn frames(&self) -> &[u64] {
        match self {
            RawStack::Frames(frames) => frames,
            _ => &[],
        }
    }

    /// Whether the stack was lost because the stack map was full.
    pub fn lost_to_full_map(&self) -> bool {
        *self == RawStack::Failed(libc::E2BIG)
    }
}

/// One entry of the counts map, with its stacks resolved.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RawSample {
    /// The process.
    pub tgid: u32,
    /// Index of the event in the recording.
    pub event: usize,
    /// The user stack.
    pub user: RawStack,
    /// The kernel stack.
    pub kernel: RawStack,
    /// Samples and period sum.
    pub value: Value,
}

/// Everything read from the maps.
#[derive(Clone, Debug, Default)]
pub struct Drained {
    /// The samples.
    pub samples: Vec<RawSample>,
    /// The in-kernel counters.
    pub stats: KernelStats,
}

/// Reads all counts of the generation being written and the stacks they refer to, a batch
/// of entries per syscall.
pub fn drain(bpf: &BpfProfiler, events: usize) -> Result<Drained, BpfError> {
    let generation = bpf.generation();
    let stats = bpf.stats(events)?;
    // Counts first: a program stores a sample's stacks before it counts the sample, so every
    // count read has its stacks among those read after it.
    let counts = bpf.counts_in(generation)?;
    let stacks = bpf.stacks_in(generation)?;
    Ok(resolve(Taken { counts, stacks }, stats))
}

/// Reads and then empties `generation`, which samples must no longer go to (see
/// [`BpfProfiler::flip`]). The stacks of off-CPU blocks still pending are carried into the
/// generation being written first, so those blocks keep them.
pub fn drain_generation(
    bpf: &mut BpfProfiler,
    generation: Generation,
    events: usize,
) -> Result<Drained, BpfError> {
    let stats = bpf.stats(events)?;
    bpf.carry_pending_blocks(generation)?;
    let taken = bpf.take(generation)?;
    Ok(resolve(taken, stats))
}

/// Samples drained from several generations, summed per (process, event, user stack,
/// kernel stack): the same stack has a different id in each generation, so samples are
/// keyed by their resolved frames. `prof record` drains into one while it records, so the
/// stack map never has to hold more than one window's stacks.
#[derive(Debug, Default)]
pub struct Accumulated {
    index: HashMap<(u32, usize, RawStack, RawStack), usize>,
    samples: Vec<RawSample>,
}

impl Accumulated {
    /// Adds one drain's samples.
    pub fn add(&mut self, drained: Drained) {
        for sample in drained.samples {
            let key = (
                sample.tgid,
                sample.event,
                sample.user.clone(),
                sample.kernel.clone(),
            );
            match self.index.entry(key) {
                Entry::Occupied(at) => self.samples[*at.get()].value += sample.value,
                Entry::Vacant(slot) => {
                    slot.insert(self.samples.len());
                    self.samples.push(sample);
                }
            }
        }
    }

    /// All samples, with the kernel counters of the last drain (they are cumulative).
    pub fn finish(self, stats: KernelStats) -> Drained {
        Drained {
            samples: self.samples,
            stats,
        }
    }
}

/// Pairs each count with its stacks.
fn resolve(taken: Taken, stats: KernelStats) -> Drained {
    let stacks: HashMap<u64, RawStack> = taken
        .stacks
        .into_iter()
        .map(|(id, frames)| {
            let stack = if frames.is_empty() {
                RawStack::Failed(libc::ENOENT)
            } else {
                RawStack::Frames(frames)
            };
            (id, stack)
        })
        .collect();
    let stack = |id: u64| -> RawStack {
        if id == STACK_NOT_TAKEN {
            RawStack::NotTaken
        } else if id < STACK_ID_MIN {
            RawStack::Failed(id as i32)
        } else {
            stacks
                .get(&id)
                .cloned()
                .unwrap_or(RawStack::Failed(libc::ENOENT))
        }
    };
    let samples = taken
        .counts
        .into_iter()
        .map(|(key, value)| {
            let SampleKey {
                tgid,
                event,
                user_stack,
                kernel_stack,
            } = key;
            RawSample {
                tgid,
                event: event as usize,
                user: stack(user_stack),
                kernel: stack(kernel_stack),
                value: Value {
                    samples: value.samples,
                    period: value.period,
                },
            }
        })
        .collect();
    Drained { samples, stats }
}
