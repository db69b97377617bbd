//! Shared by prof's benchmark harnesses: building the C workloads, and the statistics the
//! tables report.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

/// Builds `workloads/<name>.c` with frame pointers and debug info into `target/bench-workloads`
/// and returns the binary's path.
pub fn workload(name: &str) -> Result<PathBuf> {
    build_workload(name, true)
}

/// Builds `workloads/<name>.c` as release C is built, at -O2 without frame pointers, into
/// `target/bench-workloads/<name>_nofp`.
pub fn workload_without_frame_pointers(name: &str) -> Result<PathBuf> {
    build_workload(name, false)
}

fn build_workload(name: &str, frame_pointers: bool) -> Result<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let source = root.join("workloads").join(format!("{name}.c"));
    let out_dir = root.join("../target/bench-workloads");
    if frame_pointers {
        compile(
            &source,
            &out_dir.join(name),
            &["-O1", "-fno-omit-frame-pointer"],
        )
    } else {
        compile(
            &source,
            &out_dir.join(format!("{name}_nofp")),
            &["-O2", "-fomit-frame-pointer"],
        )
    }
}

fn compile(source: &Path, binary: &Path, flags: &[&str]) -> Result<PathBuf> {
    let out_dir = binary.parent().context("a binary's folder")?;
    std::fs::create_dir_all(out_dir).with_context(|| format!("creating {}", out_dir.display()))?;
    let status = Command::new("cc")
        .args(flags)
        .args(["-g", "-pthread", "-Wall", "-Werror", "-o"])
        .arg(binary)
        .arg(source)
        .status()
        .context("running cc to build a workload")?;
    if !status.success() {
        bail!("cc failed to build {}", source.display());
    }
    Ok(binary.to_path_buf())
}

/// The release `prof` binary next to this harness (`scripts/bench.sh` builds both).
pub fn prof_binary() -> Result<PathBuf> {
    let exe = std::env::current_exe().context("finding this harness")?;
    let prof = exe.with_file_name("prof");
    if !prof.exists() {
        bail!(
            "{} is missing: build it with `cargo build --release --bin prof` (scripts/bench.sh does)",
            prof.display()
        );
    }
    Ok(prof)
}

/// The `q` quantile (0..=1) of `values`, by the nearest-rank method; `NaN` when empty.
pub fn quantile(values: &[f64], q: f64) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// The median of `values`.
pub fn median(values: &[f64]) -> f64 {
    quantile(values, 0.5)
}

/// The load average and the busiest other processes, so a table says what else was running.
pub fn machine_load() -> String {
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let load: Vec<&str> = load.split_whitespace().take(3).collect();
    format!("load average {}", load.join(" "))
}

/// One line naming the machine: CPU model, CPU count and kernel.
pub fn machine() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|line| line.strip_prefix("model name"))
        .map(|rest| rest.trim_start_matches([' ', '\t', ':']).to_owned())
        .unwrap_or_else(|| "unknown CPU".to_owned());
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let kernel = kernel.trim();
    format!("{model}, {cpus} CPUs, Linux {kernel}")
}

/// A child (a profiler) that is killed and reaped if the harness fails before stopping it.
#[derive(Debug)]
pub struct Reaped(pub Option<std::process::Child>);

impl Drop for Reaped {
    fn drop(&mut self) {
        if let Some(mut child) = self.0.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// inferno-collapse-perf and inferno-flamegraph: from `INFERNO_BIN`, or on PATH.
pub fn inferno_tools() -> Option<(PathBuf, PathBuf)> {
    let find = |name: &str| -> Option<PathBuf> {
        let dirs = std::env::var_os("INFERNO_BIN")
            .into_iter()
            .chain(std::env::var_os("PATH"));
        dirs.flat_map(|paths| std::env::split_paths(&paths).collect::<Vec<_>>())
            .map(|dir| dir.join(name))
            .find(|path| path.is_file())
    };
    Some((find("inferno-collapse-perf")?, find("inferno-flamegraph")?))
}

/// Waits for `child` and returns how it ended and its peak resident memory in bytes (the
/// largest of it and the descendants it waited for), from wait4's rusage.
pub fn wait_with_peak_rss(child: std::process::Child) -> Result<(std::process::ExitStatus, u64)> {
    use std::os::unix::process::ExitStatusExt;
    let pid = libc::pid_t::try_from(child.id()).context("a child's pid fits a pid_t")?;
    let mut status = 0;
    // SAFETY: an all-zero rusage is a valid value of the plain C struct.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    loop {
        // SAFETY: `status` and `usage` are valid for writes and outlive the call; the pid is
        // our own unreaped child, which `child` (consumed here) will not wait for again.
        let ret = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
        if ret == pid {
            break;
        }
        let err = std::io::Error::last_os_error();
        if err.kind() != std::io::ErrorKind::Interrupted {
            return Err(err).context("wait4");
        }
    }
    drop(child);
    let peak = u64::try_from(usage.ru_maxrss).unwrap_or(0) * 1024;
    Ok((std::process::ExitStatus::from_raw(status), peak))
}

/// Builds `profiler/tests/workloads/<name>.c` (a workload of prof's own tests) with frame
/// pointers into `target/bench-workloads` and returns the binary's path.
pub fn test_workload(name: &str) -> Result<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    compile(
        &root
            .join("../profiler/tests/workloads")
            .join(format!("{name}.c")),
        &root.join("../target/bench-workloads").join(name),
        &["-O1", "-fno-omit-frame-pointer"],
    )
}

/// The time in seconds that a finished run of `workloads/fixed_work.c` printed.
pub fn workload_seconds(output: &std::process::Output) -> Result<f64> {
    if !output.status.success() {
        bail!("the workload failed: {}", output.status);
    }
    String::from_utf8_lossy(&output.stdout)
        .trim()
        .parse()
        .context("the workload prints its time in seconds")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Nearest-rank quantiles: the median of 1..=4 is 2, the p99 of 1..=100 is 99.
    #[test]
    fn quantiles() {
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), 2.0);
        let hundred: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(quantile(&hundred, 0.99), 99.0);
        assert_eq!(quantile(&hundred, 1.0), 100.0);
        assert!(median(&[]).is_nan());
    }
}
