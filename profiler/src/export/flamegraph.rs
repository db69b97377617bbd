//! SVG flame graphs, rendered by inferno from the folded stacks.
//!
//! Kernel frames carry the `_[k]` suffix, which inferno's `java` palette colours apart from
//! user frames, as in perf-based flame graphs. The subtitle states the event, the samples,
//! the estimated count and what was lost, so a graph never hides its own gaps.
//!
//! Frames narrower than `min_width` pixels are pruned here rather than inside inferno, so
//! the subtitle can say how much was pruned: a graph of 100k unique stacks then stays small
//! enough for a browser.

use rustc_hash::FxHashMap as HashMap;
use std::borrow::Cow;
use std::collections::BTreeMap;
use std::io::{self, Write};
use std::str::FromStr;

use inferno::flamegraph::color::Palette;

use crate::events::Unit;
use crate::export::folded;
use crate::profile::{EventProfile, Profile};
use crate::text::thousands;

/// The image width inferno draws at, and its side padding, in pixels.
const IMAGE_WIDTH: f64 = 1200.0;
const XPAD: f64 = 10.0;

/// inferno's palettes, by the names `--colors` takes.
pub const PALETTES: &[&str] = &[
    "java", "hot", "mem", "io", "wakeup", "js", "perl", "python", "rust", "red", "green", "blue",
    "aqua", "yellow", "purple", "orange",
];

/// How to draw a flame graph.
#[derive(Clone, Debug)]
pub struct Options {
    /// The title; `None` gives "prof: <event>".
    pub title: Option<String>,
    /// inferno's palette, one of [`PALETTES`].
    pub colors: String,
    /// An icicle graph of reversed stacks: leaf functions at the top, their callers below.
    pub reverse: bool,
    /// Frames narrower than this many pixels (of 1200) are pruned.
    pub min_width: f64,
    /// Split the root frame by process: `comm (pid)`.
    pub per_pid: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            title: None,
            colors: "java".to_owned(),
            reverse: false,
            min_width: 0.1,
            per_pid: false,
        }
    }
}

/// Checks a palette name.
pub fn palette(name: &str) -> Result<Palette, String> {
    Palette::from_str(name).map_err(|_| {
        format!(
            "unknown palette `{name}` for --colors; use one of: {}",
            PALETTES.join(", ")
        )
    })
}

/// What pruning left out.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Pruned {
    /// Frames too narrow to draw.
    pub frames: u64,
    /// The estimated count below them.
    pub count: u64,
}

/// Writes event `event` of `profile` as an SVG flame graph.
pub fn write(
    profile: &Profile,
    event: usize,
    options: &Options,
    out: &mut dyn Write,
) -> io::Result<()> {
    let stacks = folded::stacks(profile, event, options.per_pid);
    let events = &profile.events[event];
    let mut inferno = inferno_options(options, &events.name, events.unit)?;
    let (lines, pruned) = prune(&stacks, options.min_width);
    inferno.subtitle = Some(subtitle(events, pruned));
    render(&mut inferno, &lines, out)
}

/// inferno's options for `options`, titled after `event`.
pub fn inferno_options<'a>(
    options: &Options,
    event: &str,
    unit: Unit,
) -> io::Result<inferno::flamegraph::Options<'a>> {
    let mut inferno = inferno::flamegraph::Options::default();
    inferno.title = options
        .title
        .clone()
        .unwrap_or_else(|| format!("prof: {event}"));
    inferno.count_name = unit.as_str().to_owned();
    inferno.colors = palette(&options.colors).map_err(io::Error::other)?;
    inferno.hash = true;
    inferno.reverse_stack_order = options.reverse;
    if options.reverse {
        inferno.direction = inferno::flamegraph::Direction::Inverted;
    }
    // Pruning happened before; inferno's own would hide it from the subtitle.
    inferno.min_width = 0.0;
    Ok(inferno)
}

/// Renders folded `lines` (sorted) with inferno; an empty profile gets a graph that says
/// so, as inferno refuses empty input.
pub fn render(
    inferno: &mut inferno::flamegraph::Options<'_>,
    lines: &[String],
    out: &mut dyn Write,
) -> io::Result<()> {
    if lines.is_empty() {
        return inferno::flamegraph::from_lines(inferno, ["[no samples] 1"], out);
    }
    inferno::flamegraph::from_lines(inferno, lines.iter().map(String::as_str), out)
}

/// Drops the frames narrower than `min_width` pixels from `stacks`, as inferno would, and
/// says how many and how much they held. A stack is cut at its first frame that is too
/// narrow; the frame below then shows the cut part as self time, as inferno's gap would.
/// Returns folded lines, sorted.
pub fn prune(stacks: &BTreeMap<String, u64>, min_width: f64) -> (Vec<String>, Pruned) {
    let total: u64 = stacks.values().sum();
    let threshold = min_width / (IMAGE_WIDTH - 2.0 * XPAD) * total as f64;
    let mut pruned = Pruned::default();
    if threshold <= 0.0 {
        let lines = stacks.iter().map(|(s, c)| format!("{s} {c}")).collect();
        return (lines, pruned);
    }
    // The width of every frame: a trie over (parent node, frame name).
    let mut nodes: HashMap<(usize, &str), usize> = HashMap::default();
    let mut widths: Vec<u64> = vec![total];
    let mut paths: Vec<Vec<usize>> = Vec::with_capacity(stacks.len());
    for (stack, &count) in stacks {
        let mut node = 0;
        let mut path = Vec::new();
        for frame in stack.split(';') {
            let next = widths.len();
            node = *nodes.entry((node, frame)).or_insert(next);
            if node == next {
                widths.push(0);
            }
            widths[node] += count;
            path.push(node);
        }
        paths.push(path);
    }
    let mut counted = vec![false; widths.len()];
    let mut kept: Vec<(Cow<'_, str>, u64)> = Vec::with_capacity(stacks.len());
    for ((stack, &count), path) in stacks.iter().zip(&paths) {
        let cut = path
            .iter()
            .position(|&node| (widths[node] as f64) < threshold);
        let Some(cut) = cut else {
            kept.push((Cow::Borrowed(stack), count));
            continue;
        };
        pruned.count += count;
        for &node in &path[cut..] {
            if !counted[node] {
                counted[node] = true;
                pruned.frames += 1;
            }
        }
        if cut > 0 {
            let prefix: Vec<&str> = stack.split(';').take(cut).collect();
            kept.push((Cow::Owned(prefix.join(";")), count));
        }
    }
    // Cut stacks may now equal others, and fall out of order: sort once, merge neighbours.
    kept.sort_unstable_by(|a, b| a.0.cmp(&b.0));
    let mut lines: Vec<String> = Vec::with_capacity(kept.len());
    let mut last: Option<(Cow<'_, str>, u64)> = None;
    for (stack, count) in kept {
        match &mut last {
            Some((previous, total)) if *previous == stack => *total += count,
            _ => {
                if let Some((stack, total)) = last.replace((stack, count)) {
                    lines.push(format!("{stack} {total}"));
                }
            }
        }
    }
    if let Some((stack, total)) = last {
        lines.push(format!("{stack} {total}"));
    }
    (lines, pruned)
}

/// "cpu-clock · 2,997 samples · 3.00 s · 143 stacks · lost: none".
pub fn subtitle(profile: &EventProfile, pruned: Pruned) -> String {
    let total = profile.total();
    let count = match profile.unit {
        Unit::Events => format!("{} events (est.)", thousands(total.period)),
        unit => unit.describe(total.period),
    };
    let lost = if profile.losses.lost() == 0 && profile.unknown_total() == 0 {
        "nothing lost".to_owned()
    } else {
        format!(
            "lost stacks: {} · samples with [unknown] frames: {}",
            thousands(profile.losses.lost()),
            thousands(profile.unknown_total())
        )
    };
    let mut text = format!(
        "{} · {} samples · {} · {} stacks · {}",
        profile.name,
        thousands(total.samples),
        count,
        thousands(profile.stacks.len() as u64),
        lost
    );
    let cut_short = profile.losses.unwind.total();
    if cut_short > 0 {
        let reasons: Vec<String> = profile
            .losses
            .unwind
            .iter()
            .filter(|&(_, n)| n > 0)
            .map(|(reason, n)| format!("{} {}", thousands(n), reason.describe()))
            .collect();
        text.push_str(&format!(" · user stacks cut short: {}", reasons.join(", ")));
    }
    if pruned.frames > 0 {
        text.push_str(&format!(
            " · {} frames too narrow to draw pruned ({:.2}%)",
            thousands(pruned.frames),
            100.0 * pruned.count as f64 / total.period.max(1) as f64
        ));
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::profile::{Labels, Value};

    fn page_faults() -> Profile {
        Profile {
            events: vec![EventProfile::new("page-faults".into(), Unit::Events)],
            ..Profile::default()
        }
    }

    /// The SVG carries the title, the subtitle with the totals, and the frames.
    #[test]
    fn svg_has_title_subtitle_and_frames() {
        let mut profile = page_faults();
        let app = Labels {
            comm: Some("app".into()),
            ..Labels::default()
        };
        let value = Value {
            samples: 10,
            period: 1234,
        };
        profile.add_named(0, app, &["main", "touch_pages"], value);
        profile.events[0].losses.stack_map_full = 2;
        let mut out = Vec::new();
        write(&profile, 0, &Options::default(), &mut out).unwrap();
        let svg = String::from_utf8(out).unwrap();
        assert!(svg.contains("prof: page-faults"));
        assert!(svg.contains("10 samples"));
        assert!(svg.contains("1,234 events (est.)"));
        assert!(svg.contains("lost stacks: 2"));
        assert!(!svg.contains("cut short"), "no unwind stops, no mention");
        profile.events[0]
            .losses
            .unwind
            .set(crate::profile::UnwindStop::NotLoaded, 4);
        assert!(svg.contains("touch_pages"));
        let mut out = Vec::new();
        write(&profile, 0, &Options::default(), &mut out).unwrap();
        let svg = String::from_utf8(out).unwrap();
        assert!(
            svg.contains("user stacks cut short: 4 unwind table not loaded yet"),
            "{svg}"
        );
    }

    /// An empty profile still renders.
    #[test]
    fn empty_profile_renders() {
        let profile = Profile {
            events: vec![EventProfile::new("cpu-clock".into(), Unit::Nanoseconds)],
            ..Profile::default()
        };
        let mut out = Vec::new();
        write(&profile, 0, &Options::default(), &mut out).unwrap();
        let svg = String::from_utf8(out).unwrap();
        assert!(svg.contains("<svg") && svg.contains("[no samples]"));
    }

    /// Narrow frames are cut off their stacks, counted once each, and their count is kept
    /// by the frame below.
    #[test]
    fn pruning_cuts_narrow_frames() {
        let mut stacks = BTreeMap::new();
        stacks.insert("a;b".to_owned(), 1_000_000);
        stacks.insert("a;c;d".to_owned(), 1);
        stacks.insert("a;c;e".to_owned(), 1);
        stacks.insert("f".to_owned(), 1);
        let (lines, pruned) = prune(&stacks, 0.1);
        assert_eq!(lines, ["a 2", "a;b 1000000"]);
        assert_eq!(
            pruned,
            Pruned {
                frames: 4,
                count: 3
            }
        );
        let (all, none) = prune(&stacks, 0.0);
        assert_eq!(all.len(), 4);
        assert_eq!(none, Pruned::default());
    }

    /// Unknown palettes are refused with the list of known ones.
    #[test]
    fn palettes() {
        for name in PALETTES {
            assert!(palette(name).is_ok(), "{name}");
        }
        let err = palette("plaid").unwrap_err();
        assert!(err.contains("java, hot"), "{err}");
    }
}
