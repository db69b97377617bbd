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

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use tokio::sync::{oneshot, watch};

use crate::agent::capture::Captures;
use crate::agent::config::AgentConfig;
use crate::agent::metrics::Metrics;
use crate::agent::queue::DropOldest;
use crate::agent::sampler::{Drain, Sampler, Source};
use crate::agent::sinks::Exporter;
use crate::agent::sinks::pyroscope::PushItem;
use crate::agent::window::{Recent, Span};
use crate::profile::{EventProfile, Profile};

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
    /// Becomes true when the agent starts shutting down.
    shutdown: watch::Sender<bool>,
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
            shutdown: watch::Sender::new(false),
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

    /// Tells the server (and the requests waiting in it) that the agent is shutting down.
    pub fn begin_shutdown(&self) {
        self.shutdown.send_replace(true);
    }

    /// Whether the agent is shutting down.
    pub fn is_stopping(&self) -> bool {
        *self.shutdown.borrow()
    }

    /// A receiver that sees the shutdown.
    pub fn shutdown_signal(&self) -> watch::Receiver<bool> {
        self.shutdown.subscribe()
    }
}

/// What the HTTP server asks of the sampling loop. Replies go through oneshot channels, which
/// the loop fills without waiting and the server awaits without a thread.
#[derive(Debug)]
pub enum Request {
    /// Start capturing everything sampled from now on; answers the capture's id, or `None`
    /// when too many captures run or the agent is shutting down.
    StartCapture(oneshot::Sender<Option<u64>>),
    /// End a capture and hand over what it captured.
    FinishCapture(u64, oneshot::Sender<Span>),
    /// Name these user-space addresses, for `/debug/pprof/symbol`.
    Symbolize(Vec<u64>, oneshot::Sender<Vec<(u64, Arc<str>)>>),
}

/// Finished captures whose addresses `/debug/pprof/symbol` still answers for: the reader of
/// a profile asks right after fetching it.
const SERVED_KEPT: usize = 8;

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
    /// What the unwind tables held at its end.
    pub unwind_tables: Option<crate::profile::UnwindTables>,
}

/// The loop's state.
#[derive(Debug)]
pub struct Engine<S: Source> {
    source: S,
    sampler: Sampler,
    captures: Captures,
    exporter: Exporter,
    shared: Arc<Shared>,
    window: Span,
    window_length: Duration,
    /// The latest finished captures, for the symbol endpoint.
    served: VecDeque<Arc<Span>>,
    /// Set once the source is stopped: requests are answered without draining.
    stopped: bool,
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
        let shared = Arc::clone(exporter.shared());
        Engine {
            source,
            sampler,
            captures: Captures::new(max_captures),
            exporter,
            shared,
            window,
            window_length,
            served: VecDeque::new(),
            stopped: false,
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

    /// Shuts down: tells the server, stops sampling and exports the window that was
    /// running, cut short, with every running capture given its last drain. Then answers
    /// the server's last requests (captures finish with what they hold, new ones are
    /// refused) until `server_done` says it has closed its connections, or `grace` has
    /// passed. Returns the source, to be released by the caller.
    pub fn finish(
        mut self,
        inbox: &Receiver<Request>,
        server_done: impl Fn() -> bool,
        grace: Duration,
    ) -> Result<S, S::Error> {
        self.shared.begin_shutdown();
        self.source.stop();
        let closed = self.close_window()?;
        self.stopped = true;
        self.exporter.export(closed);
        let deadline = Instant::now() + grace;
        while !server_done() && Instant::now() < deadline {
            match inbox.recv_timeout(Duration::from_millis(20)) {
                Ok(request) => self.answer(request)?,
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => break,
            }
        }
        // Requests that arrived too late get no answer: their senders are dropped here,
        // and the server answers 503.
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
            unwind_tables: drain.unwind_tables,
        })
    }

    fn answer(&mut self, request: Request) -> Result<(), S::Error> {
        match request {
            Request::StartCapture(reply) => {
                if self.stopped || !self.captures.has_room() {
                    let _ = reply.send(None);
                    return Ok(());
                }
                // What was sampled before the capture belongs to the window only.
                self.cut()?;
                let id = self.captures.start(self.window.end, &self.sampler.events());
                tracing::debug!(?id, "capture started");
                let _ = reply.send(id);
            }
            Request::FinishCapture(id, reply) => {
                if !self.stopped {
                    self.cut()?;
                }
                if let Some(capture) = self.captures.finish(id) {
                    let capture = Arc::new(capture);
                    if self.served.len() == SERVED_KEPT {
                        self.served.pop_front();
                    }
                    self.served.push_back(Arc::clone(&capture));
                    let _ = reply.send(Arc::unwrap_or_clone(capture));
                }
            }
            Request::Symbolize(addresses, reply) => {
                let recent = self.shared.recent().covering(u64::MAX);
                let mut seen: Vec<&Profile> = Vec::new();
                seen.extend(self.served.iter().rev().map(|span| &span.profile));
                seen.push(&self.window.profile);
                seen.extend(recent.iter().rev().map(|span| &span.profile));
                let _ = reply.send(self.sampler.names(&addresses, &seen));
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
        let (mut engine, shared, inbox) = engine(dir.path());
        let (reply, answer) = oneshot::channel();
        engine.answer(Request::StartCapture(reply)).unwrap();
        let id = answer
            .blocking_recv()
            .unwrap()
            .expect("room for one capture");
        let (reply, answer) = oneshot::channel();
        engine.answer(Request::StartCapture(reply)).unwrap();
        assert_eq!(answer.blocking_recv().unwrap(), None, "the limit is one");
        engine.cut().unwrap();
        let (reply, answer) = oneshot::channel();
        engine.answer(Request::FinishCapture(id, reply)).unwrap();
        let capture = answer.blocking_recv().unwrap();
        // Two drains after the start: the explicit cut and the one at the finish.
        assert_eq!(marker_samples(&capture.profile), 4);

        // The served capture's addresses can be named.
        let ip = crate::agent::sampler::tests::sampler_marker_function as *const () as u64;
        let (reply, answer) = oneshot::channel();
        engine.answer(Request::Symbolize(vec![ip], reply)).unwrap();
        let names = answer.blocking_recv().unwrap();
        assert!(
            names.len() == 1 && names[0].1.contains("sampler_marker_function"),
            "{names:?}"
        );

        let source = engine.finish(&inbox, || true, Duration::ZERO).unwrap();
        assert!(source.stopped);
        assert!(shared.is_stopping());
        let files: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        assert_eq!(files.len(), 1, "{files:?}");
        let written = pprof::decode_bytes(&std::fs::read(&files[0]).unwrap()).unwrap();
        // Every drain: start, start (refused: no cut), cut, finish, and what was left at
        // the stop.
        assert_eq!(marker_samples(&written), 8);
        assert_eq!(shared.recent().covering(3600).len(), 1);
        let metrics = shared.metrics();
        assert_eq!((metrics.windows, metrics.files_written), (1, 1));
        assert_eq!(metrics.events[0].1.samples, 8);
    }

    /// At shutdown, a capture that is running is answered with what it holds (the last
    /// drain included), and a new one is refused.
    #[test]
    fn shutdown_answers_running_captures() {
        let dir = tempfile::tempdir().unwrap();
        let (mut engine, _shared, inbox) = engine(dir.path());
        let (reply, answer) = oneshot::channel();
        engine.answer(Request::StartCapture(reply)).unwrap();
        let id = answer.blocking_recv().unwrap().unwrap();
        let requests = engine.shared.requests.clone();
        let (finish, finished) = oneshot::channel();
        requests.send(Request::FinishCapture(id, finish)).unwrap();
        let (start, started) = oneshot::channel();
        requests.send(Request::StartCapture(start)).unwrap();
        // The server is "done" once both requests are answered.
        engine
            .finish(&inbox, || inbox.is_empty(), Duration::from_secs(10))
            .unwrap();
        let capture = finished.blocking_recv().unwrap();
        assert_eq!(marker_samples(&capture.profile), 2, "the last drain");
        assert_eq!(started.blocking_recv().unwrap(), None);
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
