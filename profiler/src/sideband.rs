//! The side band: a reader thread that drains the per-CPU side-band ring buffers (see
//! [`crate::perf::open_side_band`]) while the recording runs.
//!
//! In: one [`Sampler`] per CPU. Out, when stopped: every fork, exec, name change, executable
//! mmap and exit on the machine during the recording, as timestamped [`ProcessEvent`]s for
//! [`crate::procs::ProcessTable`], plus the number of records the kernel had to drop because
//! a ring buffer was full. A long-running reader (the agent) [takes](SideBandReader::take)
//! what it saw so far instead, window by window.

use std::os::fd::{AsRawFd, BorrowedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use crossbeam_channel::Sender;
use rustix::event::{PollFd, PollFlags, Timespec, poll};

use perf_event::Sampler;
use perf_event::data::endian::Native;
use perf_event::data::parse::{ParseConfig, Parser};
use perf_event::data::{Comm, Exit, Lost, Mmap2, RecordMetadata, Visitor};

use crate::procs::{FileId, Mapping, ProcessEvent, TimedEvent, backing_from_name};

/// How often the reader wakes to drain the rings, at the latest. The rings hold far more
/// than this much. Rings opened with a wakeup on every record (for the unwinder, which needs
/// new mappings at once) wake it sooner.
pub const POLL_INTERVAL: Duration = Duration::from_millis(20);

/// `PERF_RECORD_MISC_COMM_EXEC`: the COMM record comes from exec.
const MISC_COMM_EXEC: u16 = 1 << 13;

/// What the side band saw.
#[derive(Debug, Default)]
pub struct SideBandLog {
    /// Process events, in arrival order (not time order).
    pub events: Vec<TimedEvent>,
    /// Records the kernel dropped because a ring buffer was full.
    pub lost_records: u64,
}

/// A running side-band reader.
#[derive(Debug)]
pub struct SideBandReader {
    stop: Arc<AtomicBool>,
    log: Arc<Mutex<SideBandLog>>,
    thread: JoinHandle<()>,
}

impl SideBandReader {
    /// Starts draining `samplers` on a thread of its own. Each pass's events also go to
    /// `tap`, if given, as soon as they are read (the unwinder follows mappings live).
    pub fn spawn(samplers: Vec<Sampler>, tap: Option<Sender<Vec<TimedEvent>>>) -> SideBandReader {
        let stop = Arc::new(AtomicBool::new(false));
        let log = Arc::new(Mutex::new(SideBandLog::default()));
        let stop_flag = Arc::clone(&stop);
        let shared = Arc::clone(&log);
        let thread = thread::Builder::new()
            .name("prof-sideband".into())
            .spawn(move || {
                let mut samplers = samplers;
                let mut pass = SideBandLog::default();
                loop {
                    // Read the flag first so that the last pass drains everything written
                    // before stop() was called.
                    let stopping = stop_flag.load(Ordering::Acquire);
                    for sampler in &mut samplers {
                        drain(sampler, &mut pass);
                    }
                    // Whole passes are published at once, so a take() sees every record
                    // written before the pass started.
                    if let Some(tap) = &tap
                        && !pass.events.is_empty()
                    {
                        let _ = tap.send(pass.events.clone());
                    }
                    if !pass.events.is_empty() || pass.lost_records > 0 {
                        let mut log = lock(&shared);
                        log.events.append(&mut pass.events);
                        log.lost_records += std::mem::take(&mut pass.lost_records);
                    }
                    if stopping {
                        return;
                    }
                    wait_for_records(&samplers);
                }
            })
            .expect("spawning the side-band thread");
        SideBandReader { stop, log, thread }
    }

    /// What the reader saw since it started or since the last take; it goes on reading. A
    /// record is here once a whole pass over the rings that began after it was written has
    /// ended, that is at most two poll intervals (40 ms) after it was written.
    pub fn take(&self) -> SideBandLog {
        std::mem::take(&mut *lock(&self.log))
    }

    /// Stops the reader after one last drain and returns what it saw (since the last take).
    pub fn stop(self) -> SideBandLog {
        self.stop.store(true, Ordering::Release);
        let _ = self.thread.join();
        std::mem::take(&mut *lock(&self.log))
    }
}

/// Sleeps until a ring has records to read (rings opened with a wakeup per record) or
/// [`POLL_INTERVAL`] has passed.
fn wait_for_records(samplers: &[Sampler]) {
    let mut fds: Vec<PollFd<'_>> = samplers
        .iter()
        .map(|sampler| {
            // SAFETY: the sampler owns this fd and outlives the borrow, which ends with
            // this function.
            let fd = unsafe { BorrowedFd::borrow_raw(sampler.as_raw_fd()) };
            PollFd::from_borrowed_fd(fd, PollFlags::IN)
        })
        .collect();
    let timeout = Timespec {
        tv_sec: 0,
        tv_nsec: POLL_INTERVAL.as_nanos() as i64,
    };
    if poll(&mut fds, Some(&timeout)).is_err() {
        thread::sleep(POLL_INTERVAL);
    }
}

/// The log is plain data; a panic elsewhere while holding it leaves it usable.
fn lock(log: &Mutex<SideBandLog>) -> MutexGuard<'_, SideBandLog> {
    log.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn drain(sampler: &mut Sampler, log: &mut SideBandLog) {
    let config = sampler.config().clone();
    let mut bytes = Vec::new();
    while let Some(record) = sampler.next_record() {
        let size = 8 + record.len();
        let Ok(size) = u16::try_from(size) else {
            continue;
        };
        // Re-assemble the record with its header so perf-event-data parses it whole,
        // including the sample_id trailer that carries the timestamp.
        bytes.clear();
        bytes.extend_from_slice(&record.ty().to_ne_bytes());
        bytes.extend_from_slice(&record.misc().to_ne_bytes());
        bytes.extend_from_slice(&size.to_ne_bytes());
        for part in record.data() {
            bytes.extend_from_slice(part);
        }
        drop(record);
        match parse(&bytes, &config) {
            Some(Parsed::Event(event)) => log.events.push(event),
            Some(Parsed::Lost(count)) => log.lost_records += count,
            None => {}
        }
    }
}

enum Parsed {
    Event(TimedEvent),
    Lost(u64),
}

fn parse(bytes: &[u8], config: &ParseConfig<Native>) -> Option<Parsed> {
    let mut parser = Parser::new(bytes, config.clone());
    parser.parse_record(RecordVisitor).ok().flatten()
}

struct RecordVisitor;

fn timed(metadata: &RecordMetadata, event: ProcessEvent) -> Option<Parsed> {
    let time = metadata.sample_id().time()?;
    Some(Parsed::Event(TimedEvent { time, event }))
}

impl<'a> Visitor<'a> for RecordVisitor {
    type Output = Option<Parsed>;

    fn visit_unimplemented(self, _metadata: RecordMetadata) -> Self::Output {
        None
    }

    fn visit_mmap2(self, record: Mmap2<'a>, metadata: RecordMetadata) -> Self::Output {
        let mapping = Mapping {
            start: record.addr,
            end: record.addr + record.len,
            file_offset: record.pgoff,
            backing: backing_from_name(&record.filename),
            build_id: record.build_id().map(Arc::from),
            file_id: match (record.maj(), record.min(), record.ino()) {
                (Some(major), Some(minor), Some(inode)) if inode != 0 => Some(FileId {
                    major,
                    minor,
                    inode,
                }),
                _ => None,
            },
        };
        timed(
            &metadata,
            ProcessEvent::Mmap {
                pid: record.pid,
                mapping,
            },
        )
    }

    fn visit_comm(self, record: Comm<'a>, metadata: RecordMetadata) -> Self::Output {
        let comm = String::from_utf8_lossy(&record.comm).into_owned();
        let exec = metadata.misc() & MISC_COMM_EXEC != 0;
        timed(
            &metadata,
            ProcessEvent::Comm {
                pid: record.pid,
                tid: record.tid,
                comm,
                exec,
            },
        )
    }

    fn visit_fork(self, record: Exit, metadata: RecordMetadata) -> Self::Output {
        let event = ProcessEvent::Fork {
            pid: record.pid,
            ppid: record.ppid,
            tid: record.tid,
        };
        timed(&metadata, event)
    }

    fn visit_exit(self, record: Exit, metadata: RecordMetadata) -> Self::Output {
        timed(
            &metadata,
            ProcessEvent::Exit {
                pid: record.pid,
                tid: record.tid,
            },
        )
    }

    fn visit_lost(self, record: Lost, _metadata: RecordMetadata) -> Self::Output {
        Some(Parsed::Lost(record.lost))
    }
}
