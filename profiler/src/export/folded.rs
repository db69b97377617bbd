//! Collapsed ("folded") stacks: one `comm;outer;…;leaf count` line per unique stack, where
//! count is the estimated event count (the sum of sample periods), sorted by stack. This is
//! the input format of inferno and Brendan Gregg's flamegraph.pl.

use std::collections::BTreeMap;
use std::io::{self, Write};

use thiserror::Error;

use crate::events::Unit;
use crate::export::limits::{Budget, LimitError, ReadLimits};
use crate::export::names::FrameNames;
use crate::profile::{EventProfile, Labels, Profile, UNKNOWN_FRAME, Value};

/// Why text could not be read as folded stacks.
#[derive(Debug, Error)]
pub enum FoldedError {
    /// A line is not `frames count`.
    #[error("line {line}: expected `frame;frame;... count`, found `{text}`")]
    BadLine {
        /// 1-based line number.
        line: usize,
        /// The line, shortened.
        text: String,
    },
    /// No stacks at all.
    #[error("no folded stacks in it (expected lines of `frame;frame;... count`)")]
    Empty,
    /// Larger than prof reads.
    #[error("line {line}: {source}")]
    Limit {
        /// 1-based line number.
        line: usize,
        /// Which limit.
        source: LimitError,
    },
    /// The counts add up to more than 64 bits hold.
    #[error(
        "line {0}: the counts add up to more than 9,223,372,036,854,775,807, the most a pprof \
         value holds"
    )]
    Overflow(usize),
}

/// Reads folded stacks into a profile of one event called `event`, counting in `unit`,
/// within the default [`ReadLimits`] (see [`read_within`]).
pub fn read(text: &str, event: &str, unit: Unit) -> Result<Profile, FoldedError> {
    read_within(text, event, unit, &ReadLimits::default())
}

/// Reads folded stacks into a profile of one event called `event`, counting in `unit`.
/// Every frame becomes a location (kernel ones by their `_[k]` suffix); the first frame is
/// kept as a frame, as there is no telling whether it names a process. Each line counts as
/// one sample. Each frame counts toward `limits`' locations, and a line deeper than its
/// stack depth is refused.
pub fn read_within(
    text: &str,
    event: &str,
    unit: Unit,
    limits: &ReadLimits,
) -> Result<Profile, FoldedError> {
    let mut profile = Profile {
        events: vec![EventProfile::new(event.to_owned(), unit)],
        ..Profile::default()
    };
    let mut budget = Budget::new(*limits);
    let mut total = Value::default();
    for (index, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let bad = || FoldedError::BadLine {
            line: index + 1,
            text: line.chars().take(80).collect(),
        };
        let (stack, count) = line.rsplit_once(' ').ok_or_else(bad)?;
        let count: u64 = count.parse().map_err(|_| bad())?;
        let limit = |source| FoldedError::Limit {
            line: index + 1,
            source,
        };
        let frames = stack.split(';').filter(|f| !f.is_empty());
        budget.check_depth(frames.clone().count()).map_err(limit)?;
        let frames: Vec<&str> = frames.collect();
        if frames.is_empty() {
            return Err(bad());
        }
        budget.spend(frames.len() + 1).map_err(limit)?;
        let value = Value {
            samples: 1,
            period: count,
        };
        total = total
            .checked_add(value)
            .ok_or(FoldedError::Overflow(index + 1))?;
        profile.add_named(0, Labels::default(), &frames, value);
    }
    if profile.events[0].stacks.is_empty() {
        return Err(FoldedError::Empty);
    }
    Ok(profile)
}

/// Writes event `event` of `profile` as folded stacks: the lines of [`stacks`], written
/// straight from the frame names of each unique location (see [`FrameNames`]) rather than
/// through one string per line.
pub fn write(
    profile: &Profile,
    event: usize,
    per_pid: bool,
    out: &mut dyn Write,
) -> io::Result<()> {
    let mut names = FrameNames::new(profile, per_pid);
    let (paths, lines) = merged_paths(profile, event, &mut names);
    let mut out = io::BufWriter::with_capacity(1 << 16, out);
    for &(start, len, total) in &lines {
        names.write_path(&paths[start..start + len], &mut out)?;
        writeln!(out, " {total}")?;
    }
    out.flush()
}

/// Event `event`'s stacks as paths of name ids (`paths`, cut by the `(start, len, count)`
/// of each line), in the order of their folded text, stacks with equal names merged and
/// those with a count of 0 left out: the lines of [`stacks`], without their text.
pub(crate) fn merged_paths(
    profile: &Profile,
    event: usize,
    names: &mut FrameNames<'_>,
) -> (Vec<u32>, Vec<(usize, usize, u64)>) {
    let stacks = &profile.events[event].stacks;
    let mut paths: Vec<u32> = Vec::with_capacity(stacks.len() * 16);
    let mut lines: Vec<(usize, usize, u64)> = Vec::with_capacity(stacks.len());
    for (stack, value) in stacks {
        if value.period == 0 {
            continue;
        }
        let start = paths.len();
        names.path(stack, &mut paths);
        lines.push((start, paths.len() - start, value.period));
    }
    let path = |&(start, len, _): &(usize, usize, u64)| &paths[start..start + len];
    lines.sort_unstable_by(|a, b| names.compare(path(a), path(b)));
    let mut merged: Vec<(usize, usize, u64)> = Vec::with_capacity(lines.len());
    for line in lines {
        match merged.last_mut() {
            Some(last) if path(last) == path(&line) => last.2 += line.2,
            _ => merged.push(line),
        }
    }
    (paths, merged)
}

/// The folded lines of event `event`, sorted by stack.
pub fn lines(profile: &Profile, event: usize, per_pid: bool) -> Vec<String> {
    stacks(profile, event, per_pid)
        .into_iter()
        .map(|(stack, count)| format!("{stack} {count}"))
        .collect()
}

/// Event `event`'s stacks as `;`-joined frame names with their estimated counts, sorted by
/// stack. Stacks whose names are equal (e.g. two processes with one name) are merged,
/// stacks with a count of 0 are left out, and a stack with no frame at all is `[unknown]`.
pub fn stacks(profile: &Profile, event: usize, per_pid: bool) -> BTreeMap<String, u64> {
    // Each location's names, joined once.
    let mut joined: Vec<Option<String>> = vec![None; profile.locations.len()];
    let mut roots: Vec<Option<Option<String>>> = vec![None; profile.labels.len()];
    let mut lines: Vec<(String, u64)> = Vec::with_capacity(profile.events[event].stacks.len());
    for (stack, value) in &profile.events[event].stacks {
        if value.period == 0 {
            continue;
        }
        let root = roots[stack.labels as usize]
            .get_or_insert_with(|| profile.labels.get(stack.labels).root_frame(per_pid));
        let mut line = String::with_capacity(64 * (stack.locations.len() + 1));
        if let Some(root) = root {
            line.push_str(root);
        }
        for &location in stack.locations.iter() {
            let names = joined[location as usize]
                .get_or_insert_with(|| profile.locations.get(location).frame_names().join(";"));
            if !line.is_empty() {
                line.push(';');
            }
            line.push_str(names);
        }
        // A sample with neither labels nor locations (pprof allows it) still needs a
        // frame, or the line would be a bare count that no reader takes.
        if line.is_empty() {
            line.push_str(UNKNOWN_FRAME);
        }
        lines.push((line, value.period));
    }
    // One sort, then a merge of equal neighbours, is far cheaper than inserting long
    // strings one by one into a tree; collecting sorted pairs into a BTreeMap is linear.
    lines.sort_unstable_by(|a, b| a.0.cmp(&b.0));
    let mut merged: Vec<(String, u64)> = Vec::with_capacity(lines.len());
    for (line, count) in lines {
        match merged.last_mut() {
            Some((last, total)) if *last == line => *total += count,
            _ => merged.push((line, count)),
        }
    }
    merged.into_iter().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Lines are `frames count`, count being the period sum, in a stable order; the comm
    /// is the root, with the pid when asked; equal stacks of two processes merge.
    #[test]
    fn folded_lines() {
        let mut profile = Profile {
            events: vec![EventProfile::new("cpu-clock".into(), Unit::Nanoseconds)],
            ..Profile::default()
        };
        let app = |pid| Labels {
            pid: Some(pid),
            comm: Some("app".into()),
            extra: Vec::new(),
        };
        let value = |samples: u64| Value {
            samples,
            period: samples * 1_000_000,
        };
        profile.add_named(0, app(1), &["main", "work"], value(2));
        profile.add_named(0, app(2), &["main", "work"], value(1));
        profile.add_named(0, app(1), &["main", "read", "ksys_read_[k]"], value(1));
        let mut out = Vec::new();
        write(&profile, 0, false, &mut out).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "app;main;read;ksys_read_[k] 1000000\napp;main;work 3000000\n"
        );
        assert_eq!(
            lines(&profile, 0, true),
            [
                "app (1);main;read;ksys_read_[k] 1000000",
                "app (1);main;work 2000000",
                "app (2);main;work 1000000"
            ]
        );
    }

    /// What is written reads back into the same lines; malformed lines are refused with
    /// their number.
    #[test]
    fn read_round_trips() {
        let text = "app;main;read;ksys_read_[k] 1000\napp;main;work 3000\n";
        let profile = read(text, "cpu-clock", Unit::Nanoseconds).unwrap();
        assert_eq!(lines(&profile, 0, false).join("\n") + "\n", text);
        assert_eq!(profile.events[0].total().samples, 2);
        let err = read("a;b 1\nno-count\n", "x", Unit::Events).unwrap_err();
        assert_eq!(
            err.to_string(),
            "line 2: expected `frame;frame;... count`, found `no-count`"
        );
        assert!(matches!(
            read("\n\n", "x", Unit::Events),
            Err(FoldedError::Empty)
        ));
        assert!(read("a;b -3", "x", Unit::Events).is_err());
    }

    /// The folded file is written from name ids, and is the text of [`stacks`]' lines, line
    /// for line, with and without pids: prefixes shared, equal names merged, names that
    /// sort before `;` in byte order, kernel and unknown frames, a count of 0 left out.
    #[test]
    fn written_lines_are_the_stacks_lines() {
        let profile = crate::export::names::fixtures::tricky();
        for per_pid in [false, true] {
            let (written, expected) = written_and_expected(&profile, per_pid);
            assert_eq!(written, expected);
        }
        let (text, _) = written_and_expected(&profile, false);
        let order: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with("app;main;work"))
            .collect();
        assert_eq!(order[0], "app;main;work 4000000", "two pids merge");
        assert!(text.lines().any(|l| l == "[unknown] 70000"), "{text}");
        assert!(text.lines().any(|l| l == "[pid 3];lonely 80000"), "{text}");
        assert!(!text.contains("zero"), "{text}");
    }

    /// What [`write`] writes for event 0, and the lines [`stacks`] gives.
    fn written_and_expected(profile: &Profile, per_pid: bool) -> (String, String) {
        let mut out = Vec::new();
        write(profile, 0, per_pid, &mut out).unwrap();
        let expected = stacks(profile, 0, per_pid)
            .into_iter()
            .map(|(stack, count)| format!("{stack} {count}\n"))
            .collect();
        (String::from_utf8(out).unwrap(), expected)
    }

    proptest::proptest! {
        /// Random stacks over names that share prefixes and sort around `;` are written as
        /// [`stacks`] gives them.
        #[test]
        fn random_stacks_write_as_their_lines(
            stacks_in in proptest::collection::vec(
                (proptest::collection::vec(0..6usize, 0..5), 0..3u32, 0..4u64),
                1..40,
            ),
        ) {
            const NAMES: [&str; 6] = ["a", "a.b", "a;b", "a-", "b", "a b"];
            let profile = crate::export::names::fixtures::random(Unit::Events, &NAMES, &stacks_in);
            for per_pid in [false, true] {
                let (written, expected) = written_and_expected(&profile, per_pid);
                proptest::prop_assert_eq!(written, expected);
            }
        }
    }
}
