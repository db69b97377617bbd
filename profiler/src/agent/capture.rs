//! Captures: the spans that `/debug/pprof/profile?seconds=N` requests are collecting.
//!
//! In: a request to start (refused past the limit), every drained [`Profile`] while captures
//! run, and a request to finish. Out: each capture's [`Span`], from the drain at its start
//! to the drain at its end. A capture sees only what was sampled after it started: the
//! caller drains the generation first, so earlier samples go to the window alone.

use std::time::SystemTime;

use crate::agent::window::Span;
use crate::profile::{EventProfile, Profile};

/// The running captures.
#[derive(Debug)]
pub struct Captures {
    running: Vec<(u64, Span)>,
    next_id: u64,
    max: usize,
}

impl Captures {
    /// At most `max` captures at once (at least one).
    pub fn new(max: usize) -> Captures {
        Captures {
            running: Vec::new(),
            next_id: 0,
            max: max.max(1),
        }
    }

    /// Whether another capture may start.
    pub fn has_room(&self) -> bool {
        self.running.len() < self.max
    }

    /// Starts a capture of `events` at `at` (the drain just made); `None` when `max` run.
    pub fn start(&mut self, at: SystemTime, events: &[EventProfile]) -> Option<u64> {
        if !self.has_room() {
            return None;
        }
        let id = self.next_id;
        self.next_id += 1;
        self.running.push((id, Span::empty(at, events)));
        Some(id)
    }

    /// Adds one drain, which ended at `end`, to every running capture.
    pub fn absorb(&mut self, profile: &Profile, end: SystemTime) {
        for (_, span) in &mut self.running {
            span.absorb(profile, end);
        }
    }

    /// Ends capture `id` and returns what it collected; `None` if there is no such capture.
    pub fn finish(&mut self, id: u64) -> Option<Span> {
        let index = self.running.iter().position(|(i, _)| *i == id)?;
        Some(self.running.swap_remove(index).1)
    }

    /// How many run.
    pub fn len(&self) -> usize {
        self.running.len()
    }

    /// Whether none runs.
    pub fn is_empty(&self) -> bool {
        self.running.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::{Duration, UNIX_EPOCH};

    use super::*;
    use crate::events::Unit;
    use crate::profile::{Labels, Value};

    fn drain(samples: u64) -> Profile {
        let mut profile = Profile {
            events: vec![EventProfile::new("cpu-clock".into(), Unit::Nanoseconds)],
            ..Profile::default()
        };
        let labels = Labels {
            pid: Some(1),
            comm: Some(Arc::from("app")),
            extra: Vec::new(),
        };
        let value = Value {
            samples,
            period: samples,
        };
        profile.add_named(0, labels, &["main"], value);
        profile
    }

    /// A capture holds the drains between its start and its finish, and only those; the
    /// limit refuses more until one finishes.
    #[test]
    fn collects_between_start_and_finish() {
        let t0 = UNIX_EPOCH + Duration::from_secs(1_000);
        let events = drain(0).events;
        let mut captures = Captures::new(2);
        let first = captures.start(t0, &events).unwrap();
        captures.absorb(&drain(3), t0 + Duration::from_secs(1));
        let second = captures
            .start(t0 + Duration::from_secs(1), &events)
            .unwrap();
        assert!(captures.start(t0, &events).is_none(), "the limit holds");
        captures.absorb(&drain(5), t0 + Duration::from_secs(2));

        let first = captures.finish(first).unwrap();
        assert_eq!(first.profile.events[0].total().samples, 8);
        assert_eq!(first.duration(), Duration::from_secs(2));
        assert!(captures.has_room());
        let second = captures.finish(second).unwrap();
        assert_eq!(second.profile.events[0].total().samples, 5);
        assert_eq!(second.start, t0 + Duration::from_secs(1));
        assert!(captures.finish(99).is_none() && captures.is_empty());
    }
}
