//! How much each profiler slows a fixed, CPU-bound workload on every CPU.
//!
//! The workload (`workloads/fixed_work.c`) does a fixed amount of work split over one process
//! per CPU and prints how long that took, so profiler start-up and teardown are not counted.
//! For each round and each frequency it runs the workload under every configuration in turn:
//! nothing, `prof record -a`, `perf record -g -a` and `perf record --call-graph dwarf -a`,
//! each at the same `-F`, and `perf record -a` without stacks as the floor: what the sampling
//! interrupt alone costs. A profiler is started first, given time to settle, then the
//! workload runs as this harness's own child, then the profiler gets SIGINT and finishes.
//!
//! Reported per configuration: the median over rounds of (workload time / unprofiled time in
//! the same round), its range, and the profiler's own CPU time, peak resident memory and
//! time from SIGINT to exit (for prof: from the end of sampling to all outputs written),
//! from wait4's rusage.
//!
//! Run it as root: `scripts/bench.sh slowdown` (it builds prof and this harness first).

use std::fs;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Parser;

use prof_benches::{
    Reaped, machine, machine_load, median, prof_binary, workload, workload_seconds,
};

#[derive(Parser, Debug)]
#[command(about = "Compares the slowdown of a fixed workload under prof and perf record")]
struct Args {
    /// Rounds; each runs every configuration once per frequency.
    #[arg(long, default_value_t = 7)]
    rounds: usize,
    /// Sampling frequencies, per CPU.
    #[arg(long, value_delimiter = ',', default_value = "999,49")]
    frequencies: Vec<u64>,
    /// About how long the unprofiled workload should take, in seconds (it is calibrated once).
    #[arg(long, default_value_t = 3.0)]
    seconds: f64,
    /// How long a profiler gets to start before the workload runs, in milliseconds.
    #[arg(long, default_value_t = 1500)]
    settle_ms: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Profiler {
    None,
    /// perf without call graphs: the cost of the sampling interrupt alone, a floor.
    PerfNoStacks,
    Prof,
    PerfFp,
    PerfDwarf,
}

impl Profiler {
    const ALL: [Profiler; 5] = [
        Profiler::None,
        Profiler::PerfNoStacks,
        Profiler::Prof,
        Profiler::PerfFp,
        Profiler::PerfDwarf,
    ];

    fn label(self) -> &'static str {
        match self {
            Profiler::None => "nothing",
            Profiler::PerfNoStacks => "perf record -a (no stacks)",
            Profiler::Prof => "prof record -a",
            Profiler::PerfFp => "perf record -g -a",
            Profiler::PerfDwarf => "perf record --call-graph dwarf -a",
        }
    }

    fn command(self, prof: &Path, frequency: u64, dir: &Path) -> Option<Command> {
        let frequency = frequency.to_string();
        let mut command = match self {
            Profiler::None => return None,
            Profiler::Prof => {
                let mut command = Command::new(prof);
                command.args(["record", "-a", "-F", &frequency, "-o"]);
                command.arg(dir.join("prof.svg"));
                command
            }
            Profiler::PerfNoStacks | Profiler::PerfFp | Profiler::PerfDwarf => {
                let mut command = Command::new("perf");
                command.args(["record", "-a", "-F", &frequency, "-o"]);
                command.arg(dir.join("perf.data"));
                match self {
                    Profiler::PerfFp => {
                        command.arg("-g");
                    }
                    Profiler::PerfDwarf => {
                        command.args(["--call-graph", "dwarf"]);
                    }
                    _ => {}
                }
                command
            }
        };
        command.stdout(Stdio::null());
        Some(command)
    }
}

/// One run of the workload under one configuration.
#[derive(Clone, Debug, Default)]
struct Run {
    workload_seconds: f64,
    profiler_cpu_seconds: f64,
    /// CPU time of the profiler's threads while the workload ran.
    profiler_cpu_during_workload: f64,
    profiler_max_rss_kib: i64,
    stop_to_exit_seconds: f64,
    /// prof's own "sampling cost" share of CPU time, in percent.
    self_reported_share: Option<f64>,
    /// The profiler exited with an error (after the workload had run).
    failed: bool,
}

fn main() -> Result<()> {
    let args = Args::parse();
    if !rustix::process::geteuid().is_root() {
        bail!("slowdown runs profilers on every CPU: run it as root");
    }
    let perf = Command::new("perf").arg("--version").output();
    if !perf.is_ok_and(|out| out.status.success()) {
        bail!("perf is not installed: `apt-get install linux-perf` (scripts/bench.sh does)");
    }
    let prof = prof_binary()?;
    let fixed_work = workload("fixed_work")?;
    let dir = tempfile::tempdir()?;

    // Calibrate: iterations per CPU that take about --seconds unprofiled.
    let probe = 100_000u64;
    let took = run_workload(&fixed_work, probe)?;
    let iterations = ((probe as f64) * args.seconds / took).max(1000.0) as u64;
    println!("machine: {}; {}", machine(), machine_load());
    println!(
        "workload: {} iterations per CPU (about {:.1} s unprofiled); {} rounds; profilers settle \
         {} ms before the workload starts\n",
        iterations, args.seconds, args.rounds, args.settle_ms
    );

    // runs[frequency][profiler] over rounds.
    let mut runs = vec![vec![Vec::<Run>::new(); Profiler::ALL.len()]; args.frequencies.len()];
    for round in 0..args.rounds {
        for (f, &frequency) in args.frequencies.iter().enumerate() {
            // Rotate the order, so no configuration always runs right after another.
            for k in 0..Profiler::ALL.len() {
                let p = (k + round) % Profiler::ALL.len();
                let profiler = Profiler::ALL[p];
                let run = run_under(
                    profiler,
                    &prof,
                    frequency,
                    dir.path(),
                    &fixed_work,
                    iterations,
                    &args,
                )
                .with_context(|| format!("{} at -F {frequency}", profiler.label()))?;
                eprintln!(
                    "round {} -F {frequency} {}: {:.3} s",
                    round + 1,
                    profiler.label(),
                    run.workload_seconds
                );
                runs[f][p].push(run);
            }
        }
    }

    for (f, &frequency) in args.frequencies.iter().enumerate() {
        println!("-F {frequency}:\n");
        println!(
            "| profiler | workload s (median) | slowdown (median of per-round ratios) | range | profiler CPU s: while the workload ran / in all | peak RSS MiB | SIGINT to exit s | notes |"
        );
        println!("|---|---:|---:|---:|---:|---:|---:|---:|");
        let base = &runs[f][0];
        for (p, profiler) in Profiler::ALL.iter().enumerate() {
            let these = &runs[f][p];
            let ratios: Vec<f64> = these
                .iter()
                .zip(base)
                .map(|(run, base)| run.workload_seconds / base.workload_seconds - 1.0)
                .collect();
            let (lo, hi) = ratios
                .iter()
                .fold((f64::MAX, f64::MIN), |(lo, hi), &r| (lo.min(r), hi.max(r)));
            let pick = |f: fn(&Run) -> f64| median(&these.iter().map(f).collect::<Vec<_>>());
            let own: Vec<f64> = these.iter().filter_map(|r| r.self_reported_share).collect();
            let dash = |show: bool, text: String| if show { text } else { "–".to_owned() };
            let failed = these.iter().filter(|r| r.failed).count();
            let note = match (own.is_empty(), failed) {
                (false, _) => format!("sampling took {:.2}% of CPU time", median(&own)),
                (true, 0) => "–".to_owned(),
                (true, n) => format!("exited with an error in {n} of {} runs", these.len()),
            };
            let profiled = *profiler != Profiler::None;
            println!(
                "| {} | {:.3} | {} | {} | {} | {} | {} | {} |",
                profiler.label(),
                pick(|r| r.workload_seconds),
                dash(profiled, format!("{:+.2}%", median(&ratios) * 100.0)),
                dash(
                    profiled,
                    format!("{:+.2}% .. {:+.2}%", lo * 100.0, hi * 100.0)
                ),
                dash(
                    profiled,
                    format!(
                        "{:.3} / {:.2}",
                        pick(|r| r.profiler_cpu_during_workload),
                        pick(|r| r.profiler_cpu_seconds)
                    )
                ),
                dash(
                    profiled,
                    format!("{:.0}", pick(|r| r.profiler_max_rss_kib as f64) / 1024.0)
                ),
                dash(profiled, format!("{:.2}", pick(|r| r.stop_to_exit_seconds))),
                note,
            );
        }
        println!();
    }
    println!("after: {}", machine_load());
    Ok(())
}

fn run_under(
    profiler: Profiler,
    prof: &Path,
    frequency: u64,
    dir: &Path,
    fixed_work: &Path,
    iterations: u64,
    args: &Args,
) -> Result<Run> {
    let stderr_path = dir.join("profiler.stderr");
    let Some(mut command) = profiler.command(prof, frequency, dir) else {
        return Ok(Run {
            workload_seconds: run_workload(fixed_work, iterations)?,
            ..Run::default()
        });
    };
    command.stderr(fs::File::create(&stderr_path)?);
    let mut child = Reaped(Some(command.spawn().context("starting the profiler")?));
    let pid = child.0.as_ref().expect("just started").id();
    sleep(Duration::from_millis(args.settle_ms));
    let cpu_before = task_cpu_ns(pid);
    let workload_seconds = run_workload(fixed_work, iterations)?;
    let cpu_during_workload = (task_cpu_ns(pid) - cpu_before) as f64 / 1e9;
    let raw_pid = rustix::process::Pid::from_raw(pid as i32).expect("a child's pid is positive");
    rustix::process::kill_process(raw_pid, rustix::process::Signal::INT)?;
    let stopped = Instant::now();
    let (status, usage) = wait4(child.0.take().expect("not reaped yet"))?;
    let stop_to_exit_seconds = stopped.elapsed().as_secs_f64();
    let stderr = fs::read_to_string(&stderr_path).unwrap_or_default();
    // perf exits with 128 + SIGINT when stopped that way. A profiler that fails at exit still
    // profiled the workload, so the run counts; the table says how many failed.
    let failed = status != 0 && status != 128 + libc::SIGINT;
    if failed {
        eprintln!(
            "warning: {} exited with status {status}: {}",
            profiler.label(),
            stderr.trim()
        );
    }
    let cpu = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    Ok(Run {
        workload_seconds,
        profiler_cpu_seconds: cpu(usage.ru_utime) + cpu(usage.ru_stime),
        profiler_cpu_during_workload: cpu_during_workload,
        profiler_max_rss_kib: usage.ru_maxrss,
        stop_to_exit_seconds,
        self_reported_share: self_reported_share(&stderr),
        failed,
    })
}

/// The share in prof's "sampling cost: … ns per sample in the kernel (…), 0.41% of 2 CPUs".
fn self_reported_share(stderr: &str) -> Option<f64> {
    let line = stderr.lines().find(|l| l.starts_with("sampling cost: "))?;
    let (_, rest) = line.rsplit_once("), ")?;
    rest.split_once('%')?.0.parse().ok()
}

/// CPU time of all threads of `pid` so far, in nanoseconds (`/proc/PID/task/*/schedstat`).
fn task_cpu_ns(pid: u32) -> u64 {
    let Ok(tasks) = fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0;
    };
    tasks
        .filter_map(Result::ok)
        .filter_map(|task| fs::read_to_string(task.path().join("schedstat")).ok())
        .filter_map(|text| text.split_whitespace().next()?.parse::<u64>().ok())
        .sum()
}

/// Runs the workload to completion and returns the time it reports.
fn run_workload(fixed_work: &Path, iterations: u64) -> Result<f64> {
    let output = Command::new(fixed_work)
        .arg(iterations.to_string())
        .output()
        .context("running the workload")?;
    workload_seconds(&output)
}

/// Waits for `child` and returns its wait status and resource usage (its own CPU time and
/// peak RSS, which std's wait does not give).
fn wait4(child: Child) -> Result<(i32, libc::rusage)> {
    let pid = child.id() as libc::pid_t;
    let mut status = 0;
    // SAFETY: rusage is plain integers, so all-zero is a valid value.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `pid` is our unreaped child (std has not waited for it), and both pointers
    // point to live, writable locals of the right types.
    let reaped = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    if reaped != pid {
        return Err(std::io::Error::last_os_error()).context("wait4 on the profiler");
    }
    let code = if libc::WIFEXITED(status) {
        libc::WEXITSTATUS(status)
    } else {
        128 + libc::WTERMSIG(status)
    };
    Ok((code, usage))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The share is read from prof's summary line.
    #[test]
    fn reads_the_self_reported_share() {
        let stderr = "cpu-clock: 10 samples\nsampling cost: 1,180 ns per sample in the kernel \
                      (17,449 samples), 0.41% of 2 CPUs\n";
        assert_eq!(self_reported_share(stderr), Some(0.41));
        assert_eq!(self_reported_share("nothing"), None);
    }
}
