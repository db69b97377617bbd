//! `prof record`: check the request, set up perf events, the BPF program and the side band,
//! run until the command exits / the duration ends / a signal arrives, then drain,
//! symbolize, write the outputs and print the summary.

use std::ffi::OsString;
use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, Result, bail};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use prof::bpf::{BpfConfig, BpfError, BpfProfiler, KernelStats, Program, UnwindSizes};
use prof::events::{self, Event};
use prof::export::{self, OutputFile, flamegraph};
use prof::perf::Sampling;
use prof::procs::{self, ProcessTable, TimedEvent};
use prof::profile::{Profile, SamplingCost, TracingCost, TracingProgram, UnwindTables};
use prof::symbolize::{EventInfo, Symbolizer};
use prof::text::thousands;
use prof::unwind::{self, Interest, UnwindStats, Unwinder};
use prof::workload::{self, Workload};
use prof::{drain, privilege, session, summary};

use crate::cmd::{discarded_line, stop_on_signals, tell};

/// What to record.
#[derive(Debug)]
pub enum Target {
    /// Every process on the sampled CPUs (`-a`, or nothing given).
    AllCpus,
    /// These processes and what they fork (`-p`).
    Pids(Vec<u32>),
    /// A command and what it forks; with `all_cpus`, everything while the command runs.
    Command {
        /// The command line.
        argv: Vec<OsString>,
        /// `-a` was given too.
        all_cpus: bool,
    },
}

/// A validated `prof record` request.
#[derive(Debug)]
pub struct RecordConfig {
    /// Events as requested (before probing).
    pub events: Vec<Event>,
    /// Frequency or period.
    pub sampling: Sampling,
    /// What to sample.
    pub target: Target,
    /// `-C`.
    pub cpus: Option<String>,
    /// `-d`.
    pub duration: Option<Duration>,
    /// `-o` paths.
    pub outputs: Vec<PathBuf>,
    /// `--stack-storage-size`.
    pub stack_storage_size: u32,
    /// `--counts-map-size`.
    pub counts_map_size: u32,
    /// `--off-cpu-min-us`.
    pub off_cpu_min: Duration,
    /// `--off-cpu-tasks`.
    pub off_cpu_tasks: u32,
    /// `--unwind` and `--unwind-table-size`: the unwinder's map sizes; `None` for frame
    /// pointers only.
    pub unwind: Option<UnwindSizes>,
    /// How to draw flame graphs.
    pub flame: flamegraph::Options,
}

/// Why sampling stopped.
enum Stop {
    CommandExited(std::process::ExitStatus),
    Duration,
    Signal,
    TargetsGone,
}

/// Runs `prof record`; returns the exit code (the command's, in command mode).
pub fn run(config: RecordConfig) -> Result<u8> {
    privilege::check("prof record")?;
    let plan = session::plan(&config.events, config.sampling, config.cpus.as_deref())?;
    for warning in &plan.warnings {
        say!("prof: warning: {warning}");
    }
    tracing::debug!(events = ?plan.events.iter().map(Event::name).collect::<Vec<_>>(), sampling = ?config.sampling, "events resolved");
    if let Target::Pids(pids) = &config.target {
        for &pid in pids {
            match procs::tgid_of(pid) {
                None => bail!("no process with pid {pid}; check the pid with `ps -p {pid}`"),
                Some(_) if procs::has_exited(pid) => bail!(
                    "process {pid} has exited (a zombie its parent has not reaped); there is \
                     nothing left to record"
                ),
                Some(tgid) if tgid != pid => {
                    bail!(
                        "{pid} is a thread of process {tgid}; use -p {tgid} (prof samples whole processes)"
                    )
                }
                Some(_) => {}
            }
        }
    }
    let parts: Vec<String> = plan.events.iter().map(Event::file_name_part).collect();
    let files = export::plan(&config.outputs, &parts)?;
    for file in &files {
        export::check_writable(&file.path)?;
    }

    // Ctrl-C, SIGTERM and SIGHUP end the recording; a second one ends prof at once.
    let stop = stop_on_signals()?;
    let paths: Vec<PathBuf> = files.iter().map(|f| f.path.clone()).collect();
    prof::interrupt::set_message(&discarded_line("interrupted again", &[], &paths));

    // The side band starts first, so that no fork, exec or mmap of a target is missed.
    let mut side_band = session::start_side_band(&plan, config.unwind.is_some(), true)?;

    let mut workload = match &config.target {
        Target::Command { argv, .. } => Some(Workload::prepare(argv)?),
        _ => None,
    };
    let (filter, targets, snapshot_all) = match &config.target {
        Target::AllCpus => (false, Vec::new(), true),
        Target::Pids(pids) => (true, pids.clone(), false),
        Target::Command { all_cpus, .. } => {
            let pid = workload.as_ref().map(Workload::pid).into_iter().collect();
            (!all_cpus, pid, *all_cpus)
        }
    };
    let snapshot_time = procs::monotonic_now();
    let snapshots = if snapshot_all {
        procs::snapshot_all()
    } else {
        targets
            .iter()
            .filter_map(|&pid| procs::snapshot(pid))
            .collect()
    };

    let mut bpf = session::attach(
        &plan,
        &BpfConfig {
            filter_tgids: filter,
            stack_storage_size: config.stack_storage_size,
            counts_map_size: config.counts_map_size,
            off_cpu_min: config.off_cpu_min,
            off_cpu_tasks: config.off_cpu_tasks,
            unwind: config.unwind,
            // Emptied while it records, one generation while the other fills (`Drainer`).
            double_buffer: true,
            ..BpfConfig::default()
        },
        &targets,
    )
    .map_err(with_permission_hint)?;
    let interest = match filter {
        true => Interest::Targets(targets.iter().copied().collect()),
        false => Interest::All,
    };
    // A command held before its exec still maps prof: its tables come with the exec.
    let initial = match config.target {
        Target::Command { .. } if filter => Vec::new(),
        _ => snapshots
            .iter()
            .map(|event| TimedEvent {
                time: snapshot_time,
                event: event.clone(),
            })
            .collect(),
    };
    let unwinder = session::start_unwinder(&mut bpf, &mut side_band, interest, initial);
    // The command's own files are loaded before it starts, so it is unwound from its
    // first sample; whatever it maps later is built while it runs.
    if let (Some(unwinder), Target::Command { argv, .. }) = (&unwinder, &config.target)
        && let Ok(program) = workload::find_program(&argv[0])
    {
        let started = Instant::now();
        unwinder.preload(unwind::files::startup_files(&program));
        tracing::debug!(elapsed = ?started.elapsed(), "command's unwind tables loaded");
    }
    // BPF run-time statistics measure what sampling costs; they stay on only while we record.
    let run_stats_guard = match prof::bpf::enable_run_stats() {
        Ok(guard) => Some(guard),
        Err(err) => {
            tracing::debug!("no sampling cost: {:#}", anyhow::Error::new(err));
            None
        }
    };
    bpf.enable()?;
    tracing::debug!(
        links = bpf.link_count(),
        cpus = plan.cpus.len(),
        filter,
        "sampling started"
    );
    let started = Instant::now();
    let started_at = SystemTime::now();
    if let Some(workload) = &mut workload {
        workload.release()?;
    }

    let mut drainer = Drainer::new(config.stack_storage_size, config.counts_map_size);
    let stopped = wait_for_stop(
        &config,
        &mut workload,
        &targets,
        &mut bpf,
        &plan.events,
        &stop,
        started,
        &mut drainer,
    )?;
    bpf.detach();
    let duration = started.elapsed();
    let (sampling_cost, tracing_costs) = match run_stats_guard {
        Some(_guard) => program_costs(
            &bpf,
            plan.cpus.len(),
            plan.events.iter().any(|e| e.kind.is_sampled()),
        ),
        None => (None, Vec::new()),
    };
    let exit_code = finish_workload(workload, stopped)?;

    let log = side_band.reader.stop();
    let unwind_tables = match unwinder.map(Unwinder::stop) {
        Some(Ok(stats)) => Some(unwind_tables(&stats)),
        Some(Err(err)) => {
            say!(
                "prof: warning: the unwinder failed: {:#}",
                anyhow::Error::new(err)
            );
            None
        }
        None => None,
    };
    let stage = Instant::now();
    let drains = drainer.drains;
    let drained = drainer.finish(drain::drain(&bpf, plan.events.len())?);
    tracing::debug!(entries = drained.samples.len(), drains, elapsed = ?stage.elapsed(), "drained the counts map");
    let mut process_events: Vec<TimedEvent> = snapshots
        .into_iter()
        .map(|event| TimedEvent {
            time: snapshot_time,
            event,
        })
        .collect();
    process_events.extend(log.events);
    let process_events_len = process_events.len();
    let mut processes = ProcessTable::build(process_events);
    // Whatever neither source described (e.g. records the kernel dropped) is read now.
    for sample in &drained.samples {
        if !processes.knows(sample.tgid)
            && let Some(snapshot) = procs::snapshot(sample.tgid)
        {
            processes.apply(snapshot);
        }
    }

    tracing::debug!(
        side_band_records = process_events_len,
        processes = processes.len(),
        lost_records = log.lost_records,
        "process table built"
    );
    let stage = Instant::now();
    let infos: Vec<EventInfo> = plan.events.iter().map(EventInfo::from).collect();
    let profile = Profile {
        start: Some(started_at),
        duration,
        forks_untracked: drained.stats.forks_untracked,
        side_band_lost: log.lost_records,
        sampling_cost,
        tracing_costs,
        unwind_tables,
        ..Symbolizer::new().symbolize(&drained, &processes, &infos)
    };
    tracing::debug!(elapsed = ?stage.elapsed(), "symbolized");
    let stage = Instant::now();
    let written = write_outputs(&files, &profile, &config.flame)?;
    tracing::debug!(files = written.len(), elapsed = ?stage.elapsed(), "outputs written");
    tell(&summary::render(&profile, &written));
    Ok(exit_code)
}

/// What each program that ran cost, from BPF run-time statistics: the sampling program's,
/// and the tracepoint and off-CPU programs'.
fn program_costs(
    bpf: &BpfProfiler,
    cpus: usize,
    sampled: bool,
) -> (Option<SamplingCost>, Vec<TracingCost>) {
    let mut sampling = None;
    let mut tracing = Vec::new();
    for program in Program::ALL {
        let stats = match bpf.program_run_stats(program) {
            Ok(Some(stats)) => stats,
            Ok(None) => continue,
            Err(err) => {
                tracing::debug!("no cost for {program:?}: {:#}", anyhow::Error::new(err));
                continue;
            }
        };
        let cost = SamplingCost {
            run_time: stats.run_time,
            runs: stats.runs,
            cpus,
        };
        match program {
            // A recording of tracepoints alone has no sampling program to speak of.
            Program::Sampling if !sampled => {}
            Program::Sampling => sampling = Some(cost),
            Program::Tracepoint => tracing.push(TracingCost {
                program: TracingProgram::Tracepoint,
                cost,
            }),
            Program::OffCpu => tracing.push(TracingCost {
                program: TracingProgram::OffCpu,
                cost,
            }),
        }
    }
    (sampling, tracing)
}

/// What the summary says of the unwind tables.
pub(crate) fn unwind_tables(stats: &UnwindStats) -> UnwindTables {
    let sizes = stats.sizes.unwrap_or(UnwindSizes {
        rows: 0,
        files: 0,
        processes: 0,
    });
    UnwindTables {
        files: stats.store.files_loaded,
        rows: stats.store.rows_used,
        capacity: u64::from(sizes.rows),
        reserved_bytes: sizes.reserved_bytes(),
        process_bytes_at_most: sizes.process_bytes_at_most(),
        build_time: stats.build_time,
        evictions: stats.store.evictions,
        files_full: stats.store.files_full,
    }
}

/// Adds the privilege fix to permission errors from the kernel.
fn with_permission_hint(err: BpfError) -> anyhow::Error {
    with_permission_hint_for("prof record", err)
}

/// Adds the privilege fix to permission errors from the kernel, for command `what`.
pub(crate) fn with_permission_hint_for(what: &'static str, err: BpfError) -> anyhow::Error {
    let denied = err.io_error().is_some_and(events::is_permission_error);
    let err = anyhow::Error::new(err);
    match privilege::check(what) {
        Err(hint) if denied => err.context(hint.to_string()),
        _ if denied => err.context(format!(
            "the kernel refused (kernel.perf_event_paranoid = {}); are BPF and perf events \
             allowed in this container or VM?",
            privilege::perf_event_paranoid()
        )),
        _ => err,
    }
}

/// Empties the kernel's maps while `prof record` records, so that they bound only what
/// arrives between two drains, not the whole recording.
///
/// Each sample adds at most one counts entry and two stacks (user and kernel). Once the
/// samples since the last flip could have filled half of either map, the drainer flips the
/// generation samples go to, lets in-flight samples land, and reads and empties the old one
/// into the userspace aggregate. A recording whose samples never reach that point never
/// flips, and costs nothing more than before.
struct Drainer {
    /// Samples after which the generation being written may be half full.
    threshold: u64,
    /// The kernel's sample count (all events) at the last flip.
    at_flip: u64,
    /// Drains done.
    drains: u64,
    /// Whether draining still works (after a failure the maps fill up to the end, counted
    /// as losses as before).
    enabled: bool,
    accumulated: drain::Accumulated,
}

impl Drainer {
    fn new(stack_storage_size: u32, counts_map_size: u32) -> Drainer {
        Drainer {
            threshold: drain_threshold(stack_storage_size, counts_map_size),
            at_flip: 0,
            drains: 0,
            enabled: true,
            accumulated: drain::Accumulated::default(),
        }
    }

    /// Drains the generation being written if enough samples arrived since the last flip.
    fn poll(&mut self, bpf: &mut BpfProfiler, events: usize) {
        if !self.enabled {
            return;
        }
        let seen = match bpf.samples_seen(events) {
            Ok(seen) => seen,
            Err(err) => return self.fail(err),
        };
        if seen.saturating_sub(self.at_flip) < self.threshold {
            return;
        }
        self.at_flip = seen;
        let old = match bpf.flip() {
            Ok(old) => old,
            Err(err) => return self.fail(err),
        };
        std::thread::sleep(crate::cmd::agent::SETTLE);
        match drain::drain_generation(bpf, old, events) {
            Ok(drained) => {
                self.accumulated.add(drained);
                self.drains += 1;
            }
            Err(err) => self.fail(err),
        }
    }

    fn fail(&mut self, err: BpfError) {
        self.enabled = false;
        say!(
            "prof: warning: cannot empty the BPF maps while recording ({:#}); they now fill up \
             until the end, and stacks that find them full are counted as lost",
            anyhow::Error::new(err)
        );
    }

    /// Everything drained, with the last drain (of the generation being written when
    /// sampling stopped).
    fn finish(mut self, last: drain::Drained) -> drain::Drained {
        // A recording that never drained has nothing to merge the last generation with.
        if self.drains == 0 {
            return last;
        }
        let stats = last.stats.clone();
        self.accumulated.add(last);
        self.accumulated.finish(stats)
    }
}

/// The samples after which a generation of `stacks` stacks and `counts` counts entries
/// may be half full: each sample adds at most one counts entry and two stacks.
fn drain_threshold(stacks: u32, counts: u32) -> u64 {
    (u64::from(stacks) / 2)
        .min(u64::from(counts))
        .div_ceil(2)
        .max(1)
}

#[allow(clippy::too_many_arguments)]
fn wait_for_stop(
    config: &RecordConfig,
    workload: &mut Option<Workload>,
    pids: &[u32],
    bpf: &mut BpfProfiler,
    events: &[Event],
    stop: &AtomicBool,
    started: Instant,
    drainer: &mut Drainer,
) -> Result<Stop> {
    let mut status = StatusLine::new();
    let watch_pids = matches!(config.target, Target::Pids(_));
    let mut last_pid_check = Instant::now();
    loop {
        if stop.load(Ordering::Relaxed) {
            return Ok(Stop::Signal);
        }
        if config.duration.is_some_and(|d| started.elapsed() >= d) {
            return Ok(Stop::Duration);
        }
        if let Some(workload) = workload
            && let Some(exit) = workload.try_wait().context("waiting for the command")?
        {
            return Ok(Stop::CommandExited(exit));
        }
        if watch_pids && last_pid_check.elapsed() >= Duration::from_millis(250) {
            last_pid_check = Instant::now();
            if pids.iter().all(|&pid| procs::has_exited(pid)) {
                return Ok(Stop::TargetsGone);
            }
        }
        drainer.poll(bpf, events.len());
        status.update(started.elapsed(), || bpf.stats(events.len()).ok(), events);
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Ends the command if it is still running and returns prof's exit code.
fn finish_workload(workload: Option<Workload>, stopped: Stop) -> Result<u8> {
    let Some(mut workload) = workload else {
        return Ok(0);
    };
    let status = match stopped {
        Stop::CommandExited(status) => status,
        Stop::Duration | Stop::Signal | Stop::TargetsGone => {
            workload.terminate();
            let deadline = Instant::now() + Duration::from_secs(5);
            loop {
                if let Some(status) = workload.try_wait()? {
                    break status;
                }
                if Instant::now() >= deadline {
                    say!("prof: warning: the command ignored SIGTERM for 5 s; not waiting for it");
                    return Ok(1);
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    };
    Ok(workload::exit_code(status))
}

/// Writes every output; an output that fails does not stop the others.
pub fn write_outputs(
    files: &[OutputFile],
    profile: &Profile,
    flame: &flamegraph::Options,
) -> Result<Vec<(Option<usize>, PathBuf)>> {
    // The files are written at once (see `export::write_all`): what a signal that ends
    // prof now discards is every file not yet in place.
    let in_place = std::sync::Mutex::new(vec![false; files.len()]);
    let tell_signal = |in_place: &[bool]| {
        let (done, left): (Vec<_>, Vec<_>) = files.iter().zip(in_place).partition(|(_, d)| **d);
        let paths = |files: Vec<(&OutputFile, &bool)>| -> Vec<PathBuf> {
            files.into_iter().map(|(f, _)| f.path.clone()).collect()
        };
        prof::interrupt::set_message(&discarded_line("interrupted", &paths(done), &paths(left)));
    };
    tell_signal(&vec![false; files.len()]);
    let results = export::write_all(files, profile, flame, &|index| {
        let mut in_place = in_place.lock().unwrap_or_else(|e| e.into_inner());
        in_place[index] = true;
        tell_signal(&in_place);
    });
    let mut written = Vec::new();
    let mut failures = Vec::new();
    for (file, result) in files.iter().zip(results) {
        match result {
            Ok(()) => written.push((file.event, file.path.clone())),
            Err(err) => failures.push(format!("{:#}", anyhow::Error::new(err))),
        }
    }
    let done: Vec<PathBuf> = written.iter().map(|(_, path)| path.clone()).collect();
    prof::interrupt::set_message(&discarded_line("interrupted", &done, &[]));
    if !failures.is_empty() {
        tell(&summary::render(profile, &written));
        bail!("{}", failures.join("; "));
    }
    Ok(written)
}

/// The live status line on a terminal's stderr, shown once recording has run for a second.
struct StatusLine {
    bar: Option<ProgressBar>,
    enabled: bool,
    last: Option<Instant>,
}

impl StatusLine {
    fn new() -> StatusLine {
        StatusLine {
            bar: None,
            enabled: std::io::stderr().is_terminal(),
            last: None,
        }
    }

    fn update(
        &mut self,
        elapsed: Duration,
        stats: impl FnOnce() -> Option<KernelStats>,
        events: &[Event],
    ) {
        if !self.enabled || elapsed < Duration::from_secs(1) {
            return;
        }
        if self
            .last
            .is_some_and(|last| last.elapsed() < Duration::from_millis(250))
        {
            return;
        }
        self.last = Some(Instant::now());
        let bar = self.bar.get_or_insert_with(|| {
            let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
            bar.set_style(ProgressStyle::with_template("{spinner} {msg}").expect("valid template"));
            bar
        });
        let Some(stats) = stats() else { return };
        let counts: Vec<String> = events
            .iter()
            .zip(&stats.events)
            .map(|(event, stats)| format!("{} {} samples", event.name(), thousands(stats.samples)))
            .collect();
        bar.set_message(format!(
            "recording {:.0} s · {} · Ctrl-C to stop",
            elapsed.as_secs_f64(),
            counts.join(" · ")
        ));
        bar.tick();
    }
}

impl Drop for StatusLine {
    fn drop(&mut self) {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
    }
}
