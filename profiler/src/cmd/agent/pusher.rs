//! The pusher: posts queued windows to Pyroscope's `/ingest`, oldest first, on a thread of
//! its own. A window stays at the front of the queue until it is accepted; failures are
//! retried with exponential backoff, while the sampling loop goes on filling the queue, which
//! drops its oldest windows when full (counted in `/metrics`).

use std::sync::Arc;
use std::time::Duration;

use crossbeam_channel::Receiver;

use prof::agent::config::PushConfig;

use super::{PushItem, Shared};

/// The first retry waits this long; each failure doubles it, up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// Starts the pusher; the receiver gets a message when it has finished (queue closed and
/// emptied, or the server unreachable once closed).
pub fn spawn(config: PushConfig, shared: Arc<Shared>) -> Receiver<()> {
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
            run(&agent, &shared);
            let _ = done.send(());
        })
        .expect("spawning the push thread");
    finished
}

fn run(agent: &ureq::Agent, shared: &Shared) {
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
