//! Unwinding without frame pointers: userspace builds the tables that the BPF program
//! walks user stacks with (`ebpf/unwind.h`).
//!
//! - [`table`]: one ELF file's call frame information compiled into compact sorted rows;
//! - [`files`]: opening mapped files as their process sees them, naming them by build id,
//!   and the libraries a command loads at start-up;
//! - [`store`]: which file's rows sit where in the kernel's row array, evicting the least
//!   recently used when it is full;
//! - [`processes`]: each process's executable mappings, resolved to files and biases.
//!
//! In: the side band's process events (forks, execs, mmaps, exits) and `/proc` snapshots,
//! as they happen, plus the files to load before a command starts. Out: the unwinder's BPF
//! maps kept current by an [`Unwinder`] thread, and [`UnwindStats`] for the summary, the
//! SVG subtitle, pprof comments and the agent's metrics.
//!
//! Each file is built once, by build id, and shared by every process that maps it; in the
//! agent the tables stay loaded across windows. A file's table is built on the unwinder's
//! thread while the process runs: samples taken before it arrives are walked by frame
//! pointer and counted as "not loaded yet".

pub mod files;
pub mod processes;
pub mod store;
pub mod table;

use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, select};

use crate::bpf::abi::FILE_NO_CFI;
use crate::bpf::{BpfError, UnwindMaps, UnwindSizes};
use crate::procs::TimedEvent;

pub use processes::Interest;
use processes::{MappingStats, Pending, ProcessMappings};
use store::{StoreStats, TableStore};

/// Default rows of all files together: 4M rows of 8 bytes, 32 MiB of kernel memory. A busy
/// machine's whole set of binaries fits (libc is 25,000 rows, a large C++ program a few
/// hundred thousand); past it, the least recently used files are evicted.
pub const DEFAULT_TABLE_ROWS: u32 = 4 << 20;
/// Default distinct files with a table at once.
pub const DEFAULT_TABLE_FILES: u32 = 8192;
/// Default processes with mappings at once.
pub const DEFAULT_TABLE_PROCESSES: u32 = 4096;

/// The default sizes, with `rows` as `--unwind-table-size` gives it.
pub fn sizes(rows: u32) -> UnwindSizes {
    UnwindSizes {
        rows,
        files: DEFAULT_TABLE_FILES,
        processes: DEFAULT_TABLE_PROCESSES,
    }
}

/// How user stacks are unwound (`--unwind`, `[sampling] unwind`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UnwindMode {
    /// Unwind tables from `.eh_frame`/`.debug_frame`, walked in the kernel; frame pointers
    /// for code without a table row, and until a process's tables are loaded.
    #[default]
    Auto,
    /// Frame pointers only, by the kernel's walker: code built without them shows its leaf
    /// alone.
    Fp,
}

impl std::str::FromStr for UnwindMode {
    type Err = String;

    fn from_str(text: &str) -> Result<UnwindMode, String> {
        match text {
            "auto" => Ok(UnwindMode::Auto),
            "fp" => Ok(UnwindMode::Fp),
            other => Err(format!(
                "unknown unwind mode `{other}`: use `auto` (unwind tables, frame pointers \
                 where there are none) or `fp` (frame pointers only)"
            )),
        }
    }
}

impl UnwindMode {
    /// The BPF maps' sizes for this mode, with `rows` rows of tables; `None` for frame
    /// pointers only.
    pub fn sizes(self, rows: u32) -> Option<UnwindSizes> {
        match self {
            UnwindMode::Auto => Some(sizes(rows)),
            UnwindMode::Fp => None,
        }
    }
}

/// What the unwinder built and holds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct UnwindStats {
    /// The maps' sizes.
    pub sizes: Option<UnwindSizes>,
    /// What the store holds.
    pub store: StoreStats,
    /// What resolving mappings found.
    pub mappings: MappingStats,
    /// Files whose tables were built.
    pub files_built: u64,
    /// Files without call frame information (or that were not ELF files for x86-64).
    pub files_without_cfi: u64,
    /// Rows built, after merging.
    pub rows_built: u64,
    /// Rows whose rules the walk cannot follow.
    pub unsupported_rows: u64,
    /// Time spent building tables.
    pub build_time: Duration,
}

enum Control {
    Preload(Vec<PathBuf>, Sender<()>),
    Stop,
}

/// The thread that keeps the unwinder's maps current.
#[derive(Debug)]
pub struct Unwinder {
    control: Sender<Control>,
    thread: Option<JoinHandle<Result<(), BpfError>>>,
    stats: Arc<Mutex<UnwindStats>>,
}

impl std::fmt::Debug for Control {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Control::Preload(paths, _) => f.debug_tuple("Preload").field(paths).finish(),
            Control::Stop => f.write_str("Stop"),
        }
    }
}

fn lock(stats: &Mutex<UnwindStats>) -> MutexGuard<'_, UnwindStats> {
    stats
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Unwinder {
    /// Starts the thread over `maps`. It applies `initial` (snapshots of processes that
    /// already run) first, then every batch the side band sends on `events`, for the
    /// processes of `interest`.
    pub fn start(
        maps: UnwindMaps,
        interest: Interest,
        initial: Vec<TimedEvent>,
        events: Receiver<Vec<TimedEvent>>,
    ) -> Unwinder {
        let (control, inbox) = crossbeam_channel::unbounded();
        let stats = Arc::new(Mutex::new(UnwindStats {
            sizes: Some(maps.sizes()),
            ..UnwindStats::default()
        }));
        let shared = Arc::clone(&stats);
        let thread = std::thread::Builder::new()
            .name("prof-unwind".into())
            .spawn(move || {
                let mut worker = Worker {
                    store: TableStore::new(maps),
                    processes: ProcessMappings::new(interest),
                    stats: shared,
                    built: UnwindStats::default(),
                };
                worker.run(initial, &events, &inbox)
            })
            .expect("spawning the unwinder thread");
        Unwinder {
            control,
            thread: Some(thread),
            stats,
        }
    }

    /// Builds and loads the tables of `paths` now, before returning: for a command's
    /// executable and libraries, so that it is unwound from its first sample.
    pub fn preload(&self, paths: Vec<PathBuf>) {
        let (reply, done) = crossbeam_channel::bounded(1);
        if self.control.send(Control::Preload(paths, reply)).is_ok() {
            let _ = done.recv();
        }
    }

    /// What the unwinder built and holds so far.
    pub fn stats(&self) -> UnwindStats {
        *lock(&self.stats)
    }

    /// Stops the thread and returns what it built. The maps stay as they are: sampling can
    /// go on with them (it does not, once the recording has stopped).
    pub fn stop(mut self) -> Result<UnwindStats, BpfError> {
        let _ = self.control.send(Control::Stop);
        if let Some(thread) = self.thread.take()
            && let Ok(result) = thread.join()
        {
            result?;
        }
        Ok(self.stats())
    }
}

impl Drop for Unwinder {
    fn drop(&mut self) {
        let _ = self.control.send(Control::Stop);
    }
}

struct Worker {
    store: TableStore,
    processes: ProcessMappings,
    stats: Arc<Mutex<UnwindStats>>,
    built: UnwindStats,
}

impl Worker {
    fn run(
        &mut self,
        initial: Vec<TimedEvent>,
        events: &Receiver<Vec<TimedEvent>>,
        control: &Receiver<Control>,
    ) -> Result<(), BpfError> {
        self.processes.apply(&mut self.store, initial)?;
        self.publish();
        loop {
            // New mappings come first: they are cheap and samples wait for them; tables
            // are built one file at a time in between.
            let idle = self.processes.pending.is_empty();
            let timeout = if idle {
                Duration::from_millis(100)
            } else {
                Duration::ZERO
            };
            select! {
                recv(events) -> batch => match batch {
                    Ok(batch) => self.processes.apply(&mut self.store, batch)?,
                    // The side band stopped: the recording is over.
                    Err(_) => return Ok(()),
                },
                recv(control) -> message => match message {
                    Ok(Control::Preload(paths, reply)) => {
                        self.preload(paths)?;
                        let _ = reply.send(());
                    }
                    Ok(Control::Stop) | Err(_) => return Ok(()),
                },
                default(timeout) => {
                    if let Some(pending) = self.processes.pending.pop() {
                        self.build(pending)?;
                    }
                }
            }
            self.publish();
        }
    }

    fn publish(&self) {
        let mut stats = lock(&self.stats);
        *stats = UnwindStats {
            sizes: stats.sizes,
            store: self.store.stats(),
            mappings: self.processes.stats(),
            ..self.built
        };
    }

    /// Builds one pending file's table and puts it in place, unless that was done already
    /// (a preload builds queued files at once) or the file was evicted meanwhile.
    fn build(&mut self, pending: Pending) -> Result<(), BpfError> {
        if !self.store.is_pending(pending.file) {
            return Ok(());
        }
        let started = Instant::now();
        let compiled = table::compile(&pending.bytes.bytes);
        self.built.build_time += started.elapsed();
        match compiled {
            Ok(compiled) if !compiled.rows.is_empty() => {
                self.built.files_built += 1;
                self.built.rows_built += compiled.rows.len() as u64;
                self.built.unsupported_rows += compiled.stats.unsupported;
                tracing::debug!(
                    file = %pending.bytes.name.display(),
                    rows = compiled.rows.len(),
                    elapsed = ?started.elapsed(),
                    "unwind table built"
                );
                self.store.fill(pending.file, &compiled.rows)
            }
            other => {
                if let Err(err) = other {
                    tracing::debug!(file = %pending.bytes.name.display(), "no unwind table: {err}");
                }
                self.built.files_without_cfi += 1;
                self.store.set_state(pending.file, FILE_NO_CFI)
            }
        }
    }

    /// Builds the tables of `paths` at once: those not stored yet, and those still waiting
    /// in the queue.
    fn preload(&mut self, paths: Vec<PathBuf>) -> Result<(), BpfError> {
        for path in paths {
            let Ok(opened) = files::open(&path, &path) else {
                continue;
            };
            let Ok(layout) = table::inspect(&opened.bytes) else {
                continue;
            };
            let cost = layout.cfi_bytes;
            let build_id = layout
                .build_id
                .as_deref()
                .map(|id| files::FileKey::BuildId(id.into()));
            let stored = self
                .store
                .find(&opened.inode)
                .or_else(|| build_id.as_ref().and_then(|key| self.store.find(key)));
            let file = match stored {
                Some(file) => file,
                None => {
                    let keys = std::iter::once(opened.inode.clone())
                        .chain(build_id)
                        .collect();
                    match self.store.add_pending(keys, layout)? {
                        Some(file) => file,
                        None => continue,
                    }
                }
            };
            self.build(Pending {
                file,
                bytes: opened,
                cost,
            })?;
        }
        Ok(())
    }
}
