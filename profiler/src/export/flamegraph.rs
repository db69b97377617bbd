//! SVG flame graphs, rendered by inferno from the folded stacks.
//!
//! Kernel frames carry the `_[k]` suffix, which inferno's `java` palette colours apart from
//! user frames, as in perf-based flame graphs. The subtitle states the event, the samples,
//! the estimated count and what was lost, so a graph never hides its own gaps.

use std::io::{self, Write};

use inferno::flamegraph::color::{MultiPalette, Palette};

use crate::events::Unit;
use crate::export::folded;
use crate::profile::EventProfile;
use crate::text::thousands;

/// How to draw a flame graph.
#[derive(Clone, Debug, Default)]
pub struct Options {
    /// The title; `None` gives "prof: <event>".
    pub title: Option<String>,
}

/// Writes `profile` as an SVG flame graph.
pub fn write(profile: &EventProfile, options: &Options, out: &mut dyn Write) -> io::Result<()> {
    let lines = folded::lines(profile);
    let mut inferno = inferno::flamegraph::Options::default();
    inferno.title = options
        .title
        .clone()
        .unwrap_or_else(|| format!("prof: {}", profile.name));
    inferno.subtitle = Some(subtitle(profile));
    inferno.count_name = profile.unit.as_str().to_owned();
    inferno.colors = Palette::Multi(MultiPalette::Java);
    inferno.hash = true;
    if lines.is_empty() {
        // inferno refuses empty input; an empty recording still gets a graph that says so.
        return inferno::flamegraph::from_lines(&mut inferno, ["[no samples] 1"], out);
    }
    inferno::flamegraph::from_lines(&mut inferno, lines.iter().map(String::as_str), out)
}

/// "cpu-clock · 2,997 samples · 3.00 s · 143 stacks · lost: none".
pub fn subtitle(profile: &EventProfile) -> String {
    let total = profile.total();
    let losses = &profile.losses;
    let lost = losses.stack_map_full + losses.no_stack + losses.map_full;
    let count = match profile.unit {
        Unit::Nanoseconds => format!("{:.2} s", total.period as f64 / 1e9),
        Unit::Events => format!("{} events (est.)", thousands(total.period)),
    };
    let lost = if lost == 0 && profile.unknown_total() == 0 {
        "nothing lost".to_owned()
    } else {
        format!(
            "lost stacks: {} · samples with [unknown] frames: {}",
            thousands(lost),
            thousands(profile.unknown_total())
        )
    };
    format!(
        "{} · {} samples · {} · {} stacks · {}",
        profile.name,
        thousands(total.samples),
        count,
        thousands(profile.stacks.len() as u64),
        lost
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::profile::{Frame, Value};

    /// The SVG carries the title, the subtitle with the totals, and the frames.
    #[test]
    fn svg_has_title_subtitle_and_frames() {
        let mut profile = EventProfile::new("page-faults".into(), Unit::Events);
        let stack = vec![
            Frame::from("app"),
            Frame::from("main"),
            Frame::from("touch_pages"),
        ];
        profile.add(
            stack,
            Value {
                samples: 10,
                period: 1234,
            },
        );
        profile.losses.stack_map_full = 2;
        let mut out = Vec::new();
        write(&profile, &Options::default(), &mut out).unwrap();
        let svg = String::from_utf8(out).unwrap();
        assert!(svg.contains("prof: page-faults"));
        assert!(svg.contains("10 samples"));
        assert!(svg.contains("1,234 events (est.)"));
        assert!(svg.contains("lost stacks: 2"));
        assert!(svg.contains("touch_pages"));
    }

    /// An empty profile still renders.
    #[test]
    fn empty_profile_renders() {
        let profile = EventProfile::new("cpu-clock".into(), Unit::Nanoseconds);
        let mut out = Vec::new();
        write(&profile, &Options::default(), &mut out).unwrap();
        let svg = String::from_utf8(out).unwrap();
        assert!(svg.contains("<svg") && svg.contains("[no samples]"));
    }
}
