//! A stand-in for Pyroscope's `POST /ingest`, over plain HTTP: it keeps every request (URL,
//! headers, body) and answers 200 to a POST to `/ingest`, 404 to anything else.

use std::convert::Infallible;
use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::sync::oneshot;

/// One request as the receiver got it.
#[derive(Clone, Debug)]
pub struct Received {
    /// The path and query.
    pub url: String,
    /// Every header, names in lower case.
    pub headers: Vec<(String, String)>,
    /// The body.
    pub body: Vec<u8>,
}

impl Received {
    /// The value of header `name` (lower case), if given once or more (the first).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// The running receiver.
pub struct Ingest {
    port: u16,
    received: Arc<Mutex<Vec<Received>>>,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Ingest {
    /// Listens on 127.0.0.1:`port` (0: any free port).
    pub fn start(port: u16) -> Ingest {
        let listener = TcpListener::bind(("127.0.0.1", port)).unwrap();
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let received: Arc<Mutex<Vec<Received>>> = Arc::default();
        let (stop, stopped) = oneshot::channel();
        let kept = Arc::clone(&received);
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(serve(listener, kept, stopped));
            // Dropping the runtime drops every connection: the port is closed.
        });
        Ingest {
            port,
            received,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn count(&self) -> usize {
        self.received.lock().unwrap().len()
    }

    pub fn requests(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }

    /// Stops listening and closes every connection: the port refuses connections until a
    /// new receiver binds it.
    pub fn stop(mut self) {
        self.shut();
    }

    fn shut(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            thread.join().unwrap();
        }
    }
}

impl Drop for Ingest {
    fn drop(&mut self) {
        self.shut();
    }
}

async fn serve(
    listener: TcpListener,
    received: Arc<Mutex<Vec<Received>>>,
    mut stopped: oneshot::Receiver<()>,
) {
    let listener = tokio::net::TcpListener::from_std(listener).unwrap();
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => accepted.unwrap().0,
            _ = &mut stopped => return,
        };
        let received = Arc::clone(&received);
        tokio::spawn(async move {
            let service = service_fn(move |request: hyper::Request<hyper::body::Incoming>| {
                let received = Arc::clone(&received);
                async move {
                    let ok = request.method() == hyper::Method::POST
                        && request.uri().path() == "/ingest";
                    let url = request.uri().to_string();
                    let headers = request
                        .headers()
                        .iter()
                        .map(|(n, v)| (n.as_str().to_owned(), v.to_str().unwrap_or("").to_owned()))
                        .collect();
                    let body = request
                        .into_body()
                        .collect()
                        .await
                        .unwrap()
                        .to_bytes()
                        .to_vec();
                    received
                        .lock()
                        .unwrap()
                        .push(Received { url, headers, body });
                    let mut response = hyper::Response::new(Full::new(Bytes::new()));
                    *response.status_mut() = if ok {
                        hyper::StatusCode::OK
                    } else {
                        hyper::StatusCode::NOT_FOUND
                    };
                    Ok::<_, Infallible>(response)
                }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}
