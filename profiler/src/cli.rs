//! Command-line types (clap only) and their conversion into plain configs.

use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Result, bail};
use clap::{Args, Parser, Subcommand};

use crate::cmd::record::{RecordConfig, Target};
use crate::cmd::report::ReportConfig;
use prof::agent;
use prof::agent::config::{AgentConfig, DirConfig, PushConfig};
use prof::events;
use prof::export::flamegraph;
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
    /// List the events prof knows and whether each works on this machine.
    List,
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

    /// Events to sample, comma-separated [default: cycles, or cpu-clock without a PMU].
    #[arg(short = 'e', long = "event", value_name = "LIST")]
    pub events: Option<String>,

    /// Samples per second per CPU [default: 19].
    #[arg(short = 'F', long = "freq", value_name = "HZ")]
    pub freq: Option<u64>,

    /// Seconds per window [default: 10].
    #[arg(long, value_name = "SECONDS")]
    pub window: Option<u64>,

    /// Distinct stacks the kernel stores per window [default: 8192].
    #[arg(long, value_name = "N")]
    pub stack_storage_size: Option<u32>,

    /// Distinct (process, event, stack) keys the kernel counts per window [default: 16384].
    #[arg(long, value_name = "N")]
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
        for (flag, value) in [
            ("-F/--freq", self.freq),
            ("--window", self.window),
            (
                "--stack-storage-size",
                self.stack_storage_size.map(u64::from),
            ),
            ("--counts-map-size", self.counts_map_size.map(u64::from)),
        ] {
            if value == Some(0) {
                bail!("{flag} must be at least 1");
            }
        }
        if let Some(freq) = self.freq {
            config.frequency = freq;
        }
        if let Some(window) = self.window {
            if window > 3600 {
                bail!("--window is at most 3600 seconds");
            }
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
        Ok(config)
    }
}

const REPORT_EXAMPLES: &str = "\
Examples:
  # The 20 hottest functions of every event, self and total:
  prof report prof.pb.gz
  # A flame graph of one event, from prof's pprof or any other program's:
  prof report prof.pb.gz --event cpu-clock -o cpu.svg
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

    /// Only these events (comma-separated or repeated); `prof report FILE` lists them.
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
    #[arg(long, value_name = "N", default_value_t = 20)]
    pub top: usize,

    /// Draw a ratio flame graph NUMERATOR/DENOMINATOR of two recorded events: widths
    /// follow the denominator, colours how each function's ratio compares with the
    /// profile's.
    #[arg(long, value_name = "NUM/DEN")]
    pub ratio: Option<String>,

    #[command(flatten)]
    pub flame: FlameArgs,
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

Recording stops when the command exits, after --duration, or on Ctrl-C / SIGTERM; the outputs
are written in every case. prof needs root, or CAP_BPF and CAP_PERFMON.";

/// `prof record` flags.
#[derive(Debug, Args)]
pub struct RecordArgs {
    /// Events to sample, comma-separated (perf names: cycles, cpu-clock, page-faults,
    /// LLC-load-misses, r1a8, ...; add :u or :k for user or kernel only). `prof list` shows
    /// them all. Without a hardware PMU, cycles falls back to cpu-clock.
    #[arg(
        short = 'e',
        long = "event",
        value_name = "LIST",
        default_value = "cycles"
    )]
    pub events: String,

    /// Samples per second per CPU; the kernel adjusts the period to match [default: 999]
    #[arg(
        short = 'F',
        long = "freq",
        value_name = "HZ",
        conflicts_with = "period"
    )]
    pub freq: Option<u64>,

    /// Take one sample every N events instead of sampling at a frequency.
    #[arg(short = 'c', long = "period", value_name = "N")]
    pub period: Option<u64>,

    /// Sample all CPUs (the default when no command and no pid is given).
    #[arg(short = 'a', long = "all-cpus")]
    pub all_cpus: bool,

    /// Sample every thread of these processes (comma-separated), and what they fork.
    #[arg(short = 'p', long = "pid", value_name = "PID,...", conflicts_with_all = ["all_cpus", "command"], value_delimiter = ',')]
    pub pids: Vec<u32>,

    /// Only sample these CPUs, e.g. 0-3,6.
    #[arg(short = 'C', long = "cpu", value_name = "LIST")]
    pub cpus: Option<String>,

    /// Stop after this many seconds.
    #[arg(short = 'd', long = "duration", value_name = "SECONDS")]
    pub duration: Option<f64>,

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

    /// Distinct stacks the kernel can store (about 1 KiB of kernel memory each, reserved up
    /// front); raise it when the summary reports a full stack map.
    #[arg(long, value_name = "N", default_value_t = 32768)]
    pub stack_storage_size: u32,

    /// Distinct (process, event, stack) entries the kernel can count; raise it when the
    /// summary reports a full counts map.
    #[arg(long, value_name = "N", default_value_t = 65536)]
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
    #[arg(long, value_name = "ROWS")]
    pub unwind_table_size: Option<u32>,
}

impl UnwindArgs {
    /// The unwind mode and table rows, over `mode` and `rows` (the config's or defaults).
    fn apply(&self, mode: &mut UnwindMode, rows: &mut u32) -> Result<()> {
        if let Some(size) = self.unwind_table_size {
            if size == 0 {
                bail!("--unwind-table-size must be at least 1 row");
            }
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
    #[arg(long, value_name = "PIXELS", default_value_t = 0.1)]
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
        if !(self.minwidth.is_finite() && self.minwidth >= 0.0) {
            bail!(
                "--minwidth must be a number of pixels, 0 or more, not {}",
                self.minwidth
            );
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
        let events = events::parse_list(&self.events)?;
        let sampling = match (self.freq, self.period) {
            (_, Some(0)) => bail!("-c/--period must be at least 1"),
            (_, Some(period)) => Sampling::Period(period),
            (Some(0), _) => bail!("-F/--freq must be at least 1"),
            (freq, None) => Sampling::Frequency(freq.unwrap_or(DEFAULT_FREQ)),
        };
        let duration = match self.duration {
            None => None,
            Some(secs) if secs.is_finite() && secs > 0.0 => Some(Duration::from_secs_f64(secs)),
            Some(secs) => bail!("-d/--duration must be a positive number of seconds, not {secs}"),
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
        if self.stack_storage_size == 0 || self.counts_map_size == 0 {
            bail!("--stack-storage-size and --counts-map-size must be at least 1");
        }
        let (mut mode, mut rows) = (UnwindMode::Auto, unwind::DEFAULT_TABLE_ROWS);
        self.unwind.apply(&mut mode, &mut rows)?;
        Ok(RecordConfig {
            unwind: mode.sizes(rows),
            events,
            sampling,
            target,
            cpus: self.cpus,
            duration,
            outputs: self.outputs,
            stack_storage_size: self.stack_storage_size,
            counts_map_size: self.counts_map_size,
            flame: self.flame.into_options()?,
        })
    }
}

/// Parses the command line.
pub fn parse() -> Cli {
    Cli::parse()
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
                flame: args.flame.into_options()?,
            }),
            Command::List => crate::cmd::list::run(),
        }
    }
}
