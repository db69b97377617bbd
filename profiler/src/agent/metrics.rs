//! The agent's own numbers, for `/metrics` in Prometheus' text format (version 0.0.4).
//!
//! In: what the agent counted ([`Metrics`], plain data updated by its threads under one
//! lock) and what the kernel says of the agent's own process ([`OwnUsage`]). Out: the text.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use crate::profile::{Losses, UnknownReason, UnwindTables};

/// Counters of one event.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EventMetrics {
    /// Samples the kernel took and kept.
    pub samples: u64,
    /// Samples lost, by reason.
    pub lost: Losses,
    /// Samples with `[unknown]` frames, by reason.
    pub unknown: BTreeMap<UnknownReason, u64>,
    /// Unique stacks in the last window.
    pub unique_stacks: u64,
}

/// Why the HTTP server refused or closed a connection or a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Refusal {
    /// `max_connections` were open.
    Connections,
    /// The request head did not arrive within `header_timeout_seconds` (or the connection
    /// stayed idle that long).
    HeaderTimeout,
    /// The request head was over `max_header_bytes`.
    HeaderTooLarge,
    /// The request had a body where none is taken, or one over `max_body_bytes`.
    BodyTooLarge,
    /// Too many requests of its kind ran at once.
    Busy,
    /// The connection outlived its lifetime.
    Lifetime,
}

impl Refusal {
    /// Every reason, in order.
    pub const ALL: [Refusal; 6] = [
        Refusal::Connections,
        Refusal::HeaderTimeout,
        Refusal::HeaderTooLarge,
        Refusal::BodyTooLarge,
        Refusal::Busy,
        Refusal::Lifetime,
    ];

    /// The `reason` label.
    pub fn key(self) -> &'static str {
        match self {
            Refusal::Connections => "too_many_connections",
            Refusal::HeaderTimeout => "header_timeout",
            Refusal::HeaderTooLarge => "header_too_large",
            Refusal::BodyTooLarge => "body_too_large",
            Refusal::Busy => "busy",
            Refusal::Lifetime => "lifetime",
        }
    }
}

/// Everything the agent counts about itself.
#[derive(Clone, Debug, Default)]
pub struct Metrics {
    /// By event name, in sampling order.
    pub events: Vec<(String, EventMetrics)>,
    /// Windows completed.
    pub windows: u64,
    /// Seconds spent closing the last window (drain, symbolize, encode, export).
    pub last_window_seconds: f64,
    /// Seconds spent symbolizing in the last window.
    pub last_symbolize_seconds: f64,
    /// All seconds spent closing windows.
    pub window_seconds_total: f64,
    /// All seconds spent symbolizing.
    pub symbolize_seconds_total: f64,
    /// Side-band records the kernel dropped.
    pub side_band_lost: u64,
    /// Processes in the process table after the last window.
    pub processes: u64,
    /// Times the symbolizer was rebuilt to release memory.
    pub symbolizer_resets: u64,
    /// Windows pushed.
    pub pushes: u64,
    /// Push attempts that failed.
    pub push_failures: u64,
    /// Windows dropped from the full push queue.
    pub dropped_windows: u64,
    /// Windows waiting to be pushed.
    pub push_queue: u64,
    /// Files written to the directory.
    pub files_written: u64,
    /// Files that could not be written.
    pub file_failures: u64,
    /// `/debug/pprof/profile` requests answered.
    pub profile_requests: u64,
    /// `/debug/pprof/symbol` requests answered.
    pub symbol_requests: u64,
    /// HTTP connections open.
    pub http_connections: u64,
    /// HTTP connections and requests refused, by reason.
    pub http_refused: BTreeMap<Refusal, u64>,
    /// What the unwind tables hold, when user stacks are walked with them.
    pub unwind_tables: Option<UnwindTables>,
}

/// What the kernel says about the agent's own process.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct OwnUsage {
    /// User plus system CPU seconds.
    pub cpu_seconds: f64,
    /// Resident memory in bytes.
    pub resident_bytes: u64,
}

/// Reads the agent's own CPU time and resident memory from `/proc/self/stat`.
pub fn own_usage() -> OwnUsage {
    let Ok(me) = procfs::process::Process::myself() else {
        return OwnUsage::default();
    };
    let Ok(stat) = me.stat() else {
        return OwnUsage::default();
    };
    let ticks = procfs::ticks_per_second() as f64;
    OwnUsage {
        cpu_seconds: (stat.utime + stat.stime) as f64 / ticks,
        resident_bytes: stat.rss * procfs::page_size(),
    }
}

impl Metrics {
    /// The counters of event `name`, created on first use.
    pub fn event(&mut self, name: &str) -> &mut EventMetrics {
        let index = match self.events.iter().position(|(n, _)| n == name) {
            Some(index) => index,
            None => {
                self.events.push((name.to_owned(), EventMetrics::default()));
                self.events.len() - 1
            }
        };
        &mut self.events[index].1
    }

    /// The Prometheus text exposition.
    pub fn render(&self, own: OwnUsage) -> String {
        let mut out = Text(String::new());
        out.family(
            "prof_agent_samples_total",
            "counter",
            "Samples the kernel took.",
        );
        for (event, m) in &self.events {
            out.sample(
                "prof_agent_samples_total",
                &[("event", event)],
                m.samples as f64,
            );
        }
        out.family(
            "prof_agent_lost_samples_total",
            "counter",
            "Samples whose stack was lost (stack_map_full, no_stack) or that were dropped (counts_map_full; off-CPU: blocks forgotten, task_map_full, or shorter than off_cpu_min_us, below_min_block).",
        );
        for (event, m) in &self.events {
            let off_cpu = event.starts_with(crate::events::OFF_CPU);
            for (reason, n) in [
                ("stack_map_full", m.lost.stack_map_full),
                ("no_stack", m.lost.no_stack),
                ("counts_map_full", m.lost.map_full),
                ("task_map_full", m.lost.blocks_dropped),
                ("below_min_block", m.lost.blocks_short),
            ] {
                if !off_cpu && matches!(reason, "task_map_full" | "below_min_block") {
                    continue;
                }
                out.sample(
                    "prof_agent_lost_samples_total",
                    &[("event", event), ("reason", reason)],
                    n as f64,
                );
            }
        }
        out.family(
            "prof_agent_unwind_stopped_samples_total",
            "counter",
            "Samples whose user stack, walked with the unwind tables, stopped before the outermost frame, by reason.",
        );
        for (event, m) in &self.events {
            for (reason, n) in m.lost.unwind.iter() {
                out.sample(
                    "prof_agent_unwind_stopped_samples_total",
                    &[("event", event), ("reason", reason.key())],
                    n as f64,
                );
            }
        }
        if let Some(tables) = &self.unwind_tables {
            for (name, help, value) in [
                (
                    "prof_agent_unwind_table_files",
                    "Files whose unwind table is loaded.",
                    tables.files,
                ),
                (
                    "prof_agent_unwind_table_rows",
                    "Unwind table rows in use.",
                    tables.rows,
                ),
                (
                    "prof_agent_unwind_table_capacity_rows",
                    "Unwind table rows the kernel maps hold.",
                    tables.capacity,
                ),
                (
                    "prof_agent_unwind_table_reserved_bytes",
                    "Kernel memory reserved for unwind tables.",
                    tables.reserved_bytes,
                ),
            ] {
                out.family(name, "gauge", help);
                out.sample(name, &[], value as f64);
            }
            out.family(
                "prof_agent_unwind_table_evictions_total",
                "counter",
                "Files evicted from the full unwind tables.",
            );
            out.sample(
                "prof_agent_unwind_table_evictions_total",
                &[],
                tables.evictions as f64,
            );
            out.family(
                "prof_agent_unwind_table_build_seconds_total",
                "counter",
                "Seconds spent building unwind tables.",
            );
            out.sample(
                "prof_agent_unwind_table_build_seconds_total",
                &[],
                tables.build_time.as_secs_f64(),
            );
        }
        out.family(
            "prof_agent_unknown_frame_samples_total",
            "counter",
            "Samples with [unknown] frames, by reason.",
        );
        for (event, m) in &self.events {
            for (reason, n) in &m.unknown {
                out.sample(
                    "prof_agent_unknown_frame_samples_total",
                    &[("event", event), ("reason", reason.key())],
                    *n as f64,
                );
            }
        }
        out.family(
            "prof_agent_unique_stacks",
            "gauge",
            "Unique stacks in the last window.",
        );
        for (event, m) in &self.events {
            out.sample(
                "prof_agent_unique_stacks",
                &[("event", event)],
                m.unique_stacks as f64,
            );
        }
        out.family(
            "prof_agent_http_refused_total",
            "counter",
            "HTTP connections or requests refused or closed by a limit, by reason.",
        );
        for reason in Refusal::ALL {
            let n = self.http_refused.get(&reason).copied().unwrap_or(0);
            out.sample(
                "prof_agent_http_refused_total",
                &[("reason", reason.key())],
                n as f64,
            );
        }
        let plain: [(&str, &str, &str, f64); 19] = [
            (
                "prof_agent_symbol_requests_total",
                "counter",
                "/debug/pprof/symbol requests answered.",
                self.symbol_requests as f64,
            ),
            (
                "prof_agent_http_connections",
                "gauge",
                "HTTP connections open.",
                self.http_connections as f64,
            ),
            (
                "prof_agent_windows_total",
                "counter",
                "Windows completed.",
                self.windows as f64,
            ),
            (
                "prof_agent_window_duration_seconds",
                "gauge",
                "Time to close the last window: drain, symbolize, encode, export.",
                self.last_window_seconds,
            ),
            (
                "prof_agent_window_duration_seconds_total",
                "counter",
                "Time spent closing windows.",
                self.window_seconds_total,
            ),
            (
                "prof_agent_symbolize_duration_seconds",
                "gauge",
                "Time spent symbolizing the last window.",
                self.last_symbolize_seconds,
            ),
            (
                "prof_agent_symbolize_duration_seconds_total",
                "counter",
                "Time spent symbolizing.",
                self.symbolize_seconds_total,
            ),
            (
                "prof_agent_side_band_lost_records_total",
                "counter",
                "Process records the kernel dropped.",
                self.side_band_lost as f64,
            ),
            (
                "prof_agent_processes",
                "gauge",
                "Processes the agent keeps track of.",
                self.processes as f64,
            ),
            (
                "prof_agent_profile_requests_total",
                "counter",
                "/debug/pprof/profile requests answered.",
                self.profile_requests as f64,
            ),
            (
                "prof_agent_symbolizer_resets_total",
                "counter",
                "Times the symbolizer's caches were dropped to stay within the memory budget.",
                self.symbolizer_resets as f64,
            ),
            (
                "prof_agent_pushes_total",
                "counter",
                "Windows pushed.",
                self.pushes as f64,
            ),
            (
                "prof_agent_push_failures_total",
                "counter",
                "Push attempts that failed.",
                self.push_failures as f64,
            ),
            (
                "prof_agent_dropped_windows_total",
                "counter",
                "Windows dropped because the push queue was full.",
                self.dropped_windows as f64,
            ),
            (
                "prof_agent_push_queue_windows",
                "gauge",
                "Windows waiting to be pushed.",
                self.push_queue as f64,
            ),
            (
                "prof_agent_files_written_total",
                "counter",
                "pprof files written to the directory.",
                self.files_written as f64,
            ),
            (
                "prof_agent_file_failures_total",
                "counter",
                "pprof files that could not be written.",
                self.file_failures as f64,
            ),
            (
                "process_cpu_seconds_total",
                "counter",
                "User and system CPU time of the agent.",
                own.cpu_seconds,
            ),
            (
                "process_resident_memory_bytes",
                "gauge",
                "Resident memory of the agent.",
                own.resident_bytes as f64,
            ),
        ];
        for (name, kind, help, value) in plain {
            out.family(name, kind, help);
            out.sample(name, &[], value);
        }
        out.0
    }
}

struct Text(String);

impl Text {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.0, "# HELP {name} {help}\n# TYPE {name} {kind}");
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: f64) {
        self.0.push_str(name);
        if !labels.is_empty() {
            let labels: Vec<String> = labels
                .iter()
                .map(|(k, v)| format!("{k}=\"{}\"", escape(v)))
                .collect();
            let _ = write!(self.0, "{{{}}}", labels.join(","));
        }
        let _ = writeln!(self.0, " {value}");
    }
}

/// Escapes a label value as the text format requires.
fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every family has HELP and TYPE; labelled samples carry the event and reason.
    #[test]
    fn text_format() {
        let mut metrics = Metrics::default();
        let event = metrics.event("cpu-clock");
        event.samples = 42;
        event.lost.map_full = 3;
        event.unknown.insert(UnknownReason::Unmapped, 5);
        metrics.dropped_windows = 2;
        metrics.http_refused.insert(Refusal::HeaderTimeout, 7);
        let text = metrics.render(OwnUsage {
            cpu_seconds: 1.5,
            resident_bytes: 1 << 20,
        });
        assert!(
            text.contains("prof_agent_samples_total{event=\"cpu-clock\"} 42\n"),
            "{text}"
        );
        assert!(text.contains(
            "prof_agent_lost_samples_total{event=\"cpu-clock\",reason=\"counts_map_full\"} 3\n"
        ));
        assert!(text.contains(
            "prof_agent_unknown_frame_samples_total{event=\"cpu-clock\",reason=\"unmapped\"} 5\n"
        ));
        assert!(text.contains("prof_agent_dropped_windows_total 2\n"));
        assert!(text.contains("prof_agent_http_refused_total{reason=\"header_timeout\"} 7\n"));
        assert!(text.contains("prof_agent_http_refused_total{reason=\"busy\"} 0\n"));
        assert!(text.contains("process_cpu_seconds_total 1.5\n"));
        assert!(text.contains("process_resident_memory_bytes 1048576\n"));
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let name = line.split(['{', ' ']).next().unwrap();
            assert!(
                text.contains(&format!("# TYPE {name} ")),
                "{name} has a TYPE"
            );
        }
    }

    /// Our own process uses some memory.
    #[test]
    fn own_usage_reads_proc() {
        assert!(own_usage().resident_bytes > 0);
    }

    /// Label values are escaped.
    #[test]
    fn escapes() {
        assert_eq!(escape("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}
