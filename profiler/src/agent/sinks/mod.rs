//! Where finished windows go.
//!
//! In: a [`Closed`] window. Out: its pprof bytes, encoded once, handed to every [`Sink`]
//! configured (the [Pyroscope push queue](pyroscope) and the [directory](dir)), the window
//! itself kept in the recent windows for `/flamegraph.svg`, and the window's counters added
//! to the metrics.

pub mod dir;
pub mod pyroscope;

use std::sync::Arc;
use std::time::Instant;

use crate::agent::engine::{Closed, Shared};
use crate::agent::window::Span;

/// One destination of finished windows.
pub trait Sink: Send + std::fmt::Debug {
    /// Takes the window `span`, whose pprof encoding is `pprof`, and counts the outcome in
    /// `shared`'s metrics. Never blocks on the network.
    fn export(&mut self, span: &Span, pprof: &Arc<[u8]>, shared: &Shared);
}

/// Hands finished windows to every sink.
#[derive(Debug)]
pub struct Exporter {
    shared: Arc<Shared>,
    sinks: Vec<Box<dyn Sink>>,
}

impl Exporter {
    /// An exporter with the sinks that `shared`'s configuration asks for: the push queue
    /// (if `[push]`) and the directory (if `[dir]`).
    pub fn new(shared: Arc<Shared>) -> Exporter {
        let mut sinks: Vec<Box<dyn Sink>> = Vec::new();
        if let Some(dir) = &shared.config.dir {
            sinks.push(Box::new(dir::DirSink::new(dir)));
        }
        if let (Some(push), Some(queue)) = (&shared.config.push, &shared.queue) {
            sinks.push(Box::new(pyroscope::PushSink::new(
                push,
                Arc::clone(queue),
                shared.config.frequency,
            )));
        }
        Exporter { shared, sinks }
    }

    /// The shared state the exporter counts into.
    pub fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// Exports one window everywhere.
    pub fn export(&mut self, closed: Closed) {
        let started = Instant::now();
        let span = Arc::new(closed.span);
        let pprof: Arc<[u8]> = span.encode_pprof().into();
        for sink in &mut self.sinks {
            sink.export(&span, &pprof, &self.shared);
        }
        self.shared.recent().push(Arc::clone(&span));

        let mut metrics = self.shared.metrics();
        metrics.windows += 1;
        let window_seconds = (closed.drain_time + started.elapsed()).as_secs_f64();
        metrics.last_window_seconds = window_seconds;
        metrics.window_seconds_total += window_seconds;
        metrics.last_symbolize_seconds = closed.symbolize_time.as_secs_f64();
        metrics.symbolize_seconds_total += closed.symbolize_time.as_secs_f64();
        metrics.side_band_lost += span.profile.side_band_lost;
        metrics.processes = closed.processes as u64;
        metrics.symbolizer_resets = closed.symbolizer_resets;
        metrics.unwind_tables = closed.unwind_tables;
        for event in &span.profile.events {
            let m = metrics.event(&event.name);
            m.samples += event.losses.kernel_samples;
            m.lost += event.losses;
            for (reason, samples) in &event.unknown {
                *m.unknown.entry(*reason).or_default() += samples;
            }
            m.unique_stacks = event.stacks.len() as u64;
        }
        drop(metrics);
        tracing::debug!(
            seconds = span.duration().as_secs_f64(),
            samples = span.profile.events.iter().map(|e| e.total().samples).sum::<u64>(),
            bytes = pprof.len(),
            elapsed = ?started.elapsed(),
            "window exported"
        );
    }
}
