//! The push sink: each window goes to Pyroscope's `/ingest`, through a bounded queue that a
//! thread of its own empties.
//!
//! Pyroscope (and Alloy's `pyroscope.receive_http`) take `POST /ingest` with the profile in
//! the body and its metadata in the query: `name` (the application name followed by
//! `{label=value,...}`), `from` and `until` (Unix seconds), `format=pprof`, `sampleRate`
//! (Hz) and `spyName`. The pprof body brings its own sample types and units.
//!
//! The pusher posts queued windows oldest first. A window stays at the front of the queue
//! until it is accepted; failures are retried with exponential backoff, while the sampling
//! loop goes on filling the queue, which drops its oldest windows when full (counted in
//! `/metrics`).

use std::collections::BTreeMap;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use crossbeam_channel::Receiver;
use thiserror::Error;
use ureq::tls::{Certificate, PemItem, RootCerts, TlsConfig};

use crate::agent::config::PushConfig;
use crate::agent::engine::Shared;
use crate::agent::queue::DropOldest;
use crate::agent::sinks::Sink;
use crate::agent::window::Span;

/// What the agent calls itself in `spyName`.
pub const SPY_NAME: &str = "prof";

/// The series name: `app{label=value,...}`, labels sorted.
pub fn series_name(app_name: &str, labels: &BTreeMap<String, String>) -> String {
    let labels: Vec<String> = labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
    format!("{app_name}{{{}}}", labels.join(","))
}

/// The URL that ingests one window from `from` to `until` under `base` (`http://host:4040`).
pub fn ingest_url(
    base: &str,
    name: &str,
    from: SystemTime,
    until: SystemTime,
    sample_rate: u64,
) -> String {
    let secs = |t: SystemTime| {
        t.duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs()
            .to_string()
    };
    let query = form_urlencoded::Serializer::new(String::new())
        .append_pair("name", name)
        .append_pair("from", &secs(from))
        .append_pair("until", &secs(until))
        .append_pair("format", "pprof")
        .append_pair("sampleRate", &sample_rate.to_string())
        .append_pair("spyName", SPY_NAME)
        .finish();
    format!("{}/ingest?{query}", base.trim_end_matches('/'))
}

/// One window's pprof, waiting to be pushed.
#[derive(Debug)]
pub struct PushItem {
    /// The ingest URL, with the window's times.
    pub url: String,
    /// The gzipped pprof body.
    pub body: Arc<[u8]>,
}

/// Puts each window in the push queue.
#[derive(Debug)]
pub struct PushSink {
    queue: Arc<DropOldest<Arc<PushItem>>>,
    base: String,
    series: String,
    sample_rate: u64,
}

impl PushSink {
    /// A sink for `[push]` into `queue`; `sample_rate` is the sampling frequency.
    pub fn new(
        config: &PushConfig,
        queue: Arc<DropOldest<Arc<PushItem>>>,
        sample_rate: u64,
    ) -> PushSink {
        let mut labels = config.labels.clone();
        labels.entry("hostname".to_owned()).or_insert_with(hostname);
        PushSink {
            queue,
            base: config.url.clone(),
            series: series_name(&config.app_name, &labels),
            sample_rate,
        }
    }
}

impl Sink for PushSink {
    fn export(&mut self, span: &Span, pprof: &Arc<[u8]>, _shared: &Shared) {
        let url = ingest_url(
            &self.base,
            &self.series,
            span.start,
            span.end,
            self.sample_rate,
        );
        let item = PushItem {
            url,
            body: Arc::clone(pprof),
        };
        if self.queue.push(Arc::new(item)) {
            tracing::warn!("push queue full: dropped the oldest window");
        }
    }
}

/// The first retry waits this long; each failure doubles it, up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// Where the system keeps its CA certificates, for the error message when it has none.
const SYSTEM_CA_HINT: &str = "install Debian's ca-certificates, or set [push] ca_file";

/// Why pushing cannot be set up; checked before anything is attached.
#[derive(Debug, Error)]
pub enum PushSetupError {
    /// A secret or CA file cannot be read.
    #[error("[push] {key} `{}`: cannot read it", path.display())]
    Read {
        /// The config key (`password_file`, `token_file`, `ca_file`).
        key: &'static str,
        /// The file.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// A secret file is empty.
    #[error("[push] {key} `{}` is empty", path.display())]
    Empty {
        /// The config key.
        key: &'static str,
        /// The file.
        path: PathBuf,
    },
    /// A secret cannot go in a header.
    #[error("[push] {key} `{}`: {message}", path.display())]
    NotAHeader {
        /// The config key.
        key: &'static str,
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// The CA file holds no certificate.
    #[error("[push] ca_file `{}` holds no PEM certificate (-----BEGIN CERTIFICATE-----)", .0.display())]
    NoCertificate(PathBuf),
    /// The CA file is not PEM.
    #[error("[push] ca_file `{}` is not a PEM file: {message}", path.display())]
    BadPem {
        /// The file.
        path: PathBuf,
        /// What the parser said.
        message: String,
    },
    /// The system has no CA certificates.
    #[error("no CA certificates found on this system for the https:// push URL; {SYSTEM_CA_HINT}")]
    NoSystemCertificates,
}

/// Everything a push needs, ready: the HTTP client (with its TLS roots) and the headers
/// every request carries. Built before anything is attached, so a missing secret or CA
/// file stops the agent at start.
pub struct Pusher {
    agent: ureq::Agent,
    /// Authorization, X-Scope-OrgID and the extra headers.
    headers: Vec<(String, String)>,
}

impl std::fmt::Debug for Pusher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<&str> = self.headers.iter().map(|(n, _)| n.as_str()).collect();
        f.debug_struct("Pusher").field("headers", &names).finish()
    }
}

impl Pusher {
    /// Reads the secrets and the CA certificates `config` names and builds the client.
    pub fn new(config: &PushConfig) -> Result<Pusher, PushSetupError> {
        let mut headers = Vec::new();
        if let Some(user) = &config.username {
            let password = match (&config.password, &config.password_file) {
                (Some(password), _) => password.0.clone(),
                (None, Some(path)) => read_secret("password_file", path)?,
                (None, None) => String::new(),
            };
            let credentials =
                base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
            headers.push(("Authorization".to_owned(), format!("Basic {credentials}")));
        }
        let token = match (&config.token, &config.token_file) {
            (Some(token), _) => Some(token.0.clone()),
            (None, Some(path)) => Some(read_secret("token_file", path)?),
            (None, None) => None,
        };
        if let Some(token) = token {
            headers.push(("Authorization".to_owned(), format!("Bearer {token}")));
        }
        if let Some(tenant) = &config.tenant_id {
            headers.push(("X-Scope-OrgID".to_owned(), tenant.clone()));
        }
        for (name, value) in &config.headers {
            headers.push((name.clone(), value.clone()));
        }
        let mut builder = ureq::Agent::config_builder()
            .timeout_global(Some(Duration::from_secs(config.timeout_seconds)))
            .http_status_as_error(true)
            .user_agent(concat!("prof/", env!("CARGO_PKG_VERSION")));
        if config.url.starts_with("https://") {
            let roots = match &config.ca_file {
                Some(path) => ca_file(path)?,
                None => system_roots()?,
            };
            builder = builder.tls_config(TlsConfig::builder().root_certs(roots).build());
        }
        Ok(Pusher {
            agent: builder.build().into(),
            headers,
        })
    }

    /// Posts one window.
    fn post(&self, item: &PushItem) -> Result<(), ureq::Error> {
        let mut request = self
            .agent
            .post(&item.url)
            .header("Content-Type", "application/octet-stream");
        for (name, value) in &self.headers {
            request = request.header(name, value);
        }
        request.send(&item.body[..])?;
        Ok(())
    }
}

/// Reads a secret from `path`: the file's text without its trailing newline. A file that
/// others may read is used, with a warning.
fn read_secret(key: &'static str, path: &Path) -> Result<String, PushSetupError> {
    let read_err = |source| PushSetupError::Read {
        key,
        path: path.to_path_buf(),
        source,
    };
    let text = std::fs::read_to_string(path).map_err(read_err)?;
    let mode = std::fs::metadata(path)
        .map_err(read_err)?
        .permissions()
        .mode();
    if mode & 0o004 != 0 {
        tracing::warn!(
            "[push] {key} `{}` is readable by every user; chmod 600 it",
            path.display()
        );
    }
    let secret = text.trim_end_matches(['\n', '\r']).to_owned();
    if secret.is_empty() {
        return Err(PushSetupError::Empty {
            key,
            path: path.to_path_buf(),
        });
    }
    crate::agent::config::check_header_value(&secret).map_err(|_| PushSetupError::NotAHeader {
        key,
        path: path.to_path_buf(),
        message: "holds line breaks or control characters inside, which cannot be sent in a header"
            .to_owned(),
    })?;
    Ok(secret)
}

/// The certificates of a PEM file.
fn ca_file(path: &Path) -> Result<RootCerts, PushSetupError> {
    let pem = std::fs::read(path).map_err(|source| PushSetupError::Read {
        key: "ca_file",
        path: path.to_path_buf(),
        source,
    })?;
    let mut certs = Vec::new();
    for item in ureq::tls::parse_pem(&pem) {
        match item {
            Ok(PemItem::Certificate(cert)) => certs.push(cert),
            Ok(_) => {}
            Err(err) => {
                return Err(PushSetupError::BadPem {
                    path: path.to_path_buf(),
                    message: err.to_string(),
                });
            }
        }
    }
    if certs.is_empty() {
        return Err(PushSetupError::NoCertificate(path.to_path_buf()));
    }
    Ok(RootCerts::new_with_certs(&certs))
}

/// The system's CA certificates (`SSL_CERT_FILE` and `SSL_CERT_DIR` are honoured, as
/// OpenSSL and curl do).
fn system_roots() -> Result<RootCerts, PushSetupError> {
    let found = rustls_native_certs::load_native_certs();
    for err in &found.errors {
        tracing::debug!("reading the system's CA certificates: {err}");
    }
    if found.certs.is_empty() {
        return Err(PushSetupError::NoSystemCertificates);
    }
    let certs: Vec<Certificate<'static>> = found
        .certs
        .iter()
        .map(|der| Certificate::from_der(der).to_owned())
        .collect();
    Ok(RootCerts::new_with_certs(&certs))
}

/// A push failure in words that say what to look at.
pub fn describe_failure(err: &ureq::Error) -> String {
    // The handshake's error comes through the connection's I/O.
    let tls = match err {
        ureq::Error::Rustls(tls) => Some(tls),
        ureq::Error::Io(io) => io.get_ref().and_then(|e| e.downcast_ref::<rustls::Error>()),
        _ => None,
    };
    match err {
        _ if tls.is_some() => format!(
            "TLS: {}; the server's certificate must be signed by a CA the agent trusts \
             (the system's, or [push] ca_file / --push-ca-file)",
            tls.expect("matched")
        ),
        ureq::Error::StatusCode(401 | 403) => format!(
            "{err}: the server refused the credentials ([push] username and password_file, \
             token_file, or tenant_id)"
        ),
        _ => err.to_string(),
    }
}

/// Starts the pusher on a thread of its own; the receiver gets a message when it has
/// finished (queue closed and emptied, or the server unreachable once closed).
pub fn spawn_pusher(pusher: Pusher, shared: Arc<Shared>) -> Receiver<()> {
    let (done, finished) = crossbeam_channel::bounded(1);
    std::thread::Builder::new()
        .name("prof-push".into())
        .spawn(move || {
            push_until_closed(&pusher, &shared);
            let _ = done.send(());
        })
        .expect("spawning the push thread");
    finished
}

fn push_until_closed(pusher: &Pusher, shared: &Shared) {
    let queue = shared.queue.as_ref().expect("pushing has a queue");
    let mut backoff = FIRST_BACKOFF;
    let mut failing = false;
    loop {
        let Some(item) = queue.front(Duration::from_secs(1)) else {
            if queue.is_closed() {
                return;
            }
            continue;
        };
        match pusher.post(&item) {
            Ok(()) => {
                queue.remove_front_if(|front| Arc::ptr_eq(front, &item));
                shared.metrics().pushes += 1;
                if failing {
                    tracing::info!("pushing works again");
                }
                failing = false;
                backoff = FIRST_BACKOFF;
            }
            Err(err) => {
                shared.metrics().push_failures += 1;
                let err = describe_failure(&err);
                if !failing {
                    tracing::warn!("push failed: {err}; retrying with backoff");
                } else {
                    tracing::debug!("push failed: {err}");
                }
                failing = true;
                if queue.is_closed() {
                    tracing::warn!(left = queue.len(), "giving up pushing at shutdown");
                    return;
                }
                if queue.wait_closed(backoff) {
                    // Shutting down: one more try for each window, without waiting.
                    continue;
                }
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    }
}

/// The host's name, for the `hostname` label.
pub fn hostname() -> String {
    rustix::system::uname()
        .nodename()
        .to_string_lossy()
        .into_owned()
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::agent::config::AgentConfig;
    use crate::profile::EventProfile;

    /// Credentials become the headers Pyroscope and Grafana Cloud expect; secrets are read
    /// from their files without the trailing newline; the system's CA certificates load.
    #[test]
    fn pusher_headers_and_roots() {
        let dir = tempfile::tempdir().unwrap();
        let password = dir.path().join("password");
        std::fs::write(&password, "pass\n").unwrap();
        let mut push = PushConfig::with_url("https://profiles.example.com").unwrap();
        push.username = Some("user".into());
        push.password_file = Some(password);
        push.tenant_id = Some("team-a".into());
        let pusher = Pusher::new(&push).expect("the system's CA certificates load");
        assert_eq!(
            pusher.headers,
            [
                ("Authorization".to_owned(), "Basic dXNlcjpwYXNz".to_owned()),
                ("X-Scope-OrgID".to_owned(), "team-a".to_owned()),
            ]
        );
        assert!(!format!("{pusher:?}").contains("dXNlcjpwYXNz"));

        let token = dir.path().join("token");
        std::fs::write(&token, "tok\r\n").unwrap();
        let mut push = PushConfig::with_url("http://127.0.0.1:4040").unwrap();
        push.token_file = Some(token);
        let pusher = Pusher::new(&push).unwrap();
        assert_eq!(pusher.headers[0].1, "Bearer tok");

        let junk = dir.path().join("ca.pem");
        std::fs::write(&junk, "not a certificate\n").unwrap();
        let mut push = PushConfig::with_url("https://x").unwrap();
        push.ca_file = Some(junk);
        let err = Pusher::new(&push).unwrap_err().to_string();
        assert!(err.contains("holds no PEM certificate"), "{err}");
        let empty = dir.path().join("empty");
        std::fs::write(&empty, "\n").unwrap();
        let mut push = PushConfig::with_url("https://x").unwrap();
        push.token_file = Some(empty);
        let err = Pusher::new(&push).unwrap_err().to_string();
        assert!(err.ends_with("is empty"), "{err}");
    }

    /// Each window is queued with its ingest URL and the very pprof bytes; a full queue drops
    /// the oldest.
    #[test]
    fn sink_queues_windows() {
        let mut push = PushConfig::with_url("http://127.0.0.1:4040").unwrap();
        push.queue = 1;
        let config = AgentConfig {
            push: Some(push.clone()),
            ..AgentConfig::default()
        };
        let (shared, _inbox) = Shared::new(config, vec![]);
        let queue = Arc::clone(shared.queue.as_ref().unwrap());
        let mut sink = PushSink::new(&push, Arc::clone(&queue), 19);
        let t0 = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let events: [EventProfile; 0] = [];
        for (i, bytes) in [&b"first"[..], &b"second"[..]].into_iter().enumerate() {
            let mut span = Span::empty(t0 + Duration::from_secs(10 * i as u64), &events);
            span.end = span.start + Duration::from_secs(10);
            sink.export(&span, &Arc::from(bytes), &shared);
        }
        assert_eq!(queue.dropped(), 1);
        let item = queue.front(Duration::ZERO).unwrap();
        assert_eq!(&item.body[..], b"second");
        assert!(
            item.url
                .starts_with("http://127.0.0.1:4040/ingest?name=prof%7Bhostname%3D")
                && item.url.contains("&from=1700000010&until=1700000020&"),
            "{}",
            item.url
        );
    }

    /// The query carries the name with its labels, the span in Unix seconds, the format and
    /// the rate, all URL-encoded.
    #[test]
    fn ingest_query() {
        let labels = BTreeMap::from([
            ("hostname".to_owned(), "web-1".to_owned()),
            ("env".to_owned(), "prod".to_owned()),
        ]);
        let name = series_name("prof", &labels);
        assert_eq!(name, "prof{env=prod,hostname=web-1}");
        let from = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let url = ingest_url(
            "http://pyroscope:4040/",
            &name,
            from,
            from + Duration::from_millis(10_500),
            19,
        );
        assert_eq!(
            url,
            "http://pyroscope:4040/ingest?name=prof%7Benv%3Dprod%2Chostname%3Dweb-1%7D\
             &from=1700000000&until=1700000010&format=pprof&sampleRate=19&spyName=prof"
        );
    }
}
