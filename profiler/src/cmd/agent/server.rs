//! The HTTP server: `/debug/pprof/profile`, `/flamegraph.svg`, `/metrics` and `/healthz`
//! (routes in [`prof::agent::http`]). Profile requests wait their seconds on threads of their
//! own; everything else is answered at once.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Result, anyhow};
use tiny_http::{Header, Method, Response, Server};

use prof::agent::http::{self, Route};
use prof::agent::metrics;
use prof::agent::window::{self, Span};

use prof::agent::engine::{Request, Shared, ask};

/// Binds the server, before anything is attached, so a taken port is an error at start.
pub fn bind(addr: SocketAddr) -> Result<Server> {
    Server::http(addr).map_err(|err| {
        anyhow!("cannot serve HTTP on {addr}: {err}; choose another --listen or [http] listen")
    })
}

/// Serves on a thread of its own until the process exits.
pub fn spawn(server: Server, shared: Arc<Shared>) {
    std::thread::Builder::new()
        .name("prof-http".into())
        .spawn(move || {
            for request in server.incoming_requests() {
                handle(request, &shared);
            }
        })
        .expect("spawning the HTTP thread");
}

fn header(name: &str, value: &str) -> Header {
    Header::from_bytes(name.as_bytes(), value.as_bytes()).expect("valid header")
}

fn text(status: u16, body: String) -> Response<std::io::Cursor<Vec<u8>>> {
    Response::from_data(body.into_bytes())
        .with_status_code(status)
        .with_header(header("Content-Type", "text/plain; charset=utf-8"))
}

fn handle(request: tiny_http::Request, shared: &Arc<Shared>) {
    let method = match request.method() {
        Method::Get => "GET",
        Method::Head => "HEAD",
        _ => "OTHER",
    };
    let config = &shared.config;
    let route = http::route(
        method,
        request.url(),
        config.http.max_seconds,
        config.window_seconds,
    );
    tracing::debug!(url = request.url(), ?route, "request");
    let response = match route {
        Err(err) => text(err.status(), format!("{}\n", err.message())),
        Ok(Route::Health) => text(200, "ok\n".to_owned()),
        Ok(Route::Metrics) => {
            let mut metrics = shared.metrics().clone();
            if let Some(queue) = &shared.queue {
                metrics.dropped_windows = queue.dropped();
                metrics.push_queue = queue.len() as u64;
            }
            Response::from_data(metrics.render(metrics::own_usage()).into_bytes()).with_header(
                header("Content-Type", "text/plain; version=0.0.4; charset=utf-8"),
            )
        }
        Ok(Route::Flamegraph { seconds, event }) => flamegraph(shared, seconds, event),
        Ok(Route::Profile { seconds }) => {
            let shared = Arc::clone(shared);
            // Waits `seconds`: off the server thread.
            let spawned = std::thread::Builder::new()
                .name("prof-http-profile".into())
                .spawn(move || {
                    let response = profile(&shared, seconds);
                    let _ = request.respond(response);
                });
            if let Err(err) = spawned {
                tracing::warn!("cannot start a profile request: {err}");
            }
            return;
        }
    };
    let _ = request.respond(response);
}

fn flamegraph(
    shared: &Shared,
    seconds: u64,
    event: Option<String>,
) -> Response<std::io::Cursor<Vec<u8>>> {
    let chosen = match &event {
        None => Some(0),
        Some(name) => shared.events.iter().position(|e| e.name == *name),
    };
    let Some(chosen) = chosen else {
        let names: Vec<&str> = shared.events.iter().map(|e| e.name.as_str()).collect();
        return text(
            400,
            format!(
                "event `{}` is not sampled; sampled: {}\n",
                event.unwrap_or_default(),
                names.join(", ")
            ),
        );
    };
    let mut spans = shared.recent().covering(seconds);
    if spans.is_empty() {
        // No window has ended yet: an empty graph that says so.
        spans.push(Arc::new(Span::empty(SystemTime::now(), &shared.events)));
    }
    let mut svg = Vec::new();
    match window::flamegraph(&spans, chosen, &mut svg) {
        Ok(()) => Response::from_data(svg).with_header(header("Content-Type", "image/svg+xml")),
        Err(err) => text(500, format!("cannot draw the flame graph: {err}\n")),
    }
}

/// Captures `seconds` from now on, as Go's `/debug/pprof/profile` does.
fn profile(shared: &Shared, seconds: u64) -> Response<std::io::Cursor<Vec<u8>>> {
    let Some(started) = ask(shared, Request::StartCapture) else {
        return text(503, "the agent is shutting down\n".to_owned());
    };
    let Some(id) = started else {
        return text(
            503,
            "too many profile requests at once; try again when one has finished\n".to_owned(),
        );
    };
    let until = Instant::now() + Duration::from_secs(seconds);
    while Instant::now() < until && !shared.stopping.load(Ordering::Relaxed) {
        std::thread::sleep(
            until
                .saturating_duration_since(Instant::now())
                .min(Duration::from_millis(100)),
        );
    }
    let Some(span) = ask(shared, |reply| Request::FinishCapture(id, reply)) else {
        return text(503, "the agent is shutting down\n".to_owned());
    };
    shared.metrics().profile_requests += 1;
    Response::from_data(span.encode_pprof())
        .with_header(header("Content-Type", "application/octet-stream"))
        .with_header(header(
            "Content-Disposition",
            "attachment; filename=\"profile\"",
        ))
        .with_header(header("X-Content-Type-Options", "nosniff"))
}
