//! The process table: each sampled process's name and executable mappings, as they were
//! while it ran, including processes that exited before the recording ended.
//!
//! In: timestamped [`ProcessEvent`]s, from two sources: snapshots of `/proc` (processes that
//! existed when recording started, or that the side band never described) and the side-band
//! perf records (forks, execs, names, mmaps, exits). Out: a [`ProcessTable`] that maps a
//! process's address to a file and file offset, which is what symbolization needs once the
//! process is gone.
//!
//! Events are applied in time order, so a snapshot taken while the side band already ran is
//! neither undone by older records nor overrides newer ones.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use procfs::process::{MMPermissions, MMapPath, Process as ProcProcess};

/// What backs an executable mapping.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Backing {
    /// A file, by the path the process saw.
    File(Arc<Path>),
    /// The vDSO.
    Vdso,
    /// Anonymous executable memory (JIT code) or another pseudo-file.
    Anonymous,
}

/// One executable mapping of a process.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mapping {
    /// First address.
    pub start: u64,
    /// One past the last address.
    pub end: u64,
    /// Offset in the file of `start`.
    pub file_offset: u64,
    /// What is mapped.
    pub backing: Backing,
    /// The GNU build id, where the kernel reported one.
    pub build_id: Option<Arc<[u8]>>,
    /// The file's device and inode, where `/proc` or the kernel told them.
    pub file_id: Option<FileId>,
}

/// Which file a mapping maps: its device and inode, as `/proc/<pid>/maps` and the side
/// band's mmap records tell them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FileId {
    /// The device's major number.
    pub major: u32,
    /// The device's minor number.
    pub minor: u32,
    /// The inode.
    pub inode: u64,
}

impl FileId {
    /// The id of the file at `path` now, if it can be stat'ed.
    pub fn of(path: &Path) -> Option<FileId> {
        let stat = rustix::fs::stat(path).ok()?;
        Some(FileId {
            major: rustix::fs::major(stat.st_dev),
            minor: rustix::fs::minor(stat.st_dev),
            inode: stat.st_ino,
        })
    }
}

impl Mapping {
    /// The file offset of `addr`, which must lie in this mapping.
    pub fn file_offset_of(&self, addr: u64) -> u64 {
        addr - self.start + self.file_offset
    }
}

/// Something that happened to a process, as the side band or `/proc` told it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ProcessEvent {
    /// A full description read from `/proc`.
    Snapshot {
        /// The process.
        pid: u32,
        /// Its name.
        comm: String,
        /// Its executable mappings.
        mappings: Vec<Mapping>,
    },
    /// A thread or process was created.
    Fork {
        /// The new task's process.
        pid: u32,
        /// The parent process.
        ppid: u32,
        /// The new task.
        tid: u32,
    },
    /// A task changed its name, or exec'd (`exec`), which also replaces the address space.
    Comm {
        /// The process.
        pid: u32,
        /// The thread.
        tid: u32,
        /// The new name.
        comm: String,
        /// Whether this came from exec.
        exec: bool,
    },
    /// An executable mapping was created.
    Mmap {
        /// The process.
        pid: u32,
        /// The mapping.
        mapping: Mapping,
    },
    /// A task exited.
    Exit {
        /// The process.
        pid: u32,
        /// The thread.
        tid: u32,
    },
}

/// A [`ProcessEvent`] with its CLOCK_MONOTONIC time in nanoseconds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TimedEvent {
    /// When it happened.
    pub time: u64,
    /// What happened.
    pub event: ProcessEvent,
}

/// How many images from before exec a process keeps: enough for a shell that execs a
/// program that execs another, bounded for a long-running agent.
pub const IMAGES_BEFORE_EXEC: usize = 4;

/// What a process ran before an exec replaced it: its name and executable mappings.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Image {
    /// The process name then.
    pub comm: Option<String>,
    /// Executable mappings then, sorted by start.
    pub mappings: Vec<Mapping>,
}

/// One process as the table knows it.
///
/// The kernel counts a process's samples under its pid for the whole recording, across
/// exec: a child forked by `sh` is sampled in `sh`'s code (returning from fork, calling
/// execve, in the kernel while execve runs) before it is sampled in the program it execs.
/// So the images the process had before each exec are kept too, and a stack is resolved
/// in the image that maps it (see [`Process::image_for`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Process {
    /// The process name (the main thread's comm).
    pub comm: Option<String>,
    /// Executable mappings, sorted by start, not overlapping.
    pub mappings: Vec<Mapping>,
    /// Whether the process exited during the recording.
    pub exited: bool,
    /// What it was before each exec during the recording, newest first, at most
    /// [`IMAGES_BEFORE_EXEC`].
    pub before_exec: Vec<Image>,
}

/// The mapping of `mappings` (sorted by start) that contains `addr`.
fn mapping_in(mappings: &[Mapping], addr: u64) -> Option<&Mapping> {
    let index = mappings.partition_point(|m| m.end <= addr);
    mappings.get(index).filter(|m| m.start <= addr)
}

impl Process {
    /// The mapping that contains `addr`, in the current image.
    pub fn mapping_of(&self, addr: u64) -> Option<&Mapping> {
        mapping_in(&self.mappings, addr)
    }

    /// How many images the process is known by: the current one, then those before exec.
    pub fn image_count(&self) -> usize {
        1 + self.before_exec.len()
    }

    /// The name of image `image` (0: the current one, then newest first before exec).
    pub fn comm_in(&self, image: usize) -> Option<&str> {
        match image {
            0 => self.comm.as_deref(),
            n => self.before_exec.get(n - 1)?.comm.as_deref(),
        }
    }

    /// The mapping that contains `addr` in image `image`.
    pub fn mapping_in(&self, image: usize, addr: u64) -> Option<&Mapping> {
        match image {
            0 => self.mapping_of(addr),
            n => mapping_in(&self.before_exec.get(n - 1)?.mappings, addr),
        }
    }

    /// The image a stack of these addresses was taken in: the one that maps most of them,
    /// the newest on a tie (so 0 when the process never exec'd, or when nothing maps).
    pub fn image_for(&self, addrs: &[u64]) -> usize {
        let mut best = (0, 0);
        for image in 0..self.image_count() {
            let mapped = addrs
                .iter()
                .filter(|&&addr| self.mapping_in(image, addr).is_some())
                .count();
            if mapped > best.1 {
                best = (image, mapped);
            }
        }
        best.0
    }

    fn insert(&mut self, new: Mapping) {
        let mut kept = Vec::with_capacity(self.mappings.len() + 2);
        for old in self.mappings.drain(..) {
            if old.end <= new.start || old.start >= new.end {
                kept.push(old);
                continue;
            }
            // Keep what the new mapping does not cover, as mmap(MAP_FIXED) would.
            if old.start < new.start {
                kept.push(Mapping {
                    end: new.start,
                    ..old.clone()
                });
            }
            if old.end > new.end {
                let skipped = new.end - old.start;
                kept.push(Mapping {
                    start: new.end,
                    file_offset: old.file_offset + skipped,
                    ..old
                });
            }
        }
        kept.push(new);
        kept.sort_by_key(|m| m.start);
        self.mappings = kept;
    }
}

/// Every process prof knows about, by tgid.
#[derive(Clone, Debug, Default)]
pub struct ProcessTable {
    processes: HashMap<u32, Process>,
}

impl ProcessTable {
    /// Builds the table by applying `events` in time order.
    pub fn build(events: Vec<TimedEvent>) -> ProcessTable {
        let mut table = ProcessTable::default();
        table.apply_batch(events);
        table
    }

    /// Applies a batch of events in time order: what the side band saw since the last batch.
    pub fn apply_batch(&mut self, mut events: Vec<TimedEvent>) {
        events.sort_by_key(|e| e.time);
        for event in events {
            self.apply(event.event);
        }
    }

    /// Forgets the processes for which `keep` is false (a long-running agent forgets the
    /// processes that exited once their samples are symbolized, so the table stays bounded).
    pub fn retain(&mut self, mut keep: impl FnMut(u32, &Process) -> bool) {
        self.processes.retain(|&tgid, process| keep(tgid, process));
    }

    /// The tgids of every known process.
    pub fn tgids(&self) -> impl Iterator<Item = u32> + '_ {
        self.processes.keys().copied()
    }

    /// Applies one event.
    pub fn apply(&mut self, event: ProcessEvent) {
        match event {
            ProcessEvent::Snapshot {
                pid,
                comm,
                mappings,
            } => {
                let process = self.processes.entry(pid).or_default();
                process.comm = Some(comm);
                process.mappings = mappings;
                process.mappings.sort_by_key(|m| m.start);
            }
            ProcessEvent::Fork { pid, ppid, tid } => {
                if pid != tid || pid == ppid {
                    return; // a new thread of an existing process
                }
                // The child starts as a copy of what its parent runs now; what the parent
                // ran before its own exec was never the child's.
                let child = match self.processes.get(&ppid) {
                    Some(parent) => Process {
                        comm: parent.comm.clone(),
                        mappings: parent.mappings.clone(),
                        exited: false,
                        before_exec: Vec::new(),
                    },
                    None => Process::default(),
                };
                self.processes.insert(pid, child);
            }
            ProcessEvent::Comm {
                pid,
                tid,
                comm,
                exec,
            } => {
                let process = self.processes.entry(pid).or_default();
                if exec {
                    let before = Image {
                        comm: process.comm.replace(comm),
                        mappings: std::mem::take(&mut process.mappings),
                    };
                    if !before.mappings.is_empty() {
                        process.before_exec.insert(0, before);
                        process.before_exec.truncate(IMAGES_BEFORE_EXEC);
                    }
                } else if pid == tid {
                    process.comm = Some(comm);
                }
            }
            ProcessEvent::Mmap { pid, mapping } => {
                self.processes.entry(pid).or_default().insert(mapping);
            }
            ProcessEvent::Exit { pid, tid } => {
                if pid == tid
                    && let Some(process) = self.processes.get_mut(&pid)
                {
                    process.exited = true;
                }
            }
        }
    }

    /// The process `tgid`, if known.
    pub fn get(&self, tgid: u32) -> Option<&Process> {
        self.processes.get(&tgid)
    }

    /// Whether the table knows `tgid` with at least a name or a mapping.
    pub fn knows(&self, tgid: u32) -> bool {
        self.processes
            .get(&tgid)
            .is_some_and(|p| p.comm.is_some() || !p.mappings.is_empty())
    }

    /// Number of processes known.
    pub fn len(&self) -> usize {
        self.processes.len()
    }

    /// Whether no process is known.
    pub fn is_empty(&self) -> bool {
        self.processes.is_empty()
    }
}

/// Reads one process from `/proc` as a snapshot event; `None` if it is gone or unreadable.
pub fn snapshot(pid: u32) -> Option<ProcessEvent> {
    let process = ProcProcess::new(pid as i32).ok()?;
    let comm = process.stat().ok()?.comm;
    // Kernel threads have no mappings; that is not a failure.
    let mappings = process
        .maps()
        .map(|maps| maps.into_iter().filter_map(executable_mapping).collect());
    Some(ProcessEvent::Snapshot {
        pid,
        comm,
        mappings: mappings.unwrap_or_default(),
    })
}

/// The process (tgid) that `pid` belongs to: itself for a process, its process for a
/// thread id; `None` if there is no such task.
pub fn tgid_of(pid: u32) -> Option<u32> {
    let status = ProcProcess::new(pid as i32).ok()?.status().ok()?;
    u32::try_from(status.tgid).ok()
}

/// Whether process `pid` is gone or has exited: a zombie (its parent has not reaped it yet)
/// runs no code, though it stays in `/proc`.
pub fn has_exited(pid: u32) -> bool {
    match ProcProcess::new(pid as i32).and_then(|p| p.stat()) {
        Ok(stat) => matches!(stat.state, 'Z' | 'X' | 'x'),
        Err(_) => true,
    }
}

/// Snapshots every process in `/proc`.
pub fn snapshot_all() -> Vec<ProcessEvent> {
    let Ok(all) = procfs::process::all_processes() else {
        return Vec::new();
    };
    all.filter_map(Result::ok)
        .filter_map(|p| snapshot(p.pid as u32))
        .collect()
}

fn executable_mapping(map: procfs::process::MemoryMap) -> Option<Mapping> {
    if !map.perms.contains(MMPermissions::EXECUTE) {
        return None;
    }
    let (backing, file_id) = match map.pathname {
        MMapPath::Path(path) => {
            let id = FileId {
                major: map.dev.0 as u32,
                minor: map.dev.1 as u32,
                inode: map.inode,
            };
            (Backing::File(Arc::from(path.as_path())), Some(id))
        }
        MMapPath::Vdso => (Backing::Vdso, None),
        _ => (Backing::Anonymous, None),
    };
    Some(Mapping {
        start: map.address.0,
        end: map.address.1,
        file_offset: map.offset,
        backing,
        build_id: None,
        file_id,
    })
}

/// What the side band reports as a mapping's file name, turned into a [`Backing`].
pub fn backing_from_name(name: &[u8]) -> Backing {
    use std::os::unix::ffi::OsStrExt;
    match name {
        b"[vdso]" => Backing::Vdso,
        // perf's name for anonymous executable memory.
        b"//anon" => Backing::Anonymous,
        [b'/', ..] => Backing::File(Arc::from(Path::new(std::ffi::OsStr::from_bytes(name)))),
        _ => Backing::Anonymous,
    }
}

/// CLOCK_MONOTONIC now, in nanoseconds: the clock the side band stamps records with.
pub fn monotonic_now() -> u64 {
    let now = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    now.tv_sec as u64 * 1_000_000_000 + now.tv_nsec as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(path: &str) -> Backing {
        Backing::File(Arc::from(Path::new(path)))
    }

    fn mapping(start: u64, end: u64, file_offset: u64, path: &str) -> Mapping {
        Mapping {
            start,
            end,
            file_offset,
            backing: file(path),
            build_id: None,
            file_id: None,
        }
    }

    fn at(time: u64, event: ProcessEvent) -> TimedEvent {
        TimedEvent { time, event }
    }

    /// A process that forked, exec'd, mapped and exited is still fully described, and events
    /// from different CPUs apply in time order, not arrival order.
    #[test]
    fn exited_process_keeps_its_mappings() {
        let events = vec![
            at(
                30,
                ProcessEvent::Mmap {
                    pid: 20,
                    mapping: mapping(0x1000, 0x3000, 0, "/bin/app"),
                },
            ),
            at(40, ProcessEvent::Exit { pid: 20, tid: 20 }),
            at(
                10,
                ProcessEvent::Fork {
                    pid: 20,
                    ppid: 10,
                    tid: 20,
                },
            ),
            at(
                20,
                ProcessEvent::Comm {
                    pid: 20,
                    tid: 20,
                    comm: "app".into(),
                    exec: true,
                },
            ),
            at(
                5,
                ProcessEvent::Snapshot {
                    pid: 10,
                    comm: "sh".into(),
                    mappings: vec![mapping(0x1000, 0x2000, 0, "/bin/sh")],
                },
            ),
        ];
        let table = ProcessTable::build(events);
        let app = table.get(20).unwrap();
        assert_eq!(app.comm.as_deref(), Some("app"));
        assert!(app.exited);
        let m = app.mapping_of(0x2abc).unwrap();
        assert_eq!(m.backing, file("/bin/app"));
        assert_eq!(m.file_offset_of(0x2abc), 0x1abc);
        assert!(app.mapping_of(0x3000).is_none());
        assert!(app.mapping_of(0xfff).is_none());
        // The parent is untouched by its child's exec.
        assert_eq!(table.get(10).unwrap().mappings[0].backing, file("/bin/sh"));
    }

    /// A forked child starts with its parent's mappings; thread creation changes nothing.
    #[test]
    fn fork_copies_the_parent() {
        let mut table = ProcessTable::default();
        table.apply(ProcessEvent::Snapshot {
            pid: 1,
            comm: "init".into(),
            mappings: vec![mapping(0x1000, 0x2000, 0, "/sbin/init")],
        });
        table.apply(ProcessEvent::Fork {
            pid: 1,
            ppid: 1,
            tid: 7,
        });
        table.apply(ProcessEvent::Fork {
            pid: 2,
            ppid: 1,
            tid: 2,
        });
        assert_eq!(table.len(), 2);
        assert_eq!(table.get(2).unwrap().comm.as_deref(), Some("init"));
        assert!(table.get(2).unwrap().mapping_of(0x1800).is_some());
        // A thread renaming itself does not rename the process.
        table.apply(ProcessEvent::Comm {
            pid: 2,
            tid: 9,
            comm: "worker".into(),
            exec: false,
        });
        assert_eq!(table.get(2).unwrap().comm.as_deref(), Some("init"));
    }

    /// A new mapping over part of an old one splits the old one, keeping file offsets right.
    #[test]
    fn overlapping_mmap_splits() {
        let mut process = Process::default();
        process.insert(mapping(0x1000, 0x5000, 0x100, "/lib/a.so"));
        process.insert(mapping(0x2000, 0x3000, 0, "/lib/b.so"));
        let spans: Vec<(u64, u64, u64)> = process
            .mappings
            .iter()
            .map(|m| (m.start, m.end, m.file_offset))
            .collect();
        assert_eq!(
            spans,
            vec![
                (0x1000, 0x2000, 0x100),
                (0x2000, 0x3000, 0),
                (0x3000, 0x5000, 0x2100)
            ]
        );
    }

    /// Our own process reads back from /proc with its executable mapped.
    #[test]
    fn snapshot_of_self() {
        let Some(ProcessEvent::Snapshot { comm, mappings, .. }) = snapshot(std::process::id())
        else {
            panic!("our own process is in /proc");
        };
        assert!(!comm.is_empty());
        let exe = std::env::current_exe().unwrap();
        assert!(
            mappings
                .iter()
                .any(|m| m.backing == Backing::File(Arc::from(exe.as_path()))),
            "{mappings:?} maps {exe:?}"
        );
    }

    /// A process is its own tgid; a thread belongs to its process; no task, no tgid.
    #[test]
    fn tgids() {
        let me = std::process::id();
        assert_eq!(tgid_of(me), Some(me));
        let (tid_sender, tid) = std::sync::mpsc::channel();
        let (done, wait) = std::sync::mpsc::channel::<()>();
        let thread = std::thread::spawn(move || {
            tid_sender
                .send(rustix::thread::gettid().as_raw_nonzero().get() as u32)
                .unwrap();
            wait.recv().ok();
        });
        let tid = tid.recv().unwrap();
        assert_ne!(tid, me);
        assert_eq!(tgid_of(tid), Some(me));
        done.send(()).unwrap();
        thread.join().unwrap();
        assert_eq!(tgid_of(u32::MAX - 1), None);
    }

    /// A running process has not exited; a zombie (exited, not yet reaped) and a pid that
    /// is gone have.
    #[test]
    fn zombies_have_exited() {
        assert!(!has_exited(std::process::id()));
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        // Not reaped until wait(): it stays a zombie once it has run.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while !has_exited(pid) {
            assert!(std::time::Instant::now() < deadline, "`true` never exited");
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        assert!(
            Path::new(&format!("/proc/{pid}")).exists(),
            "a zombie is in /proc"
        );
        child.wait().unwrap();
        assert!(has_exited(u32::MAX - 1));
    }

    /// A child that exec'd keeps what it ran before: a stack of addresses from its parent's
    /// image resolves there, under the parent's name, and a stack of the new program in the
    /// new image; the images before exec are bounded.
    #[test]
    fn exec_keeps_the_image_before() {
        let mut table = ProcessTable::default();
        table.apply(ProcessEvent::Snapshot {
            pid: 10,
            comm: "forker".into(),
            mappings: vec![mapping(0x1000, 0x2000, 0, "/usr/bin/forker")],
        });
        table.apply(ProcessEvent::Fork {
            pid: 11,
            ppid: 10,
            tid: 11,
        });
        table.apply(ProcessEvent::Comm {
            pid: 11,
            tid: 11,
            comm: "true".into(),
            exec: true,
        });
        table.apply(ProcessEvent::Mmap {
            pid: 11,
            mapping: mapping(0x5000, 0x6000, 0, "/usr/bin/true"),
        });
        let child = table.get(11).unwrap();
        assert_eq!(child.image_count(), 2);
        assert_eq!(child.image_for(&[0x5100, 0x5200]), 0);
        assert_eq!(child.image_for(&[0x1100, 0x1200]), 1);
        assert_eq!(
            child.image_for(&[0x9999]),
            0,
            "nothing maps it: the current image"
        );
        assert_eq!(child.comm_in(1), Some("forker"));
        assert_eq!(child.comm_in(0), Some("true"));
        assert_eq!(
            child.mapping_in(1, 0x1100).unwrap().backing,
            file("/usr/bin/forker")
        );
        assert!(child.mapping_of(0x1100).is_none());
        // A grandchild starts from the child's current image only.
        table.apply(ProcessEvent::Fork {
            pid: 12,
            ppid: 11,
            tid: 12,
        });
        assert_eq!(table.get(12).unwrap().image_count(), 1);
        for n in 0..10 {
            table.apply(ProcessEvent::Comm {
                pid: 11,
                tid: 11,
                comm: format!("again{n}"),
                exec: true,
            });
            table.apply(ProcessEvent::Mmap {
                pid: 11,
                mapping: mapping(0x5000, 0x6000, 0, "/usr/bin/again"),
            });
        }
        assert_eq!(table.get(11).unwrap().image_count(), 1 + IMAGES_BEFORE_EXEC);
    }

    /// Side-band names classify as files, the vDSO, or anonymous memory.
    #[test]
    fn backing_names() {
        assert_eq!(
            backing_from_name(b"/usr/lib/libc.so.6"),
            file("/usr/lib/libc.so.6")
        );
        assert_eq!(backing_from_name(b"[vdso]"), Backing::Vdso);
        assert_eq!(backing_from_name(b"//anon"), Backing::Anonymous);
        assert_eq!(backing_from_name(b"[anon:jit]"), Backing::Anonymous);
    }
}
