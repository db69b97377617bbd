//! Drain: read the counts map and resolve stack ids into raw addresses.
//!
//! In: the loaded [`BpfProfiler`], after sampling stopped ([`drain`], for `prof record`) or
//! while it goes on in the other generation ([`drain_generation`], for `prof agent`). Out:
//! [`Drained`], one [`RawSample`] per (process, event, user stack, kernel stack) with raw
//! instruction pointers, and the kernel's loss counters (cumulative since load).

use std::collections::HashMap;
use std::sync::Arc;

use crate::bpf::{
    BpfError, BpfProfiler, Generation, KernelStats, STACK_ID_MIN, STACK_NOT_TAKEN, SampleKey,
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

/// Reads all counts of the generation being written and the stacks they refer to. Each
/// stack id is looked up once.
pub fn drain(bpf: &BpfProfiler, events: usize) -> Result<Drained, BpfError> {
    read(bpf, bpf.generation(), events)
}

/// Reads and then empties `generation`, which samples must no longer go to (see
/// [`BpfProfiler::flip`]). The stacks of off-CPU blocks still pending are carried into the
/// generation being written first, so those blocks keep them.
pub fn drain_generation(
    bpf: &mut BpfProfiler,
    generation: Generation,
    events: usize,
) -> Result<Drained, BpfError> {
    let drained = read(bpf, generation, events)?;
    bpf.carry_pending_blocks(generation)?;
    bpf.clear(generation)?;
    Ok(drained)
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
            match self.index.get(&key) {
                Some(&at) => {
                    let value = &mut self.samples[at].value;
                    value.samples += sample.value.samples;
                    value.period += sample.value.period;
                }
                None => {
                    self.index.insert(key, self.samples.len());
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

fn read(bpf: &BpfProfiler, generation: Generation, events: usize) -> Result<Drained, BpfError> {
    let stats = bpf.stats(events)?;
    let mut stacks: HashMap<u64, RawStack> = HashMap::new();
    let mut samples = Vec::new();
    for (key, value) in bpf.counts_in(generation)? {
        let SampleKey {
            tgid,
            event,
            user_stack,
            kernel_stack,
        } = key;
        let user = resolve(bpf, generation, &mut stacks, user_stack)?;
        let kernel = resolve(bpf, generation, &mut stacks, kernel_stack)?;
        samples.push(RawSample {
            tgid,
            event: event as usize,
            user,
            kernel,
            value: Value {
                samples: value.samples,
                period: value.period,
            },
        });
    }
    Ok(Drained { samples, stats })
}

fn resolve(
    bpf: &BpfProfiler,
    generation: Generation,
    cache: &mut HashMap<u64, RawStack>,
    id: u64,
) -> Result<RawStack, BpfError> {
    if id == STACK_NOT_TAKEN {
        return Ok(RawStack::NotTaken);
    }
    if id < STACK_ID_MIN {
        return Ok(RawStack::Failed(id as i32));
    }
    if let Some(stack) = cache.get(&id) {
        return Ok(stack.clone());
    }
    let stack = match bpf.stack_in(generation, id)? {
        Some(frames) if !frames.is_empty() => RawStack::Frames(frames.into()),
        _ => RawStack::Failed(libc::ENOENT),
    };
    cache.insert(id, stack.clone());
    Ok(stack)
}
