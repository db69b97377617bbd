//! SVG flame graphs, rendered by inferno from the merged call tree of the stacks.
//!
//! Kernel frames carry the `_[k]` suffix, which inferno's `java` palette colours apart from
//! user frames, as in perf-based flame graphs. The subtitle states the event, the samples,
//! the estimated count and what was lost, so a graph never hides its own gaps.
//!
//! Frames narrower than `min_width` pixels are pruned here rather than inside inferno, so
//! the subtitle can say how much was pruned: a graph of 100k unique stacks then stays small
//! enough for a browser. They are pruned on the call tree, built from frame-name ids, so
//! inferno only parses and merges the frames it draws.

use rustc_hash::FxHashMap as HashMap;
use std::borrow::Cow;
use std::collections::BTreeMap;
use std::io::{self, Write};
use std::str::FromStr;

use inferno::flamegraph::color::Palette;

use crate::events::Unit;
use crate::export::names::FrameNames;
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
///
/// The merged call tree is built from the stacks' name ids (see [`FrameNames`]), pruned
/// there, and only the frames that survive reach inferno, as the folded lines of the tree's
/// nodes. The graph is the one [`prune`] and [`render`] draw from
/// [`crate::export::folded::stacks`].
pub fn write(
    profile: &Profile,
    event: usize,
    options: &Options,
    out: &mut dyn Write,
) -> io::Result<()> {
    let events = &profile.events[event];
    let mut inferno = inferno_options(options, &events.name, events.unit)?;
    let mut names = FrameNames::new(profile, options.per_pid);
    let tree = CallTree::build(profile, event, &mut names);
    let (lines, pruned) = tree.prune(&names, options.min_width);
    inferno.subtitle = Some(subtitle(events, pruned));
    render(&mut inferno, &lines, out)
}

/// One frame of the merged call tree.
#[derive(Clone, Copy, Debug)]
struct Node {
    /// The caller's node (the root's is itself).
    parent: u32,
    /// The frame's name id.
    name: u32,
    /// The estimated count of every stack through this frame.
    width: u64,
    /// The estimated count of stacks that end here.
    own: u64,
}

/// Every stack of one event merged by frame name into a tree, node 0 above the root frames;
/// a node always comes after its caller.
#[derive(Debug)]
struct CallTree {
    nodes: Vec<Node>,
}

impl CallTree {
    fn build(profile: &Profile, event: usize, names: &mut FrameNames<'_>) -> CallTree {
        let stacks = &profile.events[event].stacks;
        let mut nodes = vec![Node {
            parent: 0,
            name: u32::MAX,
            width: 0,
            own: 0,
        }];
        let mut children: HashMap<(u32, u32), u32> = HashMap::default();
        children.reserve(stacks.len());
        let mut path = Vec::new();
        for (stack, value) in stacks {
            let count = value.period;
            if count == 0 {
                continue;
            }
            path.clear();
            names.path(stack, &mut path);
            let mut node = 0u32;
            nodes[0].width = nodes[0].width.saturating_add(count);
            for &name in &path {
                let next = u32::try_from(nodes.len()).expect("fewer than 2^32 frames");
                let parent = node;
                node = *children.entry((parent, name)).or_insert(next);
                if node == next {
                    nodes.push(Node {
                        parent,
                        name,
                        width: 0,
                        own: 0,
                    });
                }
                let width = &mut nodes[node as usize].width;
                *width = width.saturating_add(count);
            }
            let own = &mut nodes[node as usize].own;
            *own = own.saturating_add(count);
        }
        CallTree { nodes }
    }

    /// The folded lines of the frames at least `min_width` pixels wide, and what was left
    /// out, as [`prune`] gives them: a frame too narrow goes with everything above it, and
    /// its caller shows its count as self time.
    fn prune(&self, names: &FrameNames<'_>, min_width: f64) -> (Vec<String>, Pruned) {
        let nodes = &self.nodes;
        let threshold = min_width / (IMAGE_WIDTH - 2.0 * XPAD) * nodes[0].width as f64;
        let mut pruned = Pruned::default();
        let mut counts: Vec<u64> = nodes.iter().map(|node| node.own).collect();
        let mut kept = vec![true; nodes.len()];
        if threshold > 0.0 {
            for (id, node) in nodes.iter().enumerate().skip(1) {
                let parent = node.parent as usize;
                if !kept[parent] {
                    kept[id] = false;
                    pruned.frames += 1;
                } else if (node.width as f64) < threshold {
                    kept[id] = false;
                    pruned.frames += 1;
                    pruned.count += node.width;
                    if parent != 0 {
                        counts[parent] += node.width;
                    }
                }
            }
        }
        let mut path = Vec::new();
        let mut lines = Vec::new();
        for id in 1..nodes.len() {
            if !kept[id] || counts[id] == 0 {
                continue;
            }
            path.clear();
            let mut node = id;
            while node != 0 {
                path.push(nodes[node].name);
                node = nodes[node].parent as usize;
            }
            path.reverse();
            let mut line = names.join(&path);
            line.push(' ');
            line.push_str(&counts[id].to_string());
            lines.push(line);
        }
        lines.sort_unstable();
        (lines, pruned)
    }
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
    use crate::export::folded;
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

    /// The graph as it was drawn before the call tree: folded text, pruned, rendered.
    fn through_folded_text(profile: &Profile, options: &Options) -> String {
        let stacks = folded::stacks(profile, 0, options.per_pid);
        let event = &profile.events[0];
        let mut inferno = inferno_options(options, &event.name, event.unit).unwrap();
        let (lines, pruned) = prune(&stacks, options.min_width);
        inferno.subtitle = Some(subtitle(event, pruned));
        let mut out = Vec::new();
        render(&mut inferno, &lines, &mut out).unwrap();
        String::from_utf8(out).unwrap()
    }

    /// The SVG drawn from the call tree is the one drawn through folded text, byte for
    /// byte: pruned or not, reversed, per pid, in another palette.
    #[test]
    fn call_tree_draws_the_folded_graph() {
        let profile = crate::export::names::fixtures::tricky();
        let cases = [
            Options::default(),
            Options {
                per_pid: true,
                ..Options::default()
            },
            Options {
                reverse: true,
                colors: "hot".into(),
                ..Options::default()
            },
            Options {
                min_width: 0.0,
                ..Options::default()
            },
            Options {
                min_width: 30.0,
                per_pid: true,
                ..Options::default()
            },
        ];
        for options in cases {
            let mut out = Vec::new();
            write(&profile, 0, &options, &mut out).unwrap();
            let svg = String::from_utf8(out).unwrap();
            assert_eq!(svg, through_folded_text(&profile, &options), "{options:?}");
            if options.min_width == 0.1 {
                assert!(svg.contains("frames too narrow to draw pruned"), "{svg}");
            }
        }
    }

    proptest::proptest! {
        /// On random stacks, the pruned call tree gives the lines and pruned counts of
        /// [`prune`] on the folded stacks.
        #[test]
        fn call_tree_prunes_as_folded_text(
            stacks_in in proptest::collection::vec(
                (proptest::collection::vec(0..5usize, 0..6), 0..3u32, 0..2000u64),
                1..60,
            ),
            min_width in proptest::prop_oneof![proptest::strategy::Just(0.0), 0.1..200.0f64],
        ) {
            const NAMES: [&str; 5] = ["a", "a.b", "a-", "b", "c_[k]"];
            let profile = crate::export::names::fixtures::random(Unit::Events, &NAMES, &stacks_in);
            let mut names = FrameNames::new(&profile, false);
            let tree = CallTree::build(&profile, 0, &mut names);
            let (lines, pruned) = tree.prune(&names, min_width);
            let (mut expected, expected_pruned) =
                prune(&folded::stacks(&profile, 0, false), min_width);
            expected.sort_unstable();
            proptest::prop_assert_eq!(lines, expected);
            proptest::prop_assert_eq!(pruned, expected_pruned);
        }
    }
}
