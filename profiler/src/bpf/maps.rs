//! What the programs counted: the `counts` and `stacks` maps in two generations, and the
//! per-event counters in `stats`.
//!
//! Counts and stacks come in two generations (`counts_0`/`stacks_0`, `counts_1`/`stacks_1`);
//! the programs write the one the `generation` map names. `prof record` uses generation 0
//! only (generation 1 is sized to one entry). `prof agent` loads both at full size and, at the
//! end of each window, [flips](BpfProfiler::flip) the generation, then reads and
//! [clears](BpfProfiler::clear) the one it left.

use aya::maps::{Array, HashMap, MapData, MapError, PerCpuArray};

use super::abi::{
    GLOBAL_FORKS_UNTRACKED, GLOBAL_ROW, STAT_BLOCKS_SHORT, STAT_BLOCKS_STARTED, STAT_COUNT,
    STAT_MAP_FULL, STAT_NO_STACK, STAT_SAMPLES, STAT_STACK_MAP_FULL, STAT_UNWIND_FRAME_LIMIT,
    STAT_UNWIND_NO_TABLE, STAT_UNWIND_NOT_LOADED, STAT_UNWIND_TABLES_FULL, STAT_UNWIND_UNREADABLE,
    STAT_UNWIND_UNSUPPORTED, SampleKey, SampleValue, StackTrace,
};
use super::{BpfError, BpfProfiler, map_err};
use crate::profile::{UnwindStop, UnwindStops};

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
        let name = generation.counts_map();
        let counts: HashMap<&MapData, SampleKey, SampleValue> =
            HashMap::try_from(self.map(name)).map_err(map_err(name))?;
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
            HashMap::try_from(self.map(name)).map_err(map_err(name))?;
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
            HashMap::try_from(self.map_mut(name)).map_err(map_err(name))?;
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
