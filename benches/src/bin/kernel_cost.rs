//! The BPF program's cost per sample, from BPF run-time statistics.
//!
//! For each scenario this starts the `stacks` workload (one thread per CPU, a chosen stack
//! depth, user-only or mixed user/kernel work), loads prof's real BPF program through the
//! prof library and attaches it to the events on every CPU, exactly as `prof record -a` does,
//! then reads the program's `run_time_ns` and `run_cnt` every `--interval-ms`.
//!
//! BPF statistics give totals, not single runs. So the distribution reported is that of the
//! per-interval means (Δrun_time / Δrun_cnt over each interval, a few hundred samples each):
//! its median and p99 say how the mean cost per sample varies over the run, not how long
//! the slowest single sample took.
//!
//! Run it as root: `cargo run --release -p prof-benches --bin kernel-cost`.

use std::process::{Child, Command, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Parser;

use prof::bpf::{BpfConfig, BpfProfiler, enable_run_stats};
use prof::drain;
use prof::events;
use prof::perf::Sampling;
use prof::procs::{self, TimedEvent};
use prof::unwind::{self, Interest, Unwinder};
use prof_benches::{machine, machine_load, median, quantile, workload};

#[derive(Parser, Debug)]
#[command(about = "Measures prof's in-kernel cost per sample with BPF run-time statistics")]
struct Args {
    /// Samples per second per CPU, per event.
    #[arg(short = 'F', long, default_value_t = 4999)]
    frequency: u64,
    /// Seconds each scenario samples for.
    #[arg(long, default_value_t = 8.0)]
    seconds: f64,
    /// Milliseconds between two reads of the counters.
    #[arg(long, default_value_t = 50)]
    interval_ms: u64,
    /// Depth of the deep stacks, in frames of the recursive workload.
    #[arg(long, default_value_t = 120)]
    deep: u32,
    /// Only run scenarios whose name contains this.
    #[arg(long)]
    only: Option<String>,
    /// Rounds over all scenarios; each row reports the median round.
    #[arg(long, default_value_t = 1)]
    rounds: usize,
}

/// How user stacks are taken.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Unwind {
    /// The kernel's frame-pointer walker (`bpf_get_stack`): `--unwind fp`.
    FramePointers,
    /// prof's walk of the unwind tables: `--unwind auto`.
    Tables,
}

struct Scenario {
    name: &'static str,
    depth: u32,
    mixed: bool,
    events: &'static str,
    unwind: Unwind,
}

impl Measured {
    fn mean(&self) -> f64 {
        self.run_time_ns as f64 / self.runs.max(1) as f64
    }
}

/// What one scenario measured.
struct Measured {
    links: usize,
    runs: u64,
    run_time_ns: u64,
    seconds: f64,
    interval_means: Vec<f64>,
    user_frames: f64,
    kernel_frames: f64,
}

fn main() -> Result<()> {
    let args = Args::parse();
    if !rustix::process::geteuid().is_root() {
        bail!("kernel-cost loads BPF programs: run it as root");
    }
    let stacks = workload("stacks")?;
    let cpus = prof::cpus::select(None)?;
    let all = "cpu-clock,task-clock,page-faults,context-switches";
    use Unwind::{FramePointers, Tables};
    let scenario = |name, depth, mixed, events, unwind| Scenario {
        name,
        depth,
        mixed,
        events,
        unwind,
    };
    // The stacks workload's user stacks are its recursion plus 4 frames (burn, the thread's
    // start, clone3 and the recursion's entry): depths 3, 16 and 116 give about 7, 20 and
    // 120 frames.
    let scenarios = [
        scenario(
            "7 user frames, frame pointers",
            3,
            false,
            "cpu-clock:u",
            FramePointers,
        ),
        scenario("7 user frames, tables", 3, false, "cpu-clock:u", Tables),
        scenario(
            "20 user frames, frame pointers",
            16,
            false,
            "cpu-clock:u",
            FramePointers,
        ),
        scenario("20 user frames, tables", 16, false, "cpu-clock:u", Tables),
        scenario(
            "120 user frames, frame pointers",
            116,
            false,
            "cpu-clock:u",
            FramePointers,
        ),
        scenario("120 user frames, tables", 116, false, "cpu-clock:u", Tables),
        scenario("shallow, user stacks", 3, true, "cpu-clock:u", Tables),
        scenario("shallow, user+kernel stacks", 3, true, "cpu-clock", Tables),
        scenario("deep, user stacks", args.deep, true, "cpu-clock:u", Tables),
        scenario(
            "deep, user+kernel stacks",
            args.deep,
            true,
            "cpu-clock",
            Tables,
        ),
        scenario(
            "deep, user+kernel, 2 events",
            args.deep,
            true,
            "cpu-clock,task-clock",
            Tables,
        ),
        scenario("deep, user+kernel, 4 events", args.deep, true, all, Tables),
        scenario(
            "shallow, user only work, user+kernel stacks",
            3,
            false,
            "cpu-clock",
            Tables,
        ),
    ];
    println!("machine: {}; {}", machine(), machine_load());
    println!(
        "-F {} per CPU per event, {} s per scenario, counters read every {} ms; \
         p50/p99 are of the per-interval means\n",
        args.frequency, args.seconds, args.interval_ms
    );
    println!(
        "| scenario | events | links | samples/s | mean ns/sample | p50 | p99 | workload's user frames | kernel frames | CPU share |"
    );
    println!("|---|---|---|---:|---:|---:|---:|---:|---:|---:|");
    let chosen: Vec<&Scenario> = scenarios
        .iter()
        .filter(|s| {
            args.only
                .as_deref()
                .is_none_or(|only| s.name.contains(only))
        })
        .collect();
    // Rounds interleave the scenarios, so that the VM's speed swings hit all of them.
    let mut rounds: Vec<Vec<Measured>> = chosen.iter().map(|_| Vec::new()).collect();
    for _ in 0..args.rounds.max(1) {
        for (index, scenario) in chosen.iter().enumerate() {
            rounds[index].push(measure(&args, scenario, &stacks, &cpus)?);
        }
    }
    for (scenario, mut measured) in chosen.into_iter().zip(rounds) {
        // The median round by mean cost.
        measured.sort_by(|a, b| a.mean().total_cmp(&b.mean()));
        let measured = &measured[measured.len() / 2];
        let mean = measured.mean();
        let share = measured.run_time_ns as f64 / (measured.seconds * 1e9 * cpus.len() as f64);
        println!(
            "| {} | {} | {} | {:.0} | {:.0} | {:.0} | {:.0} | {:.1} | {:.1} | {:.2}% |",
            scenario.name,
            scenario.events,
            measured.links,
            measured.runs as f64 / measured.seconds,
            mean,
            median(&measured.interval_means),
            quantile(&measured.interval_means, 0.99),
            measured.user_frames,
            measured.kernel_frames,
            share * 100.0,
        );
    }
    println!("\nafter: {}", machine_load());
    Ok(())
}

fn measure(
    args: &Args,
    scenario: &Scenario,
    stacks: &std::path::Path,
    cpus: &[u32],
) -> Result<Measured> {
    let events = events::parse_list(scenario.events)?;
    let mut child = KillOnDrop(
        Command::new(stacks)
            .arg(scenario.depth.to_string())
            .arg(if scenario.mixed { "mixed" } else { "user" })
            .arg((args.seconds + 3.0).to_string())
            .stdout(Stdio::null())
            .spawn()
            .context("starting the stacks workload")?,
    );
    // Let every thread reach the bottom of its recursion.
    sleep(Duration::from_millis(300));

    let mut bpf = BpfProfiler::load(&BpfConfig {
        unwind: (scenario.unwind == Unwind::Tables)
            .then(|| unwind::sizes(unwind::DEFAULT_TABLE_ROWS)),
        ..BpfConfig::default()
    })?;
    // With tables, the workload's are built and its mappings written before sampling
    // starts, as `prof record -p` would have them after its first moments. The side band
    // is not needed: the workload maps nothing new.
    let (_events, no_events) = crossbeam_channel::unbounded();
    let unwinder = bpf.take_unwind_maps().map(|maps| {
        let pid = child.0.id();
        let snapshot = procs::snapshot(pid).into_iter().map(|event| TimedEvent {
            time: procs::monotonic_now(),
            event,
        });
        let unwinder = Unwinder::start(
            maps,
            Interest::Targets([pid].into()),
            snapshot.collect(),
            no_events,
        );
        unwinder.preload(unwind::files::startup_files(stacks));
        unwinder
    });
    for (index, event) in events.iter().enumerate() {
        bpf.attach(index, event, Sampling::Frequency(args.frequency), cpus)?;
    }
    let _stats = enable_run_stats()?;
    bpf.enable()?;
    // The first interval includes map warm-up: new stacks are inserted then.
    let started = Instant::now();
    let first = bpf.run_stats()?;
    let mut last = first;
    let mut interval_means = Vec::new();
    let interval = Duration::from_millis(args.interval_ms);
    while started.elapsed().as_secs_f64() < args.seconds {
        sleep(interval);
        let now = bpf.run_stats()?;
        let runs = now.runs - last.runs;
        if runs > 0 {
            let ns = (now.run_time - last.run_time).as_nanos() as f64;
            interval_means.push(ns / runs as f64);
        }
        last = now;
    }
    let seconds = started.elapsed().as_secs_f64();
    bpf.detach();
    drop(unwinder);
    let links = events.len() * cpus.len();
    let drained = drain::drain(&bpf, events.len())?;
    // Frames per sample of the workload only: -a samples everything else too.
    let ours = child.0.id();
    let frames = |side: fn(&drain::RawSample) -> usize| {
        let (frames, samples) = drained
            .samples
            .iter()
            .filter(|s| s.tgid == ours)
            .fold((0u64, 0u64), |(f, n), s| {
                (f + side(s) as u64 * s.value.samples, n + s.value.samples)
            });
        frames as f64 / samples.max(1) as f64
    };
    let user_frames = frames(|s| s.user.frames().len());
    let kernel_frames = frames(|s| s.kernel.frames().len());
    let _ = child.0.kill();
    let _ = child.0.wait();
    Ok(Measured {
        links,
        runs: last.runs - first.runs,
        run_time_ns: (last.run_time - first.run_time).as_nanos() as u64,
        seconds,
        interval_means,
        user_frames,
        kernel_frames,
    })
}

/// The workload dies with the harness, even on an error.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
