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
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crossbeam_channel::Receiver;

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

/// Starts the pusher on a thread of its own; the receiver gets a message when it has
/// finished (queue closed and emptied, or the server unreachable once closed).
pub fn spawn_pusher(config: &PushConfig, shared: Arc<Shared>) -> Receiver<()> {
    let (done, finished) = crossbeam_channel::bounded(1);
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_secs(config.timeout_seconds)))
        .http_status_as_error(true)
        .user_agent(concat!("prof/", env!("CARGO_PKG_VERSION")))
        .build()
        .into();
    std::thread::Builder::new()
        .name("prof-push".into())
        .spawn(move || {
            push_until_closed(&agent, &shared);
            let _ = done.send(());
        })
        .expect("spawning the push thread");
    finished
}

fn push_until_closed(agent: &ureq::Agent, shared: &Shared) {
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
        match post(agent, &item) {
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

fn post(agent: &ureq::Agent, item: &PushItem) -> Result<(), ureq::Error> {
    agent
        .post(&item.url)
        .header("Content-Type", "application/octet-stream")
        .send(&item.body[..])?;
    Ok(())
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
