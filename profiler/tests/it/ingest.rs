//! A stand-in for Pyroscope's `POST /ingest`, over plain HTTP or HTTPS (with a CA the test
//! generates): it keeps every request (URL, headers, body) and answers 200 to a POST to
//! `/ingest`, a fixed body to a GET of a path it was given, 404 to anything else, and 401
//! when it requires credentials that the request does not carry.

use std::convert::Infallible;
use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::sync::oneshot;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivatePkcs8KeyDer};

/// A certificate authority made for one test, and a server certificate it signed for
/// 127.0.0.1 and localhost.
pub struct TestCa {
    /// The CA's certificate, PEM: what the agent is told to trust.
    pub pem: String,
    server: Arc<rustls::ServerConfig>,
}

impl TestCa {
    pub fn new(name: &str) -> TestCa {
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::CrlSign,
        ];
        let ca = rcgen::CertifiedIssuer::self_signed(params, ca_key).unwrap();

        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
        params
            .subject_alt_names
            .push(rcgen::SanType::IpAddress([127, 0, 0, 1].into()));
        let cert = params.signed_by(&key, &ca).unwrap();
        let server = rustls::ServerConfig::builder()
            .with_no_client_auth()
            .with_single_cert(
                vec![cert.der().clone(), CertificateDer::from(ca.der().to_vec())],
                PrivatePkcs8KeyDer::from(key.serialize_der()).into(),
            )
            .unwrap();
        TestCa {
            pem: ca.pem(),
            server: Arc::new(server),
        }
    }
}

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

/// Fixed answers to GET requests: a path and the body it is answered with.
type Files = Vec<(String, Vec<u8>)>;

/// The running receiver.
pub struct Ingest {
    port: u16,
    received: Arc<Mutex<Vec<Received>>>,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Ingest {
    /// Listens on 127.0.0.1:`port` (0: any free port), over plain HTTP.
    pub fn start(port: u16) -> Ingest {
        Ingest::start_with(port, None, None, Files::new())
    }

    /// Listens on any free port over plain HTTP, and also answers a GET of each path in
    /// `files` with its body.
    pub fn serving(files: Files) -> Ingest {
        Ingest::start_with(0, None, None, files)
    }

    /// Listens over HTTPS with `ca`'s server certificate, and answers 401 to requests
    /// whose `Authorization` header is not `authorization`.
    pub fn start_tls(ca: &TestCa, authorization: &str) -> Ingest {
        Ingest::start_with(
            0,
            Some(TlsAcceptor::from(Arc::clone(&ca.server))),
            Some(authorization.to_owned()),
            Files::new(),
        )
    }

    fn start_with(
        port: u16,
        tls: Option<TlsAcceptor>,
        authorization: Option<String>,
        files: Files,
    ) -> Ingest {
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
            runtime.block_on(serve(listener, kept, stopped, tls, authorization, files));
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
    tls: Option<TlsAcceptor>,
    authorization: Option<String>,
    files: Files,
) {
    let authorization = Arc::new(authorization);
    let files = Arc::new(files);
    let listener = tokio::net::TcpListener::from_std(listener).unwrap();
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => accepted.unwrap().0,
            _ = &mut stopped => return,
        };
        let received = Arc::clone(&received);
        let authorization = Arc::clone(&authorization);
        let files = Arc::clone(&files);
        let tls = tls.clone();
        tokio::spawn(async move {
            let service = service_fn(move |request: hyper::Request<hyper::body::Incoming>| {
                let received = Arc::clone(&received);
                let authorization = Arc::clone(&authorization);
                let files = Arc::clone(&files);
                async move {
                    let authorized = authorization.as_deref().is_none_or(|expected| {
                        request
                            .headers()
                            .get("authorization")
                            .is_some_and(|given| given.as_bytes() == expected.as_bytes())
                    });
                    let ok = request.method() == hyper::Method::POST
                        && request.uri().path() == "/ingest";
                    let file = (request.method() == hyper::Method::GET)
                        .then(|| files.iter().find(|(path, _)| path == request.uri().path()))
                        .flatten()
                        .map(|(_, body)| Bytes::from(body.clone()));
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
                    let ok = ok || file.is_some();
                    let mut response = hyper::Response::new(Full::new(file.unwrap_or_default()));
                    *response.status_mut() = match (authorized, ok) {
                        (false, _) => hyper::StatusCode::UNAUTHORIZED,
                        (true, true) => hyper::StatusCode::OK,
                        (true, false) => hyper::StatusCode::NOT_FOUND,
                    };
                    Ok::<_, Infallible>(response)
                }
            });
            let http = hyper::server::conn::http1::Builder::new();
            match tls {
                None => {
                    let _ = http.serve_connection(TokioIo::new(stream), service).await;
                }
                Some(tls) => {
                    // A client that does not trust the certificate hangs up here.
                    let Ok(stream) = tls.accept(stream).await else {
                        return;
                    };
                    let _ = http.serve_connection(TokioIo::new(stream), service).await;
                }
            }
        });
    }
}
