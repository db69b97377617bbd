//! Ratio flame graphs: one event's stacks drawn with another event's colours.
//!
//! Frame widths follow the denominator event (e.g. `cycles`, or `cpu-clock` here). Each
//! function's colour says how its numerator:denominator ratio, over every stack it appears
//! in, compares with the whole profile's ratio: red where it has more numerator events per
//! denominator unit than the profile (say, more cache misses per cycle), blue where it has
//! fewer, white where it is typical. Both events come from one recording, through one BPF
//! program, so their stacks line up.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::{self, Write};

use inferno::flamegraph::color::{Color, PaletteMap};

use crate::export::flamegraph::{self, Options};
use crate::export::folded;
use crate::profile::Profile;
use crate::text::thousands;

/// How far a ratio may be from the profile's before its colour saturates: 8× either way.
const SATURATION_LOG2: f64 = 3.0;

/// Each function's numerator and denominator, over every stack it appears in.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FunctionRatio {
    /// The numerator event's estimated count.
    pub numerator: u64,
    /// The denominator event's.
    pub denominator: u64,
}

/// Every function's counts of both events, counting each function once per stack.
pub fn function_ratios(
    numerator: &BTreeMap<String, u64>,
    denominator: &BTreeMap<String, u64>,
) -> HashMap<String, FunctionRatio> {
    let mut ratios: HashMap<String, FunctionRatio> = HashMap::new();
    let mut seen: HashSet<&str> = HashSet::new();
    for (stacks, numerator_side) in [(numerator, true), (denominator, false)] {
        for (stack, &count) in stacks {
            seen.clear();
            for frame in stack.split(';') {
                if seen.insert(frame) {
                    let entry = ratios.entry(frame.to_owned()).or_default();
                    if numerator_side {
                        entry.numerator += count;
                    } else {
                        entry.denominator += count;
                    }
                }
            }
        }
    }
    ratios
}

/// The colour for a function whose ratio is `relative` times the profile's.
pub fn color(relative: f64) -> Color {
    let log = if relative > 0.0 {
        relative.log2().clamp(-SATURATION_LOG2, SATURATION_LOG2)
    } else {
        -SATURATION_LOG2
    };
    let fade = (250.0 - 150.0 * log.abs() / SATURATION_LOG2) as u8;
    if log >= 0.0 {
        Color {
            r: 250,
            g: fade,
            b: fade,
        }
    } else {
        Color {
            r: fade,
            g: fade,
            b: 250,
        }
    }
}

/// Writes the ratio flame graph of events `numerator` / `denominator` of `profile`.
pub fn write(
    profile: &Profile,
    numerator: usize,
    denominator: usize,
    options: &Options,
    out: &mut dyn Write,
) -> io::Result<()> {
    let num_stacks = folded::stacks(profile, numerator, options.per_pid);
    let den_stacks = folded::stacks(profile, denominator, options.per_pid);
    let (num_event, den_event) = (&profile.events[numerator], &profile.events[denominator]);
    let num_total: u64 = num_stacks.values().sum();
    let den_total: u64 = den_stacks.values().sum();
    let overall = num_total as f64 / den_total.max(1) as f64;

    let ratios = function_ratios(&num_stacks, &den_stacks);
    let mut palette = PaletteMap::default();
    for (function, ratio) in &ratios {
        if ratio.denominator == 0 {
            continue;
        }
        let relative = if overall > 0.0 {
            ratio.numerator as f64 / ratio.denominator as f64 / overall
        } else {
            1.0
        };
        palette.insert(function, color(relative));
    }
    // inferno's root frame ("all", unnamed inside) holds everything: the profile's ratio.
    palette.insert("", color(1.0));
    // Numerator counts in stacks the denominator never sampled cannot be drawn.
    let unseen: u64 = num_stacks
        .iter()
        .filter(|(stack, _)| !den_stacks.contains_key(*stack))
        .map(|(_, count)| count)
        .sum();

    let title = format!("prof: {} per {}", num_event.name, den_event.name);
    let options = Options {
        title: Some(options.title.clone().unwrap_or(title)),
        ..options.clone()
    };
    let mut inferno = flamegraph::inferno_options(&options, &den_event.name, den_event.unit)?;
    let (lines, pruned) = flamegraph::prune(&den_stacks, options.min_width);
    let mut subtitle = format!(
        "width: {} · colour: {} per {} vs the profile's {:.3e} (red: more, blue: fewer)",
        den_event.name,
        num_event.name,
        den_event.unit.as_str().trim_end_matches('s'),
        overall,
    );
    if unseen > 0 {
        subtitle.push_str(&format!(
            " · {:.1}% of {} not drawn (no {} there)",
            100.0 * unseen as f64 / num_total.max(1) as f64,
            num_event.name,
            den_event.name
        ));
    }
    if pruned.frames > 0 {
        subtitle.push_str(&format!(
            " · {} narrow frames pruned",
            thousands(pruned.frames)
        ));
    }
    inferno.subtitle = Some(subtitle);
    inferno.palette_map = Some(&mut palette);
    flamegraph::render(&mut inferno, &lines, out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::Unit;
    use crate::profile::{EventProfile, Labels, Value};

    /// Functions count once per stack on each side; colours go red above the profile's
    /// ratio, blue below, and saturate.
    #[test]
    fn ratios_and_colours() {
        let stacks = |lines: &[(&str, u64)]| {
            lines
                .iter()
                .map(|(s, c)| (s.to_string(), *c))
                .collect::<BTreeMap<_, _>>()
        };
        let num = stacks(&[("a;b", 90), ("a;c", 10)]);
        let den = stacks(&[("a;b", 50), ("a;c", 50), ("a;a", 10)]);
        let ratios = function_ratios(&num, &den);
        assert_eq!(
            ratios["a"],
            FunctionRatio {
                numerator: 100,
                denominator: 110
            }
        );
        assert_eq!(ratios["b"].numerator, 90);
        assert_eq!(
            color(1.0),
            Color {
                r: 250,
                g: 250,
                b: 250
            }
        );
        assert!(color(4.0).g < 250 && color(4.0).r == 250);
        assert!(color(0.25).r < 250 && color(0.25).b == 250);
        assert_eq!(color(1000.0), color(8.0));
        assert_eq!(color(0.0), color(1.0 / 8.0));
    }

    /// The SVG is as wide as the denominator and coloured by the ratio.
    #[test]
    fn svg_colours_hot_ratio_red() {
        let mut profile = Profile {
            events: vec![
                EventProfile::new("page-faults".into(), Unit::Events),
                EventProfile::new("cpu-clock".into(), Unit::Nanoseconds),
            ],
            ..Profile::default()
        };
        let value = |period| Value { samples: 1, period };
        profile.add_named(0, Labels::default(), &["main", "touch"], value(1000));
        profile.add_named(1, Labels::default(), &["main", "touch"], value(1_000));
        profile.add_named(1, Labels::default(), &["main", "spin"], value(9_000));
        let mut out = Vec::new();
        write(&profile, 0, 1, &Options::default(), &mut out).unwrap();
        let svg = String::from_utf8(out).unwrap();
        assert!(svg.contains("prof: page-faults per cpu-clock"), "{svg}");
        // touch has 10× the profile's faults per ns: saturated red; spin has none: blue.
        assert!(svg.contains("rgb(250,100,100)"), "{svg}");
        assert!(svg.contains("rgb(100,100,250)"), "{svg}");
    }
}
