//! The target set, for commands and `-p`: the `targets` map the sampling programs filter on,
//! and two raw tracepoint programs that keep it current. Children forked by a target join
//! it, and a target's tgid leaves it when the process exits, so that a reused pid is not
//! profiled by mistake.

use aya::maps::{HashMap, MapData};
use aya::programs::RawTracePoint;

use super::{BpfError, BpfProfiler, map_err, program_err};

const FORK_PROGRAM: &str = "on_process_fork";
const EXIT_PROGRAM: &str = "on_process_exit";

impl BpfProfiler {
    /// Adds processes to the target set.
    pub fn add_targets(&mut self, tgids: &[u32]) -> Result<(), BpfError> {
        let mut targets: HashMap<&mut MapData, u32, u8> =
            HashMap::try_from(self.map_mut("targets")).map_err(map_err("targets"))?;
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
}
