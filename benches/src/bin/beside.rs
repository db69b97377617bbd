//! prof beside perf: what each profiler's samples cost a workload, measured on the two CPUs
//! at once, so that the VM's speed swings (a fixed piece of work takes 1.1 s in one run and
//! 2.2 s in the next here) hit the profiled side and the unprofiled side alike.
//!
//! Each measurement pins one single-process copy of `workloads/fixed_work.c` on each CPU and
//! starts both together. A profiler samples only one CPU (`-a -C n`, or perf's `-a -C n`); the
//! other CPU's copy runs unprofiled. The ratio of the two copies' times is the slowdown, and
//! the sides swap every round. Reported per profiler: the median ratio over rounds and its
//! range, the same for perf without stacks (the cost of the sampling interrupt alone, the
//! floor), and the cost above the floor per sample.
//!
//! `--dwarf` compares, on the workload built without frame pointers (-O2), prof's unwind
//! tables with `perf record --call-graph dwarf`: the slowdown, the bytes each writes, the
//! time from the end of the workload to a flame graph on disk (for perf: `perf record`'s exit,
//! then `perf script | inferno-collapse-perf | inferno-flamegraph`), and how many samples
//! reach `main`.
//!
//! Run it as root: `scripts/bench.sh beside` (it builds prof, this harness and inferno's
//! tools first).

use std::fs;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Parser;

use prof_benches::{
    Reaped, inferno_tools, machine, machine_load, median, prof_binary, workload, workload_seconds,
    workload_without_frame_pointers,
};

#[derive(Parser, Debug)]
#[command(about = "Measures each profiler's cost beside an unprofiled copy on the other CPU")]
struct Args {
    /// Rounds; each measures every profiler once, on alternating CPUs.
    #[arg(long, default_value_t = 9)]
    rounds: usize,
    /// Sampling frequency (per CPU) of the frame-pointer comparison.
    #[arg(short = 'F', long, default_value_t = 19999)]
    frequency: u64,
    /// About how long the unprofiled workload takes, in seconds (calibrated once).
    #[arg(long, default_value_t = 3.0)]
    seconds: f64,
    /// How long a profiler gets to start before the workloads run, in milliseconds.
    #[arg(long, default_value_t = 1500)]
    settle_ms: u64,
    /// Compare against `perf record --call-graph dwarf` on a workload without frame pointers.
    #[arg(long)]
    dwarf: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Profiler {
    /// perf without call graphs: the sampling interrupt alone.
    PerfNoStacks,
    ProfTables,
    ProfFramePointers,
    PerfFp,
    PerfDwarf,
}

impl Profiler {
    fn label(self) -> &'static str {
        match self {
            Profiler::PerfNoStacks => "perf record (no stacks): the floor",
            Profiler::ProfTables => "prof record (unwind tables, the default)",
            Profiler::ProfFramePointers => "prof record --unwind fp",
            Profiler::PerfFp => "perf record -g",
            Profiler::PerfDwarf => "perf record --call-graph dwarf",
        }
    }

    fn is_prof(self) -> bool {
        matches!(self, Profiler::ProfTables | Profiler::ProfFramePointers)
    }

    /// The profiler sampling only `cpu`, writing into `dir`.
    fn command(self, prof: &Path, frequency: u64, cpu: u32, dir: &Path) -> Command {
        let (frequency, cpu) = (frequency.to_string(), cpu.to_string());
        let program = if self.is_prof() {
            prof
        } else {
            Path::new("perf")
        };
        let mut command = Command::new(program);
        command.args([
            "record",
            "-a",
            "-C",
            &cpu,
            "-e",
            "cpu-clock",
            "-F",
            &frequency,
        ]);
        if self.is_prof() {
            if self == Profiler::ProfFramePointers {
                command.args(["--unwind", "fp"]);
            }
            command.arg("-o").arg(dir.join("prof.svg"));
            command.arg("-o").arg(dir.join("prof.folded"));
        } else {
            let call_graph: &[&str] = match self {
                Profiler::PerfFp => &["-g"],
                Profiler::PerfDwarf => &["--call-graph", "dwarf"],
                _ => &[],
            };
            command
                .args(call_graph)
                .arg("-o")
                .arg(dir.join("perf.data"));
        }
        command.stdout(Stdio::null());
        command
    }
}

/// One measurement: the profiled copy's time over the unprofiled copy's, and what the
/// profiler left behind.
#[derive(Clone, Debug, Default)]
struct Measurement {
    ratio: f64,
    /// Bytes the profiler wrote.
    bytes: u64,
    /// From the end of the workloads to a flame graph on disk.
    to_graph_seconds: Option<f64>,
    /// Share of the workload's samples whose stack reaches main.
    reach_main: Option<f64>,
}

fn main() -> Result<()> {
    let args = Args::parse();
    if !rustix::process::geteuid().is_root() {
        bail!("beside runs profilers on every CPU: run it as root");
    }
    if !Command::new("perf")
        .arg("--version")
        .output()
        .is_ok_and(|out| out.status.success())
    {
        bail!("perf is not installed: `apt-get install linux-perf` (scripts/bench.sh does)");
    }
    let cpus = prof::cpus::select(None)?;
    if cpus.len() < 2 {
        bail!("beside needs two CPUs, one profiled and one not");
    }
    let (cpu_a, cpu_b) = (cpus[0], cpus[1]);
    let prof = prof_binary()?;
    let (fixed_work, profilers, frequency) = if args.dwarf {
        (
            workload_without_frame_pointers("fixed_work")?,
            vec![
                Profiler::PerfNoStacks,
                Profiler::ProfTables,
                Profiler::PerfDwarf,
            ],
            999,
        )
    } else {
        (
            workload("fixed_work")?,
            vec![
                Profiler::PerfNoStacks,
                Profiler::ProfTables,
                Profiler::ProfFramePointers,
                Profiler::PerfFp,
            ],
            args.frequency,
        )
    };
    let dir = tempfile::tempdir()?;

    let probe = 20_000u64;
    let (took, _) = run_pair(&fixed_work, probe, cpu_a, cpu_b)?;
    let iterations = ((probe as f64) * args.seconds / took).max(1000.0) as u64;
    println!("machine: {}; {}", machine(), machine_load());
    println!(
        "workload: {} ({}), {iterations} iterations (about {:.1} s) on each of CPUs {cpu_a} and \
         {cpu_b}; one CPU profiled at -F {frequency}, the other not; {} rounds, sides swapped \
         every round\n",
        fixed_work.file_name().unwrap_or_default().to_string_lossy(),
        if args.dwarf {
            "-O2, no frame pointers"
        } else {
            "frame pointers"
        },
        args.seconds,
        args.rounds
    );

    let mut measured: Vec<Vec<Measurement>> = profilers.iter().map(|_| Vec::new()).collect();
    // The two CPUs unprofiled: how far apart they are when nothing runs.
    let mut symmetry = Vec::new();
    for round in 0..args.rounds {
        let (a, b) = run_pair(&fixed_work, iterations, cpu_a, cpu_b)?;
        symmetry.push(a / b);
        for (p, &profiler) in profilers.iter().enumerate() {
            let (profiled, other) = if round % 2 == 0 {
                (cpu_a, cpu_b)
            } else {
                (cpu_b, cpu_a)
            };
            let m = measure(
                profiler,
                &prof,
                frequency,
                profiled,
                other,
                &fixed_work,
                iterations,
                &args,
                dir.path(),
            )
            .with_context(|| profiler.label())?;
            eprintln!(
                "round {} {} on CPU {profiled}: {:+.2}%",
                round + 1,
                profiler.label(),
                (m.ratio - 1.0) * 100.0
            );
            measured[p].push(m);
        }
    }

    let slowdown =
        |ms: &[Measurement]| median(&ms.iter().map(|m| m.ratio - 1.0).collect::<Vec<_>>());
    let floor = slowdown(&measured[0]);
    println!(
        "CPU {cpu_a} over CPU {cpu_b}, both unprofiled: median {:+.2}%\n",
        (median(&symmetry) - 1.0) * 100.0
    );
    println!(
        "| profiler | slowdown (median) | range | above the floor | per sample above the floor | bytes written | end of workload to flame graph | samples reaching main |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|");
    let samples = frequency as f64 * args.seconds;
    for (profiler, ms) in profilers.iter().zip(&measured) {
        let ratios: Vec<f64> = ms.iter().map(|m| m.ratio - 1.0).collect();
        let (lo, hi) = ratios
            .iter()
            .fold((f64::MAX, f64::MIN), |(lo, hi), &r| (lo.min(r), hi.max(r)));
        let above = slowdown(ms) - floor;
        let optional = |values: Vec<f64>, show: &dyn Fn(f64) -> String| {
            if values.is_empty() {
                "–".to_owned()
            } else {
                show(median(&values))
            }
        };
        println!(
            "| {} | {:+.2}% | {:+.2}% .. {:+.2}% | {} | {} | {} | {} | {} |",
            profiler.label(),
            slowdown(ms) * 100.0,
            lo * 100.0,
            hi * 100.0,
            if *profiler == Profiler::PerfNoStacks {
                "–".to_owned()
            } else {
                format!("{:+.2} points", above * 100.0)
            },
            if *profiler == Profiler::PerfNoStacks {
                "–".to_owned()
            } else {
                format!("{:.0} ns", above * args.seconds * 1e9 / samples)
            },
            optional(ms.iter().map(|m| m.bytes as f64).collect(), &|b| format!(
                "{:.1} MB",
                b / 1e6
            )),
            optional(
                ms.iter().filter_map(|m| m.to_graph_seconds).collect(),
                &|s| format!("{s:.2} s")
            ),
            optional(
                ms.iter().filter_map(|m| m.reach_main).collect(),
                &|share| format!("{:.1}%", share * 100.0)
            ),
        );
    }
    println!("\nafter: {}", machine_load());
    Ok(())
}

/// Runs one pinned copy on each CPU, started together; their times.
fn run_pair(fixed_work: &Path, iterations: u64, a: u32, b: u32) -> Result<(f64, f64)> {
    let start = |cpu: u32| -> Result<Child> {
        Command::new("taskset")
            .args(["-c", &cpu.to_string()])
            .arg(fixed_work)
            .args([iterations.to_string(), "1".to_owned()])
            .stdout(Stdio::piped())
            .spawn()
            .context("running the workload under taskset (util-linux)")
    };
    let (first, second) = (start(a)?, start(b)?);
    let seconds = |child: Child| workload_seconds(&child.wait_with_output()?);
    Ok((seconds(first)?, seconds(second)?))
}

#[allow(clippy::too_many_arguments)]
fn measure(
    profiler: Profiler,
    prof: &Path,
    frequency: u64,
    profiled: u32,
    other: u32,
    fixed_work: &Path,
    iterations: u64,
    args: &Args,
    dir: &Path,
) -> Result<Measurement> {
    for entry in fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_file() {
            fs::remove_file(path)?;
        }
    }
    let stderr = fs::File::create(dir.join("profiler.stderr"))?;
    let mut child = Reaped(Some(
        profiler
            .command(prof, frequency, profiled, dir)
            .stderr(stderr)
            .spawn()
            .context("starting the profiler")?,
    ));
    sleep(Duration::from_millis(args.settle_ms));
    let (on_profiled, on_other) = run_pair(fixed_work, iterations, profiled, other)?;
    let ended = Instant::now();
    let pid = child.0.as_ref().expect("running").id();
    let pid = rustix::process::Pid::from_raw(pid as i32).expect("a child's pid is positive");
    rustix::process::kill_process(pid, rustix::process::Signal::INT)?;
    let _ = child.0.take().expect("running").wait();
    let mut measurement = Measurement {
        ratio: on_profiled / on_other,
        ..Measurement::default()
    };
    if !args.dwarf || profiler == Profiler::PerfNoStacks {
        return Ok(measurement);
    }
    // The workload's name as the kernel keeps it (15 characters at most).
    let comm = "fixed_work_nofp";
    if profiler.is_prof() {
        // prof writes its flame graph before it exits.
        measurement.to_graph_seconds = Some(ended.elapsed().as_secs_f64());
        measurement.bytes = size(&dir.join("prof.svg")) + size(&dir.join("prof.folded"));
        measurement.reach_main = reach_main(&fs::read_to_string(dir.join("prof.folded"))?, comm);
        return Ok(measurement);
    }
    measurement.bytes = size(&dir.join("perf.data"));
    let Some(tools) = inferno_tools() else {
        eprintln!("inferno-collapse-perf is not installed; no time to a flame graph for perf");
        return Ok(measurement);
    };
    // perf script | inferno-collapse-perf > perf.folded; inferno-flamegraph < … > perf.svg
    let script = Command::new("perf")
        .args(["script", "-i"])
        .arg(dir.join("perf.data"))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()?;
    let collapsed = Command::new(&tools.0)
        .stdin(script.stdout.expect("piped"))
        .output()?;
    fs::write(dir.join("perf.folded"), &collapsed.stdout)?;
    let svg = Command::new(&tools.1)
        .arg(dir.join("perf.folded"))
        .output()?;
    fs::write(dir.join("perf.svg"), &svg.stdout)?;
    measurement.to_graph_seconds = Some(ended.elapsed().as_secs_f64());
    measurement.reach_main = reach_main(&String::from_utf8_lossy(&collapsed.stdout), comm);
    Ok(measurement)
}

/// The share of `comm`'s samples, in folded stacks, whose stack has a `main` frame.
fn reach_main(folded: &str, comm: &str) -> Option<f64> {
    let (mut all, mut main) = (0.0, 0.0);
    for line in folded.lines() {
        let Some((stack, count)) = line.rsplit_once(' ') else {
            continue;
        };
        let Ok(count) = count.parse::<f64>() else {
            continue;
        };
        let mut frames = stack.split(';');
        if !frames.next().is_some_and(|root| root.starts_with(comm)) {
            continue;
        }
        all += count;
        if frames.any(|f| f == "main") {
            main += count;
        }
    }
    (all > 0.0).then(|| main / all)
}

fn size(path: &Path) -> u64 {
    fs::metadata(path).map_or(0, |m| m.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Only the workload's own stacks count, and those through main.
    #[test]
    fn share_of_stacks_reaching_main() {
        let folded = "fixed_work_nofp;_start;main;worker 30\n\
                      fixed_work_nofp;mix 10\n\
                      swapper;idle 100\n";
        assert_eq!(reach_main(folded, "fixed_work_nofp"), Some(0.75));
        assert_eq!(reach_main("", "x"), None);
    }
}
