//! `/metrics` against Debian's Prometheus: `promtool check metrics` accepts it, and a real
//! Prometheus server scraping the agent on loopback answers queries for its counters.

use std::io::Write;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::agent::{Agent, free_port};
use crate::{describe, serial};

/// Debian's prometheus package, which scripts/test.sh installs.
fn tool(name: &str) -> Command {
    let found = Command::new(name).arg("--version").output();
    assert!(
        found.is_ok_and(|o| o.status.success()),
        "these tests need `{name}` (apt-get install prometheus; scripts/test.sh installs it)"
    );
    Command::new(name)
}

/// `promtool check metrics` finds nothing to complain about in `/metrics`, lints included.
#[test]
fn promtool_accepts_the_metrics() {
    let _serial = serial();
    let agent = Agent::start(&["--window", "1"]);
    agent.wait_for_first_window();
    let (status, metrics) = agent.get("/metrics");
    assert_eq!(status, 200);
    let mut promtool = tool("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    promtool.stdin.take().unwrap().write_all(&metrics).unwrap();
    let output = promtool.wait_with_output().unwrap();
    assert!(output.status.success(), "{}", describe(&output));
    assert!(
        output.stdout.is_empty() && output.stderr.is_empty(),
        "no lint: {}",
        describe(&output)
    );
    let (status, log) = agent.terminate();
    assert!(status.success(), "{log}");
}

/// A Prometheus server, killed when dropped.
struct Prometheus(Child);

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A real Prometheus scrapes the agent every second; its query API then returns the
/// agent's sample counter for the sampled event, with a value.
#[test]
fn prometheus_scrapes_the_agent() {
    let _serial = serial();
    let agent = Agent::start(&["-F", "49", "--window", "1"]);
    let tmp = tempfile::tempdir().unwrap();
    let config = tmp.path().join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n\
             scrape_configs:\n  - job_name: prof\n    static_configs:\n\
             \x20     - targets: ['127.0.0.1:{}']\n",
            agent.port
        ),
    )
    .unwrap();
    let port = free_port();
    let log = std::fs::File::create(tmp.path().join("prometheus.log")).unwrap();
    let _prometheus = Prometheus(
        tool("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                tmp.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap(),
    );
    let client: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(10)))
        .build()
        .into();
    let query = |expr: &str| -> String {
        let url = format!("http://127.0.0.1:{port}/api/v1/query");
        match client.get(&url).query("query", expr).call() {
            Ok(mut response) => response.body_mut().read_to_string().unwrap_or_default(),
            Err(_) => String::new(),
        }
    };
    let expr = "prof_agent_samples_total{job=\"prof\",event=\"cpu-clock\"} > 0";
    agent.wait_for(
        "Prometheus to have scraped samples",
        Duration::from_secs(90),
        |_| query(expr).contains("\"prof_agent_samples_total\""),
    );
    let answer = query(expr);
    assert!(answer.contains("\"status\":\"success\""), "{answer}");
    assert!(answer.contains("\"instance\":\"127.0.0.1:"), "{answer}");
    // The scrape itself was healthy.
    let up = query("up{job=\"prof\"}");
    assert!(up.contains("\"value\":[") && up.contains(",\"1\"]"), "{up}");
    let (status, log) = agent.terminate();
    assert!(status.success(), "{log}");
}
