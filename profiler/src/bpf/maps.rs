//! What the programs counted: the `counts` and `stacks` maps in two generations, and the
//! per-event counters in `stats`.
//!
//! Counts and stacks come in two generations (`counts_0`/`stacks_0`, `counts_1`/`stacks_1`);
//! the programs write the one the `generation` map names. `prof record` and `prof agent` load
//! both at full size; when a generation may be half full (record) or at the end of each window
//! (agent) they [flip](BpfProfiler::flip) the generation, then [take](BpfProfiler::take) the
//! one they left: read and delete it with batch `bpf()` calls. A loader that never flips gets
//! generation 1 sized to one entry.

use std::os::fd::AsFd;
use std::sync::Arc;

use aya::maps::{Array, HashMap, Map, MapData, PerCpuArray};

use super::abi::{
    GLOBAL_FORKS_UNTRACKED, GLOBAL_ROW, STAT_BLOCKS_SHORT, STAT_BLOCKS_STARTED, STAT_COUNT,
    STAT_MAP_FULL, STAT_NO_STACK, STAT_SAMPLES, STAT_STACK_MAP_FULL, STAT_UNWIND_FRAME_LIMIT,
    STAT_UNWIND_NO_TABLE, STAT_UNWIND_NOT_LOADED, STAT_UNWIND_TABLES_FULL, STAT_UNWIND_UNREADABLE,
    STAT_UNWIND_UNSUPPORTED, SampleKey, SampleValue, StackTrace,
};
use super::sys::{self, Batch};
use super::{BpfError, BpfProfiler, map_err};
use crate::profile::{UnwindStop, UnwindStops};

/// Entries per batch `bpf()` call: about 1 MiB of stack traces.
const BATCH: u32 = 1024;

/// One of the two generations of the counts and stack maps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Generation {
    /// `counts_0` and `stacks_0`: the one samples go to first.
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

    pub(super) fn index(self) -> u32 {
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

    pub(super) fn stacks_map(self) -> &'static str {
        match self {
            Generation::First => "stacks_0",
            Generation::Second => "stacks_1",
        }
    }
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
    /// Off-CPU: blocks shorter than `--off-cpu-min-us`, not counted.
    pub blocks_short: u64,
    /// Off-CPU: blocks forgotten because more threads were blocked at once than the map of
    /// blocked threads holds (`--off-cpu-tasks`).
    pub blocks_dropped: u64,
    /// Samples whose table-driven user-stack walk stopped early, by reason.
    pub unwind: UnwindStops,
}

/// All in-kernel counters.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KernelStats {
    /// One per event, in recording order.
    pub events: Vec<EventStats>,
    /// Children of targets that could not join the target set.
    pub forks_untracked: u64,
}

impl KernelStats {
    /// What the counters gained since `earlier` (they only grow).
    pub fn since(&self, earlier: &KernelStats) -> KernelStats {
        let events = self
            .events
            .iter()
            .enumerate()
            .map(|(index, now)| {
                let before = earlier.events.get(index).copied().unwrap_or_default();
                EventStats {
                    samples: now.samples.saturating_sub(before.samples),
                    stack_map_full: now.stack_map_full.saturating_sub(before.stack_map_full),
                    no_stack: now.no_stack.saturating_sub(before.no_stack),
                    map_full: now.map_full.saturating_sub(before.map_full),
                    blocks_short: now.blocks_short.saturating_sub(before.blocks_short),
                    blocks_dropped: now.blocks_dropped.saturating_sub(before.blocks_dropped),
                    unwind: now.unwind.since(&before.unwind),
                }
            })
            .collect();
        KernelStats {
            events,
            forks_untracked: self.forks_untracked.saturating_sub(earlier.forks_untracked),
        }
    }
}

impl BpfProfiler {
    /// Reads the in-kernel counters of the first `events` events, summed over CPUs. The
    /// off-CPU event's dropped blocks are those recorded that neither ended nor are still
    /// pending.
    pub fn stats(&self, events: usize) -> Result<KernelStats, BpfError> {
        // While the programs run, a block that starts or ends between these reads can be
        // miscounted; once they are detached the count is exact.
        let pending = self.pending_blocks()?;
        let stats: PerCpuArray<&MapData, u64> =
            PerCpuArray::try_from(self.map("stats")).map_err(map_err("stats"))?;
        let read = |row: u32, stat: u32| -> Result<u64, BpfError> {
            let values = stats
                .get(&(row * STAT_COUNT + stat), 0)
                .map_err(map_err("stats"))?;
            Ok(values.iter().sum())
        };
        let mut result = KernelStats::default();
        for row in 0..events as u32 {
            let samples = read(row, STAT_SAMPLES)?;
            let blocks_short = read(row, STAT_BLOCKS_SHORT)?;
            let blocks_dropped = if self.off_cpu_event == Some(row as usize) {
                let started = read(row, STAT_BLOCKS_STARTED)?;
                started.saturating_sub(samples + blocks_short + pending)
            } else {
                0
            };
            let mut unwind = UnwindStops::default();
            for (reason, stat) in [
                (UnwindStop::NotLoaded, STAT_UNWIND_NOT_LOADED),
                (UnwindStop::NoTable, STAT_UNWIND_NO_TABLE),
                (UnwindStop::Unsupported, STAT_UNWIND_UNSUPPORTED),
                (UnwindStop::Unreadable, STAT_UNWIND_UNREADABLE),
                (UnwindStop::FrameLimit, STAT_UNWIND_FRAME_LIMIT),
                (UnwindStop::TablesFull, STAT_UNWIND_TABLES_FULL),
            ] {
                unwind.set(reason, read(row, stat)?);
            }
            result.events.push(EventStats {
                samples,
                stack_map_full: read(row, STAT_STACK_MAP_FULL)?,
                no_stack: read(row, STAT_NO_STACK)?,
                map_full: read(row, STAT_MAP_FULL)?,
                blocks_short,
                blocks_dropped,
                unwind,
            });
        }
        result.forks_untracked = read(GLOBAL_ROW, GLOBAL_FORKS_UNTRACKED)?;
        Ok(result)
    }

    /// The samples the first `events` events counted so far (they passed the target
    /// filter), all events and CPUs together: cheaper than [`BpfProfiler::stats`].
    pub fn samples_seen(&self, events: usize) -> Result<u64, BpfError> {
        let stats: PerCpuArray<&MapData, u64> =
            PerCpuArray::try_from(self.map("stats")).map_err(map_err("stats"))?;
        let mut seen = 0u64;
        for row in 0..events as u32 {
            let values = stats
                .get(&(row * STAT_COUNT + STAT_SAMPLES), 0)
                .map_err(map_err("stats"))?;
            seen = seen.saturating_add(values.iter().sum());
        }
        Ok(seen)
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
        let mut generation: Array<&mut MapData, u32> =
            Array::try_from(self.map_mut("generation")).map_err(map_err("generation"))?;
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
        self.counts_batch(generation, Batch::Read)
    }

    /// Every stack of one generation, by id, innermost frame first.
    pub fn stacks_in(&self, generation: Generation) -> Result<Vec<IdStack>, BpfError> {
        self.stacks_batch(generation, Batch::Read)
    }

    /// Reads and empties one generation's counts and stack maps, a batch of entries per
    /// syscall. Call it only for the generation that samples do not go to.
    pub fn take(&mut self, generation: Generation) -> Result<Taken, BpfError> {
        assert_ne!(
            generation, self.generation,
            "the generation being written is never emptied"
        );
        Ok(Taken {
            counts: self.counts_batch(generation, Batch::ReadAndDelete)?,
            stacks: self.stacks_batch(generation, Batch::ReadAndDelete)?,
        })
    }

    fn counts_batch(
        &self,
        generation: Generation,
        batch: Batch,
    ) -> Result<Vec<(SampleKey, SampleValue)>, BpfError> {
        let mut counts = Vec::new();
        self.batch(generation.counts_map(), batch, |keys, values| {
            counts.extend(keys.iter().copied().zip(values.iter().copied()));
        })?;
        Ok(counts)
    }

    fn stacks_batch(&self, generation: Generation, batch: Batch) -> Result<Vec<IdStack>, BpfError> {
        let mut stacks = Vec::new();
        self.batch(
            generation.stacks_map(),
            batch,
            |ids: &[u64], traces: &[StackTrace]| {
                stacks.extend(
                    ids.iter()
                        .zip(traces)
                        .map(|(&id, trace)| (id, Arc::from(frames(trace)))),
                );
            },
        )?;
        Ok(stacks)
    }

    fn batch<K: aya::Pod, V: aya::Pod>(
        &self,
        name: &'static str,
        batch: Batch,
        each: impl FnMut(&[K], &[V]),
    ) -> Result<(), BpfError> {
        // Opening it typed checks that `K` and `V` have the map's key and value sizes, which
        // the batch call relies on.
        HashMap::<&MapData, K, V>::try_from(self.map(name)).map_err(map_err(name))?;
        let Map::HashMap(data) = self.map(name) else {
            unreachable!("{name} opened as a hash map");
        };
        sys::lookup_batch(data.fd().as_fd(), batch, BATCH, each).map_err(|source| BpfError::Batch {
            command: match batch {
                Batch::Read => "BPF_MAP_LOOKUP_BATCH",
                Batch::ReadAndDelete => "BPF_MAP_LOOKUP_AND_DELETE_BATCH",
            },
            map: name,
            source,
        })
    }

    /// Empties one generation's counts and stack maps. Call it only for the generation that
    /// samples do not go to.
    pub fn clear(&mut self, generation: Generation) -> Result<(), BpfError> {
        self.take(generation).map(drop)
    }
}

/// A stack by its id in the stack map, innermost frame first.
pub type IdStack = (u64, Arc<[u64]>);

/// What [`BpfProfiler::take`] read out of a generation.
#[derive(Clone, Debug, Default)]
pub struct Taken {
    /// The counts.
    pub counts: Vec<(SampleKey, SampleValue)>,
    /// The stacks, by id, innermost frame first.
    pub stacks: Vec<IdStack>,
}

/// A trace's frames: up to the first zero.
fn frames(trace: &StackTrace) -> &[u64] {
    let depth = trace
        .ips
        .iter()
        .position(|&ip| ip == 0)
        .unwrap_or(trace.ips.len());
    &trace.ips[..depth]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bpf::{BpfConfig, MAX_STACK_DEPTH, STACK_ID_MIN, STACK_NOT_TAKEN};

    /// A batch read returns every entry of a map larger than one batch (3000 entries, three
    /// batches of 1024), leaves the map as it was, and `take` returns the same entries and
    /// empties the map (root: it loads the real program and fills its maps).
    #[test]
    fn batch_reads_and_takes_every_entry() {
        let mut bpf = BpfProfiler::load(&BpfConfig {
            stack_storage_size: 4096,
            counts_map_size: 4096,
            double_buffer: true,
            ..BpfConfig::default()
        })
        .unwrap_or_else(|err| panic!("{:#}", anyhow::Error::new(err)));
        let idle = Generation::Second;
        let key = |i: u64| SampleKey {
            tgid: i as u32,
            event: 0,
            user_stack: STACK_ID_MIN + i,
            kernel_stack: STACK_NOT_TAKEN,
        };
        {
            let mut counts: HashMap<&mut MapData, SampleKey, SampleValue> =
                HashMap::try_from(bpf.map_mut(idle.counts_map())).unwrap();
            for i in 0..3000 {
                let value = SampleValue {
                    samples: i,
                    period: 10 * i,
                };
                counts.insert(key(i), value, 0).unwrap();
            }
        }
        {
            let mut stacks: HashMap<&mut MapData, u64, StackTrace> =
                HashMap::try_from(bpf.map_mut(idle.stacks_map())).unwrap();
            for i in 0..3000 {
                let mut trace = StackTrace {
                    ips: [0; MAX_STACK_DEPTH],
                };
                trace.ips[..3].copy_from_slice(&[i + 1, i + 2, i + 3]);
                stacks.insert(STACK_ID_MIN + i, trace, 0).unwrap();
            }
        }
        let check = |counts: &[(SampleKey, SampleValue)], stacks: &[(u64, Arc<[u64]>)]| {
            let mut counts = counts.to_vec();
            counts.sort_by_key(|(key, _)| key.tgid);
            let expected: Vec<_> = (0..3000)
                .map(|i| {
                    let value = SampleValue {
                        samples: i,
                        period: 10 * i,
                    };
                    (key(i), value)
                })
                .collect();
            assert_eq!(counts, expected);
            let mut stacks = stacks.to_vec();
            stacks.sort();
            let expected: Vec<_> = (0..3000)
                .map(|i| (STACK_ID_MIN + i, Arc::from([i + 1, i + 2, i + 3])))
                .collect();
            assert_eq!(stacks, expected);
        };
        let counts = bpf.counts_in(idle).unwrap();
        let stacks = bpf.stacks_in(idle).unwrap();
        check(&counts, &stacks);
        // Reading did not delete: the same again.
        assert_eq!(bpf.counts_in(idle).unwrap().len(), 3000);
        let taken = bpf.take(idle).unwrap();
        check(&taken.counts, &taken.stacks);
        assert!(bpf.counts_in(idle).unwrap().is_empty());
        assert!(bpf.stacks_in(idle).unwrap().is_empty());
        // An empty map reads as nothing, without an error.
        assert!(bpf.take(idle).unwrap().counts.is_empty());
    }
}
