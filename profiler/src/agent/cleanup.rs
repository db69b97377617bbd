//! What a long-running agent forgets, and when, so that its memory stays bounded on a
//! machine where processes and binaries come and go.
//!
//! In: the process table after each drain, and the symbolizer's age and the agent's
//! resident memory. Out: processes removed from the table, and whether to rebuild the
//! symbolizer (which releases every file it parsed and mapped).

use std::collections::HashSet;
use std::path::Path;
use std::time::Duration;

use crate::procs::ProcessTable;

/// Every this many drains, processes that are gone without an exit record are forgotten.
pub const SWEEP_EVERY: u64 = 30;

/// Files no drain needed for this many drains (two minutes of 10-second windows) are
/// evicted from the symbolizer's cache.
pub const EVICT_AFTER_DRAINS: u64 = 12;

/// When to rebuild the symbolizer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SymbolizerLifetime {
    /// Rebuilt at least this often, so files that are gone (and their parsed symbols) do not
    /// stay cached forever; in between, each binary is parsed once.
    pub max_age: Duration,
    /// Rebuilt when the agent's resident memory passes this (the budget is 50 MB)...
    pub resident_above: u64,
    /// ...but at most this often, since a rebuild costs a re-parse of every binary.
    pub min_age: Duration,
}

impl Default for SymbolizerLifetime {
    fn default() -> SymbolizerLifetime {
        SymbolizerLifetime {
            max_age: Duration::from_secs(3600),
            resident_above: 40 << 20,
            min_age: Duration::from_secs(600),
        }
    }
}

impl SymbolizerLifetime {
    /// Whether a symbolizer of `age` should be rebuilt while the agent holds `resident`
    /// bytes.
    pub fn should_rebuild(&self, age: Duration, resident: u64) -> bool {
        age >= self.max_age || (resident > self.resident_above && age >= self.min_age)
    }
}

/// Forgets processes once their last samples are symbolized.
///
/// A process that exited may still have samples in the generation being written when its
/// exit record arrives, so it is kept for one more drain: forgotten at the drain after the
/// one that saw it exited.
#[derive(Debug, Default)]
pub struct Forgetting {
    /// Processes that had exited by the previous drain.
    exited_before: HashSet<u32>,
    drains: u64,
}

impl Forgetting {
    /// Called after each drain is symbolized: forgets the processes that had exited by the
    /// previous drain and, every [`SWEEP_EVERY`] drains, those for which `alive` is false
    /// (gone without an exit record). Returns the tgids still known.
    pub fn after_drain(
        &mut self,
        processes: &mut ProcessTable,
        alive: impl Fn(u32) -> bool,
    ) -> HashSet<u32> {
        self.drains += 1;
        let before = std::mem::take(&mut self.exited_before);
        processes.retain(|tgid, process| !(process.exited && before.contains(&tgid)));
        if self.drains.is_multiple_of(SWEEP_EVERY) {
            processes.retain(|tgid, _| alive(tgid));
        }
        let mut live = HashSet::new();
        for tgid in processes.tgids() {
            live.insert(tgid);
            if processes.get(tgid).is_some_and(|p| p.exited) {
                self.exited_before.insert(tgid);
            }
        }
        live
    }
}

/// Whether process `tgid` still exists, by `/proc`.
pub fn in_proc(tgid: u32) -> bool {
    Path::new(&format!("/proc/{tgid}")).exists()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::procs::ProcessEvent;

    fn snapshot(pid: u32) -> ProcessEvent {
        ProcessEvent::Snapshot {
            pid,
            comm: format!("p{pid}"),
            mappings: Vec::new(),
        }
    }

    /// A process that exits is kept for the drain that saw the exit and forgotten at the
    /// next; one gone without an exit record goes at the sweep.
    #[test]
    fn forgets_exited_one_drain_late() {
        let mut table = ProcessTable::default();
        for pid in [1, 2, 3] {
            table.apply(snapshot(pid));
        }
        let mut forgetting = Forgetting::default();
        table.apply(ProcessEvent::Exit { pid: 2, tid: 2 });
        let live = forgetting.after_drain(&mut table, |_| true);
        assert!(live.contains(&2), "kept for its last samples");
        let live = forgetting.after_drain(&mut table, |_| true);
        assert!(!live.contains(&2) && table.get(2).is_none());
        assert_eq!(live.len(), 2);

        // Process 3 vanishes without an exit record: swept at the next multiple.
        for _ in 2..SWEEP_EVERY - 1 {
            forgetting.after_drain(&mut table, |tgid| tgid != 3);
        }
        assert!(table.get(3).is_some(), "not yet swept");
        let live = forgetting.after_drain(&mut table, |tgid| tgid != 3);
        assert_eq!(live, HashSet::from([1]));
    }

    /// The symbolizer is rebuilt when old, or when memory is high and it is not too young.
    #[test]
    fn symbolizer_lifetime() {
        let policy = SymbolizerLifetime::default();
        let minutes = |m: u64| Duration::from_secs(60 * m);
        assert!(!policy.should_rebuild(minutes(5), 10 << 20));
        assert!(!policy.should_rebuild(minutes(5), 45 << 20), "too young");
        assert!(policy.should_rebuild(minutes(11), 45 << 20));
        assert!(!policy.should_rebuild(minutes(59), 10 << 20));
        assert!(policy.should_rebuild(minutes(60), 10 << 20));
    }

    /// Our own process exists; pid 0 has no /proc entry.
    #[test]
    fn proc_entries() {
        assert!(in_proc(std::process::id()));
        assert!(!in_proc(0));
    }
}
