//! Differential flame graphs, in the style of inferno's (and Brendan Gregg's): the graph of
//! AFTER, each frame's colour showing how its self count changed from BEFORE, red for
//! growth and blue for reduction.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{self, Write};

use crate::events::Unit;
use crate::export::flamegraph::{self, Options};

/// The differential folded lines `stack before after`, sorted by stack, with BEFORE's
/// counts scaled to AFTER's total when `normalize` is set.
pub fn lines(
    before: &BTreeMap<String, u64>,
    after: &BTreeMap<String, u64>,
    normalize: bool,
) -> Vec<String> {
    let before_total: u64 = before.values().sum();
    let after_total: u64 = after.values().sum();
    let scale = if normalize && before_total > 0 {
        after_total as f64 / before_total as f64
    } else {
        1.0
    };
    let stacks: BTreeSet<&String> = before.keys().chain(after.keys()).collect();
    stacks
        .into_iter()
        .map(|stack| {
            let old = before
                .get(stack)
                .map_or(0, |&c| (c as f64 * scale).round() as u64);
            let new = after.get(stack).copied().unwrap_or(0);
            format!("{stack} {old} {new}")
        })
        .collect()
}

/// Writes the differential flame graph of `before` → `after` (folded stacks of one event
/// called `event`, counted in `unit`).
pub fn write(
    before: &BTreeMap<String, u64>,
    after: &BTreeMap<String, u64>,
    event: &str,
    unit: Unit,
    normalize: bool,
    options: &Options,
    out: &mut dyn Write,
) -> io::Result<()> {
    let title = format!("prof diff: {event}");
    let options = Options {
        title: Some(options.title.clone().unwrap_or(title)),
        ..options.clone()
    };
    let mut inferno = flamegraph::inferno_options(&options, event, unit)?;
    let before_total: u64 = before.values().sum();
    let after_total: u64 = after.values().sum();
    inferno.subtitle = Some(subtitle(event, unit, before_total, after_total, normalize));
    inferno.min_width = options.min_width;
    let lines = lines(before, after, normalize);
    if after_total == 0 {
        return flamegraph::render(&mut inferno, &[], out);
    }
    flamegraph::render(&mut inferno, &lines, out)
}

/// What the graph compares: both totals, the change, and whether BEFORE was scaled. An
/// empty BEFORE has no change to state as a share, and nothing to scale.
fn subtitle(event: &str, unit: Unit, before: u64, after: u64, normalize: bool) -> String {
    let change = if before == 0 {
        "all new: before is empty".to_owned()
    } else {
        format!(
            "{:+.1}%",
            100.0 * (after as f64 - before as f64) / before as f64
        )
    };
    let scale = match (normalize, before) {
        (true, 0) => "nothing to scale",
        (true, _) => "before scaled to the after total",
        (false, _) => "raw counts",
    };
    format!(
        "{event} · before: {} · after: {} ({change}) · {scale} · red: grew, blue: shrank; \
         width: after",
        unit.describe(before),
        unit.describe(after),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The subtitle states the change as a share, or that everything is new when BEFORE is
    /// empty (not a share of nothing).
    #[test]
    fn subtitle_of_an_empty_before() {
        let text = subtitle("cpu-clock", Unit::Events, 0, 98_098_098, true);
        assert!(text.contains("(all new: before is empty)"), "{text}");
        assert!(text.contains("nothing to scale"), "{text}");
        assert!(!text.contains('%'), "{text}");
        let text = subtitle("cpu-clock", Unit::Events, 100, 150, true);
        assert!(text.contains("(+50.0%)"), "{text}");
    }

    fn stacks(lines: &[(&str, u64)]) -> BTreeMap<String, u64> {
        lines.iter().map(|(s, c)| (s.to_string(), *c)).collect()
    }

    /// Stacks of either side appear with both counts; normalizing scales BEFORE.
    #[test]
    fn differential_lines() {
        let before = stacks(&[("a;b", 10), ("a;c", 10)]);
        let after = stacks(&[("a;b", 30), ("a;d", 10)]);
        assert_eq!(
            lines(&before, &after, false),
            ["a;b 10 30", "a;c 10 0", "a;d 0 10"]
        );
        assert_eq!(
            lines(&before, &after, true),
            ["a;b 20 30", "a;c 20 0", "a;d 0 10"]
        );
    }

    /// The graph shows growth in red and reduction in blue.
    #[test]
    fn svg_colours_growth() {
        let before = stacks(&[("a;b", 10), ("a;c", 10)]);
        let after = stacks(&[("a;b", 30), ("a;c", 1)]);
        let mut out = Vec::new();
        write(
            &before,
            &after,
            "cpu-clock",
            Unit::Nanoseconds,
            false,
            &Options::default(),
            &mut out,
        )
        .unwrap();
        let svg = String::from_utf8(out).unwrap();
        assert!(svg.contains("prof diff: cpu-clock"));
        assert!(svg.contains("rgb(255,100,100)"), "growth is red: {svg}");
        assert!(
            svg.contains("rgb(") && svg.contains(",255)"),
            "reduction is blue"
        );
    }
}
