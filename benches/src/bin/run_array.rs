//! What an attachment to a tracepoint costs, and whether the bpf_cookie is as cheap as the
//! alternatives the kernel's merge message names.
//!
//! The kernel keeps the programs linked to a tracepoint in the tracepoint's run array and
//! runs all of them on every hit. This harness links K = 1, 2, 4, ... programs to
//! `syscalls:sys_enter_getppid`, each through its own BPF perf link, then calls getppid(2)
//! from a thread pinned to one CPU and measures:
//!
//! - the time per call (stats off), against the tracepoint enabled with no program: what the
//!   process that fires the tracepoint pays;
//! - the programs' run time per hit (BPF run-time statistics on), summed over the K programs,
//!   and that each of them ran once per call.
//!
//! For three ways of telling the attachments apart (`bpf/run_array.bpf.c`): one program whose
//! configuration is in each link's cookie; a clone per attachment with the configuration baked
//! into a constant; one program that looks its configuration up in a hash map by CPU; and an
//! empty program, for what the run array costs per item whatever the program does. The
//! kernel refuses one program twice in a tracepoint's run array (EEXIST), so K attachments of
//! "one program" are K loads of the same code, each linked with its own cookie.
//!
//! Configurations are measured in turn within each round, over several rounds, and the table
//! gives medians: the vCPU's speed swings between runs. Run it as root: `scripts/bench.sh
//! run-array`.

use std::os::fd::{AsFd, OwnedFd};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use aya::programs::TracePoint;
use aya::{Ebpf, EbpfLoader};
use clap::Parser;

use prof::bpf::{BpfConfig, BpfProfiler, Program, enable_run_stats, sys};
use prof::events::{Event, EventKind, Modifiers};
use prof::perf::SamplingEvent;
use prof_benches::{machine, machine_load, median};

/// The benchmark's programs, built by build.rs.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/run_array.bpf.o"));

#[derive(Parser, Debug)]
#[command(about = "Measures the cost of each attachment in a tracepoint's run array")]
struct Args {
    /// getppid(2) calls per measurement.
    #[arg(long, default_value_t = 200_000)]
    calls: u32,
    /// Rounds; the table gives the median of each configuration over them.
    #[arg(long, default_value_t = 7)]
    rounds: u32,
    /// The numbers of attachments to measure.
    #[arg(long, value_delimiter = ',', default_value = "1,2,4,8,16")]
    ks: Vec<usize>,
    /// The CPU the calling thread is pinned to.
    #[arg(long, default_value_t = 0)]
    cpu: u32,
}

/// How the K attachments tell which configuration is theirs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Variant {
    Nothing,
    Cookie,
    Constant,
    Lookup,
}

impl Variant {
    const ALL: [Variant; 4] = [
        Variant::Nothing,
        Variant::Cookie,
        Variant::Constant,
        Variant::Lookup,
    ];

    fn program(self) -> &'static str {
        match self {
            Variant::Nothing => "nothing",
            Variant::Cookie => "with_cookie",
            Variant::Constant => "with_constant",
            Variant::Lookup => "with_lookup",
        }
    }

    fn describe(self) -> &'static str {
        match self {
            Variant::Nothing => "an empty program (the run array's own cost)",
            Variant::Cookie => "one program, configuration in the cookie",
            Variant::Constant => "a clone per attachment, configuration in a constant",
            Variant::Lookup => "one program, configuration from a hash map by CPU",
        }
    }
}

/// One loaded copy of a variant's program.
struct Instance {
    ebpf: Ebpf,
    program: &'static str,
    load_time: Duration,
}

impl Instance {
    fn load(variant: Variant, config: u64, cpus: &[u32]) -> Result<Instance> {
        let started = Instant::now();
        let mut ebpf = EbpfLoader::new()
            .override_global("baked", &config, true)
            .load(OBJECT)
            .context("loading the benchmark's BPF object")?;
        let program: &mut TracePoint = ebpf
            .program_mut(variant.program())
            .context("the object defines the program")?
            .try_into()?;
        program.load()?;
        let load_time = started.elapsed();
        if variant == Variant::Lookup {
            let mut by_cpu: aya::maps::HashMap<_, u32, u64> =
                aya::maps::HashMap::try_from(ebpf.map_mut("config_by_cpu").context("the map")?)?;
            for &cpu in cpus {
                by_cpu.insert(cpu, config, 0)?;
            }
        }
        Ok(Instance {
            ebpf,
            program: variant.program(),
            load_time,
        })
    }

    fn tracepoint(&self) -> Result<&TracePoint> {
        Ok(self
            .ebpf
            .program(self.program)
            .context("the object defines the program")?
            .try_into()?)
    }

    /// Links the program to a new perf event of the tracepoint, with `cookie`.
    fn link(&self, event: &Event, cpu: u32, cookie: u64) -> Result<(OwnedFd, SamplingEvent)> {
        let perf = SamplingEvent::open_tracepoint(event, cpu)?;
        let fd = self.tracepoint()?.fd()?;
        let link =
            sys::link_create(fd.as_fd(), perf.raw_fd(), cookie).context("bpf(BPF_LINK_CREATE)")?;
        Ok((link, perf))
    }

    fn run_stats(&self) -> Result<(Duration, u64)> {
        let info = self.tracepoint()?.info()?;
        Ok((info.run_time(), info.run_count()))
    }
}

/// What one configuration measured in one round.
#[derive(Clone, Copy, Default)]
struct Measured {
    ns_per_call: f64,
    bpf_ns_per_hit: f64,
    runs_per_hit: f64,
}

/// Calls getppid(2) `calls` times; nanoseconds per call.
fn time_calls(calls: u32) -> f64 {
    let started = Instant::now();
    for _ in 0..calls {
        // SAFETY: getppid takes no arguments and cannot fail.
        unsafe { libc::syscall(libc::SYS_getppid) };
    }
    started.elapsed().as_nanos() as f64 / f64::from(calls)
}

/// Measures with `instances` linked (none: the tracepoint enabled through a perf event with
/// no program; `None`: no perf event at all).
fn measure(
    args: &Args,
    event: &Event,
    instances: Option<&[Instance]>,
    cookie_base: u64,
) -> Result<Measured> {
    let mut links = Vec::new();
    let mut bare = None;
    match instances {
        Some([]) => bare = Some(SamplingEvent::open_tracepoint(event, args.cpu)?),
        Some(instances) => {
            for (i, instance) in instances.iter().enumerate() {
                links.push(instance.link(event, args.cpu, cookie_base + i as u64)?);
            }
        }
        None => {}
    }
    time_calls(args.calls / 10);
    let ns_per_call = time_calls(args.calls);
    let mut measured = Measured {
        ns_per_call,
        ..Measured::default()
    };
    if let Some(instances) = instances.filter(|i| !i.is_empty()) {
        let _stats = enable_run_stats()?;
        let before: Vec<_> = instances
            .iter()
            .map(Instance::run_stats)
            .collect::<Result<_>>()?;
        time_calls(args.calls);
        let mut run_time = 0.0;
        let mut runs = 0;
        for (instance, (time, count)) in instances.iter().zip(before) {
            let (time_after, count_after) = instance.run_stats()?;
            run_time += (time_after - time).as_nanos() as f64;
            runs += count_after - count;
        }
        measured.bpf_ns_per_hit = run_time / f64::from(args.calls);
        measured.runs_per_hit = runs as f64 / f64::from(args.calls) / instances.len() as f64;
    }
    drop(links);
    drop(bare);
    Ok(measured)
}

/// The slope of `y` against `x` by least squares: the cost of one more attachment.
fn slope(points: &[(f64, f64)]) -> f64 {
    let n = points.len() as f64;
    let mean_x = points.iter().map(|p| p.0).sum::<f64>() / n;
    let mean_y = points.iter().map(|p| p.1).sum::<f64>() / n;
    let cov: f64 = points.iter().map(|p| (p.0 - mean_x) * (p.1 - mean_y)).sum();
    let var: f64 = points.iter().map(|p| (p.0 - mean_x).powi(2)).sum();
    cov / var
}

fn pin(cpu: u32) -> Result<()> {
    // SAFETY: the set is a plain bit mask on the stack, sized as the call is told.
    let ok = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu as usize, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) == 0
    };
    if !ok {
        bail!(
            "cannot pin to CPU {cpu}: {}",
            std::io::Error::last_os_error()
        );
    }
    Ok(())
}

fn main() -> Result<()> {
    let args = Args::parse();
    if !rustix::process::geteuid().is_root() {
        bail!("run-array loads BPF programs: run it as root");
    }
    let max_k = args.ks.iter().copied().max().unwrap_or(1);
    let cpus = prof::cpus::select(None)?;
    // Before pinning, which narrows what the machine line sees.
    let machine = machine();
    pin(args.cpu)?;
    let tracefs = prof::tracefs::Tracefs::open()?;
    let event = Event {
        base: "syscalls:sys_enter_getppid".to_owned(),
        kind: EventKind::Tracepoint,
        config: tracefs.id("syscalls", "sys_enter_getppid")?,
        modifiers: Modifiers::BOTH,
    };
    drop(tracefs);

    let mut instances = Vec::new();
    for variant in Variant::ALL {
        let loaded = (0..max_k)
            .map(|i| Instance::load(variant, i as u64, &cpus))
            .collect::<Result<Vec<_>>>()?;
        instances.push((variant, loaded));
    }
    // prof's own tracepoint program, stacks and all, linked once as `-e` links it.
    let mut real = BpfProfiler::load(&BpfConfig {
        stack_storage_size: 1024,
        counts_map_size: 1024,
        ..BpfConfig::default()
    })?;

    println!("machine: {machine}; {}", machine_load());
    println!(
        "{} getppid(2) calls per measurement on CPU {}, {} rounds, medians; tracepoint \
         syscalls:sys_enter_getppid\n",
        args.calls, args.cpu, args.rounds
    );
    let mut off = Vec::new();
    let mut empty = Vec::new();
    let mut results: Vec<(Variant, usize, Vec<Measured>)> = Vec::new();
    for (variant, _) in &instances {
        for &k in &args.ks {
            results.push((*variant, k, Vec::new()));
        }
    }
    let mut prof_rows = Vec::new();
    for round in 0..args.rounds {
        off.push(measure(&args, &event, None, 0)?);
        empty.push(measure(&args, &event, Some(&[]), 0)?);
        // A different order each round, so no configuration always runs first.
        let count = results.len();
        for step in 0..count {
            let index = (step + round as usize * 5) % count;
            let (variant, k, rows) = &mut results[index];
            let loaded = &instances
                .iter()
                .find(|(v, _)| v == variant)
                .expect("every variant is loaded")
                .1;
            rows.push(measure(&args, &event, Some(&loaded[..*k]), 0)?);
        }
        real.attach_tracepoint(0, &event, args.cpu)?;
        real.enable()?;
        time_calls(args.calls / 10);
        let ns_per_call = time_calls(args.calls);
        let _stats = enable_run_stats()?;
        let before = real
            .program_run_stats(Program::Tracepoint)?
            .unwrap_or_default();
        time_calls(args.calls);
        let after = real
            .program_run_stats(Program::Tracepoint)?
            .unwrap_or_default();
        drop(_stats);
        real.detach();
        prof_rows.push(Measured {
            ns_per_call,
            bpf_ns_per_hit: (after.run_time - before.run_time).as_nanos() as f64
                / f64::from(args.calls),
            runs_per_hit: (after.runs - before.runs) as f64 / f64::from(args.calls),
        });
    }

    let med = |rows: &[Measured], f: fn(&Measured) -> f64| {
        median(&rows.iter().map(f).collect::<Vec<_>>())
    };
    let off_ns = med(&off, |m| m.ns_per_call);
    let empty_ns = med(&empty, |m| m.ns_per_call);
    println!(
        "| programs in the run array | K | ns per call | added per call | BPF run time per hit, all K | runs per hit, each |"
    );
    println!("|---|---:|---:|---:|---:|---:|");
    println!("| none, tracepoint off | 0 | {off_ns:.0} | | | |");
    println!(
        "| none, tracepoint on (a perf event, no program) | 0 | {empty_ns:.0} | {:+.0} | | |",
        empty_ns - off_ns
    );
    let mut slopes = Vec::new();
    for variant in Variant::ALL {
        let mut wall_points = Vec::new();
        let mut bpf_points = Vec::new();
        for (_, k, rows) in results.iter().filter(|(v, _, _)| *v == variant) {
            let call = med(rows, |m| m.ns_per_call);
            let bpf = med(rows, |m| m.bpf_ns_per_hit);
            let runs = med(rows, |m| m.runs_per_hit);
            wall_points.push((*k as f64, call - empty_ns));
            bpf_points.push((*k as f64, bpf));
            println!(
                "| {} | {k} | {call:.0} | {:+.0} | {bpf:.0} | {runs:.2} |",
                variant.describe(),
                call - empty_ns
            );
        }
        slopes.push((variant, slope(&wall_points), slope(&bpf_points)));
    }
    let real_call = med(&prof_rows, |m| m.ns_per_call);
    println!(
        "| prof's on_tracepoint (user and kernel stacks), as `-e` links it | 1 | {real_call:.0} | {:+.0} | {:.0} | {:.2} |",
        real_call - empty_ns,
        med(&prof_rows, |m| m.bpf_ns_per_hit),
        med(&prof_rows, |m| m.runs_per_hit),
    );
    println!(
        "\n| program | ns per extra attachment, per call | BPF run time per extra attachment | load time per program | memory locked per program |"
    );
    println!("|---|---:|---:|---:|---:|");
    for (variant, wall, bpf) in slopes {
        let loaded = &instances
            .iter()
            .find(|(v, _)| *v == variant)
            .expect("every variant is loaded")
            .1;
        let load = median(
            &loaded
                .iter()
                .map(|i| i.load_time.as_secs_f64() * 1e3)
                .collect::<Vec<_>>(),
        );
        let memory = loaded[0].tracepoint()?.info()?.memory_locked().unwrap_or(0);
        println!(
            "| {} | {wall:.1} | {bpf:.1} | {load:.2} ms | {} B |",
            variant.describe(),
            memory
        );
    }
    println!("\nafter: {}", machine_load());
    Ok(())
}
