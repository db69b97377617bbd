//! `prof agent`: sample the whole machine without end, in windows. Each window is drained from
//! the BPF generation that sampling just left, symbolized with caches kept across windows,
//! and handed as pprof to every export: the push queue, the directory and the HTTP server's
//! recent windows. The sampling loop never waits on the network.
//!
//! Threads: this one samples and closes windows; `server` answers HTTP; `pusher` empties the
//! push queue; the side band reads process records. They share [`Shared`].

mod pusher;
mod server;

use std::collections::HashSet;
use std::io::{self, IsTerminal};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, Result};
use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};

use prof::agent::config::AgentConfig;
use prof::agent::labels::LabelCache;
use prof::agent::metrics::Metrics;
use prof::agent::queue::DropOldest;
use prof::agent::rotation::Rotation;
use prof::agent::window::{self, Recent, Span};
use prof::bpf::{BpfConfig, BpfProfiler, KernelStats};
use prof::drain::{self, Drained};
use prof::events::Event;
use prof::perf::Sampling;
use prof::procs::{self, ProcessTable, TimedEvent};
use prof::profile::{EventProfile, Labels, Profile};
use prof::sideband::{POLL_INTERVAL, SideBandReader};
use prof::symbolize::{EventInfo, Symbolizer};
use prof::{privilege, session};

use crate::cmd::record::with_permission_hint_for;
use crate::cmd::stop_on_signals;

/// How long to let in-flight BPF programs and the side band catch up after a flip: samples
/// being counted during the flip finish within microseconds, and the side band publishes a
/// whole pass every poll interval.
const SETTLE: Duration = Duration::from_millis(3 * POLL_INTERVAL.as_millis() as u64);

/// Captures for `/debug/pprof/profile` running at once, at most.
const MAX_CAPTURES: usize = 4;

/// Every this many drains, processes that are gone without an exit record are forgotten.
const SWEEP_EVERY: u64 = 30;

/// When the agent's resident memory passes this, the symbolizer is rebuilt (at most once
/// per [`RESET_AT_MOST_EVERY`]), which releases the symbol tables it parsed and the files it
/// mapped; the budget is 50 MB.
const RESET_SYMBOLIZER_ABOVE: u64 = 40 << 20;
const RESET_AT_MOST_EVERY: Duration = Duration::from_secs(600);

/// Files no drain needed for this many drains (two minutes of 10-second windows) are
/// evicted from the symbolizer's cache.
const EVICT_AFTER_DRAINS: u64 = 12;

/// The symbolizer is rebuilt this often, so files that are gone (and their parsed symbols)
/// do not stay cached forever; in between, each binary is parsed once.
const SYMBOLIZER_LIFETIME: Duration = Duration::from_secs(3600);

/// One window's pprof, waiting to be pushed.
#[derive(Debug)]
pub struct PushItem {
    /// The ingest URL, with the window's times.
    pub url: String,
    /// The gzipped pprof body.
    pub body: Vec<u8>,
}

/// What the threads share.
#[derive(Debug)]
pub struct Shared {
    /// The counters behind `/metrics`.
    pub metrics: Mutex<Metrics>,
    /// The latest windows, for `/flamegraph.svg`.
    pub recent: Mutex<Recent>,
    /// The sampled events (names and units), in order.
    pub events: Vec<EventProfile>,
    /// Requests to the sampling loop.
    pub requests: Sender<Request>,
    /// The push queue, if pushing.
    pub queue: Option<Arc<DropOldest<Arc<PushItem>>>>,
    /// Set when the agent is shutting down.
    pub stopping: AtomicBool,
    /// The configuration.
    pub config: AgentConfig,
}

impl Shared {
    /// The metrics, locked.
    pub fn metrics(&self) -> MutexGuard<'_, Metrics> {
        self.metrics.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The recent windows, locked.
    pub fn recent(&self) -> MutexGuard<'_, Recent> {
        self.recent.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// What the HTTP server asks of the sampling loop.
#[derive(Debug)]
pub enum Request {
    /// Start capturing everything sampled from now on; answers the capture's id, or `None`
    /// when too many captures run.
    StartCapture(Sender<Option<u64>>),
    /// End a capture and hand over what it captured.
    FinishCapture(u64, Sender<Span>),
}

/// Sets up logging: `RUST_LOG` if set, else the config's filter.
fn init_logging(filter: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(filter));
    tracing_subscriber::fmt()
        .with_writer(io::stderr)
        .with_env_filter(filter)
        .with_target(false)
        // Colour codes only on a terminal, not in journald or a log file.
        .with_ansi(io::stderr().is_terminal())
        .init();
}

/// Runs the agent until SIGTERM or SIGINT; returns the exit code.
pub fn run(config: AgentConfig) -> Result<u8> {
    init_logging(&config.log);
    privilege::check("prof agent")?;
    let sampling = Sampling::Frequency(config.frequency);
    let plan = session::plan(&config.recorded_events(), sampling, None)?;
    for warning in &plan.warnings {
        tracing::warn!("{warning}");
    }
    if let Some(dir) = &config.dir {
        prof::export::check_writable(&dir.path.join("prof-check.pb.gz"))
            .with_context(|| format!("[dir] path `{}`", dir.path.display()))?;
    }
    // Bound before anything is attached, so a taken port fails fast.
    let http = match config.http.enabled {
        true => Some(server::bind(config.http.listen)?),
        false => None,
    };

    let stop = stop_on_signals()?;
    let unwind = config
        .sampling
        .unwind
        .sizes(config.sampling.unwind_table_size);
    let mut side_band = session::start_side_band(&plan, unwind.is_some(), false)?;
    let snapshot_time = procs::monotonic_now();
    let snapshots: Vec<TimedEvent> = procs::snapshot_all()
        .into_iter()
        .map(|event| TimedEvent {
            time: snapshot_time,
            event,
        })
        .collect();

    let hint = |err| with_permission_hint_for("prof agent", err);
    let mut bpf = session::attach(
        &plan,
        &BpfConfig {
            filter_tgids: false,
            stack_storage_size: config.stack_storage_size,
            counts_map_size: config.counts_map_size,
            double_buffer: true,
            off_cpu_min: Duration::from_micros(config.off_cpu_min_us),
            off_cpu_tasks: config.off_cpu_tasks,
            unwind,
            ..BpfConfig::default()
        },
        &[],
    )
    .map_err(hint)?;
    let unwinder = session::start_unwinder(
        &mut bpf,
        &mut side_band,
        prof::unwind::Interest::All,
        snapshots.clone(),
    );
    bpf.enable()?;
    tracing::info!(
        events = ?plan.events.iter().map(Event::name).collect::<Vec<_>>(),
        hz = config.frequency,
        cpus = plan.cpus.len(),
        window_seconds = config.window_seconds,
        listen = ?http.as_ref().map(|_| config.http.listen),
        push = ?config.push.as_ref().map(|p| p.url.as_str()),
        dir = ?config.dir.as_ref().map(|d| d.path.display().to_string()),
        "sampling"
    );

    let (requests, inbox) = crossbeam_channel::unbounded();
    let infos: Vec<EventInfo> = plan.events.iter().map(EventInfo::from).collect();
    let event_profiles: Vec<EventProfile> = infos
        .iter()
        .map(|e| EventProfile::new(e.name.clone(), e.unit))
        .collect();
    let history = (config.http.max_seconds / config.window_seconds + 1) as usize;
    let shared = Arc::new(Shared {
        metrics: Mutex::new(Metrics::default()),
        recent: Mutex::new(Recent::new(history)),
        events: event_profiles,
        requests,
        queue: config
            .push
            .as_ref()
            .map(|push| Arc::new(DropOldest::new(push.queue))),
        stopping: AtomicBool::new(false),
        config: config.clone(),
    });
    {
        let mut metrics = shared.metrics();
        for info in &infos {
            metrics.event(&info.name);
        }
    }
    let pusher = config
        .push
        .as_ref()
        .map(|push| pusher::spawn(push.clone(), Arc::clone(&shared)));
    if let Some(http) = http {
        server::spawn(http, Arc::clone(&shared));
    }

    let mut sampler = Sampler {
        bpf,
        side_band: side_band.reader,
        unwinder,
        processes: ProcessTable::build(snapshots),
        symbolizer: Symbolizer::with_debug_info(config.debug_info),
        symbolizer_born: Instant::now(),
        debug_info: config.debug_info,
        symbolizer_resets: 0,
        labels: LabelCache::default(),
        infos,
        previous_stats: KernelStats::default(),
        exited_before: HashSet::new(),
        drains: 0,
        captures: Vec::new(),
        next_capture: 0,
    };
    let rotation = config
        .dir
        .as_ref()
        .map(|dir| Rotation::new(dir.path.clone(), dir.max_files, dir.max_bytes));
    let exporter = Exporter {
        shared: Arc::clone(&shared),
        rotation,
        series: config.push.as_ref().map(|push| {
            let mut labels = push.labels.clone();
            labels
                .entry("hostname".to_owned())
                .or_insert_with(prof::agent::push::hostname);
            prof::agent::push::series_name(&push.app_name, &labels)
        }),
    };

    let mut window = sampler.new_span();
    let mut deadline = Instant::now() + config.window();
    loop {
        if stop.load(Ordering::Relaxed) {
            break;
        }
        let wait = deadline
            .saturating_duration_since(Instant::now())
            .min(Duration::from_millis(100));
        match inbox.recv_timeout(wait) {
            Ok(request) => sampler.answer(request, &mut window)?,
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => unreachable!("`shared` holds a sender"),
        }
        if Instant::now() >= deadline {
            let finished = sampler.close_window(&mut window)?;
            exporter.export(finished);
            deadline += config.window();
            // After a long stall (a suspended machine), start afresh rather than catch up.
            if deadline < Instant::now() {
                deadline = Instant::now() + config.window();
            }
        }
    }

    tracing::info!("stopping: flushing the current window");
    shared.stopping.store(true, Ordering::Relaxed);
    sampler.bpf.detach();
    let finished = sampler.close_window(&mut window)?;
    exporter.export(finished);
    if let (Some(queue), Some(pusher)) = (&shared.queue, pusher) {
        queue.close();
        let timeout =
            Duration::from_secs(config.push.as_ref().map_or(10, |p| p.timeout_seconds) + 2);
        if pusher.recv_timeout(timeout).is_err() {
            tracing::warn!(
                left = queue.len(),
                "the push queue was not emptied in time; its windows are lost"
            );
        }
    }
    drop(sampler.side_band.stop());
    tracing::info!("stopped");
    Ok(0)
}

/// The sampling side: the BPF maps, the process table and the symbolizer.
struct Sampler {
    bpf: BpfProfiler,
    side_band: SideBandReader,
    /// Keeps the unwind tables current, across windows.
    unwinder: Option<prof::unwind::Unwinder>,
    processes: ProcessTable,
    symbolizer: Symbolizer,
    symbolizer_born: Instant,
    debug_info: bool,
    symbolizer_resets: u64,
    labels: LabelCache,
    infos: Vec<EventInfo>,
    /// The kernel's cumulative counters at the last drain.
    previous_stats: KernelStats,
    /// Processes that had exited by the previous drain: forgotten at this one, once any
    /// sample they left in the generation being written is drained too.
    exited_before: HashSet<u32>,
    drains: u64,
    captures: Vec<(u64, Span)>,
    next_capture: u64,
}

impl Sampler {
    fn new_span(&self) -> Span {
        let events: Vec<EventProfile> = self
            .infos
            .iter()
            .map(|e| EventProfile::new(e.name.clone(), e.unit))
            .collect();
        Span::empty(SystemTime::now(), &events)
    }

    /// Flips the generation and drains the old one into the window and every capture.
    fn cut(&mut self, window: &mut Span) -> Result<(Profile, Duration)> {
        let old = self.bpf.flip()?;
        std::thread::sleep(SETTLE);
        let now = SystemTime::now();
        let log = self.side_band.take();
        self.processes.apply_batch(log.events);
        let mut drained = drain::drain_generation(&mut self.bpf, old, self.infos.len())?;
        for sample in &drained.samples {
            if !self.processes.knows(sample.tgid)
                && let Some(snapshot) = procs::snapshot(sample.tgid)
            {
                self.processes.apply(snapshot);
            }
        }
        let cumulative = drained.stats.clone();
        drained.stats = cumulative.since(&self.previous_stats);
        self.previous_stats = cumulative;

        let started = Instant::now();
        let mut profile = self.symbolize(&drained);
        let symbolize_time = started.elapsed();
        let evicted = self.symbolizer.evict_idle(EVICT_AFTER_DRAINS);
        if evicted > 0 {
            tracing::debug!(evicted, "evicted idle files from the symbolizer");
        }
        let resident = prof::agent::metrics::own_usage().resident_bytes;
        let age = self.symbolizer_born.elapsed();
        if age >= SYMBOLIZER_LIFETIME
            || (resident > RESET_SYMBOLIZER_ABOVE && age >= RESET_AT_MOST_EVERY)
        {
            tracing::debug!(resident, "rebuilding the symbolizer to release its caches");
            self.symbolizer = Symbolizer::with_debug_info(self.debug_info);
            self.symbolizer_born = Instant::now();
            self.symbolizer_resets += 1;
        }
        profile.side_band_lost = log.lost_records;
        self.forget_exited();

        window.absorb(&profile, now);
        for (_, capture) in &mut self.captures {
            capture.absorb(&profile, now);
        }
        Ok((profile, symbolize_time))
    }

    /// Symbolizes a drain and labels each process with its executable, cgroup and
    /// container.
    fn symbolize(&mut self, drained: &Drained) -> Profile {
        let mut profile = self
            .symbolizer
            .symbolize(drained, &self.processes, &self.infos);
        let (labels, processes) = (&mut self.labels, &self.processes);
        window::relabel(&mut profile, |labels_of| {
            let Some(pid) = labels_of.pid.filter(|&pid| pid != 0) else {
                return labels_of.clone();
            };
            let found = labels.get(pid, labels_of.comm.as_ref(), processes.get(pid));
            let mut extra = labels_of.extra.clone();
            for (key, value) in [
                ("executable", found.executable),
                ("cgroup", found.cgroup),
                ("container", found.container),
            ] {
                if let Some(value) = value {
                    extra.push((Arc::from(key), value));
                }
            }
            Labels {
                extra,
                ..labels_of.clone()
            }
        });
        profile
    }

    /// Forgets the processes that had already exited at the previous drain, and every so
    /// often those that are gone without an exit record.
    fn forget_exited(&mut self) {
        self.drains += 1;
        let before = std::mem::take(&mut self.exited_before);
        self.processes
            .retain(|tgid, process| !(process.exited && before.contains(&tgid)));
        if self.drains.is_multiple_of(SWEEP_EVERY) {
            self.processes
                .retain(|tgid, _| Path::new(&format!("/proc/{tgid}")).exists());
        }
        let mut exited = HashSet::new();
        let mut live = HashSet::new();
        for tgid in self.processes.tgids() {
            live.insert(tgid);
            if self.processes.get(tgid).is_some_and(|p| p.exited) {
                exited.insert(tgid);
            }
        }
        self.exited_before = exited;
        self.labels.retain(|pid| live.contains(&pid));
    }

    /// Ends the window: drains what is left and returns it, starting the next.
    fn close_window(&mut self, window: &mut Span) -> Result<Closed> {
        let started = Instant::now();
        let (_, symbolize_time) = self.cut(window)?;
        let finished = std::mem::replace(window, self.new_span());
        // The next window starts where this one ended.
        window.start = finished.end;
        window.end = finished.end;
        Ok(Closed {
            unwind_tables: self
                .unwinder
                .as_ref()
                .map(|u| crate::cmd::record::unwind_tables(&u.stats())),
            span: finished,
            symbolize_time,
            drain_time: started.elapsed(),
            processes: self.processes.len(),
            symbolizer_resets: self.symbolizer_resets,
        })
    }

    fn answer(&mut self, request: Request, window: &mut Span) -> Result<()> {
        match request {
            Request::StartCapture(reply) => {
                if self.captures.len() >= MAX_CAPTURES {
                    let _ = reply.send(None);
                    return Ok(());
                }
                // What was sampled before the capture belongs to the window only.
                self.cut(window)?;
                let id = self.next_capture;
                self.next_capture += 1;
                let mut capture = self.new_span();
                capture.start = window.end;
                capture.end = window.end;
                self.captures.push((id, capture));
                let _ = reply.send(Some(id));
            }
            Request::FinishCapture(id, reply) => {
                self.cut(window)?;
                if let Some(index) = self.captures.iter().position(|(i, _)| *i == id) {
                    let (_, capture) = self.captures.swap_remove(index);
                    let _ = reply.send(capture);
                }
            }
        }
        Ok(())
    }
}

/// A window that just ended.
struct Closed {
    unwind_tables: Option<prof::profile::UnwindTables>,
    span: Span,
    symbolize_time: Duration,
    drain_time: Duration,
    processes: usize,
    symbolizer_resets: u64,
}

/// Hands finished windows to every export.
struct Exporter {
    shared: Arc<Shared>,
    rotation: Option<Rotation>,
    /// The Pyroscope series name, if pushing.
    series: Option<String>,
}

impl Exporter {
    fn export(&self, closed: Closed) {
        let started = Instant::now();
        let span = Arc::new(closed.span);
        let body = span.encode_pprof();
        let bytes = body.len();
        let mut written = None;
        if let Some(rotation) = &self.rotation {
            written = Some(match rotation.write(span.start, span.end, &body) {
                Ok((path, removed)) => {
                    tracing::debug!(path = %path.display(), removed, "window written");
                    true
                }
                Err(err) => {
                    tracing::warn!("{:#}", anyhow::Error::new(err));
                    false
                }
            });
        }
        if let (Some(queue), Some(series), Some(push)) =
            (&self.shared.queue, &self.series, &self.shared.config.push)
        {
            let url = prof::agent::push::ingest_url(
                &push.url,
                series,
                span.start,
                span.end,
                self.shared.config.frequency,
            );
            if queue.push(Arc::new(PushItem { url, body })) {
                tracing::warn!("push queue full: dropped the oldest window");
            }
        }
        self.shared.recent().push(Arc::clone(&span));

        let mut metrics = self.shared.metrics();
        metrics.windows += 1;
        let window_seconds = (closed.drain_time + started.elapsed()).as_secs_f64();
        metrics.last_window_seconds = window_seconds;
        metrics.window_seconds_total += window_seconds;
        metrics.last_symbolize_seconds = closed.symbolize_time.as_secs_f64();
        metrics.symbolize_seconds_total += closed.symbolize_time.as_secs_f64();
        metrics.side_band_lost += span.profile.side_band_lost;
        metrics.processes = closed.processes as u64;
        metrics.symbolizer_resets = closed.symbolizer_resets;
        metrics.unwind_tables = closed.unwind_tables;
        match written {
            Some(true) => metrics.files_written += 1,
            Some(false) => metrics.file_failures += 1,
            None => {}
        }
        for event in &span.profile.events {
            let m = metrics.event(&event.name);
            m.samples += event.losses.kernel_samples;
            m.lost += event.losses;
            for (reason, samples) in &event.unknown {
                *m.unknown.entry(*reason).or_default() += samples;
            }
            m.unique_stacks = event.stacks.len() as u64;
        }
        tracing::debug!(
            seconds = span.duration().as_secs_f64(),
            samples = span.profile.events.iter().map(|e| e.total().samples).sum::<u64>(),
            bytes,
            elapsed = ?started.elapsed(),
            "window exported"
        );
    }
}

/// Waits on a reply from the sampling loop; `None` if it is gone (shutting down).
pub fn ask<T>(shared: &Shared, request: impl FnOnce(Sender<T>) -> Request) -> Option<T> {
    let (reply, answer): (Sender<T>, Receiver<T>) = crossbeam_channel::bounded(1);
    shared.requests.send(request(reply)).ok()?;
    answer.recv_timeout(Duration::from_secs(60)).ok()
}
