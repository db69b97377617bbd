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
}

struct Scenario {
    name: &'static str,
    depth: u32,
    mixed: bool,
    events: &'static str,
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
    let scenarios = [
        Scenario {
            name: "shallow, user stacks",
            depth: 3,
            mixed: true,
            events: "cpu-clock:u",
        },
        Scenario {
            name: "shallow, user+kernel stacks",
            depth: 3,
            mixed: true,
            events: "cpu-clock",
        },
        Scenario {
            name: "deep, user stacks",
            depth: args.deep,
            mixed: true,
            events: "cpu-clock:u",
        },
        Scenario {
            name: "deep, user+kernel stacks",
            depth: args.deep,
            mixed: true,
            events: "cpu-clock",
        },
        Scenario {
            name: "deep, user+kernel, 2 events",
            depth: args.deep,
            mixed: true,
            events: "cpu-clock,task-clock",
        },
        Scenario {
            name: "deep, user+kernel, 4 events",
            depth: args.deep,
            mixed: true,
            events: all,
        },
        Scenario {
            name: "shallow, user only work, user+kernel stacks",
            depth: 3,
            mixed: false,
            events: "cpu-clock",
        },
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
    for scenario in &scenarios {
        if args
            .only
            .as_deref()
            .is_some_and(|only| !scenario.name.contains(only))
        {
            continue;
        }
        let measured = measure(&args, scenario, &stacks, &cpus)?;
        let mean = measured.run_time_ns as f64 / measured.runs.max(1) as f64;
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
        filter_tgids: false,
        stack_storage_size: 32768,
        counts_map_size: 65536,
        double_buffer: false,
        unwind: None,
    })?;
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
