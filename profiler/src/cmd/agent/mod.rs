//! `prof agent`: wiring only. It checks the configuration, loads and attaches the BPF
//! program, and runs the library's engine ([`prof::agent::engine`]) over a [`BpfSource`]
//! until SIGTERM, SIGINT or SIGHUP, with the HTTP server and the pusher on threads of their own.

use std::io::{self, IsTerminal};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::Result;

use prof::agent::config::AgentConfig;
use prof::agent::engine::{Engine, Shared};
use prof::agent::sampler::{Sampler, Source, Taken};
use prof::agent::server;
use prof::agent::sinks::{Exporter, dir, pyroscope};
use prof::bpf::{BpfConfig, BpfError, BpfProfiler};
use prof::drain;
use prof::events::Event;
use prof::perf::Sampling;
use prof::procs::{self, ProcessTable, TimedEvent};
use prof::sideband::{POLL_INTERVAL, SideBandReader};
use prof::symbolize::EventInfo;
use prof::unwind::Unwinder;
use prof::{privilege, session};

use crate::cmd::record::{unwind_tables, with_permission_hint_for};
use crate::cmd::stop_on_signals;

/// How long to let in-flight BPF programs and the side band catch up after a flip: samples
/// being counted during the flip finish within microseconds, and the side band publishes a
/// whole pass every poll interval.
pub(crate) const SETTLE: Duration = Duration::from_millis(3 * POLL_INTERVAL.as_millis() as u64);

/// The engine's source: the double-buffered BPF maps, the side band, and the unwinder that
/// keeps the unwind tables current across windows.
struct BpfSource {
    bpf: BpfProfiler,
    side_band: SideBandReader,
    unwinder: Option<Unwinder>,
    events: usize,
}

impl Source for BpfSource {
    type Error = BpfError;

    fn take(&mut self) -> Result<Taken, BpfError> {
        let old = self.bpf.flip()?;
        std::thread::sleep(SETTLE);
        let at = SystemTime::now();
        let side_band = self.side_band.take();
        let drained = drain::drain_generation(&mut self.bpf, old, self.events)?;
        Ok(Taken {
            drained,
            side_band,
            at: Some(at),
            unwind_tables: self.unwinder.as_ref().map(|u| unwind_tables(&u.stats())),
        })
    }

    fn stop(&mut self) {
        self.bpf.detach();
    }
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

/// Tells glibc's allocator to give memory back, since the agent runs for months in a budget
/// of 50 MB. By default each thread that allocates gets an arena of its own (up to 8 per
/// CPU) that keeps what it freed, and the threshold above which blocks are mmapped (and so
/// returned at free) rises to the largest block freed: after one big binary's unwind table
/// or symbols (tens of MB, built and freed) the heap kept them. Measured on a 2-CPU VM with a
/// waiting `rustc` (librustc_driver and libLLVM): RssAnon 16 MB → 28 MB by default, 4.6 MB →
/// 11.6 MB with one arena and a fixed 1 MiB threshold. The agent's threads allocate little
/// and seldom at once, so one arena costs no measurable contention.
fn keep_the_heap_small() {
    // SAFETY: mallopt only sets allocator parameters; it is called before the agent starts
    // its threads, and a refused value (0) just leaves glibc's default in place.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
        libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 20);
    }
}

/// Runs the agent until SIGTERM, SIGINT or SIGHUP; returns the exit code.
pub fn run(config: AgentConfig) -> Result<u8> {
    keep_the_heap_small();
    init_logging(&config.log);
    privilege::check("prof agent")?;
    if let Some(dir) = &config.dir {
        dir::check(&dir.path)?;
    }
    // Secrets and CA certificates are read before anything is attached.
    let pusher = config
        .push
        .as_ref()
        .map(pyroscope::Pusher::new)
        .transpose()?;
    let sampling = Sampling::Frequency(config.frequency);
    let plan = session::plan(&config.recorded_events(), sampling, None)?;
    for warning in &plan.warnings {
        tracing::warn!("{warning}");
    }
    // Bound before anything is attached, so a taken port fails fast.
    let http = match config.http.enabled {
        true => Some(server::bind(config.http.listen)?),
        false => None,
    };

    // SIGTERM, SIGINT and SIGHUP (the terminal went away, or someone asked) end the agent
    // cleanly, its window flushed; a second signal of any of the three ends it at once.
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

    let infos: Vec<EventInfo> = plan.events.iter().map(EventInfo::from).collect();
    let sampler = Sampler::new(ProcessTable::build(snapshots), infos, config.debug_info);
    let (shared, inbox) = Shared::new(config.clone(), sampler.events());
    let pusher = pusher.map(|pusher| pyroscope::spawn_pusher(pusher, Arc::clone(&shared)));
    let server = http
        .map(|listener| server::spawn(listener, Arc::clone(&shared)))
        .transpose()?;
    let source = BpfSource {
        bpf,
        side_band: side_band.reader,
        unwinder,
        events: plan.events.len(),
    };
    let exporter = Exporter::new(Arc::clone(&shared));
    let mut engine = Engine::new(
        source,
        sampler,
        exporter,
        config.window(),
        config.http.max_profile_requests,
    );
    engine.run(&stop, &inbox)?;

    tracing::info!("stopping: flushing the current window");
    let server_done = || server.as_ref().is_none_or(|server| server.is_finished());
    let source = engine.finish(&inbox, server_done, config.http.shutdown_grace())?;
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
    drop(source.side_band.stop());
    if let Some(server) = server {
        server.join();
    }
    tracing::info!("stopped");
    Ok(0)
}
