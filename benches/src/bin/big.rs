//! Big recordings: prof against `perf record -g` on a workload that makes more distinct
//! stacks than prof's kernel maps hold, from the end of the workload to the outputs on disk.
//!
//! The workload is two processes that walk a 3000-function call tree for `--seconds` each
//! (`profiler/tests/workloads/call_tree.c`, `burn`), so that nearly every sample at a high
//! frequency is a stack not seen before: about 150,000 unique stacks at `-F 9999` for 8 s on
//! two free CPUs. The shell that runs them touches a marker file when both have ended; the
//! time to outputs is from the marker's mtime to the moment the last tool exits.
//!
//! - prof: `prof record -F N -o big.svg -o big.pb.gz -- <workload>` with default flags
//!   (SVG and pprof both written). `--prof LABEL=PATH` adds other builds of prof (e.g. the
//!   one before a change), measured in the same rounds.
//! - perf: `perf record -g -B -F N` (no build-id pass, which aborts perf 6.1 here on big
//!   recordings), then `perf script | inferno-collapse-perf > perf.folded` and
//!   `inferno-flamegraph perf.folded > perf.svg`.
//!
//! Peak RSS is the largest resident set of any one process of a profiler's pipeline (from
//! wait4). Rounds alternate the order of the profilers; the table gives medians.

use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::SystemTime;

use anyhow::{Context, Result, bail};
use clap::Parser;

use prof_benches::{
    inferno_tools, machine, machine_load, median, prof_binary, test_workload, wait_with_peak_rss,
};

#[derive(Debug, Parser)]
#[command(about = "prof against perf record -g on a recording of ~150k unique stacks")]
struct Args {
    /// Seconds each of the two workload processes runs.
    #[arg(long, default_value_t = 8)]
    seconds: u64,
    /// Sampling frequency, per CPU.
    #[arg(long, default_value_t = 9999)]
    frequency: u64,
    /// Rounds; each measures every profiler once.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Another prof binary to measure beside this build, as LABEL=PATH, optionally followed
    /// by flags for its `record` (`"before=/tmp/prof --stack-storage-size 262144"`);
    /// repeatable.
    #[arg(long = "prof", value_name = "LABEL=PATH [FLAGS]")]
    other_profs: Vec<String>,
    /// Leave perf out.
    #[arg(long)]
    no_perf: bool,
}

#[derive(Clone, Debug)]
enum Profiler {
    Prof {
        label: String,
        binary: PathBuf,
        flags: Vec<String>,
    },
    Perf,
}

impl Profiler {
    fn label(&self) -> String {
        match self {
            Profiler::Prof { label, .. } => label.clone(),
            Profiler::Perf => "perf record -g -B + perf script + inferno".to_owned(),
        }
    }
}

#[derive(Clone, Debug, Default)]
struct Measurement {
    /// From the end of the workload to the last output written.
    to_outputs: f64,
    /// The largest peak RSS of the pipeline's processes, bytes.
    peak_rss: u64,
    samples: u64,
    /// Unique stacks (prof: by address, from its summary; perf: folded lines, by function).
    unique: u64,
    /// Samples whose stack was lost (prof's summary; perf reports none here).
    lost: u64,
}

fn main() -> Result<()> {
    let args = Args::parse();
    if !rustix::process::geteuid().is_root() {
        bail!("big records with prof and perf: run it as root");
    }
    let mut profilers = vec![Profiler::Prof {
        label: "prof (this build)".to_owned(),
        binary: prof_binary()?,
        flags: Vec::new(),
    }];
    for other in &args.other_profs {
        let (label, command) = other
            .split_once('=')
            .with_context(|| format!("--prof {other}: give LABEL=PATH [FLAGS]"))?;
        let mut words = command.split_whitespace().map(str::to_owned);
        let binary = words
            .next()
            .with_context(|| format!("--prof {other}: no path"))?;
        profilers.push(Profiler::Prof {
            label: label.to_owned(),
            binary: PathBuf::from(binary),
            flags: words.collect(),
        });
    }
    if !args.no_perf {
        if inferno_tools().is_none() {
            bail!(
                "inferno-collapse-perf and inferno-flamegraph are not installed (scripts/bench.sh \
                 installs them), or pass --no-perf"
            );
        }
        profilers.push(Profiler::Perf);
    }
    let call_tree = test_workload("call_tree")?;
    println!("machine: {}; {}", machine(), machine_load());
    println!(
        "workload: two call_tree processes, {} s each, -F {}; {} rounds\n",
        args.seconds, args.frequency, args.rounds
    );
    let mut measured: Vec<Vec<Measurement>> = profilers.iter().map(|_| Vec::new()).collect();
    for round in 0..args.rounds {
        let mut order: Vec<usize> = (0..profilers.len()).collect();
        if round % 2 == 1 {
            order.reverse();
        }
        for p in order {
            let dir = tempfile::tempdir()?;
            let m = measure(&profilers[p], &call_tree, &args, dir.path())
                .with_context(|| profilers[p].label())?;
            eprintln!(
                "round {} {}: {:.2} s to outputs, {:.0} MB peak RSS, {} samples, {} unique, {} lost",
                round + 1,
                profilers[p].label(),
                m.to_outputs,
                m.peak_rss as f64 / 1e6,
                m.samples,
                m.unique,
                m.lost
            );
            measured[p].push(m);
        }
    }
    println!(
        "| profiler | samples | unique stacks (prof: addresses; perf: folded lines) | lost | end of workload to outputs | peak RSS |"
    );
    println!("|---|---:|---:|---:|---:|---:|");
    for (profiler, ms) in profilers.iter().zip(&measured) {
        let med = |f: &dyn Fn(&Measurement) -> f64| median(&ms.iter().map(f).collect::<Vec<_>>());
        println!(
            "| {} | {:.0} | {:.0} | {:.0} | {:.2} s | {:.0} MB |",
            profiler.label(),
            med(&|m| m.samples as f64),
            med(&|m| m.unique as f64),
            med(&|m| m.lost as f64),
            med(&|m| m.to_outputs),
            med(&|m| m.peak_rss as f64) / 1e6,
        );
    }
    println!("\nafter: {}", machine_load());
    Ok(())
}

/// The shell command that runs the two walkers and touches `marker` when both have ended.
fn workload_command(call_tree: &Path, seconds: u64, marker: &Path) -> Vec<String> {
    vec![
        "sh".to_owned(),
        "-c".to_owned(),
        r#""$0" burn "$1" & "$0" burn "$1"; wait; : > "$2""#.to_owned(),
        call_tree.display().to_string(),
        seconds.to_string(),
        marker.display().to_string(),
    ]
}

fn measure(profiler: &Profiler, call_tree: &Path, args: &Args, dir: &Path) -> Result<Measurement> {
    let marker = dir.join("ended");
    let workload = workload_command(call_tree, args.seconds, &marker);
    let frequency = args.frequency.to_string();
    let ended = |marker: &Path| -> Result<SystemTime> {
        fs::metadata(marker)
            .and_then(|m| m.modified())
            .context("the workload did not finish (no marker)")
    };
    match profiler {
        Profiler::Prof { binary, flags, .. } => {
            let stderr_path = dir.join("prof.stderr");
            let child = Command::new(binary)
                .args(["record", "-F", &frequency])
                .args(flags)
                .arg("-o")
                .arg(dir.join("big.svg"))
                .arg("-o")
                .arg(dir.join("big.pb.gz"))
                .arg("--")
                .args(&workload)
                .stdout(Stdio::null())
                .stderr(File::create(&stderr_path)?)
                .spawn()
                .context("starting prof")?;
            let (status, peak_rss) = wait_with_peak_rss(child)?;
            let done = SystemTime::now();
            let stderr = fs::read_to_string(&stderr_path)?;
            if !status.success() {
                bail!("prof failed ({status}): {stderr}");
            }
            let (samples, unique) = summary_counts(&stderr)
                .with_context(|| format!("no `N samples ... N unique stacks` line in: {stderr}"))?;
            Ok(Measurement {
                to_outputs: done.duration_since(ended(&marker)?)?.as_secs_f64(),
                peak_rss,
                samples,
                unique,
                lost: lost_samples(&stderr),
            })
        }
        Profiler::Perf => {
            let (collapse, flamegraph) = inferno_tools().context("inferno tools")?;
            let data = dir.join("perf.data");
            let record = Command::new("perf")
                .args(["record", "-g", "-B", "-q", "-F", &frequency, "-o"])
                .arg(&data)
                .arg("--")
                .args(&workload)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .context("starting perf record")?;
            let (status, mut peak_rss) = wait_with_peak_rss(record)?;
            if !status.success() {
                bail!("perf record failed: {status}");
            }
            let folded = dir.join("perf.folded");
            let mut script = Command::new("perf")
                .args(["script", "-i"])
                .arg(&data)
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()
                .context("starting perf script")?;
            let collapsed = Command::new(collapse)
                .stdin(script.stdout.take().context("piped")?)
                .stdout(File::create(&folded)?)
                .spawn()
                .context("starting inferno-collapse-perf")?;
            let (_, rss) = wait_with_peak_rss(script)?;
            peak_rss = peak_rss.max(rss);
            let (_, rss) = wait_with_peak_rss(collapsed)?;
            peak_rss = peak_rss.max(rss);
            let svg = Command::new(flamegraph)
                .arg(&folded)
                .stdout(File::create(dir.join("perf.svg"))?)
                .spawn()
                .context("starting inferno-flamegraph")?;
            let (status, rss) = wait_with_peak_rss(svg)?;
            peak_rss = peak_rss.max(rss);
            if !status.success() {
                bail!("inferno-flamegraph failed: {status}");
            }
            let done = SystemTime::now();
            let unique = fs::read_to_string(&folded)?.lines().count() as u64;
            // The folded counts above are periods; count samples once more, untimed, without
            // the period field (inferno then counts one per sample).
            let mut script = Command::new("perf")
                .args(["script", "-F", "comm,pid,tid,time,event,ip,sym,dso", "-i"])
                .arg(&data)
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()
                .context("starting perf script")?;
            let counted = Command::new(inferno_tools().context("inferno tools")?.0)
                .stdin(script.stdout.take().context("piped")?)
                .output()
                .context("running inferno-collapse-perf")?;
            script.wait()?;
            let samples = String::from_utf8_lossy(&counted.stdout)
                .lines()
                .filter_map(|line| line.rsplit_once(' ')?.1.parse::<u64>().ok())
                .sum();
            Ok(Measurement {
                to_outputs: done.duration_since(ended(&marker)?)?.as_secs_f64(),
                peak_rss,
                samples,
                unique,
                lost: 0,
            })
        }
    }
}

/// The samples and unique stacks of prof's summary line (`cpu-clock: 151,703 samples in
/// 8.1 s, ..., 151,703 unique stacks`).
fn summary_counts(stderr: &str) -> Option<(u64, u64)> {
    let line = stderr.lines().find(|l| l.contains(" unique stacks"))?;
    let number = |text: &str| text.replace(',', "").parse::<u64>().ok();
    let words: Vec<&str> = line.split_whitespace().collect();
    let samples = words
        .iter()
        .position(|w| w.starts_with("samples"))
        .and_then(|i| number(words[i - 1]))?;
    let unique = words
        .iter()
        .position(|w| *w == "unique")
        .and_then(|i| number(words[i - 1]))?;
    Some((samples, unique))
}

/// The samples prof's summary counts as lost: the leading number of each reason of its
/// `lost:` line (`lost: 121,350 samples lost their stack, stack map full (...); 3 ...`).
fn lost_samples(stderr: &str) -> u64 {
    let Some(line) = stderr
        .lines()
        .find_map(|l| l.trim_start().strip_prefix("lost:"))
    else {
        return 0;
    };
    line.split(';')
        .filter_map(|reason| {
            reason
                .split_whitespace()
                .next()
                .and_then(|n| n.replace(',', "").parse::<u64>().ok())
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The summary's counts are read with their thousands separators; a recording that lost
    /// stacks counts each reason's samples.
    #[test]
    fn reads_prof_summaries() {
        let stderr = "cpu-clock: 151,703 samples in 8.1 s, 15.2 s of CPU time, 150,112 unique stacks\n  lost: none\n";
        assert_eq!(summary_counts(stderr), Some((151_703, 150_112)));
        assert_eq!(lost_samples(stderr), 0);
        let lost = "x: 9 samples in 1 s, 1 unique stacks\n  lost: 121,350 samples lost their stack, stack map full (raise --stack-storage-size); 3 samples dropped, counts map full\n";
        assert_eq!(lost_samples(lost), 121_353);
    }
}
