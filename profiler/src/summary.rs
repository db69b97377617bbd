//! The end-of-recording summary printed to stderr: per event, the samples and estimated
//! count, unique stacks, what was lost or unknown and why (with the flag that fixes it), the
//! hottest functions, and the files written.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::Duration;

use crate::events::Unit;
use crate::profile::{Profile, SamplingCost, TracingProgram, UnwindStop, UnwindTables};
use crate::text::thousands;

/// How many hottest functions to list.
pub const HOTTEST: usize = 5;

/// Renders the summary. `written` pairs each written file with its event index (`None`:
/// a file of every event).
pub fn render(profile: &Profile, written: &[(Option<usize>, PathBuf)]) -> String {
    let mut out = String::new();
    let seconds = profile.duration.as_secs_f64();
    for index in 0..profile.events.len() {
        render_event(&mut out, profile, index, seconds);
        for (_, path) in written.iter().filter(|(i, _)| *i == Some(index)) {
            let _ = writeln!(out, "  wrote {}", path.display());
        }
    }
    for (_, path) in written.iter().filter(|(i, _)| i.is_none()) {
        let _ = writeln!(out, "wrote {} (every event)", path.display());
    }
    if let Some(tables) = &profile.unwind_tables {
        render_tables(&mut out, tables);
    }
    if let Some(cost) = &profile.sampling_cost {
        render_cost(&mut out, "sampling", "sample", cost, profile.duration);
    }
    for tracing in &profile.tracing_costs {
        let (what, per) = match tracing.program {
            TracingProgram::Tracepoint => ("tracepoint", "hit"),
            TracingProgram::OffCpu => ("off-cpu", "context switch"),
        };
        render_cost(&mut out, what, per, &tracing.cost, profile.duration);
    }
    if profile.forks_untracked > 0 {
        let _ = writeln!(
            out,
            "warning: {} child processes could not join the target set and were not sampled",
            thousands(profile.forks_untracked)
        );
    }
    if profile.side_band_lost > 0 {
        let _ = writeln!(
            out,
            "warning: the kernel dropped {} process records (mappings of new processes may be \
             missing; their frames show as [unknown])",
            thousands(profile.side_band_lost)
        );
    }
    out
}

/// "unwind tables: 14 files, 120,344 of 4,194,304 rows (32.1 MiB of kernel memory reserved),
/// built in 41 ms".
fn render_tables(out: &mut String, tables: &UnwindTables) {
    let mib = |bytes: u64| bytes as f64 / (1 << 20) as f64;
    let _ = write!(
        out,
        "unwind tables: {} files, {} of {} rows ({:.1} MiB of kernel memory reserved, up to \
         {:.1} MiB more for process mappings), built in {} ms",
        thousands(tables.files),
        thousands(tables.rows),
        thousands(tables.capacity),
        mib(tables.reserved_bytes),
        mib(tables.process_bytes_at_most),
        thousands(tables.build_time.as_millis() as u64),
    );
    if tables.evictions > 0 || tables.files_full > 0 {
        let _ = write!(
            out,
            "; full: {} files evicted, {} did not fit (raise --unwind-table-size)",
            thousands(tables.evictions),
            thousands(tables.files_full)
        );
    }
    let _ = writeln!(out);
}

/// "sampling cost: 1,180 ns per sample in the kernel (17,449 samples), 0.41% of 2 CPUs":
/// a BPF program's mean run time per run (`per`: a sample, a hit, a context switch), and its
/// run time over the sampled CPUs' time.
fn render_cost(out: &mut String, what: &str, per: &str, cost: &SamplingCost, wall: Duration) {
    let plural = |n: u64| {
        if n == 1 {
            per.to_owned()
        } else if per.ends_with('h') {
            format!("{per}es")
        } else {
            format!("{per}s")
        }
    };
    let Some(ns) = cost.ns_per_sample() else {
        let _ = writeln!(out, "{what} cost: no {} taken", plural(2));
        return;
    };
    let share = cost
        .cpu_share(wall)
        .map(|share| {
            let plural = if cost.cpus == 1 { "" } else { "s" };
            format!(", {:.2}% of {} CPU{plural}", share * 100.0, cost.cpus)
        })
        .unwrap_or_default();
    let _ = writeln!(
        out,
        "{what} cost: {} ns per {per} in the kernel ({} {}){}",
        thousands(ns.round() as u64),
        thousands(cost.runs),
        plural(cost.runs),
        share
    );
}

fn render_event(out: &mut String, profile: &Profile, index: usize, seconds: f64) {
    let event = &profile.events[index];
    let total = event.total();
    let off_cpu = event.name.starts_with(crate::events::OFF_CPU);
    let count = match event.unit {
        Unit::Nanoseconds if off_cpu => format!("{:.3} s off CPU", total.period as f64 / 1e9),
        Unit::Nanoseconds => format!("{:.3} s of CPU time", total.period as f64 / 1e9),
        unit => format!("~{}", unit.describe(total.period)),
    };
    let _ = writeln!(
        out,
        "{}: {} {} in {:.1} s, {}, {} unique stacks",
        event.name,
        thousands(total.samples),
        if off_cpu { "blocks" } else { "samples" },
        seconds,
        count,
        thousands(event.stacks.len() as u64)
    );
    let losses = &event.losses;
    let mut lost = Vec::new();
    if losses.stack_map_full > 0 {
        lost.push(format!(
            "{} samples lost their stack, stack map full (raise --stack-storage-size)",
            thousands(losses.stack_map_full)
        ));
    }
    if losses.no_stack > 0 {
        lost.push(format!(
            "{} samples had no stack",
            thousands(losses.no_stack)
        ));
    }
    if losses.map_full > 0 {
        lost.push(format!(
            "{} samples dropped, counts map full (raise --counts-map-size)",
            thousands(losses.map_full)
        ));
    }
    if losses.blocks_dropped > 0 {
        lost.push(format!(
            "{} blocks dropped, more threads blocked at once than the kernel follows (raise --off-cpu-tasks)",
            thousands(losses.blocks_dropped)
        ));
    }
    if losses.blocks_short > 0 {
        let _ = writeln!(
            out,
            "  left out: {} blocks shorter than --off-cpu-min-us",
            thousands(losses.blocks_short)
        );
    }
    if lost.is_empty() {
        let _ = writeln!(out, "  lost: none");
    } else {
        let _ = writeln!(out, "  lost: {}", lost.join("; "));
    }
    if losses.unwind.total() > 0 {
        let stops: Vec<String> = losses
            .unwind
            .iter()
            .filter(|&(_, n)| n > 0)
            .map(|(reason, n)| {
                let fix = match reason {
                    UnwindStop::TablesFull => " (raise --unwind-table-size)",
                    _ => "",
                };
                format!("{} {}{fix}", thousands(n), reason.describe())
            })
            .collect();
        let _ = writeln!(out, "  user stacks cut short: {}", stops.join(", "));
    }
    if event.unknown.is_empty() {
        let _ = writeln!(out, "  [unknown] frames: none");
    } else {
        let reasons: Vec<String> = event
            .unknown
            .iter()
            .map(|(reason, n)| format!("{} {}", thousands(*n), reason))
            .collect();
        let _ = writeln!(
            out,
            "  samples with [unknown] frames: {}",
            reasons.join(", ")
        );
    }
    // Off-CPU stacks all end in the scheduler: where they blocked is the user frame below.
    let (heading, hottest) = if off_cpu {
        (
            "blocked in (innermost user frame)",
            profile.hottest_user_leaves(index, HOTTEST),
        )
    } else {
        ("hottest (self)", profile.hottest_self(index, HOTTEST))
    };
    if !hottest.is_empty() {
        let _ = writeln!(out, "  {heading}:");
        for (frame, share) in hottest {
            let _ = writeln!(out, "    {:5.1}%  {}", share * 100.0, frame);
        }
    }
}

/// A table of event `event`'s `top` hottest functions by self share, with their total
/// share: what `prof report` prints when no output file is asked for.
pub fn top_table(profile: &Profile, event: usize, top: usize) -> String {
    let events = &profile.events[event];
    let total = events.total();
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{}: {} samples, {}, {} unique stacks",
        events.name,
        thousands(total.samples),
        events.unit.describe(total.period),
        thousands(events.stacks.len() as u64)
    );
    let _ = writeln!(out, "{:>7} {:>7}  function", "self", "total");
    for share in profile.function_shares(event).into_iter().take(top) {
        let _ = writeln!(
            out,
            "{:>6.2}% {:>6.2}%  {}",
            share.self_share * 100.0,
            share.total_share * 100.0,
            share.name
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::profile::{EventProfile, Labels, TracingCost, UnknownReason, Value};

    /// The off-CPU event counts blocks and time off CPU, names the flag for dropped blocks,
    /// says how many short blocks were left out, and the tracing programs' costs get lines
    /// of their own.
    #[test]
    fn off_cpu_lines() {
        let mut profile = Profile {
            events: vec![EventProfile::new("off-cpu".into(), Unit::Nanoseconds)],
            duration: Duration::from_secs(1),
            tracing_costs: vec![
                TracingCost {
                    program: TracingProgram::OffCpu,
                    cost: SamplingCost {
                        run_time: Duration::from_millis(2),
                        runs: 2_000,
                        cpus: 2,
                    },
                },
                TracingCost {
                    program: TracingProgram::Tracepoint,
                    cost: SamplingCost {
                        run_time: Duration::ZERO,
                        runs: 1,
                        cpus: 2,
                    },
                },
            ],
            ..Profile::default()
        };
        let value = Value {
            samples: 40,
            period: 400_000_000,
        };
        profile.add_named(0, Labels::default(), &["main", "wait"], value);
        profile.events[0].losses.blocks_dropped = 3;
        profile.events[0].losses.blocks_short = 9;
        let text = render(&profile, &[]);
        assert!(
            text.contains("off-cpu: 40 blocks in 1.0 s, 0.400 s off CPU, 1 unique stacks"),
            "{text}"
        );
        assert!(text.contains("3 blocks dropped"), "{text}");
        assert!(
            text.contains("blocked in (innermost user frame):\n    100.0%  wait"),
            "{text}"
        );
        assert!(text.contains("raise --off-cpu-tasks"), "{text}");
        assert!(
            text.contains("left out: 9 blocks shorter than --off-cpu-min-us"),
            "{text}"
        );
        assert!(
            text.contains("off-cpu cost: 1,000 ns per context switch in the kernel (2,000 context switches), 0.10% of 2 CPUs"),
            "{text}"
        );
        assert!(
            text.contains("tracepoint cost: 0 ns per hit in the kernel (1 hit)"),
            "{text}"
        );
    }

    /// The summary names totals, losses with their fixing flags, unknown reasons, the
    /// hottest functions and the paths written.
    #[test]
    fn summary_lines() {
        let mut profile = Profile {
            events: vec![EventProfile::new("cpu-clock".into(), Unit::Nanoseconds)],
            duration: Duration::from_secs(2),
            sampling_cost: Some(SamplingCost {
                run_time: Duration::from_millis(20),
                runs: 16_000,
                cpus: 2,
            }),
            ..Profile::default()
        };
        let app = Labels {
            comm: Some("app".into()),
            ..Labels::default()
        };
        let value = Value {
            samples: 1500,
            period: 1_500_000_000,
        };
        profile.add_named(0, app, &["main", "hot"], value);
        let event = &mut profile.events[0];
        event.losses.stack_map_full = 3;
        event.losses.map_full = 2;
        event.unknown.insert(UnknownReason::Unmapped, 7);
        let written = [
            (Some(0), PathBuf::from("prof.svg")),
            (None, PathBuf::from("prof.pb.gz")),
        ];
        let text = render(&profile, &written);
        assert!(
            text.contains(
                "cpu-clock: 1,500 samples in 2.0 s, 1.500 s of CPU time, 1 unique stacks"
            ),
            "{text}"
        );
        assert!(text.contains("raise --stack-storage-size"), "{text}");
        assert!(text.contains("raise --counts-map-size"), "{text}");
        assert!(
            text.contains("7 address in no executable mapping"),
            "{text}"
        );
        assert!(text.contains("100.0%  hot"), "{text}");
        assert!(text.contains("wrote prof.svg"), "{text}");
        assert!(text.contains("wrote prof.pb.gz (every event)"), "{text}");
        assert!(!text.contains("off-cpu"), "{text}");
        // 20 ms over 16,000 runs; 20 ms of 2 CPUs × 2 s.
        assert!(
            text.contains(
                "sampling cost: 1,250 ns per sample in the kernel (16,000 samples), 0.50% of 2 CPUs"
            ),
            "{text}"
        );
    }
}
