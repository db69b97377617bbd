//! Command-line types (clap only) and their conversion into plain configs.

use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Result, bail};
use clap::builder::{RangedI64ValueParser, RangedU64ValueParser};
use clap::error::ErrorKind;
use clap::{Args, CommandFactory, Parser, Subcommand};

use crate::cmd::record::{RecordConfig, Target};
use crate::cmd::report::ReportConfig;
use prof::agent;
use prof::agent::config::{AgentConfig, DirConfig, PushConfig};
use prof::events;
use prof::export::flamegraph;
use prof::export::limits::{self, ReadLimits};
use prof::map_memory::{self, MapSizes};
use prof::perf::Sampling;
use prof::unwind::{self, UnwindMode};

/// A sampling profiler for Linux: perf events counted in the kernel by one eBPF program,
/// rendered as flame graphs.
#[derive(Debug, Parser)]
#[command(name = "prof", version, propagate_version = true)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Record stacks of a command, of running processes, or of the whole machine.
    #[command(after_help = RECORD_EXAMPLES)]
    Record(RecordArgs),
    /// Profile the whole machine continuously; serve, push and store pprof windows.
    #[command(after_help = AGENT_EXAMPLES)]
    Agent(AgentArgs),
    /// Print a saved profile's hottest functions, or render it: flame graphs, folded stacks,
    /// pprof, or a ratio flame graph of two of its events.
    #[command(after_help = REPORT_EXAMPLES)]
    Report(ReportArgs),
    /// Draw a differential flame graph of two saved profiles: red where AFTER grew, blue
    /// where it shrank.
    #[command(after_help = DIFF_EXAMPLES)]
    Diff(DiffArgs),
    /// List the events prof knows and whether each works on this machine, and the kernel's
    /// tracepoint categories; with a CATEGORY, that category's tracepoints.
    #[command(after_help = LIST_EXAMPLES)]
    List(ListArgs),
}

const LIST_EXAMPLES: &str = "\
Examples:
  # Every event, whether it works here, and the tracepoint categories:
  prof list
  # The scheduler's tracepoints, to record as -e sched:<name>:
  sudo prof list sched";

/// `prof list` arguments.
#[derive(Debug, Args)]
pub struct ListArgs {
    /// A tracepoint category (`sched`, `syscalls`, ...): list its tracepoints.
    #[arg(value_name = "CATEGORY")]
    pub category: Option<String>,
}

const AGENT_EXAMPLES: &str = "\
Examples:
  # Serve on 127.0.0.1:6060; then: go tool pprof http://127.0.0.1:6060/debug/pprof/profile?seconds=5
  sudo prof agent
  # Push every window to Pyroscope and keep the last hour as files:
  sudo prof agent --push http://pyroscope:4040 --dir /var/lib/prof
  # Grafana Cloud: HTTPS, basic auth, the password in a file (not in `ps`):
  sudo prof agent --push https://profiles-prod-001.grafana.net \\
      --push-user 123456 --push-password-file /etc/prof/grafana-token
  # Everything from a file (see dist/agent.toml), a flag overriding it:
  sudo prof agent --config /etc/prof/agent.toml --listen 0.0.0.0:6060

SIGTERM, SIGINT or SIGHUP ends the current window early, exports it everywhere and exits 0.
The log level comes from RUST_LOG, else from the config's `log` (default info).";

/// `prof agent` flags; each overrides the config file.
#[derive(Debug, Args)]
pub struct AgentArgs {
    /// A TOML config file (see dist/agent.toml). Flags override it.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Serve HTTP on this address and port [default: 127.0.0.1:6060].
    #[arg(long, value_name = "ADDR:PORT", conflicts_with = "no_http")]
    pub listen: Option<String>,

    /// Do not serve HTTP.
    #[arg(long)]
    pub no_http: bool,

    /// Push every window to Pyroscope's /ingest at this base URL (https://host or
    /// http://host:4040).
    #[arg(long, value_name = "URL")]
    pub push: Option<String>,

    /// PEM file of the CA certificates to trust for an https:// push URL [default: the
    /// system's].
    #[arg(long, value_name = "FILE")]
    pub push_ca_file: Option<PathBuf>,

    /// User for basic authentication to the push URL, with --push-password-file.
    #[arg(long, value_name = "NAME")]
    pub push_user: Option<String>,

    /// File that holds the basic-auth password (a file, so that it stays out of process
    /// listings).
    #[arg(long, value_name = "FILE")]
    pub push_password_file: Option<PathBuf>,

    /// File that holds a bearer token for the push URL.
    #[arg(long, value_name = "FILE")]
    pub push_token_file: Option<PathBuf>,

    /// Tenant to push to, sent as X-Scope-OrgID.
    #[arg(long, value_name = "ID")]
    pub push_tenant: Option<String>,

    /// An extra header for every push, 'NAME: VALUE'; may be repeated.
    #[arg(long = "push-header", value_name = "NAME: VALUE")]
    pub push_headers: Vec<String>,

    /// Write every window as a pprof file into this folder, rotated.
    #[arg(long, value_name = "PATH")]
    pub dir: Option<PathBuf>,

    /// Events to sample, comma-separated [default: cpu-clock, CPU time that backends show in
    /// seconds; cycles needs a hardware PMU and is shown as a count].
    #[arg(short = 'e', long = "event", value_name = "LIST")]
    pub events: Option<String>,

    /// Also profile off-CPU time (the `off-cpu` event, nanoseconds blocked).
    #[arg(long)]
    pub off_cpu: bool,

    /// Samples per second per CPU [default: 19].
    #[arg(short = 'F', long = "freq", value_name = "HZ", value_parser = frequency(), allow_negative_numbers = true)]
    pub freq: Option<u64>,

    /// Seconds per window [default: 10].
    #[arg(long, value_name = "SECONDS", value_parser = RangedI64ValueParser::<u64>::new().range(1..=3600), allow_negative_numbers = true)]
    pub window: Option<u64>,

    /// Distinct stacks the kernel stores per window [default: 8192].
    #[arg(long, value_name = "N", value_parser = map_size(), allow_negative_numbers = true)]
    pub stack_storage_size: Option<u32>,

    /// Distinct (process, event, stack) keys the kernel counts per window [default: 16384].
    #[arg(long, value_name = "N", value_parser = map_size(), allow_negative_numbers = true)]
    pub counts_map_size: Option<u32>,

    #[command(flatten)]
    pub unwind: UnwindArgs,
}

impl AgentArgs {
    /// Applies the --push-* flags over `[push]`, and checks the result as a whole.
    fn apply_push_flags(&self, config: &mut AgentConfig) -> Result<()> {
        let given = self.push_ca_file.is_some()
            || self.push_user.is_some()
            || self.push_password_file.is_some()
            || self.push_token_file.is_some()
            || self.push_tenant.is_some()
            || !self.push_headers.is_empty();
        let Some(push) = &mut config.push else {
            if given {
                bail!(
                    "the --push-* settings need a push URL: --push URL, or [push] url in --config"
                );
            }
            return Ok(());
        };
        if let Some(path) = &self.push_ca_file {
            push.ca_file = Some(path.clone());
        }
        if let Some(user) = &self.push_user {
            agent::config::check_header_value(user)
                .map_err(|err| anyhow::anyhow!("--push-user: {err}"))?;
            push.username = Some(user.clone());
        }
        if let Some(path) = &self.push_password_file {
            push.password = None;
            push.password_file = Some(path.clone());
        }
        if let Some(path) = &self.push_token_file {
            push.token = None;
            push.token_file = Some(path.clone());
        }
        if let Some(tenant) = &self.push_tenant {
            agent::config::check_header_value(tenant)
                .map_err(|err| anyhow::anyhow!("--push-tenant: {err}"))?;
            push.tenant_id = Some(tenant.clone());
        }
        for header in &self.push_headers {
            let Some((name, value)) = header.split_once(':') else {
                bail!("--push-header `{header}`: write it as 'NAME: VALUE'");
            };
            let (name, value) = (name.trim(), value.trim());
            agent::config::check_header_name(name)
                .and_then(|()| agent::config::check_header_value(value))
                .map_err(|err| anyhow::anyhow!("--push-header `{header}`: {err}"))?;
            push.headers.insert(name.to_owned(), value.to_owned());
        }
        push.check()
            .map_err(|err| anyhow::anyhow!("push settings: {err}"))?;
        Ok(())
    }

    /// Reads the config file (or the defaults) and applies the flags over it. Every error
    /// comes before anything is attached.
    pub fn into_config(self) -> Result<AgentConfig> {
        let mut config = match &self.config {
            Some(path) => agent::config::load(path)?,
            None => AgentConfig::default(),
        };
        if let Some(listen) = &self.listen {
            config.http.listen = agent::config::parse_listen(listen)
                .map_err(|err| anyhow::anyhow!("--listen: {err}"))?;
            config.http.enabled = true;
        }
        if self.no_http {
            config.http.enabled = false;
        }
        if let Some(url) = &self.push {
            let url = agent::config::check_push_url(url)
                .map_err(|err| anyhow::anyhow!("--push: {err}"))?;
            match &mut config.push {
                Some(push) => push.url = url,
                None => config.push = Some(PushConfig::with_url(&url).map_err(anyhow::Error::msg)?),
            }
        }
        self.apply_push_flags(&mut config)?;
        if let Some(path) = self.dir {
            match &mut config.dir {
                Some(dir) => dir.path = path,
                None => config.dir = Some(DirConfig::with_path(path)),
            }
        }
        if let Some(list) = &self.events {
            config.events = events::parse_list(list)?;
        }
        config.off_cpu |= self.off_cpu;
        if let Some(freq) = self.freq {
            config.frequency = freq;
        }
        if let Some(window) = self.window {
            config.window_seconds = window;
        }
        if let Some(size) = self.stack_storage_size {
            config.stack_storage_size = size;
        }
        if let Some(size) = self.counts_map_size {
            config.counts_map_size = size;
        }
        self.unwind.apply(
            &mut config.sampling.unwind,
            &mut config.sampling.unwind_table_size,
        )?;
        // The agent fills one generation of maps while it drains the other.
        check_map_sizes(MapSizes {
            stacks: config.stack_storage_size,
            counts: config.counts_map_size,
            generations: 2,
            unwind_rows: match config.sampling.unwind {
                UnwindMode::Auto => config.sampling.unwind_table_size,
                UnwindMode::Fp => 0,
            },
        })?;
        Ok(config)
    }
}

const REPORT_EXAMPLES: &str = "\
Examples:
  # The 20 hottest functions of every event, self and total:
  prof report prof.pb.gz
  # A flame graph of one event, from prof's pprof or any other program's:
  prof report prof.pb.gz --event cpu-clock -o cpu.svg
  # All of the threads' time, on CPU and blocked, in one graph (record with --off-cpu):
  prof report prof.pb.gz --event cpu-clock+off-cpu -o wall.svg
  # Page faults per unit of CPU time: width is cpu-clock, red frames fault more:
  prof report prof.pb.gz --ratio page-faults/cpu-clock -o ratio.svg
  # A Go program's CPU profile, as a reversed (icicle) flame graph:
  prof report cpu.pprof --reverse -o cpu.svg

FILE is pprof (gzipped or not, from prof, Go's runtime/pprof, Pyroscope, ...) or folded
stacks (.folded).";

const DIFF_EXAMPLES: &str = "\
Examples:
  # What changed between two recordings, scaled to the same total:
  prof diff before.pb.gz after.pb.gz --event cpu-clock --normalize -o diff.svg
  # Folded stacks work too, and .folded output gives `stack before after` lines:
  prof diff old.folded new.folded -o diff.folded

Frame widths are AFTER's; colours show each frame's change in self count.";

/// `prof report` flags.
#[derive(Debug, Args)]
pub struct ReportArgs {
    /// The profile: pprof (.pb.gz, .pprof, any name) or folded stacks (.folded).
    #[arg(value_name = "FILE")]
    pub input: PathBuf,

    /// Only these events (comma-separated or repeated); `prof report FILE` lists them. A
    /// sum, A+B, adds events of one unit into one: cpu-clock+off-cpu is where threads spent
    /// their time, running or blocked (the wall-clock view).
    #[arg(
        long = "event",
        short = 'e',
        value_name = "EVENT",
        value_delimiter = ','
    )]
    pub events: Vec<String>,

    /// Output file; repeat for several: .svg, .folded, or .pb.gz/.pprof. With several
    /// events, .svg and .folded outputs are written per event as <stem>.<event>.<ext>.
    /// Without -o, the hottest functions are printed.
    #[arg(short = 'o', long = "output", value_name = "PATH")]
    pub outputs: Vec<PathBuf>,

    /// How many functions the table shows.
    #[arg(long, value_name = "N", default_value_t = 20, value_parser = RangedU64ValueParser::<usize>::new().range(1..=u64::from(u32::MAX)), allow_negative_numbers = true)]
    pub top: usize,

    /// Draw a ratio flame graph NUMERATOR/DENOMINATOR of two recorded events: widths
    /// follow the denominator, colours how each function's ratio compares with the
    /// profile's.
    #[arg(long, value_name = "NUM/DEN")]
    pub ratio: Option<String>,

    #[command(flatten)]
    pub limits: LimitArgs,

    #[command(flatten)]
    pub flame: FlameArgs,
}

/// How much of a saved profile `report` and `diff` read before refusing it, so that a
/// hostile or broken file cannot exhaust memory.
#[derive(Debug, Args)]
#[command(next_help_heading = "Input limits")]
pub struct LimitArgs {
    /// Refuse profiles larger than this once decompressed (K, M, G suffixes: powers of 1024).
    #[arg(long, value_name = "BYTES", default_value = limits::DEFAULT_MAX_INPUT_TEXT, value_parser = parse_bytes)]
    pub max_input_size: u64,

    /// Refuse stacks deeper than this many frames (each inlined function is a frame).
    #[arg(long, value_name = "FRAMES", default_value_t = limits::DEFAULT_MAX_STACK_DEPTH, value_parser = RangedU64ValueParser::<usize>::new().range(1..=u64::from(u32::MAX)), allow_negative_numbers = true)]
    pub max_stack_depth: usize,

    /// Refuse profiles with more locations than this, counting each location entry and each
    /// frame of each distinct stack.
    #[arg(long, value_name = "N", default_value_t = limits::DEFAULT_MAX_LOCATIONS, value_parser = RangedU64ValueParser::<usize>::new().range(1..=1 << 40), allow_negative_numbers = true)]
    pub max_locations: usize,
}

impl LimitArgs {
    /// The limits.
    pub fn into_limits(self) -> ReadLimits {
        ReadLimits {
            max_input_bytes: self.max_input_size,
            max_stack_depth: self.max_stack_depth,
            max_locations: self.max_locations,
        }
    }
}

/// Parses a size in bytes: a whole number with an optional K, M or G (KiB, MiB, GiB) suffix.
fn parse_bytes(text: &str) -> Result<u64, String> {
    let upper = text.trim().to_ascii_uppercase();
    let digits = upper.trim_end_matches(['B', 'I']);
    let (digits, unit) = match digits.chars().last() {
        Some('K') => (&digits[..digits.len() - 1], 1u64 << 10),
        Some('M') => (&digits[..digits.len() - 1], 1 << 20),
        Some('G') => (&digits[..digits.len() - 1], 1 << 30),
        _ => (digits, 1),
    };
    digits
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(unit))
        .filter(|&n| n > 0)
        .ok_or_else(|| "expected a size such as 512M or 2G, more than 0 bytes".to_owned())
}

impl ReportArgs {
    /// Validates the flags.
    pub fn into_config(self) -> Result<ReportConfig> {
        let ratio = match self.ratio {
            None => None,
            Some(text) => match text.split_once('/') {
                Some((num, den)) if !num.is_empty() && !den.is_empty() && !den.contains('/') => {
                    Some((num.to_owned(), den.to_owned()))
                }
                _ => bail!(
                    "--ratio takes two events as NUMERATOR/DENOMINATOR, e.g. page-faults/cpu-clock, not `{text}`"
                ),
            },
        };
        Ok(ReportConfig {
            input: self.input,
            events: self.events,
            outputs: self.outputs,
            top: self.top,
            ratio,
            limits: self.limits.into_limits(),
            flame: self.flame.into_options()?,
        })
    }
}

/// `prof diff` flags.
#[derive(Debug, Args)]
pub struct DiffArgs {
    /// The baseline profile (pprof or .folded).
    #[arg(value_name = "BEFORE")]
    pub before: PathBuf,

    /// The profile to compare with it.
    #[arg(value_name = "AFTER")]
    pub after: PathBuf,

    /// The event to compare [default: the first both profiles have].
    #[arg(long, short = 'e', value_name = "EVENT")]
    pub event: Option<String>,

    /// Scale BEFORE to AFTER's total, so recordings of different lengths compare by share.
    #[arg(long)]
    pub normalize: bool,

    #[command(flatten)]
    pub limits: LimitArgs,

    /// Output file: .svg (differential flame graph) or .folded (`stack before after`).
    #[arg(
        short = 'o',
        long = "output",
        value_name = "PATH",
        default_value = "diff.svg"
    )]
    pub outputs: Vec<PathBuf>,

    #[command(flatten)]
    pub flame: FlameArgs,
}

const RECORD_EXAMPLES: &str = "\
Examples:
  # A command, and everything it forks:
  sudo prof record -- ./app --flag
  # One flame graph per event, out.cpu-clock.svg and out.page-faults.svg:
  sudo prof record -e cpu-clock,page-faults -o out.svg -- ./app
  # 10 s of a running process, as collapsed stacks:
  sudo prof record -p 1234 -d 10 -o app.folded
  # The whole machine for 5 s, into prof.svg:
  sudo prof record -a -d 5
  # Where a command waits as well as where it runs: prof.cpu-clock.svg, prof.off-cpu.svg,
  # and both in prof.pb.gz (`prof report prof.pb.gz -e cpu-clock+off-cpu -o wall.svg`):
  sudo prof record -e cpu-clock --off-cpu -o prof.svg -o prof.pb.gz -- ./app
  # Every write(2) of a command, with its stacks (`prof list syscalls` lists the others):
  sudo prof record -e syscalls:sys_enter_write -o writes.svg -- ./app

Recording stops when the command exits, after --duration, or on Ctrl-C, SIGTERM or SIGHUP; the
outputs are written in every case, and a second signal quits at once. prof needs root, or
CAP_BPF and CAP_PERFMON.";

/// `prof record` flags.
#[derive(Debug, Args)]
pub struct RecordArgs {
    /// Events to sample, comma-separated (perf names: cycles, cpu-clock, page-faults,
    /// LLC-load-misses, r1a8, ...; add :u or :k for user or kernel only), tracepoints as
    /// category:name (sched:sched_switch, counted on every hit), and off-cpu. `prof list`
    /// shows them all. Without a hardware PMU, cycles falls back to cpu-clock.
    #[arg(
        short = 'e',
        long = "event",
        value_name = "LIST",
        default_value = "cycles"
    )]
    pub events: String,

    /// Also record off-CPU time: where threads block (sleeps, locks, I/O), weighted by the
    /// nanoseconds they stay blocked, as the event `off-cpu`.
    #[arg(long)]
    pub off_cpu: bool,

    /// Leave out blocks shorter than this many microseconds (--off-cpu).
    #[arg(long, value_name = "US", default_value_t = 0)]
    pub off_cpu_min_us: u64,

    /// Threads the kernel follows while they are blocked (--off-cpu); raise it when the summary
    /// reports dropped blocks.
    #[arg(long, value_name = "N", default_value_t = prof::bpf::DEFAULT_OFF_CPU_TASKS)]
    pub off_cpu_tasks: u32,

    /// Samples per second per CPU; the kernel adjusts the period to match [default: 999]
    #[arg(
        short = 'F',
        long = "freq",
        value_name = "HZ",
        conflicts_with = "period",
        value_parser = frequency(),
        allow_negative_numbers = true
    )]
    pub freq: Option<u64>,

    /// Take one sample every N events instead of sampling at a frequency (tracepoints: count
    /// one hit in N; by default every hit counts).
    #[arg(short = 'c', long = "period", value_name = "N", value_parser = RangedI64ValueParser::<u64>::new().range(1..=i64::MAX), allow_negative_numbers = true)]
    pub period: Option<u64>,

    /// Sample all CPUs (the default when no command and no pid is given).
    #[arg(short = 'a', long = "all-cpus")]
    pub all_cpus: bool,

    /// Sample every thread of these processes (comma-separated), and what they fork.
    #[arg(short = 'p', long = "pid", value_name = "PID,...", conflicts_with_all = ["all_cpus", "command"], value_delimiter = ',', value_parser = RangedI64ValueParser::<u32>::new().range(1..=i64::from(i32::MAX)), allow_negative_numbers = true)]
    pub pids: Vec<u32>,

    /// Only sample these CPUs, e.g. 0-3,6.
    #[arg(short = 'C', long = "cpu", value_name = "LIST")]
    pub cpus: Option<String>,

    /// Stop after this many seconds.
    #[arg(short = 'd', long = "duration", value_name = "SECONDS", value_parser = parse_duration, allow_negative_numbers = true)]
    pub duration: Option<Duration>,

    /// Output file; repeat for several. The extension picks the format: .svg (flame graph),
    /// .folded (collapsed stacks) or .pb.gz / .pprof (pprof, every event in one file). With
    /// several events, each .svg and .folded output is written per event as
    /// <stem>.<event>.<ext>.
    #[arg(
        short = 'o',
        long = "output",
        value_name = "PATH",
        default_value = "prof.svg"
    )]
    pub outputs: Vec<PathBuf>,

    /// Distinct stacks the kernel stores between two drains (about 1 KiB of kernel memory
    /// each, reserved up front, twice: prof empties one map while the other fills). prof
    /// drains before a map can be half full, so a recording of any length needs no more;
    /// raise it only if the summary reports a full stack map.
    #[arg(long, value_name = "N", default_value_t = 16384, value_parser = map_size(), allow_negative_numbers = true)]
    pub stack_storage_size: u32,

    /// Distinct (process, event, stack) entries the kernel counts between two drains (88
    /// bytes of kernel memory each, twice, as for the stacks); raise it only if the summary
    /// reports a full counts map.
    #[arg(long, value_name = "N", default_value_t = 32768, value_parser = map_size(), allow_negative_numbers = true)]
    pub counts_map_size: u32,

    #[command(flatten)]
    pub unwind: UnwindArgs,

    #[command(flatten)]
    pub flame: FlameArgs,

    /// The command to run and profile, after `--`.
    #[arg(last = true, value_name = "COMMAND")]
    pub command: Vec<OsString>,
}

/// How user stacks are unwound (`record` and `agent`).
#[derive(Debug, Args)]
#[command(next_help_heading = "Unwinding")]
pub struct UnwindArgs {
    /// How to unwind user stacks: `auto` walks the unwind tables of each binary
    /// (.eh_frame) in the kernel, so code built without frame pointers (-O2 C and C++,
    /// Rust release builds, libc) keeps its callers, and follows frame pointers where a
    /// binary has no table (JIT code); `fp` uses frame pointers only [default: auto]
    #[arg(long, value_name = "MODE")]
    pub unwind: Option<UnwindMode>,

    /// Rows the unwind tables of all binaries hold together, 8 bytes of kernel memory each,
    /// reserved up front; when full, the least recently used binaries are evicted (libc
    /// takes 25,000 rows) [default: 4194304, 32 MiB]
    #[arg(long, value_name = "ROWS", value_parser = map_size(), allow_negative_numbers = true)]
    pub unwind_table_size: Option<u32>,
}

impl UnwindArgs {
    /// The unwind mode and table rows, over `mode` and `rows` (the config's or defaults).
    fn apply(&self, mode: &mut UnwindMode, rows: &mut u32) -> Result<()> {
        if let Some(size) = self.unwind_table_size {
            *rows = size;
        }
        if let Some(unwind) = self.unwind {
            *mode = unwind;
        }
        Ok(())
    }
}

/// How flame graphs are drawn (`record` and `report`).
#[derive(Debug, Args)]
#[command(next_help_heading = "Flame graph options")]
pub struct FlameArgs {
    /// The flame graph's title [default: prof: <event>].
    #[arg(long, value_name = "TEXT")]
    pub title: Option<String>,

    /// inferno's palette: java (kernel frames orange), hot, mem, io, wakeup, js, perl,
    /// python, rust, red, green, blue, aqua, yellow, purple, orange.
    #[arg(long, value_name = "PALETTE", default_value = "java")]
    pub colors: String,

    /// Draw an icicle graph of reversed stacks: the leaf functions on top, their callers
    /// hanging below, so hot functions called from many places add up.
    #[arg(long)]
    pub reverse: bool,

    /// Prune frames narrower than this many pixels (of 1200); the subtitle says how much
    /// was pruned. Keeps graphs of many stacks quick to open.
    #[arg(long, value_name = "PIXELS", default_value_t = 0.1, value_parser = parse_pixels, allow_negative_numbers = true)]
    pub minwidth: f64,

    /// Split the root frame by process, as `comm (pid)`, instead of by name only.
    #[arg(long)]
    pub per_pid: bool,
}

impl FlameArgs {
    /// Validates the options.
    pub fn into_options(self) -> Result<flamegraph::Options> {
        if let Err(err) = flamegraph::palette(&self.colors) {
            bail!("{err}");
        }
        Ok(flamegraph::Options {
            title: self.title,
            colors: self.colors,
            reverse: self.reverse,
            min_width: self.minwidth,
            per_pid: self.per_pid,
        })
    }
}

/// The default sampling frequency: odd, so it does not beat with periodic work.
const DEFAULT_FREQ: u64 = 999;

impl RecordArgs {
    /// Validates the flags and turns them into a [`RecordConfig`].
    pub fn into_config(self) -> Result<RecordConfig> {
        let events = with_off_cpu(events::parse_list(&self.events)?, self.off_cpu)?;
        if self.off_cpu_tasks == 0 {
            bail!("--off-cpu-tasks must be at least 1");
        }
        let sampling = match (self.freq, self.period) {
            (_, Some(period)) => Sampling::Period(period),
            (freq, None) => Sampling::Frequency(freq.unwrap_or(DEFAULT_FREQ)),
        };
        let target = if !self.command.is_empty() {
            Target::Command {
                argv: self.command,
                all_cpus: self.all_cpus,
            }
        } else if !self.pids.is_empty() {
            Target::Pids(self.pids)
        } else {
            Target::AllCpus
        };
        let (mut mode, mut rows) = (UnwindMode::Auto, unwind::DEFAULT_TABLE_ROWS);
        self.unwind.apply(&mut mode, &mut rows)?;
        check_map_sizes(MapSizes {
            stacks: self.stack_storage_size,
            counts: self.counts_map_size,
            // Two generations: one fills while prof empties the other.
            generations: 2,
            unwind_rows: match mode {
                UnwindMode::Auto => rows,
                UnwindMode::Fp => 0,
            },
        })?;
        Ok(RecordConfig {
            unwind: mode.sizes(rows),
            events,
            sampling,
            target,
            cpus: self.cpus,
            duration: self.duration,
            outputs: self.outputs,
            stack_storage_size: self.stack_storage_size,
            counts_map_size: self.counts_map_size,
            off_cpu_min: Duration::from_micros(self.off_cpu_min_us),
            off_cpu_tasks: self.off_cpu_tasks,
            flame: self.flame.into_options()?,
        })
    }
}

/// `events` with the off-CPU event appended when `--off-cpu` asks for it (once, if `-e`
/// named it too).
fn with_off_cpu(mut events: Vec<events::Event>, off_cpu: bool) -> Result<Vec<events::Event>> {
    let has = events.iter().any(|e| e.kind == events::EventKind::OffCpu);
    if off_cpu && !has {
        if events.len() >= events::MAX_EVENTS {
            bail!(
                "{} events requested with --off-cpu; prof records at most 32 at once",
                events.len() + 1
            );
        }
        events.push(events::Event::off_cpu());
    }
    Ok(events)
}

/// `-F`: at least 1 Hz; the kernel's own limit is checked when recording starts.
fn frequency() -> RangedI64ValueParser<u64> {
    RangedI64ValueParser::<u64>::new().range(1..=i64::from(u32::MAX))
}

/// `--stack-storage-size` and `--counts-map-size`: at least one entry; what a size costs is
/// checked against the machine's memory by [`check_map_sizes`].
fn map_size() -> RangedI64ValueParser<u32> {
    RangedI64ValueParser::<u32>::new().range(1..=i64::from(u32::MAX))
}

/// Refuses map sizes the machine cannot spare, and warns about sizes that take long to
/// reserve.
fn check_map_sizes(sizes: MapSizes) -> Result<()> {
    let available = map_memory::available_memory().unwrap_or(u64::MAX);
    if let Some(warning) = sizes.check(map_memory::possible_cpus(), available)? {
        say!("prof: warning: {warning}");
    }
    Ok(())
}

/// `-d`: a positive number of seconds that a [`Duration`] holds.
fn parse_duration(text: &str) -> Result<Duration, String> {
    let seconds: f64 = text
        .trim()
        .parse()
        .map_err(|_| "expected a number of seconds, such as 10 or 0.5".to_owned())?;
    if !(seconds.is_finite() && seconds > 0.0) {
        return Err("the duration must be more than 0 seconds".to_owned());
    }
    Duration::try_from_secs_f64(seconds)
        .map_err(|_| format!("the duration must be at most {} seconds", u64::MAX))
}

/// `--minwidth`: a number of pixels, 0 or more.
fn parse_pixels(text: &str) -> Result<f64, String> {
    match text.trim().parse::<f64>() {
        Ok(pixels) if pixels.is_finite() && pixels >= 0.0 => Ok(pixels),
        _ => Err("expected a number of pixels, 0 or more, such as 0.1".to_owned()),
    }
}

/// Parses the command line. `--help` and `--version` print as usual and end prof; every
/// error becomes one line for `main` to print.
pub fn parse() -> Result<Cli> {
    let args: Vec<OsString> = std::env::args_os().collect();
    match Cli::try_parse_from(&args) {
        Ok(cli) => Ok(cli),
        Err(err)
            if matches!(
                err.kind(),
                ErrorKind::DisplayHelp | ErrorKind::DisplayVersion
            ) =>
        {
            // A closed stdout is no error here either.
            let _ = err.print();
            std::process::exit(0);
        }
        Err(err) => Err(anyhow::anyhow!(one_line(&err, &args))),
    }
}

/// A clap error as one line: clap's message with what it lists, its tips, and where to
/// read more.
fn one_line(err: &clap::Error, args: &[OsString]) -> String {
    let text = err.render().to_string();
    let mut lines = text.lines().map(str::trim).filter(|l| !l.is_empty());
    let first = lines.next().unwrap_or("invalid arguments");
    let mut line = first.strip_prefix("error: ").unwrap_or(first).to_owned();
    if err.kind() == ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand {
        line = "a command is missing: record, report, diff, agent or list".to_owned();
    }
    let mut listed = Vec::new();
    for rest in lines {
        if let Some(tip) = rest.strip_prefix("tip: ") {
            // `use '-- --x'` would pass the flag to the recorded command, not to prof.
            if !tip.starts_with("to pass '") {
                line.push_str("; ");
                line.push_str(tip);
            }
        } else if !(rest.starts_with("Usage: ") || rest.starts_with("For more information")) {
            listed.push(rest);
        }
    }
    if !listed.is_empty() {
        line = format!("{}: {}", line.trim_end_matches(':'), listed.join(", "));
    }
    // The subcommand, if one was given, to point at its own --help.
    let subcommand = args
        .iter()
        .skip(1)
        .map(|arg| arg.to_string_lossy())
        .find(|arg| !arg.starts_with('-'))
        .filter(|arg| Cli::command().find_subcommand(arg.as_ref()).is_some());
    match subcommand {
        Some(name) => format!("{line} (see `prof {name} --help`)"),
        None => format!("{line} (see `prof --help`)"),
    }
}

impl Cli {
    /// Whether the command sets up logging itself (the agent, from its config).
    pub fn configures_logging(&self) -> bool {
        matches!(self.command, Command::Agent(_))
    }

    /// Runs the chosen subcommand; returns the exit code.
    pub fn run(self) -> Result<u8> {
        match self.command {
            Command::Record(args) => {
                let config = args.into_config()?;
                crate::cmd::record::run(config)
            }
            Command::Agent(args) => {
                let config = args.into_config()?;
                crate::cmd::agent::run(config)
            }
            Command::Report(args) => crate::cmd::report::run(args.into_config()?),
            Command::Diff(args) => crate::cmd::diff::run(crate::cmd::diff::DiffConfig {
                before: args.before,
                after: args.after,
                event: args.event,
                normalize: args.normalize,
                outputs: args.outputs,
                limits: args.limits.into_limits(),
                flame: args.flame.into_options()?,
            }),
            Command::List(args) => crate::cmd::list::run(args.category.as_deref()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// clap's own consistency checks of every flag, default and conflict.
    #[test]
    fn command_is_well_formed() {
        Cli::command().debug_assert();
    }

    fn error_line(args: &[&str]) -> String {
        let args: Vec<OsString> = args.iter().map(OsString::from).collect();
        let err = Cli::try_parse_from(&args).expect_err("refused");
        one_line(&err, &args)
    }

    /// clap's errors become one line that says what is wrong and which --help to read; a
    /// negative number is a value out of range, not a flag to escape with `--`.
    #[test]
    fn clap_errors_are_one_line() {
        let cases: &[(&[&str], &[&str])] = &[
            (
                &["prof", "record", "-F", "-5"],
                &["'-5'", "--freq", "1..=", "prof record --help"],
            ),
            (&["prof", "record", "-p", "-1"], &["'-1'", "--pid", "1..="]),
            (
                &["prof", "record", "-d", "-1"],
                &["--duration", "more than 0 seconds"],
            ),
            (
                &["prof", "record", "-d", "2e19", "--", "true"],
                &["--duration", "at most"],
            ),
            (
                &["prof", "record", "-F", "99", "-c", "1000"],
                &["cannot be used with"],
            ),
            (&["prof", "record", "-p", ""], &["--pid", "empty string"]),
            (
                &["prof", "record", "--frq", "9"],
                &["'--frq'", "similar argument exists: '--freq'"],
            ),
            (
                &["prof", "report"],
                &[
                    "required arguments were not provided: <FILE>",
                    "prof report --help",
                ],
            ),
            (
                &["prof", "report", "x", "--max-input-size", "12Q"],
                &["512M"],
            ),
            (
                &["prof", "bogus"],
                &["unrecognized subcommand 'bogus'", "prof --help"],
            ),
            (&["prof"], &["a command is missing"]),
        ];
        for (args, needles) in cases {
            let line = error_line(args);
            assert!(!line.contains('\n'), "{args:?}: {line}");
            assert!(
                !line.contains("-- -"),
                "{args:?} suggests a command: {line}"
            );
            for needle in *needles {
                assert!(line.contains(needle), "{args:?}: `{needle}` in {line}");
            }
        }
    }

    /// Sizes take K, M and G suffixes.
    #[test]
    fn sizes() {
        assert_eq!(parse_bytes("256M"), Ok(256 << 20));
        assert_eq!(parse_bytes("1g"), Ok(1 << 30));
        assert_eq!(parse_bytes("10KiB"), Ok(10 << 10));
        assert_eq!(parse_bytes("4096"), Ok(4096));
        assert!(parse_bytes("0").is_err());
        assert!(parse_bytes("-1M").is_err());
        assert!(parse_bytes("99999999999G").is_err());
    }
}
