//! The process-mapping state: each process's executable mappings, as the side band and
//! `/proc` describe them, resolved to file slots and biases and written to `unwind_procs`.
//!
//! In: timestamped [`ProcessEvent`]s (forks, execs, mmaps, exits, snapshots). Out: one
//! `unwind_procs` entry per live process of interest, rewritten when its mappings change
//! and removed when it exits or execs, and the files whose tables are still to be built.

use std::collections::{BinaryHeap, HashMap, HashSet};

use crate::binaries::Locator;
use crate::bpf::BpfError;
use crate::bpf::abi::{UNWIND_MAX_MAPPINGS, UNWIND_NO_FILE, UnwindMapping, UnwindProc};
use crate::procs::{Backing, Mapping, ProcessEvent, ProcessTable, TimedEvent};

use super::files::{self, FileKey, MappedFile};
use super::store::{FileRef, TableStore};
use super::table;

/// Which processes get tables.
#[derive(Clone, Debug)]
pub enum Interest {
    /// Every process (`-a`, the agent).
    All,
    /// These processes and the children they fork (a command, `-p`).
    Targets(HashSet<u32>),
}

impl Interest {
    fn wants(&self, tgid: u32) -> bool {
        match self {
            Interest::All => true,
            Interest::Targets(tgids) => tgids.contains(&tgid),
        }
    }
}

/// A file waiting for its table.
#[derive(Debug)]
pub struct Pending {
    /// Its slot.
    pub file: FileRef,
    /// Its contents.
    pub bytes: MappedFile,
    /// Bytes of call frame information, so that small files (most programs, most
    /// libraries) are built before a compiler's 100 MB library holds them all up.
    pub cost: u64,
}

impl PartialEq for Pending {
    fn eq(&self, other: &Pending) -> bool {
        self.cost == other.cost && self.file == other.file
    }
}

impl Eq for Pending {}

impl PartialOrd for Pending {
    fn partial_cmp(&self, other: &Pending) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Pending {
    /// The cheapest file is the greatest, for a max-heap to pop first.
    fn cmp(&self, other: &Pending) -> std::cmp::Ordering {
        other
            .cost
            .cmp(&self.cost)
            .then(other.file.slot.cmp(&self.file.slot))
    }
}

/// What resolving mappings found.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MappingStats {
    /// Processes with an entry now.
    pub processes: u64,
    /// Mappings whose file could not be opened or read as ELF: frame pointers there.
    pub unreadable: u64,
    /// Mappings left out of a process's entry because it had more than the entry holds.
    pub dropped: u64,
}

/// What a mapping resolved to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Resolved {
    File { file: FileRef, bias: u64 },
    NoFile,
}

/// The live processes of interest and what their mappings resolved to.
#[derive(Debug)]
pub struct ProcessMappings {
    table: ProcessTable,
    interest: Interest,
    /// By process, its mappings' resolutions, keyed by (start, end, file offset).
    resolved: HashMap<u32, HashMap<(u64, u64, u64), Resolved>>,
    /// Files to build, cheapest first.
    pub pending: BinaryHeap<Pending>,
    /// Where a process's files can be read from here (containers, deleted files).
    locator: Locator,
    stats: MappingStats,
}

impl ProcessMappings {
    /// No process yet.
    pub fn new(interest: Interest) -> ProcessMappings {
        ProcessMappings {
            table: ProcessTable::default(),
            interest,
            resolved: HashMap::new(),
            pending: BinaryHeap::new(),
            locator: Locator::default(),
            stats: MappingStats::default(),
        }
    }

    /// What resolving has found so far.
    pub fn stats(&self) -> MappingStats {
        self.stats
    }

    /// Applies a batch of events in time order and rewrites the entries of the processes
    /// they changed.
    pub fn apply(
        &mut self,
        store: &mut TableStore,
        mut events: Vec<TimedEvent>,
    ) -> Result<(), BpfError> {
        events.sort_by_key(|e| e.time);
        if let Some(last) = events.last() {
            tracing::trace!(
                events = events.len(),
                lag_us = crate::procs::monotonic_now().saturating_sub(last.time) / 1000,
                "process events"
            );
        }
        let mut changed = Vec::new();
        let mut seen = HashSet::new();
        for TimedEvent { event, .. } in events {
            let tgid = match &event {
                ProcessEvent::Snapshot { pid, .. }
                | ProcessEvent::Comm { pid, .. }
                | ProcessEvent::Mmap { pid, .. }
                | ProcessEvent::Exit { pid, .. } => *pid,
                ProcessEvent::Fork { pid, ppid, tid } => {
                    if pid == tid
                        && pid != ppid
                        && self.interest.wants(*ppid)
                        && let Interest::Targets(tgids) = &mut self.interest
                    {
                        tgids.insert(*pid);
                    }
                    *pid
                }
            };
            if !self.interest.wants(tgid) {
                continue;
            }
            let exited = matches!(event, ProcessEvent::Exit { pid, tid } if pid == tid);
            self.table.apply(event);
            if exited && let Interest::Targets(tgids) = &mut self.interest {
                tgids.remove(&tgid);
            }
            if seen.insert(tgid) {
                changed.push(tgid);
            }
        }
        for tgid in changed {
            self.rewrite(store, tgid)?;
        }
        Ok(())
    }

    /// Writes (or removes) the entry of `tgid` from what the table says of it now.
    fn rewrite(&mut self, store: &mut TableStore, tgid: u32) -> Result<(), BpfError> {
        let mappings: Vec<Mapping> = match self.table.get(tgid) {
            Some(process) if !process.exited => process.mappings.clone(),
            _ => Vec::new(),
        };
        let before = self.resolved.remove(&tgid).unwrap_or_default();
        let mut after = HashMap::new();
        let mut entry = UnwindProc::default();
        for mapping in &mappings {
            let key = (mapping.start, mapping.end, mapping.file_offset);
            let resolved = match before.get(&key) {
                Some(resolved) => *resolved,
                None => {
                    let resolved = self.resolve(store, tgid, mapping)?;
                    if let Resolved::File { file, .. } = resolved {
                        store.retain(file);
                    }
                    resolved
                }
            };
            after.insert(key, resolved);
            let index = entry.count as usize;
            if index >= UNWIND_MAX_MAPPINGS {
                self.stats.dropped += 1;
                continue;
            }
            entry.mappings[index] = match resolved {
                Resolved::File { file, bias } => UnwindMapping {
                    start: mapping.start,
                    end: mapping.end,
                    bias,
                    file: file.slot,
                    generation: file.generation,
                },
                Resolved::NoFile => UnwindMapping {
                    start: mapping.start,
                    end: mapping.end,
                    bias: 0,
                    file: UNWIND_NO_FILE,
                    generation: 0,
                },
            };
            entry.count += 1;
        }
        for (key, resolved) in &before {
            if !after.contains_key(key)
                && let Resolved::File { file, .. } = resolved
            {
                store.release(*file);
            }
        }
        let had_entry = !before.is_empty();
        tracing::trace!(
            tgid,
            mappings = entry.count,
            had_entry,
            "process mappings rewritten"
        );
        if entry.count == 0 {
            // Exited, or exec'd and not mapped anew yet: until it is, its samples go to the
            // frame-pointer walker and count as "not loaded yet".
            if had_entry {
                store.maps().remove_process(tgid)?;
                self.stats.processes -= 1;
            }
            if self.table.get(tgid).is_none_or(|p| p.exited) {
                self.table.retain(|t, _| t != tgid);
                self.locator.forget(tgid);
            }
            return Ok(());
        }
        store.maps().set_process(tgid, &entry)?;
        if !had_entry {
            self.stats.processes += 1;
        }
        self.resolved.insert(tgid, after);
        Ok(())
    }

    /// Finds (or stores as pending) the file behind `mapping` of `tgid`.
    fn resolve(
        &mut self,
        store: &mut TableStore,
        tgid: u32,
        mapping: &Mapping,
    ) -> Result<Resolved, BpfError> {
        let place = |store: &TableStore, file: FileRef| {
            let bias = store
                .layout(file)?
                .bias(mapping.start, mapping.file_offset)?;
            Some(Resolved::File { file, bias })
        };
        let opened = match &mapping.backing {
            Backing::Anonymous => return Ok(Resolved::NoFile),
            Backing::Vdso => {
                if let Some(file) = store.find(&FileKey::Vdso) {
                    return Ok(place(store, file).unwrap_or(Resolved::NoFile));
                }
                files::vdso()
            }
            Backing::File(path) => {
                if let Some(build_id) = &mapping.build_id
                    && let Some(file) = store.find(&FileKey::BuildId(build_id.clone()))
                {
                    return Ok(place(store, file).unwrap_or(Resolved::NoFile));
                }
                let process = self.table.get(tgid).cloned().unwrap_or_default();
                match self.locator.locate(tgid, &process, mapping) {
                    Ok(readable) => files::open(&readable, path),
                    Err(reason) => Err(std::io::Error::other(reason.describe())),
                }
            }
        };
        let Ok(opened) = opened else {
            self.stats.unreadable += 1;
            return Ok(Resolved::NoFile);
        };
        if let Some(file) = store.find(&opened.inode) {
            return Ok(place(store, file).unwrap_or(Resolved::NoFile));
        }
        let Ok(layout) = table::inspect(&opened.bytes) else {
            self.stats.unreadable += 1;
            return Ok(Resolved::NoFile);
        };
        let build_id = layout
            .build_id
            .as_deref()
            .map(|id| FileKey::BuildId(id.into()));
        if let Some(key) = &build_id
            && let Some(file) = store.find(key)
        {
            store.alias(file, opened.inode.clone());
            return Ok(place(store, file).unwrap_or(Resolved::NoFile));
        }
        let keys = std::iter::once(opened.inode.clone())
            .chain(build_id)
            .collect();
        let cost = layout.cfi_bytes;
        let Some(file) = store.add_pending(keys, layout)? else {
            return Ok(Resolved::NoFile);
        };
        let resolved = place(store, file).unwrap_or(Resolved::NoFile);
        self.pending.push(Pending {
            file,
            bytes: opened,
            cost,
        });
        Ok(resolved)
    }
}
