//! Pushing to Pyroscope: the `/ingest` request for one window.
//!
//! Pyroscope (and Alloy's `pyroscope.receive_http`) take `POST /ingest` with the profile in
//! the body and its metadata in the query: `name` (the application name followed by
//! `{label=value,...}`), `from` and `until` (Unix seconds), `format=pprof`, `sampleRate`
//! (Hz) and `spyName`. The pprof body brings its own sample types and units.

use std::collections::BTreeMap;
use std::time::{SystemTime, UNIX_EPOCH};

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
