//! The off-CPU program (`on_sched_switch`): linked once to the scheduler's switch
//! (`sched:sched_switch`) through a BPF perf link, like a tracepoint event. When a thread
//! blocks, it takes the thread's stacks and records the block in `off_cpu_blocks`; when the
//! thread runs again, it adds the nanoseconds it was blocked to counts[(tgid, off-cpu,
//! stacks)].
//!
//! A block can start in one generation of the maps and end in the other (the agent flips them
//! every window). Before a generation is emptied, [`BpfProfiler::carry_pending_blocks`] copies
//! the stacks of the blocks still pending into the generation being written, so that a long
//! sleep keeps its stacks across windows.
//!
//! In: the off-CPU event (the tracepoint id looked up) and its index. Out: a [`super::PerfLink`]
//! and, at each drain, the blocks still pending (which the loss count needs).

use aya::maps::{HashMap, MapData, MapError};

use super::abi::{OffCpuBlock, STACK_ID_MIN, StackTrace};
use super::maps::Generation;
use super::{BpfError, BpfProfiler, map_err};
use crate::events::Event;

pub(super) const PROGRAM: &str = "on_sched_switch";
const BLOCKS: &str = "off_cpu_blocks";

/// `bpf_map_update_elem` flags: only insert a new key, or only update an existing one.
#[doc(alias = "BPF_NOEXIST")]
const NOEXIST: u64 = 1;
#[doc(alias = "BPF_EXIST")]
const EXIST: u64 = 2;

impl BpfProfiler {
    /// Links the off-CPU program to `sched:sched_switch` (`event` is the off-CPU event, its
    /// tracepoint id looked up) with the cookie for `index`, once; `cpu` is where its perf
    /// event is opened. A failure says that off-CPU profiling cannot work here, and why.
    pub fn attach_off_cpu(
        &mut self,
        index: usize,
        event: &Event,
        cpu: u32,
    ) -> Result<(), BpfError> {
        self.link_tracepoint(PROGRAM, index, event, cpu)
            .map_err(|err| BpfError::OffCpu(Box::new(err)))?;
        self.off_cpu_event = Some(index);
        Ok(())
    }

    /// The index of the off-CPU event, if it is recorded.
    pub fn off_cpu_event(&self) -> Option<usize> {
        self.off_cpu_event
    }

    fn blocks(&self) -> Result<HashMap<&MapData, u32, OffCpuBlock>, BpfError> {
        HashMap::try_from(self.map(BLOCKS)).map_err(map_err(BLOCKS))
    }

    /// Threads blocked now, whose blocks were recorded and will be counted when they run.
    pub fn pending_blocks(&self) -> Result<u64, BpfError> {
        if self.off_cpu_event.is_none() {
            return Ok(0);
        }
        let mut pending = 0;
        for key in self.blocks()?.keys() {
            match key {
                Ok(_) => pending += 1,
                // The thread ran again while we walked the map.
                Err(MapError::KeyNotFound) => {}
                Err(source) => {
                    return Err(BpfError::Map {
                        map: BLOCKS,
                        source,
                    });
                }
            }
        }
        Ok(pending)
    }

    /// Moves the blocks still pending from generation `from`, which samples no longer go to,
    /// to the generation being written: copies their stacks over and marks them, so that their
    /// time is counted with stacks that are still there once `from` is emptied.
    pub(crate) fn carry_pending_blocks(&mut self, from: Generation) -> Result<(), BpfError> {
        if self.off_cpu_event.is_none() {
            return Ok(());
        }
        let to = self.generation;
        assert_ne!(
            from, to,
            "blocks are carried out of the generation samples left"
        );
        let mut pending = Vec::new();
        for entry in self.blocks()?.iter() {
            match entry {
                Ok((tid, block)) if block.generation == from.index() => pending.push((tid, block)),
                Ok(_) | Err(MapError::KeyNotFound) => {}
                Err(source) => {
                    return Err(BpfError::Map {
                        map: BLOCKS,
                        source,
                    });
                }
            }
        }
        if pending.is_empty() {
            return Ok(());
        }
        let mut stacks = Vec::new();
        {
            let name = from.stacks_map();
            let old: HashMap<&MapData, u64, StackTrace> =
                HashMap::try_from(self.map(name)).map_err(map_err(name))?;
            for (_, block) in &pending {
                for id in [block.key.user_stack, block.key.kernel_stack] {
                    if id < STACK_ID_MIN {
                        continue;
                    }
                    match old.get(&id, 0) {
                        Ok(trace) => stacks.push((id, trace)),
                        Err(MapError::KeyNotFound) => {}
                        Err(source) => return Err(BpfError::Map { map: name, source }),
                    }
                }
            }
        }
        {
            let name = to.stacks_map();
            let mut new: HashMap<&mut MapData, u64, StackTrace> =
                HashMap::try_from(self.map_mut(name)).map_err(map_err(name))?;
            for (id, trace) in stacks {
                // Already there, or the map is full: the count resolves what it can.
                let _ = new.insert(id, trace, NOEXIST);
            }
        }
        let mut blocks: HashMap<&mut MapData, u32, OffCpuBlock> =
            HashMap::try_from(self.map_mut(BLOCKS)).map_err(map_err(BLOCKS))?;
        for (tid, block) in pending {
            let moved = OffCpuBlock {
                generation: to.index(),
                ..block
            };
            // BPF_EXIST: a thread that ran again meanwhile was counted already.
            match blocks.insert(tid, moved, EXIST) {
                Ok(()) => {}
                Err(MapError::SyscallError(err))
                    if err.io_error.raw_os_error() == Some(libc::ENOENT) => {}
                Err(source) => {
                    return Err(BpfError::Map {
                        map: BLOCKS,
                        source,
                    });
                }
            }
        }
        Ok(())
    }
}
