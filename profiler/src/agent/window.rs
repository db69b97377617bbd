//! Windows: symbolized profiles of spans of time, how they add up, and the latest ones kept
//! for `/flamegraph.svg`.
//!
//! In: [`Profile`]s from the symbolizer, one per drain. Out: a [`Span`] per window (or per
//! `/debug/pprof/profile` capture), encoded as pprof by [`Span::encode_pprof`], the one place
//! where the agent's pprof bytes are made.

use std::collections::VecDeque;
use std::io::{self, Write};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use crate::export::{flamegraph, pprof};
use crate::profile::{EventProfile, Labels, Location, Profile, Stack, Table};

/// A symbolized profile of the span from `start` to `end`.
#[derive(Clone, Debug)]
pub struct Span {
    /// When the span began.
    pub start: SystemTime,
    /// When it ended.
    pub end: SystemTime,
    /// What was sampled.
    pub profile: Profile,
}

impl Span {
    /// An empty span at `start` for `events` (name and unit).
    pub fn empty(start: SystemTime, events: &[EventProfile]) -> Span {
        Span {
            start,
            end: start,
            profile: Profile {
                events: events
                    .iter()
                    .map(|e| EventProfile::new(e.name.clone(), e.unit))
                    .collect(),
                start: Some(start),
                ..Profile::default()
            },
        }
    }

    /// How long the span lasted.
    pub fn duration(&self) -> Duration {
        self.end.duration_since(self.start).unwrap_or_default()
    }

    /// Adds what was sampled from this span's end until `end` (the next drain) to the span.
    pub fn absorb(&mut self, profile: &Profile, end: SystemTime) {
        merge(&mut self.profile, profile);
        self.end = self.end.max(end);
        self.profile.start = Some(self.start);
        self.profile.duration = self.duration();
    }

    /// The span as a gzipped pprof file, every event in it.
    pub fn encode_pprof(&self) -> Vec<u8> {
        let mut bytes = Vec::new();
        pprof::write(&self.profile, &mut bytes).expect("writing to memory");
        bytes
    }
}

/// Adds `from`'s stacks, losses and counters to `into` (the same events, in the same order):
/// `from`'s mappings, locations and labels are interned into `into`'s tables.
pub fn merge(into: &mut Profile, from: &Profile) {
    let mappings: Vec<u32> = from
        .mappings
        .iter()
        .map(|(_, mapping)| into.mappings.intern(mapping.clone()))
        .collect();
    let locations: Vec<u32> = from
        .locations
        .iter()
        .map(|(_, location)| {
            into.locations.intern(Location {
                mapping: location.mapping.map(|id| mappings[id as usize]),
                ..location.clone()
            })
        })
        .collect();
    let labels: Vec<u32> = from
        .labels
        .iter()
        .map(|(_, labels)| into.labels.intern(labels.clone()))
        .collect();
    for (into, from) in into.events.iter_mut().zip(&from.events) {
        for (stack, value) in &from.stacks {
            let stack = Stack {
                labels: labels[stack.labels as usize],
                locations: stack
                    .locations
                    .iter()
                    .map(|&id| locations[id as usize])
                    .collect(),
            };
            into.add(stack, *value);
        }
        into.losses += from.losses;
        for (reason, samples) in &from.unknown {
            *into.unknown.entry(*reason).or_default() += samples;
        }
    }
    into.forks_untracked += from.forks_untracked;
    into.side_band_lost += from.side_band_lost;
}

/// Replaces every label set of `profile` by `relabel(labels)` (the agent adds the
/// executable, cgroup and container to the pid and comm the symbolizer gives).
pub fn relabel(profile: &mut Profile, mut relabel: impl FnMut(&Labels) -> Labels) {
    let mut table = Table::default();
    let ids: Vec<u32> = profile
        .labels
        .iter()
        .map(|(_, labels)| table.intern(relabel(labels)))
        .collect();
    profile.labels = table;
    if ids.iter().enumerate().all(|(old, &new)| old as u32 == new) {
        return;
    }
    for event in &mut profile.events {
        let stacks = std::mem::take(&mut event.stacks);
        for (stack, value) in stacks {
            event.add(
                Stack {
                    labels: ids[stack.labels as usize],
                    ..stack
                },
                value,
            );
        }
    }
}

/// The latest windows, oldest first.
#[derive(Debug)]
pub struct Recent {
    spans: VecDeque<Arc<Span>>,
    capacity: usize,
}

impl Recent {
    /// Keeps the latest `capacity` windows (at least one).
    pub fn new(capacity: usize) -> Recent {
        Recent {
            spans: VecDeque::new(),
            capacity: capacity.max(1),
        }
    }

    /// Adds the window that just ended, forgetting the oldest beyond the capacity.
    pub fn push(&mut self, span: Arc<Span>) {
        if self.spans.len() == self.capacity {
            self.spans.pop_front();
        }
        self.spans.push_back(span);
    }

    /// The latest windows that together cover at least `seconds` (or all there are),
    /// oldest first.
    pub fn covering(&self, seconds: u64) -> Vec<Arc<Span>> {
        let want = Duration::from_secs(seconds);
        let mut covered = Duration::ZERO;
        let mut chosen = Vec::new();
        for span in self.spans.iter().rev() {
            if covered >= want {
                break;
            }
            covered += span.duration();
            chosen.push(Arc::clone(span));
        }
        chosen.reverse();
        chosen
    }
}

/// Writes event `event` (an index) of `spans`, added up, as an SVG flame graph; the title
/// says how many seconds it covers.
pub fn flamegraph(spans: &[Arc<Span>], event: usize, out: &mut dyn Write) -> io::Result<()> {
    let Some(first) = spans.first() else {
        return Err(io::Error::other("no window has ended yet"));
    };
    let mut total = Span::empty(first.start, &first.profile.events);
    for span in spans {
        total.absorb(&span.profile, span.end);
    }
    let name = &total.profile.events[event].name;
    let options = flamegraph::Options {
        title: Some(format!(
            "prof agent: {name}, {:.0} s",
            total.duration().as_secs_f64()
        )),
        ..flamegraph::Options::default()
    };
    flamegraph::write(&total.profile, event, &options, out)
}

#[cfg(test)]
mod tests {
    use std::time::UNIX_EPOCH;

    use super::*;
    use crate::events::Unit;
    use crate::profile::Value;

    fn profile(pid: u32, frames: &[&str], samples: u64) -> Profile {
        let mut profile = Profile {
            events: vec![EventProfile::new("cpu-clock".into(), Unit::Nanoseconds)],
            ..Profile::default()
        };
        let labels = Labels {
            pid: Some(pid),
            comm: Some(Arc::from("app")),
            extra: Vec::new(),
        };
        let value = Value {
            samples,
            period: samples * 1000,
        };
        profile.add_named(0, labels, frames, value);
        profile.events[0].losses.map_full = 1;
        profile
    }

    /// Spans add up stacks and losses across tables, and stretch to the last drain.
    #[test]
    fn absorb_adds_up() {
        let t0 = UNIX_EPOCH + Duration::from_secs(1_000);
        let first = profile(7, &["main", "hot"], 3);
        let mut span = Span::empty(t0, &first.events);
        span.absorb(&first, t0 + Duration::from_secs(4));
        span.absorb(
            &profile(7, &["other", "main", "hot"], 2),
            t0 + Duration::from_secs(7),
        );
        span.absorb(
            &profile(7, &["main", "hot"], 2),
            t0 + Duration::from_secs(10),
        );
        assert_eq!(span.duration(), Duration::from_secs(10));
        let event = &span.profile.events[0];
        assert_eq!(event.total().samples, 7);
        assert_eq!(event.stacks.len(), 2);
        assert_eq!(event.losses.map_full, 3);
        assert_eq!(span.profile.labels.len(), 1);
        let decoded = pprof::decode_bytes(&span.encode_pprof()).unwrap();
        assert_eq!(decoded.events[0].total().samples, 7);
    }

    /// Relabelling adds labels and keeps stacks apart or together as their labels say.
    #[test]
    fn relabel_adds_labels() {
        let mut both = profile(7, &["main"], 1);
        merge(&mut both, &profile(8, &["main"], 1));
        relabel(&mut both, |labels| Labels {
            extra: vec![(Arc::from("executable"), Arc::from("/bin/app"))],
            ..labels.clone()
        });
        assert_eq!(both.labels.len(), 2);
        assert!(both.labels.iter().all(|(_, l)| l.extra.len() == 1));
        relabel(&mut both, |labels| Labels {
            pid: None,
            ..labels.clone()
        });
        assert_eq!(both.labels.len(), 1);
        assert_eq!(both.events[0].stacks.len(), 1);
        assert_eq!(both.events[0].total().samples, 2);
    }

    /// The latest windows that cover the asked seconds are chosen, oldest first.
    #[test]
    fn recent_windows() {
        let t0 = UNIX_EPOCH + Duration::from_secs(1_000);
        let mut recent = Recent::new(3);
        for i in 0..5u64 {
            let start = t0 + Duration::from_secs(10 * i);
            let mut span = Span::empty(start, &[]);
            span.end = start + Duration::from_secs(10);
            recent.push(Arc::new(span));
        }
        let starts = |spans: Vec<Arc<Span>>| -> Vec<u64> {
            spans
                .iter()
                .map(|s| s.start.duration_since(t0).unwrap().as_secs())
                .collect()
        };
        assert_eq!(starts(recent.covering(10)), [40]);
        assert_eq!(starts(recent.covering(15)), [30, 40]);
        assert_eq!(starts(recent.covering(600)), [20, 30, 40]);
    }
}
