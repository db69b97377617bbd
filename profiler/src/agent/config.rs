//! The agent's configuration: a TOML file, then command-line flags over it.
//!
//! In: the file's text. Out: an [`AgentConfig`] whose every field is already valid, or a
//! [`ConfigError`] that names the file, the line and the key. Values are checked while they
//! are read (not afterwards), so that every error carries the place it came from, and all of
//! this happens before anything is attached.
//!
//! ```toml
//! log = "info"                  # a tracing filter; RUST_LOG wins over it
//! events = ["cpu-clock"]        # CPU time in nanoseconds, as Pyroscope and Parca show it
//! frequency = 19                # samples per second per CPU
//! window_seconds = 10
//! debug_info = false            # DWARF inlined functions and lines: more memory
//! off_cpu = false               # also the `off-cpu` event: nanoseconds threads spend blocked
//! off_cpu_min_us = 0            # blocks shorter than this are left out
//! off_cpu_tasks = 16384         # threads followed while blocked
//!
//! [http]                        # on by default, on 127.0.0.1:6060
//! listen = "127.0.0.1:6060"
//! max_seconds = 60              # the cap on /debug/pprof/profile?seconds=N
//! max_connections = 256         # and the other limits: see HttpConfig
//!
//! [push]                        # Pyroscope's /ingest (or Alloy's pyroscope.receive_http)
//! url = "https://pyroscope.example.com"
//! app_name = "prof"
//! labels = { env = "prod" }
//! username = "123"              # basic auth; or token_file for a bearer token
//! password_file = "/etc/prof/pw"
//! tenant_id = "team-a"          # X-Scope-OrgID
//!
//! [dir]                         # pprof files, the oldest removed first
//! path = "/var/lib/prof"
//! max_files = 360
//! max_bytes = 268435456
//! ```

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use serde::de::{self, Deserializer};
use thiserror::Error;

use crate::events::{self, Event};
use crate::unwind::UnwindMode;

/// The default sampling frequency: low enough to cost well under 1% of a CPU, and odd, so it
/// does not beat with periodic work.
pub const DEFAULT_FREQUENCY: u64 = 19;
/// The default window.
pub const DEFAULT_WINDOW_SECONDS: u64 = 10;
/// Where the HTTP server listens unless told otherwise: this host only.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:6060";

/// Everything the agent needs to know, valid.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AgentConfig {
    /// A `tracing` filter (`info`, `prof=debug`); `RUST_LOG` overrides it.
    #[serde(deserialize_with = "log_filter")]
    pub log: String,
    /// The events to sample.
    #[serde(deserialize_with = "event_list")]
    pub events: Vec<Event>,
    /// Samples per second per CPU.
    #[serde(deserialize_with = "positive_u64")]
    pub frequency: u64,
    /// Seconds per window.
    #[serde(deserialize_with = "window_seconds")]
    pub window_seconds: u64,
    /// Read DWARF for inlined functions and source lines. Off by default: parsed debug
    /// information of large binaries costs tens of MB, against a 50 MB budget.
    pub debug_info: bool,
    /// Also record off-CPU time, the `off-cpu` event.
    pub off_cpu: bool,
    /// Blocks shorter than this many microseconds are left out of off-CPU time.
    pub off_cpu_min_us: u64,
    /// Threads the kernel follows while blocked, for off-CPU time.
    #[serde(deserialize_with = "positive_u32")]
    pub off_cpu_tasks: u32,
    /// Distinct stacks the kernel stores per window.
    #[serde(deserialize_with = "positive_u32")]
    pub stack_storage_size: u32,
    /// Distinct (process, event, stack) keys the kernel counts per window.
    #[serde(deserialize_with = "positive_u32")]
    pub counts_map_size: u32,
    /// `[sampling]`: how stacks are taken.
    pub sampling: SamplingConfig,
    /// The HTTP server.
    pub http: HttpConfig,
    /// Pushing to Pyroscope; `None` when not configured.
    #[serde(deserialize_with = "push_table")]
    pub push: Option<PushConfig>,
    /// The directory of pprof files; `None` when not configured.
    pub dir: Option<DirConfig>,
}

impl Default for AgentConfig {
    fn default() -> AgentConfig {
        AgentConfig {
            log: "info".to_owned(),
            events: vec![Event::parse("cpu-clock").expect("cpu-clock is a known event")],
            frequency: DEFAULT_FREQUENCY,
            window_seconds: DEFAULT_WINDOW_SECONDS,
            debug_info: false,
            off_cpu: false,
            off_cpu_min_us: 0,
            off_cpu_tasks: crate::bpf::DEFAULT_OFF_CPU_TASKS,
            // At 19 Hz a window holds a few hundred samples per CPU; these leave room for
            // busy machines and higher frequencies (about 8 MB of kernel memory per
            // generation for the stacks).
            stack_storage_size: 8192,
            counts_map_size: 16384,
            sampling: SamplingConfig::default(),
            http: HttpConfig::default(),
            push: None,
            dir: None,
        }
    }
}

impl AgentConfig {
    /// The events to record: `events`, and the off-CPU event when `off_cpu` asks for it (once,
    /// if `events` names it too).
    pub fn recorded_events(&self) -> Vec<Event> {
        let mut recorded = self.events.clone();
        if self.off_cpu && !recorded.iter().any(|e| e.kind == events::EventKind::OffCpu) {
            recorded.push(Event::off_cpu());
        }
        recorded
    }

    /// The window as a duration.
    pub fn window(&self) -> Duration {
        Duration::from_secs(self.window_seconds)
    }
}

/// `[sampling]`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SamplingConfig {
    /// How user stacks are unwound: `auto` (unwind tables) or `fp` (frame pointers only).
    pub unwind: UnwindMode,
    /// Rows the unwind tables of all binaries hold together (8 bytes of kernel memory each).
    #[serde(deserialize_with = "positive_u32")]
    pub unwind_table_size: u32,
}

impl Default for SamplingConfig {
    fn default() -> SamplingConfig {
        SamplingConfig {
            unwind: UnwindMode::Auto,
            unwind_table_size: crate::unwind::DEFAULT_TABLE_ROWS,
        }
    }
}

/// `[http]`: the server and its limits.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// Serve at all.
    pub enabled: bool,
    /// Address and port. Anything but a loopback address must be asked for.
    #[serde(deserialize_with = "socket_addr")]
    pub listen: SocketAddr,
    /// The most seconds `/debug/pprof/profile` and `/flamegraph.svg` cover.
    #[serde(deserialize_with = "positive_u64")]
    pub max_seconds: u64,
    /// Connections open at once; one more is answered 503 and closed.
    #[serde(deserialize_with = "positive_usize")]
    pub max_connections: usize,
    /// Seconds a client has to send a request's head (line and headers), counted from the
    /// connection's start or from the end of the previous response, so it is also how long
    /// an idle kept-alive connection stays open (Go's `ReadHeaderTimeout` and
    /// `IdleTimeout` in one).
    #[serde(deserialize_with = "positive_u64")]
    pub header_timeout_seconds: u64,
    /// Bytes of a request's head at most; more is answered 431 and the connection closed.
    #[serde(deserialize_with = "header_bytes")]
    pub max_header_bytes: usize,
    /// Bytes of a request body at most (only `POST /debug/pprof/symbol` takes one); more is
    /// answered 413 without being read.
    #[serde(deserialize_with = "positive_usize")]
    pub max_body_bytes: usize,
    /// `/debug/pprof/profile` requests served at once; more are answered 503.
    #[serde(deserialize_with = "positive_usize")]
    pub max_profile_requests: usize,
    /// Seconds that requests in flight at shutdown get to finish (a profile request is
    /// answered with what it captured so far); new connections are refused meanwhile.
    #[serde(deserialize_with = "positive_u64")]
    pub shutdown_grace_seconds: u64,
}

impl Default for HttpConfig {
    fn default() -> HttpConfig {
        HttpConfig {
            enabled: true,
            listen: DEFAULT_LISTEN.parse().expect("a valid address"),
            max_seconds: 60,
            max_connections: 256,
            header_timeout_seconds: 10,
            max_header_bytes: 16 << 10,
            max_body_bytes: 1 << 20,
            max_profile_requests: 4,
            shutdown_grace_seconds: 5,
        }
    }
}

impl HttpConfig {
    /// [`HttpConfig::header_timeout_seconds`] as a duration.
    pub fn header_timeout(&self) -> Duration {
        Duration::from_secs(self.header_timeout_seconds)
    }

    /// [`HttpConfig::shutdown_grace_seconds`] as a duration.
    pub fn shutdown_grace(&self) -> Duration {
        Duration::from_secs(self.shutdown_grace_seconds)
    }
}

/// `[push]`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PushConfig {
    /// The server's base URL (`https://host`, `http://host:4040`); `/ingest` is appended.
    #[serde(deserialize_with = "push_url")]
    pub url: String,
    /// The application name in Pyroscope.
    #[serde(default = "default_app_name", deserialize_with = "label_value")]
    pub app_name: String,
    /// Labels added to every pushed profile's name, e.g. `{ env = "prod" }`. The agent adds
    /// `hostname`.
    #[serde(default, deserialize_with = "label_map")]
    pub labels: BTreeMap<String, String>,
    /// Windows waiting to be pushed; when full, the oldest is dropped and counted.
    #[serde(default = "default_queue", deserialize_with = "positive_usize")]
    pub queue: usize,
    /// Seconds one push may take.
    #[serde(default = "default_timeout", deserialize_with = "positive_u64")]
    pub timeout_seconds: u64,
    /// PEM file of the CA certificates to trust for an `https://` URL, instead of the
    /// system's.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// The user for basic authentication (Grafana Cloud: the stack's numeric user id).
    #[serde(default, deserialize_with = "header_text")]
    pub username: Option<String>,
    /// The basic-auth password, in the config file itself; `password_file` keeps it out of
    /// it.
    #[serde(default)]
    pub password: Option<Secret>,
    /// A file that holds the basic-auth password (trailing newline ignored).
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    /// A bearer token, in the config file itself.
    #[serde(default)]
    pub token: Option<Secret>,
    /// A file that holds a bearer token (trailing newline ignored).
    #[serde(default)]
    pub token_file: Option<PathBuf>,
    /// The tenant, sent as `X-Scope-OrgID` (multi-tenant Pyroscope, Grafana Enterprise).
    #[serde(default, deserialize_with = "header_text")]
    pub tenant_id: Option<String>,
    /// Extra headers sent with every push, e.g. `{ "X-Team" = "infra" }`.
    #[serde(default, deserialize_with = "header_map")]
    pub headers: BTreeMap<String, String>,
}

/// A secret from the config file: never printed.
#[derive(Clone, Deserialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct Secret(pub String);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(..)")
    }
}

impl PushConfig {
    /// A push configuration with defaults for everything but the URL.
    pub fn with_url(url: &str) -> Result<PushConfig, String> {
        Ok(PushConfig {
            url: check_push_url(url)?,
            app_name: default_app_name(),
            labels: BTreeMap::new(),
            queue: default_queue(),
            timeout_seconds: default_timeout(),
            ca_file: None,
            username: None,
            password: None,
            password_file: None,
            token: None,
            token_file: None,
            tenant_id: None,
            headers: BTreeMap::new(),
        })
    }

    /// Checks what no single key can: credentials that fit together, and extra headers
    /// that do not clash with the ones the agent sets.
    pub fn check(&self) -> Result<(), String> {
        if self.password.is_some() && self.password_file.is_some() {
            return Err("give `password` or `password_file`, not both".to_owned());
        }
        if self.token.is_some() && self.token_file.is_some() {
            return Err("give `token` or `token_file`, not both".to_owned());
        }
        let has_password = self.password.is_some() || self.password_file.is_some();
        let has_token = self.token.is_some() || self.token_file.is_some();
        if has_password && self.username.is_none() {
            return Err("a password needs a `username` (basic authentication)".to_owned());
        }
        if self.username.is_some() && !has_password {
            return Err(
                "`username` needs `password_file` (or `password`): basic authentication".to_owned(),
            );
        }
        if has_token && self.username.is_some() {
            return Err(
                "give basic authentication (`username`, `password_file`) or a bearer token \
                 (`token_file`), not both"
                    .to_owned(),
            );
        }
        if self.ca_file.is_some() && !self.url.starts_with("https://") {
            return Err(format!(
                "`ca_file` is for https:// URLs; `{}` is plain HTTP",
                self.url
            ));
        }
        for name in self.headers.keys() {
            let lower = name.to_ascii_lowercase();
            let set = match lower.as_str() {
                "authorization" => self.username.is_some() || has_token,
                "x-scope-orgid" => self.tenant_id.is_some(),
                "content-type" | "content-length" | "host" => true,
                _ => false,
            };
            if set {
                return Err(format!(
                    "header `{name}` is set by the agent (from the URL, the body, or the \
                     credentials and tenant_id); drop it from `headers`"
                ));
            }
        }
        Ok(())
    }
}

fn default_app_name() -> String {
    "prof".to_owned()
}

fn default_queue() -> usize {
    32
}

fn default_timeout() -> u64 {
    10
}

/// `[dir]`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DirConfig {
    /// The directory; it must exist.
    pub path: PathBuf,
    /// Files kept at most.
    #[serde(default = "default_max_files", deserialize_with = "positive_usize")]
    pub max_files: usize,
    /// Bytes kept at most, all files together.
    #[serde(default = "default_max_bytes", deserialize_with = "positive_u64")]
    pub max_bytes: u64,
}

impl DirConfig {
    /// A directory configuration with default limits.
    pub fn with_path(path: PathBuf) -> DirConfig {
        DirConfig {
            path,
            max_files: default_max_files(),
            max_bytes: default_max_bytes(),
        }
    }
}

fn default_max_files() -> usize {
    // An hour of 10-second windows.
    360
}

fn default_max_bytes() -> u64 {
    256 << 20
}

/// A configuration file that cannot be used.
#[derive(Debug, Error)]
pub enum ConfigError {
    /// The file cannot be read.
    #[error("cannot read the config file `{}`", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not valid TOML, or a key or value is wrong.
    #[error("{}:{line}: {}{message}", path.display(), key.as_deref().map(|k| format!("`{k}`: ")).unwrap_or_default())]
    Invalid {
        /// The file.
        path: PathBuf,
        /// 1-based line of the problem.
        line: usize,
        /// The key at fault, where one can be told (`http.listen`).
        key: Option<String>,
        /// What is wrong.
        message: String,
    },
}

/// Reads and checks the configuration file at `path`.
pub fn load(path: &Path) -> Result<AgentConfig, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    parse(&text, path)
}

/// Parses configuration text; `path` names it in errors.
pub fn parse(text: &str, path: &Path) -> Result<AgentConfig, ConfigError> {
    toml::from_str(text).map_err(|err| {
        let at = err.span().map(|span| span.start).unwrap_or(0);
        let (line, key) = locate(text, at);
        ConfigError::Invalid {
            path: path.to_path_buf(),
            line,
            key,
            message: err.message().trim_end().to_owned(),
        }
    })
}

/// The 1-based line of byte `at`, and the dotted key on that line (with the table it is in),
/// if the line holds a `key = value` pair or is a `[table]` header.
fn locate(text: &str, at: usize) -> (usize, Option<String>) {
    let at = at.min(text.len());
    let before = &text[..at];
    let line = before.matches('\n').count() + 1;
    let mut table: Option<String> = None;
    for previous in before.lines().take(line - 1) {
        if let Some(name) = header(previous) {
            table = Some(name);
        }
    }
    let current = text.lines().nth(line - 1).unwrap_or("");
    if let Some(name) = header(current) {
        return (line, Some(name));
    }
    let key = current
        .split_once('=')
        .map(|(key, _)| key.trim().trim_matches('"').to_owned())
        .filter(|key| !key.is_empty() && !key.starts_with('#'));
    let key = match (table, key) {
        (Some(table), Some(key)) => Some(format!("{table}.{key}")),
        (None, key) => key,
        (Some(_), None) => None,
    };
    (line, key)
}

fn header(line: &str) -> Option<String> {
    let line = line.trim();
    let name = line.strip_prefix('[')?.split(']').next()?;
    Some(name.trim_matches('[').trim().to_owned())
}

fn log_filter<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    let filter = String::deserialize(d)?;
    tracing_subscriber::EnvFilter::try_new(&filter).map_err(|err| {
        de::Error::custom(format!("not a log filter (`info`, `prof=debug`): {err}"))
    })?;
    Ok(filter)
}

fn event_list<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Event>, D::Error> {
    let names = Vec::<String>::deserialize(d)?;
    if names.is_empty() {
        return Err(de::Error::custom(
            "name at least one event, e.g. [\"cycles\"]",
        ));
    }
    events::parse_list(&names.join(",")).map_err(de::Error::custom)
}

fn positive<'de, D: Deserializer<'de>, T>(d: D) -> Result<T, D::Error>
where
    T: Deserialize<'de> + PartialOrd + Default + fmt::Display,
{
    let value = T::deserialize(d)?;
    if value <= T::default() {
        return Err(de::Error::custom(format!(
            "must be at least 1, not {value}"
        )));
    }
    Ok(value)
}

fn positive_u64<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    positive(d)
}

fn positive_u32<'de, D: Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
    positive(d)
}

fn positive_usize<'de, D: Deserializer<'de>>(d: D) -> Result<usize, D::Error> {
    positive(d)
}

/// The smallest head cap: a request line and a few ordinary headers.
const MIN_HEADER_BYTES: usize = 1024;

fn header_bytes<'de, D: Deserializer<'de>>(d: D) -> Result<usize, D::Error> {
    let bytes = usize::deserialize(d)?;
    if bytes < MIN_HEADER_BYTES {
        return Err(de::Error::custom(format!(
            "must be at least {MIN_HEADER_BYTES} bytes, not {bytes}"
        )));
    }
    Ok(bytes)
}

fn window_seconds<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    let seconds: u64 = positive(d)?;
    if seconds > 3600 {
        return Err(de::Error::custom(format!(
            "windows are at most 3600 seconds, not {seconds}"
        )));
    }
    Ok(seconds)
}

fn socket_addr<'de, D: Deserializer<'de>>(d: D) -> Result<SocketAddr, D::Error> {
    let text = String::deserialize(d)?;
    parse_listen(&text).map_err(de::Error::custom)
}

/// Parses `ADDR:PORT` for the HTTP server.
pub fn parse_listen(text: &str) -> Result<SocketAddr, String> {
    text.parse().map_err(|_| {
        format!("`{text}` is not an address and port such as {DEFAULT_LISTEN} or 0.0.0.0:6060")
    })
}

fn push_url<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    let url = String::deserialize(d)?;
    check_push_url(&url).map_err(de::Error::custom)
}

/// Checks a push URL: `http://` or `https://host[:port][/path]`, without credentials (they
/// go in `username` and `password_file`, out of logs).
pub fn check_push_url(url: &str) -> Result<String, String> {
    let Some(rest) = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"))
    else {
        return Err(format!(
            "`{url}` is not an http:// or https:// URL such as https://profiles.example.com \
             or http://127.0.0.1:4040"
        ));
    };
    let host = rest.split('/').next().unwrap_or("");
    if host.contains('@') {
        return Err(
            "the URL holds credentials; give them as `username` and `password_file` \
             ([push]) or --push-user and --push-password-file instead"
                .to_owned(),
        );
    }
    if host.is_empty() || rest.contains(['?', '#', ' ']) {
        return Err(format!(
            "`{url}` is not a server URL such as http://127.0.0.1:4040 (no query, no fragment)"
        ));
    }
    Ok(url.trim_end_matches('/').to_owned())
}

fn push_table<'de, D: Deserializer<'de>>(d: D) -> Result<Option<PushConfig>, D::Error> {
    let push = Option::<PushConfig>::deserialize(d)?;
    if let Some(push) = &push {
        push.check().map_err(de::Error::custom)?;
    }
    Ok(push)
}

/// Checks that `text` can be sent as an HTTP header value.
pub fn check_header_value(text: &str) -> Result<(), String> {
    if text.is_empty() || hyper::header::HeaderValue::from_str(text).is_err() {
        return Err(format!(
            "`{}` cannot be sent in an HTTP header: it must not be empty or hold line breaks \
             or control characters",
            text.escape_debug()
        ));
    }
    Ok(())
}

/// Checks an HTTP header name.
pub fn check_header_name(name: &str) -> Result<(), String> {
    if hyper::header::HeaderName::from_bytes(name.as_bytes()).is_err() {
        return Err(format!(
            "`{}` is not an HTTP header name (letters, digits and `-`)",
            name.escape_debug()
        ));
    }
    Ok(())
}

fn header_text<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    let text = String::deserialize(d)?;
    check_header_value(&text).map_err(de::Error::custom)?;
    Ok(Some(text))
}

fn header_map<'de, D: Deserializer<'de>>(d: D) -> Result<BTreeMap<String, String>, D::Error> {
    let headers = BTreeMap::<String, String>::deserialize(d)?;
    for (name, value) in &headers {
        check_header_name(name).map_err(de::Error::custom)?;
        check_header_value(value)
            .map_err(|err| de::Error::custom(format!("header `{name}`: {err}")))?;
    }
    Ok(headers)
}

/// Whether `text` may be a Pyroscope label name.
fn is_label_name(text: &str) -> bool {
    let mut chars = text.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.')
}

/// Whether `text` may stand in a Pyroscope name without quoting.
fn is_label_value(text: &str) -> bool {
    !text.is_empty() && !text.contains([',', '{', '}', '=', '"', '\n', ' '])
}

fn label_value<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    let value = String::deserialize(d)?;
    if !is_label_value(&value) {
        return Err(de::Error::custom(format!(
            "`{value}` cannot be used: it must not be empty or hold `,{{}}=\"` or spaces"
        )));
    }
    Ok(value)
}

fn label_map<'de, D: Deserializer<'de>>(d: D) -> Result<BTreeMap<String, String>, D::Error> {
    let labels = BTreeMap::<String, String>::deserialize(d)?;
    for (name, value) in &labels {
        if !is_label_name(name) {
            return Err(de::Error::custom(format!(
                "`{name}` is not a label name (letters, digits, `_` and `.`, not starting with a digit)"
            )));
        }
        if !is_label_value(value) {
            return Err(de::Error::custom(format!(
                "label `{name}`: `{value}` must not be empty or hold `,{{}}=\"` or spaces"
            )));
        }
    }
    Ok(labels)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The shipped example config parses, and says what the defaults are: it documents
    /// every key with its default value.
    #[test]
    fn shipped_config_is_the_defaults() {
        let text = include_str!("../../../dist/agent.toml");
        let shipped = parse_ok(text);
        let defaults = AgentConfig::default();
        assert_eq!(shipped.sampling.unwind, defaults.sampling.unwind);
        assert_eq!(
            shipped.sampling.unwind_table_size,
            defaults.sampling.unwind_table_size
        );
        let custom = parse_ok("[sampling]\nunwind = \"fp\"\nunwind_table_size = 1000\n");
        assert_eq!(custom.sampling.unwind, UnwindMode::Fp);
        assert_eq!(custom.sampling.unwind_table_size, 1000);
        assert!(parse_err("[sampling]\nunwind = \"dwarf\"\n").contains("unwind"));
    }

    fn parse_ok(text: &str) -> AgentConfig {
        parse(text, Path::new("agent.toml")).unwrap_or_else(|err| panic!("{err}"))
    }

    fn parse_err(text: &str) -> String {
        parse(text, Path::new("agent.toml"))
            .expect_err("the config is refused")
            .to_string()
    }

    /// An empty file gives the documented defaults: 19 Hz cpu-clock in 10-second windows,
    /// HTTP on 127.0.0.1:6060, no push and no directory.
    /// `off_cpu = true` adds the off-CPU event once, after the listed ones, with its minimum
    /// block time and map size.
    #[test]
    fn off_cpu_keys() {
        let config: AgentConfig = toml::from_str(
            "events = [\"cpu-clock\"]\noff_cpu = true\noff_cpu_min_us = 50\noff_cpu_tasks = 99\n",
        )
        .unwrap();
        let names: Vec<String> = config.recorded_events().iter().map(Event::name).collect();
        assert_eq!(names, ["cpu-clock", "off-cpu"]);
        assert_eq!((config.off_cpu_min_us, config.off_cpu_tasks), (50, 99));
        let listed: AgentConfig =
            toml::from_str("events = [\"off-cpu\"]\noff_cpu = true\n").unwrap();
        assert_eq!(listed.recorded_events().len(), 1);
        assert!(toml::from_str::<AgentConfig>("off_cpu_tasks = 0\n").is_err());
    }

    #[test]
    fn defaults() {
        let config = parse_ok("");
        assert_eq!(config.frequency, 19);
        assert_eq!(config.window(), Duration::from_secs(10));
        assert_eq!(config.events[0].name(), "cpu-clock");
        assert!(config.http.enabled);
        assert_eq!(config.http.listen.to_string(), "127.0.0.1:6060");
        assert_eq!(config.http.max_connections, 256);
        assert_eq!(config.http.header_timeout(), Duration::from_secs(10));
        assert_eq!(config.http.max_header_bytes, 16384);
        assert!(config.push.is_none() && config.dir.is_none());
    }

    /// Every section is read.
    #[test]
    fn full_file() {
        let config = parse_ok(
            r#"
log = "prof=debug"
events = ["cpu-clock", "page-faults:u"]
frequency = 49
window_seconds = 5

[http]
listen = "0.0.0.0:7070"
max_seconds = 30

[push]
url = "http://pyroscope:4040/"
app_name = "fleet"
labels = { env = "prod", region = "eu-1" }
queue = 4

[dir]
path = "/var/lib/prof"
max_files = 10
"#,
        );
        assert_eq!(config.events.len(), 2);
        assert_eq!(config.http.listen.port(), 7070);
        let push = config.push.unwrap();
        assert_eq!(push.url, "http://pyroscope:4040");
        assert_eq!(push.labels["region"], "eu-1");
        assert_eq!(push.queue, 4);
        assert_eq!(push.timeout_seconds, 10);
        let dir = config.dir.unwrap();
        assert_eq!((dir.max_files, dir.max_bytes), (10, 256 << 20));
    }

    /// dist/agent.toml reads as the defaults, and names every key (commented out where it
    /// has no default), so that it documents each limit and setting.
    #[test]
    fn dist_config_lists_every_key() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../dist/agent.toml");
        let text = std::fs::read_to_string(&path).unwrap();
        let config = parse(&text, &path).unwrap_or_else(|err| panic!("{err}"));
        let defaults = AgentConfig::default();
        assert_eq!(config.frequency, defaults.frequency);
        assert_eq!(config.http.max_connections, defaults.http.max_connections);
        assert_eq!(config.http.header_timeout(), defaults.http.header_timeout());
        assert_eq!(config.http.max_header_bytes, defaults.http.max_header_bytes);
        assert_eq!(config.http.max_body_bytes, defaults.http.max_body_bytes);
        assert_eq!(
            config.http.max_profile_requests,
            defaults.http.max_profile_requests
        );
        assert_eq!(config.http.shutdown_grace(), defaults.http.shutdown_grace());
        let keys = [
            "log",
            "events",
            "frequency",
            "window_seconds",
            "debug_info",
            "stack_storage_size",
            "counts_map_size",
            "unwind",
            "unwind_table_size",
            "enabled",
            "listen",
            "max_seconds",
            "max_connections",
            "header_timeout_seconds",
            "max_header_bytes",
            "max_body_bytes",
            "max_profile_requests",
            "shutdown_grace_seconds",
            "url",
            "app_name",
            "labels",
            "queue",
            "timeout_seconds",
            "ca_file",
            "username",
            "password_file",
            "token_file",
            "tenant_id",
            "headers",
            "path",
            "max_files",
            "max_bytes",
        ];
        for key in keys {
            let named = text.lines().any(|line| {
                line.trim_start_matches(['#', ' '])
                    .starts_with(&format!("{key} = "))
            });
            assert!(named, "dist/agent.toml names `{key}`");
        }
    }

    /// HTTPS with basic auth, a tenant and extra headers, as for Grafana Cloud; secrets
    /// never show in the configuration's debug output.
    #[test]
    fn https_push_with_credentials() {
        let config = parse_ok(
            r#"
[push]
url = "https://profiles-prod-001.grafana.net"
username = "123456"
password = "glc_secret"
tenant_id = "team-a"
headers = { "X-Team" = "infra" }
"#,
        );
        let push = config.push.unwrap();
        assert_eq!(push.username.as_deref(), Some("123456"));
        assert_eq!(push.tenant_id.as_deref(), Some("team-a"));
        assert_eq!(push.headers["X-Team"], "infra");
        assert!(!format!("{push:?}").contains("glc_secret"));
        let err = parse_err(
            "[push]\nurl = \"https://x\"\ntoken = \"t\"\nusername = \"u\"\npassword = \"p\"\n",
        );
        assert!(err.contains("not both"), "{err}");
    }

    /// Errors name the file, the line and the key, whether the key is unknown, the value
    /// has the wrong type, or the value is out of range.
    #[test]
    fn errors_name_key_and_line() {
        let err = parse_err("frequency = 19\nfrequncy = 20\n");
        assert!(
            err.starts_with("agent.toml:2: `frequncy`: unknown field"),
            "{err}"
        );
        let err = parse_err("\n[http]\nlisten = \"localhost\"\n");
        assert!(
            err.starts_with("agent.toml:3: `http.listen`: `localhost` is not"),
            "{err}"
        );
        let err = parse_err("window_seconds = 0\n");
        assert!(
            err.contains(":1: `window_seconds`: must be at least 1"),
            "{err}"
        );
        let err = parse_err("frequency = \"fast\"\n");
        assert!(err.contains(":1: `frequency`: invalid type"), "{err}");
        let err = parse_err("events = [\"cpu-clok\"]\n");
        assert!(err.contains("`events`: unknown event `cpu-clok`"), "{err}");
        let err = parse_err("[push]\nurl = \"ftp://x\"\n");
        assert!(
            err.contains(":2: `push.url`:") && err.contains("not an http:// or https://"),
            "{err}"
        );
        let err = parse_err("[push]\nurl = \"https://u:p@x\"\n");
        assert!(err.contains("holds credentials"), "{err}");
        let err = parse_err("[push]\nurl = \"https://x\"\npassword_file = \"/p\"\n");
        assert!(
            err.contains("`push`: a password needs a `username`"),
            "{err}"
        );
        let err = parse_err("[push]\nurl = \"http://x\"\nca_file = \"/ca.pem\"\n");
        assert!(err.contains("`ca_file` is for https:// URLs"), "{err}");
        let err = parse_err(
            "[push]\nurl = \"https://x\"\ntenant_id = \"a\"\nheaders = { X-Scope-OrgID = \"b\" }\n",
        );
        assert!(err.contains("is set by the agent"), "{err}");
        let err = parse_err("[push]\nurl = \"https://x\"\nheaders = { \"bad name\" = \"v\" }\n");
        assert!(
            err.contains(":3: `push.headers`: `bad name` is not an HTTP header"),
            "{err}"
        );
        let err = parse_err("[push]\nurl = \"http://x\"\nlabels = { \"bad name\" = \"v\" }\n");
        assert!(err.contains(":3: `push.labels`:"), "{err}");
        let err = parse_err("[dir]\nmax_files = 3\n");
        assert!(err.contains("missing field `path`"), "{err}");
        let err = parse_err("[http]\nmax_header_bytes = 100\n");
        assert!(
            err.contains(":2: `http.max_header_bytes`: must be at least 1024"),
            "{err}"
        );
        let err = parse_err("frequency = 19\n[http\n");
        assert!(err.starts_with("agent.toml:2:"), "{err}");
    }
}
