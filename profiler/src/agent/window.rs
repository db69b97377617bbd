//! Windows: symbolized profiles of spans of time, how they add up, and the latest ones kept
//! for `/flamegraph.svg`.
//!
//! In: [`Profile`]s from the symbolizer, one per drain. Out: a [`Span`] per window (or per
//! `/debug/pprof/profile` capture), encoded as pprof by [`Span::encode_pprof`], the one place
//! where the agent's pprof bytes are made.

use std::collections::VecDeque;
use std::io::{self, Write};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::export::flamegraph;
use crate::profile::{EventProfile, Profile};

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
        self.profile.duration = self.duration();
    }

    /// The span as a gzipped pprof file, every event in it.
    pub fn encode_pprof(&self) -> Vec<u8> {
        interim_pprof::encode(self)
    }
}

/// Adds `from`'s stacks, losses and counters to `into` (the same events, in the same order).
pub fn merge(into: &mut Profile, from: &Profile) {
    for (into, from) in into.events.iter_mut().zip(&from.events) {
        for (stack, value) in &from.stacks {
            into.add(stack.clone(), *value);
        }
        into.losses.kernel_samples += from.losses.kernel_samples;
        into.losses.stack_map_full += from.losses.stack_map_full;
        into.losses.no_stack += from.losses.no_stack;
        into.losses.map_full += from.losses.map_full;
        for (reason, samples) in &from.unknown {
            *into.unknown.entry(*reason).or_default() += samples;
        }
    }
    into.forks_untracked += from.forks_untracked;
    into.side_band_lost += from.side_band_lost;
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

/// Writes event `event` of `spans`, added up, as an SVG flame graph; the title says how
/// many seconds it covers.
pub fn flamegraph(
    spans: &[Arc<Span>],
    event: &EventProfile,
    out: &mut dyn Write,
) -> io::Result<()> {
    let mut total = EventProfile::new(event.name.clone(), event.unit);
    let mut seconds = 0.0;
    for span in spans {
        seconds += span.duration().as_secs_f64();
        if let Some(profile) = span.profile.events.iter().find(|e| e.name == event.name) {
            let mut whole = Profile {
                events: vec![total],
                ..Profile::default()
            };
            let part = Profile {
                events: vec![profile.clone()],
                ..Profile::default()
            };
            merge(&mut whole, &part);
            total = whole.events.pop().expect("one event");
        }
    }
    let options = flamegraph::Options {
        title: Some(format!("prof agent: {}, last {seconds:.0} s", event.name)),
    };
    flamegraph::write(&total, &options, out)
}

fn unix_nanos(time: SystemTime) -> i64 {
    time.duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos()
        .try_into()
        .unwrap_or(i64::MAX)
}

/// pprof encoding until the profile model carries labels and locations
/// (`prof::export::pprof`): one location per frame name, the comm as a label.
mod interim_pprof {
    use std::collections::HashMap;
    use std::io::Write as _;

    use flate2::Compression;
    use flate2::write::GzEncoder;
    use prost::Message;

    use super::{Span, unix_nanos};

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Profile {
        #[prost(message, repeated, tag = "1")]
        pub sample_type: Vec<ValueType>,
        #[prost(message, repeated, tag = "2")]
        pub sample: Vec<Sample>,
        #[prost(message, repeated, tag = "4")]
        pub location: Vec<Location>,
        #[prost(message, repeated, tag = "5")]
        pub function: Vec<Function>,
        #[prost(string, repeated, tag = "6")]
        pub string_table: Vec<String>,
        #[prost(int64, tag = "9")]
        pub time_nanos: i64,
        #[prost(int64, tag = "10")]
        pub duration_nanos: i64,
        #[prost(message, optional, tag = "11")]
        pub period_type: Option<ValueType>,
        #[prost(int64, tag = "12")]
        pub period: i64,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ValueType {
        #[prost(int64, tag = "1")]
        pub r#type: i64,
        #[prost(int64, tag = "2")]
        pub unit: i64,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Sample {
        #[prost(uint64, repeated, tag = "1")]
        pub location_id: Vec<u64>,
        #[prost(int64, repeated, tag = "2")]
        pub value: Vec<i64>,
        #[prost(message, repeated, tag = "3")]
        pub label: Vec<Label>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Label {
        #[prost(int64, tag = "1")]
        pub key: i64,
        #[prost(int64, tag = "2")]
        pub str: i64,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Location {
        #[prost(uint64, tag = "1")]
        pub id: u64,
        #[prost(message, repeated, tag = "4")]
        pub line: Vec<Line>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Line {
        #[prost(uint64, tag = "1")]
        pub function_id: u64,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Function {
        #[prost(uint64, tag = "1")]
        pub id: u64,
        #[prost(int64, tag = "2")]
        pub name: i64,
        #[prost(int64, tag = "3")]
        pub system_name: i64,
    }

    #[derive(Default)]
    struct Strings(Vec<String>, HashMap<String, i64>);

    impl Strings {
        fn get(&mut self, text: &str) -> i64 {
            if let Some(&i) = self.1.get(text) {
                return i;
            }
            self.0.push(text.to_owned());
            self.1.insert(text.to_owned(), self.0.len() as i64 - 1);
            self.0.len() as i64 - 1
        }
    }

    pub fn encode(span: &Span) -> Vec<u8> {
        let mut strings = Strings::default();
        strings.get("");
        let mut message = Profile::default();
        let columns = span.profile.events.len() * 2;
        for event in &span.profile.events {
            message.sample_type.push(ValueType {
                r#type: strings.get(&format!("{}/samples", event.name)),
                unit: strings.get("count"),
            });
            message.sample_type.push(ValueType {
                r#type: strings.get(&event.name),
                unit: strings.get(event.unit.as_str()),
            });
        }
        let mut locations: HashMap<String, u64> = HashMap::new();
        for (index, event) in span.profile.events.iter().enumerate() {
            for (frames, value) in &event.stacks {
                let (comm, frames) = frames.split_first().expect("a stack has its comm");
                let mut ids = Vec::new();
                for frame in frames.iter().rev() {
                    let next = locations.len() as u64 + 1;
                    let id = *locations.entry(frame.to_string()).or_insert_with(|| {
                        let name = strings.get(frame);
                        message.function.push(Function {
                            id: next,
                            name,
                            system_name: name,
                        });
                        message.location.push(Location {
                            id: next,
                            line: vec![Line { function_id: next }],
                        });
                        next
                    });
                    ids.push(id);
                }
                let mut values = vec![0; columns];
                values[index * 2] = value.samples as i64;
                values[index * 2 + 1] = value.period as i64;
                message.sample.push(Sample {
                    location_id: ids,
                    value: values,
                    label: vec![Label {
                        key: strings.get("comm"),
                        str: strings.get(comm),
                    }],
                });
            }
        }
        message.time_nanos = unix_nanos(span.start);
        message.duration_nanos = span.duration().as_nanos() as i64;
        message.string_table = strings.0;
        let mut gzip = GzEncoder::new(Vec::new(), Compression::default());
        gzip.write_all(&message.encode_to_vec())
            .expect("writing to memory");
        gzip.finish().expect("writing to memory")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::Unit;
    use crate::profile::{Frame, Value};

    fn profile(frames: &[&str], samples: u64) -> Profile {
        let mut event = EventProfile::new("cpu-clock".into(), Unit::Nanoseconds);
        event.add(
            frames.iter().map(|f| Frame::from(*f)).collect(),
            Value {
                samples,
                period: samples * 1000,
            },
        );
        event.losses.map_full = 1;
        Profile {
            events: vec![event],
            ..Profile::default()
        }
    }

    /// Spans add up stacks and losses, and stretch to the last drain.
    #[test]
    fn absorb_adds_up() {
        let t0 = UNIX_EPOCH + Duration::from_secs(1_000);
        let first = profile(&["app", "main", "hot"], 3);
        let mut span = Span::empty(t0, &first.events);
        span.absorb(&first, t0 + Duration::from_secs(4));
        span.absorb(
            &profile(&["app", "main", "hot"], 2),
            t0 + Duration::from_secs(10),
        );
        assert_eq!(span.duration(), Duration::from_secs(10));
        let event = &span.profile.events[0];
        assert_eq!(event.total().samples, 5);
        assert_eq!(event.losses.map_full, 2);
        assert!(!span.encode_pprof().is_empty());
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
