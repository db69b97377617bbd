//! The HTTP server: `/debug/pprof/profile`, `/debug/pprof/symbol`, `/flamegraph.svg`,
//! `/metrics` and `/healthz` (routes in [`http`]), with the limits of a server that any
//! process on the network may reach.
//!
//! In: a bound listener and the [`Shared`] state. Out: answers; profile captures and symbol
//! lookups are asked of the engine through [`Request`]s.
//!
//! hyper serves HTTP/1.1 on a single-threaded tokio runtime (thread `prof-http`): a waiting
//! profile request or an idle connection costs a task, not a thread. Rendering (flame graphs,
//! pprof encoding) runs on at most [`RENDER_THREADS`] more threads. The limits, all in
//! `[http]` ([`HttpConfig`]):
//!
//! - `max_connections` open at once; one more is answered 503 and closed at once;
//! - `header_timeout_seconds` to send a request head, from the connection's start or the end
//!   of the previous response (so idle kept-alive connections close after it too);
//! - `max_header_bytes` of request head (431 past it);
//! - `max_body_bytes` of request body, and only for `POST /debug/pprof/symbol`: any other
//!   request with a body is answered 413, and no body is read beyond the limit;
//! - `max_profile_requests` profile requests at once, [`MAX_RENDERS`] flame graphs and
//!   [`MAX_SYMBOL_REQUESTS`] symbol requests (503 past them); a response's memory is
//!   counted against its limit until the client has taken all of it;
//! - every connection is closed `max_seconds` + [`LIFETIME_MARGIN`] after it opened,
//!   whatever it does, so a client that never reads cannot hold its slot;
//! - at shutdown, the listener closes, requests in flight finish (a profile request is
//!   answered with what it captured so far) for up to `shutdown_grace_seconds`, and idle
//!   connections are closed.

use std::convert::Infallible;
use std::io;
use std::net::{SocketAddr, TcpListener};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http_body_util::{BodyExt, Limited};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::header::{self, HeaderValue};
use hyper::service::service_fn;
use hyper::{Method, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use thiserror::Error;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, oneshot};

use crate::agent::config::HttpConfig;
use crate::agent::engine::{Request, Shared};
use crate::agent::http::{self, Route};
use crate::agent::metrics::{self, Refusal};
use crate::agent::window::{self, Span};

/// Threads that render flame graphs and encode profiles, besides the one that serves.
pub const RENDER_THREADS: usize = 2;
/// Flame graphs drawn (and being sent) at once.
pub const MAX_RENDERS: usize = 2;
/// Symbol requests read and answered at once.
pub const MAX_SYMBOL_REQUESTS: usize = 2;
/// A connection lives at most `max_seconds` plus this.
pub const LIFETIME_MARGIN: Duration = Duration::from_secs(60);
/// Response bodies go out in pieces of this size, so hyper takes more only as the client
/// reads.
const CHUNK: usize = 16 << 10;

/// The server cannot start.
#[derive(Debug, Error)]
pub enum ServeError {
    /// The address cannot be bound.
    #[error("cannot serve HTTP on {addr}: {source}; choose another --listen or [http] listen")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: io::Error,
    },
    /// The runtime or its thread cannot start.
    #[error("cannot start the HTTP server")]
    Start(#[source] io::Error),
}

/// Binds the server's address, before anything is attached, so a taken port is an error at
/// start.
pub fn bind(addr: SocketAddr) -> Result<TcpListener, ServeError> {
    let bind_err = |source| ServeError::Bind { addr, source };
    let listener = TcpListener::bind(addr).map_err(bind_err)?;
    listener.set_nonblocking(true).map_err(bind_err)?;
    Ok(listener)
}

/// The running server.
#[derive(Debug)]
pub struct ServerHandle {
    thread: JoinHandle<()>,
}

impl ServerHandle {
    /// Whether the server has stopped (after [`Shared::begin_shutdown`], once its
    /// connections are closed or the grace period has passed).
    pub fn is_finished(&self) -> bool {
        self.thread.is_finished()
    }

    /// Waits for the server to stop.
    pub fn join(self) {
        let _ = self.thread.join();
    }
}

/// Serves `listener` on a thread of its own until [`Shared::begin_shutdown`].
pub fn spawn(listener: TcpListener, shared: Arc<Shared>) -> Result<ServerHandle, ServeError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .enable_time()
        .max_blocking_threads(RENDER_THREADS)
        .thread_name("prof-http-render")
        .build()
        .map_err(ServeError::Start)?;
    let thread = std::thread::Builder::new()
        .name("prof-http".into())
        .spawn(move || runtime.block_on(serve(listener, shared)))
        .map_err(ServeError::Start)?;
    Ok(ServerHandle { thread })
}

/// What every connection's handler shares.
#[derive(Debug)]
struct State {
    shared: Arc<Shared>,
    profiles: Arc<Semaphore>,
    renders: Arc<Semaphore>,
    symbols: Arc<Semaphore>,
}

impl State {
    fn config(&self) -> &HttpConfig {
        &self.shared.config.http
    }

    fn refused(&self, why: Refusal) {
        *self.shared.metrics().http_refused.entry(why).or_default() += 1;
    }
}

async fn serve(listener: TcpListener, shared: Arc<Shared>) {
    let listener = match tokio::net::TcpListener::from_std(listener) {
        Ok(listener) => listener,
        Err(err) => {
            tracing::error!("cannot serve HTTP: {err}");
            return;
        }
    };
    let config = shared.config.http.clone();
    let connections = Arc::new(Semaphore::new(config.max_connections));
    let state = Arc::new(State {
        shared: Arc::clone(&shared),
        profiles: Arc::new(Semaphore::new(config.max_profile_requests)),
        renders: Arc::new(Semaphore::new(MAX_RENDERS)),
        symbols: Arc::new(Semaphore::new(MAX_SYMBOL_REQUESTS)),
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(config.header_timeout())
        .max_header_size(config.max_header_bytes)
        .max_buf_size(config.max_header_bytes.max(8192));
    let lifetime = Duration::from_secs(config.max_seconds) + LIFETIME_MARGIN;
    let graceful = GracefulShutdown::new();
    let mut shutdown = shared.shutdown_signal();
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = shutdown.wait_for(|&stopping| stopping) => break,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(err) => {
                // Out of file descriptors, most likely: wait for some to close.
                tracing::warn!("cannot accept an HTTP connection: {err}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(permit) = Arc::clone(&connections).try_acquire_owned() else {
            state.refused(Refusal::Connections);
            let _ = stream.try_write(
                b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain\r\n\
                  Content-Length: 21\r\nConnection: close\r\n\r\ntoo many connections\n",
            );
            continue;
        };
        let open = config.max_connections - connections.available_permits();
        state.shared.metrics().http_connections = open as u64;
        let handler_state = Arc::clone(&state);
        let service = service_fn(move |request| handle(request, Arc::clone(&handler_state)));
        let connection = graceful.watch(builder.serve_connection(TokioIo::new(stream), service));
        let state = Arc::clone(&state);
        let connections = Arc::clone(&connections);
        tokio::spawn(async move {
            match tokio::time::timeout(lifetime, connection).await {
                Ok(Ok(())) => {}
                Ok(Err(err)) if err.is_timeout() => state.refused(Refusal::HeaderTimeout),
                Ok(Err(err)) if err.is_parse_too_large() => state.refused(Refusal::HeaderTooLarge),
                Ok(Err(err)) => tracing::debug!("HTTP connection: {err}"),
                Err(_) => {
                    tracing::debug!("HTTP connection closed at the end of its lifetime");
                    state.refused(Refusal::Lifetime);
                }
            }
            drop(permit);
            let open = state.config().max_connections - connections.available_permits();
            state.shared.metrics().http_connections = open as u64;
        });
    }
    drop(listener);
    tracing::debug!(
        connections = graceful.count(),
        "HTTP: no new connections; finishing those in flight"
    );
    if tokio::time::timeout(config.shutdown_grace(), graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("HTTP: requests still in flight after the shutdown grace period");
    }
}

/// A response body: bytes sent in pieces of [`CHUNK`], and a permit of the limit it counts
/// against, released once the client has taken everything (or the connection closed).
#[derive(Debug)]
pub struct Reply {
    rest: Bytes,
    _permit: Option<OwnedSemaphorePermit>,
}

impl Reply {
    fn new(bytes: impl Into<Bytes>, permit: Option<OwnedSemaphorePermit>) -> Reply {
        Reply {
            rest: bytes.into(),
            _permit: permit,
        }
    }
}

impl Body for Reply {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let this = self.get_mut();
        if this.rest.is_empty() {
            this._permit = None;
            return Poll::Ready(None);
        }
        let piece = this.rest.split_to(this.rest.len().min(CHUNK));
        Poll::Ready(Some(Ok(Frame::data(piece))))
    }

    fn is_end_stream(&self) -> bool {
        self.rest.is_empty()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.rest.len() as u64)
    }
}

type Response = hyper::Response<Reply>;

fn respond(status: u16, content_type: &'static str, body: Reply) -> Response {
    let mut response = hyper::Response::new(body);
    *response.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::OK);
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

fn text(status: u16, body: impl Into<String>) -> Response {
    let body: String = body.into();
    respond(
        status,
        "text/plain; charset=utf-8",
        Reply::new(body.into_bytes(), None),
    )
}

async fn handle(
    request: hyper::Request<Incoming>,
    state: Arc<State>,
) -> Result<Response, Infallible> {
    let config = state.config();
    let url = request
        .uri()
        .path_and_query()
        .map_or("/", |path| path.as_str())
        .to_owned();
    let route = http::route(
        request.method().as_str(),
        &url,
        config.max_seconds,
        state.shared.config.window_seconds,
    );
    tracing::debug!(method = %request.method(), url, ?route, "request");
    // Only the symbol endpoint takes a body; any other is refused unread, whatever the
    // method or path.
    let takes_body = matches!(route, Ok(Route::Symbol { .. }));
    if !takes_body && !request.body().is_end_stream() {
        state.refused(Refusal::BodyTooLarge);
        return Ok(text(
            413,
            "this endpoint takes no request body; only POST /debug/pprof/symbol does\n",
        ));
    }
    let response = match route {
        Err(err) => text(err.status(), format!("{}\n", err.message())),
        Ok(Route::Symbol { query }) => symbol(request, query, &state).await,
        Ok(Route::Health) => text(200, "ok\n"),
        Ok(Route::Metrics) => {
            let mut metrics = state.shared.metrics().clone();
            if let Some(queue) = &state.shared.queue {
                metrics.dropped_windows = queue.dropped();
                metrics.push_queue = queue.len() as u64;
            }
            let body = metrics.render(metrics::own_usage());
            respond(
                200,
                "text/plain; version=0.0.4; charset=utf-8",
                Reply::new(body.into_bytes(), None),
            )
        }
        Ok(Route::Flamegraph { seconds, event }) => flamegraph(&state, seconds, event).await,
        Ok(Route::Profile { seconds }) => profile(&state, seconds).await,
    };
    Ok(response)
}

fn busy(state: &State, what: &str) -> Response {
    state.refused(Refusal::Busy);
    text(
        503,
        format!("too many {what} requests at once; try again when one has finished\n"),
    )
}

fn shutting_down() -> Response {
    text(503, "the agent is shutting down\n")
}

async fn flamegraph(state: &State, seconds: u64, event: Option<String>) -> Response {
    let events = &state.shared.events;
    let chosen = match &event {
        None => Some(0),
        Some(name) => events.iter().position(|e| e.name == *name),
    };
    let Some(chosen) = chosen else {
        let names: Vec<&str> = events.iter().map(|e| e.name.as_str()).collect();
        return text(
            400,
            format!(
                "event `{}` is not sampled; sampled: {}\n",
                event.unwrap_or_default(),
                names.join(", ")
            ),
        );
    };
    let Ok(permit) = Arc::clone(&state.renders).try_acquire_owned() else {
        return busy(state, "flame graph");
    };
    let mut spans = state.shared.recent().covering(seconds);
    if spans.is_empty() {
        // No window has ended yet: an empty graph that says so.
        spans.push(Arc::new(Span::empty(SystemTime::now(), events)));
    }
    let drawn = tokio::task::spawn_blocking(move || {
        let mut svg = Vec::new();
        window::flamegraph(&spans, chosen, &mut svg).map(|()| svg)
    })
    .await;
    match drawn {
        Ok(Ok(svg)) => respond(200, "image/svg+xml", Reply::new(svg, Some(permit))),
        Ok(Err(err)) => text(500, format!("cannot draw the flame graph: {err}\n")),
        Err(err) => text(500, format!("cannot draw the flame graph: {err}\n")),
    }
}

/// Finishes a started capture if its request goes away (the client hung up) before it did.
struct CaptureGuard<'a> {
    state: &'a State,
    id: Option<u64>,
}

impl Drop for CaptureGuard<'_> {
    fn drop(&mut self) {
        if let Some(id) = self.id {
            let (reply, _) = oneshot::channel();
            let _ = self
                .state
                .shared
                .requests
                .send(Request::FinishCapture(id, reply));
        }
    }
}

/// Captures `seconds` from now on, as Go's `/debug/pprof/profile` does; at shutdown, what
/// was captured so far.
async fn profile(state: &State, seconds: u64) -> Response {
    let Ok(permit) = Arc::clone(&state.profiles).try_acquire_owned() else {
        return busy(state, "profile");
    };
    let (reply, answer) = oneshot::channel();
    if state
        .shared
        .requests
        .send(Request::StartCapture(reply))
        .is_err()
    {
        return shutting_down();
    }
    let id = match answer.await {
        Ok(Some(id)) => id,
        Ok(None) if !state.shared.is_stopping() => return busy(state, "profile"),
        _ => return shutting_down(),
    };
    let mut guard = CaptureGuard {
        state,
        id: Some(id),
    };
    let mut shutdown = state.shared.shutdown_signal();
    tokio::select! {
        _ = tokio::time::sleep(Duration::from_secs(seconds)) => {}
        _ = shutdown.wait_for(|&stopping| stopping) => {}
    }
    guard.id = None;
    let (reply, answer) = oneshot::channel();
    if state
        .shared
        .requests
        .send(Request::FinishCapture(id, reply))
        .is_err()
    {
        return shutting_down();
    }
    let Ok(span) = answer.await else {
        return shutting_down();
    };
    state.shared.metrics().profile_requests += 1;
    let Ok(pprof) = tokio::task::spawn_blocking(move || span.encode_pprof()).await else {
        return text(500, "cannot encode the profile\n");
    };
    let mut response = respond(
        200,
        "application/octet-stream",
        Reply::new(pprof, Some(permit)),
    );
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_DISPOSITION,
        HeaderValue::from_static("attachment; filename=\"profile\""),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    response
}

/// Names addresses as Go's `/debug/pprof/symbol` does.
async fn symbol(request: hyper::Request<Incoming>, query: String, state: &State) -> Response {
    let limit = state.config().max_body_bytes;
    let too_large = || {
        state.refused(Refusal::BodyTooLarge);
        text(
            413,
            format!("the request body is over {limit} bytes ([http] max_body_bytes)\n"),
        )
    };
    let Ok(_permit) = Arc::clone(&state.symbols).try_acquire_owned() else {
        return busy(state, "symbol");
    };
    let addresses = if request.method() == Method::POST {
        if request.body().size_hint().lower() > limit as u64 {
            return too_large();
        }
        match Limited::new(request.into_body(), limit).collect().await {
            Ok(body) => http::symbol_addresses(&String::from_utf8_lossy(&body.to_bytes())),
            Err(err) if err.is::<http_body_util::LengthLimitError>() => return too_large(),
            Err(err) => return text(400, format!("cannot read the request body: {err}\n")),
        }
    } else if !request.body().is_end_stream() {
        return too_large();
    } else {
        http::symbol_addresses(&query)
    };
    let names = if addresses.is_empty() {
        Vec::new()
    } else {
        let (reply, answer) = oneshot::channel();
        if state
            .shared
            .requests
            .send(Request::Symbolize(addresses, reply))
            .is_err()
        {
            return shutting_down();
        }
        match answer.await {
            Ok(names) => names,
            Err(_) => return shutting_down(),
        }
    };
    state.shared.metrics().symbol_requests += 1;
    let mut response = text(200, http::symbol_answer(&names));
    response.headers_mut().insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    response
}
