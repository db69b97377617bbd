//! The engine: the agent's loop over windows.
//!
//! In: a [`Source`] of samples, requests from the HTTP server ([`Request`]), and a stop flag.
//! Out: every window, closed each `window_seconds` and handed to the [`Exporter`], and every
//! capture, handed back to the request that started it. The loop never waits on the network:
//! pushing happens on the pusher's thread, answering on the server's.
//!
//! ```text
//! every window: Source::take ──► Sampler::drain ──► window (and running captures)
//!   window closed ──► Exporter ──► sinks (push queue, directory) and the recent windows
//! ```

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};

use crate::agent::capture::Captures;
use crate::agent::config::AgentConfig;
use crate::agent::metrics::Metrics;
use crate::agent::queue::DropOldest;
use crate::agent::sampler::{Drain, Sampler, Source};
use crate::agent::sinks::Exporter;
use crate::agent::sinks::pyroscope::PushItem;
use crate::agent::window::{Recent, Span};
use crate::profile::EventProfile;

/// What the threads share.
#[derive(Debug)]
pub struct Shared {
    /// The counters behind `/metrics`.
    pub metrics: Mutex<Metrics>,
    /// The latest windows, for `/flamegraph.svg`.
    pub recent: Mutex<Recent>,
    /// The sampled events (names and units), in order.
    pub events: Vec<EventProfile>,
    /// Requests to the sampling loop.
    pub requests: Sender<Request>,
    /// The push queue, if pushing.
    pub queue: Option<Arc<DropOldest<Arc<PushItem>>>>,
    /// Set when the agent is shutting down.
    pub stopping: AtomicBool,
    /// The configuration.
    pub config: AgentConfig,
}

impl Shared {
    /// Shared state for `events` under `config`; returns it with the receiving end of
    /// [`Shared::requests`], for the engine.
    pub fn new(config: AgentConfig, events: Vec<EventProfile>) -> (Arc<Shared>, Receiver<Request>) {
        let (requests, inbox) = crossbeam_channel::unbounded();
        let history = (config.http.max_seconds / config.window_seconds + 1) as usize;
        let mut metrics = Metrics::default();
        for event in &events {
            metrics.event(&event.name);
        }
        let shared = Shared {
            metrics: Mutex::new(metrics),
            recent: Mutex::new(Recent::new(history)),
            events,
            requests,
            queue: config
                .push
                .as_ref()
                .map(|push| Arc::new(DropOldest::new(push.queue))),
            stopping: AtomicBool::new(false),
            config,
        };
        (Arc::new(shared), inbox)
    }

    /// The metrics, locked.
    pub fn metrics(&self) -> MutexGuard<'_, Metrics> {
        self.metrics.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The recent windows, locked.
    pub fn recent(&self) -> MutexGuard<'_, Recent> {
        self.recent.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// What the HTTP server asks of the sampling loop.
#[derive(Debug)]
pub enum Request {
    /// Start capturing everything sampled from now on; answers the capture's id, or `None`
    /// when too many captures run.
    StartCapture(Sender<Option<u64>>),
    /// End a capture and hand over what it captured.
    FinishCapture(u64, Sender<Span>),
}

/// Waits on a reply from the sampling loop; `None` if it is gone (shutting down).
pub fn ask<T>(shared: &Shared, request: impl FnOnce(Sender<T>) -> Request) -> Option<T> {
    let (reply, answer): (Sender<T>, Receiver<T>) = crossbeam_channel::bounded(1);
    shared.requests.send(request(reply)).ok()?;
    answer.recv_timeout(Duration::from_secs(60)).ok()
}

/// A window that just ended.
#[derive(Debug)]
pub struct Closed {
    /// What it holds.
    pub span: Span,
    /// Time spent symbolizing its last drain.
    pub symbolize_time: Duration,
    /// Time spent draining and symbolizing its last drain.
    pub drain_time: Duration,
    /// Processes known after it.
    pub processes: usize,
    /// Times the symbolizer was rebuilt so far.
    pub symbolizer_resets: u64,
}

/// The loop's state.
#[derive(Debug)]
pub struct Engine<S: Source> {
    source: S,
    sampler: Sampler,
    captures: Captures,
    exporter: Exporter,
    window: Span,
    window_length: Duration,
}

impl<S: Source> Engine<S> {
    /// An engine that drains `source` through `sampler` into windows of `window_length`,
    /// each handed to `exporter`; at most `max_captures` captures run at once.
    pub fn new(
        source: S,
        sampler: Sampler,
        exporter: Exporter,
        window_length: Duration,
        max_captures: usize,
    ) -> Engine<S> {
        let window = Span::empty(SystemTime::now(), &sampler.events());
        Engine {
            source,
            sampler,
            captures: Captures::new(max_captures),
            exporter,
            window,
            window_length,
        }
    }

    /// Closes a window every `window_length` and answers `inbox` until `stop` is set.
    pub fn run(&mut self, stop: &AtomicBool, inbox: &Receiver<Request>) -> Result<(), S::Error> {
        let mut deadline = Instant::now() + self.window_length;
        loop {
            if stop.load(Ordering::Relaxed) {
                return Ok(());
            }
            let wait = deadline
                .saturating_duration_since(Instant::now())
                .min(Duration::from_millis(100));
            match inbox.recv_timeout(wait) {
                Ok(request) => self.answer(request)?,
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => unreachable!("`Shared` holds a sender"),
            }
            if Instant::now() >= deadline {
                let closed = self.close_window()?;
                self.exporter.export(closed);
                deadline += self.window_length;
                // After a long stall (a suspended machine), start afresh rather than catch up.
                if deadline < Instant::now() {
                    deadline = Instant::now() + self.window_length;
                }
            }
        }
    }

    /// Stops sampling and exports the window that was running, cut short. Returns the
    /// source, to be released by the caller.
    pub fn finish(mut self) -> Result<S, S::Error> {
        self.source.stop();
        let closed = self.close_window()?;
        self.exporter.export(closed);
        Ok(self.source)
    }

    /// Takes a drain from the source into the window and every capture.
    fn cut(&mut self) -> Result<Drain, S::Error> {
        let taken = self.source.take()?;
        let drain = self.sampler.drain(taken);
        self.window.absorb(&drain.profile, drain.at);
        self.captures.absorb(&drain.profile, drain.at);
        Ok(drain)
    }

    /// Ends the window: drains what is left and returns it, starting the next where it ended.
    fn close_window(&mut self) -> Result<Closed, S::Error> {
        let started = Instant::now();
        let drain = self.cut()?;
        let mut next = Span::empty(self.window.end, &self.sampler.events());
        next.end = self.window.end;
        let finished = std::mem::replace(&mut self.window, next);
        Ok(Closed {
            span: finished,
            symbolize_time: drain.symbolize_time,
            drain_time: started.elapsed(),
            processes: self.sampler.processes(),
            symbolizer_resets: self.sampler.symbolizer_resets(),
        })
    }

    fn answer(&mut self, request: Request) -> Result<(), S::Error> {
        match request {
            Request::StartCapture(reply) => {
                if !self.captures.has_room() {
                    let _ = reply.send(None);
                    return Ok(());
                }
                // What was sampled before the capture belongs to the window only.
                self.cut()?;
                let id = self.captures.start(self.window.end, &self.sampler.events());
                let _ = reply.send(id);
            }
            Request::FinishCapture(id, reply) => {
                self.cut()?;
                if let Some(capture) = self.captures.finish(id) {
                    let _ = reply.send(capture);
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::config::{AgentConfig, DirConfig};
    use crate::agent::sampler::tests::{OwnProcess, marker_samples, own_sampler};
    use crate::export::pprof;

    /// An engine over the fake source, writing windows to a directory.
    fn engine(dir: &std::path::Path) -> (Engine<OwnProcess>, Arc<Shared>, Receiver<Request>) {
        let config = AgentConfig {
            dir: Some(DirConfig::with_path(dir.to_path_buf())),
            ..AgentConfig::default()
        };
        let sampler = own_sampler();
        let (shared, inbox) = Shared::new(config, sampler.events());
        let exporter = Exporter::new(Arc::clone(&shared));
        let source = OwnProcess {
            samples: 2,
            ..OwnProcess::default()
        };
        let engine = Engine::new(source, sampler, exporter, Duration::from_secs(3600), 1);
        (engine, shared, inbox)
    }

    /// A capture gets only the drains after it started; the window gets every drain, and
    /// finishing exports it, cut short, to the directory and the recent windows.
    #[test]
    fn captures_and_windows() {
        let dir = tempfile::tempdir().unwrap();
        let (mut engine, shared, _inbox) = engine(dir.path());
        let (reply, answer) = crossbeam_channel::bounded(1);
        engine.answer(Request::StartCapture(reply)).unwrap();
        let id = answer.recv().unwrap().expect("room for one capture");
        let (reply, answer) = crossbeam_channel::bounded(1);
        engine.answer(Request::StartCapture(reply)).unwrap();
        assert_eq!(answer.recv().unwrap(), None, "the limit is one");
        engine.cut().unwrap();
        let (reply, answer) = crossbeam_channel::bounded(1);
        engine.answer(Request::FinishCapture(id, reply)).unwrap();
        let capture = answer.recv().unwrap();
        // Two drains after the start: the explicit cut and the one at the finish.
        assert_eq!(marker_samples(&capture.profile), 4);

        let source = engine.finish().unwrap();
        assert!(source.stopped);
        let files: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        assert_eq!(files.len(), 1, "{files:?}");
        let written = pprof::decode_bytes(&std::fs::read(&files[0]).unwrap()).unwrap();
        // Every drain but the last, after the stop: start, start (refused: no cut), cut,
        // finish.
        assert_eq!(marker_samples(&written), 6);
        assert_eq!(shared.recent().covering(3600).len(), 1);
        let metrics = shared.metrics();
        assert_eq!((metrics.windows, metrics.files_written), (1, 1));
        assert_eq!(metrics.events[0].1.samples, 6);
    }

    /// The loop returns when the stop flag is set.
    #[test]
    fn run_stops_on_the_flag() {
        let dir = tempfile::tempdir().unwrap();
        let (mut engine, _shared, inbox) = engine(dir.path());
        let stop = AtomicBool::new(true);
        engine.run(&stop, &inbox).unwrap();
        assert_eq!(engine.source.takes, 0);
    }
}
