//! `prof agent`: a real agent sampling the whole machine, read over HTTP by `go tool pprof`,
//! pushing to a stand-in for Pyroscope's `/ingest`, writing its directory, losing samples to
//! full maps without failing, flushing on SIGTERM, refusing bad configs and bad queries.

use std::collections::HashMap;
use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

use rustix::process::Signal;

use prof::export::pprof;
use prof::profile::Profile;

use crate::ingest::Ingest;
use crate::record::stop;
use crate::report::go;
use crate::{describe, prof, serial, workload};

/// A port nobody listens on now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A running `prof agent`, killed if the test fails.
pub struct Agent {
    child: Option<Child>,
    pub port: u16,
    log: tempfile::NamedTempFile,
    /// The config file it was started with, if any.
    _config: Option<tempfile::NamedTempFile>,
}

impl Agent {
    /// Starts `prof agent --listen 127.0.0.1:<free port> <args>` and waits until it serves.
    pub fn start(args: &[&str]) -> Agent {
        Agent::start_with(None, args)
    }

    /// Starts the agent with a config file holding `config`, then `args`.
    pub fn start_with_config(config: &str, args: &[&str]) -> Agent {
        let file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(file.path(), config).unwrap();
        Agent::start_with(Some(file), args)
    }

    fn start_with(config: Option<tempfile::NamedTempFile>, args: &[&str]) -> Agent {
        let port = free_port();
        let log = tempfile::NamedTempFile::new().unwrap();
        let mut command = prof();
        command.arg("agent");
        if let Some(config) = &config {
            command.arg("--config").arg(config.path());
        }
        let child = command
            .arg("--listen")
            .arg(format!("127.0.0.1:{port}"))
            .args(args)
            .env("RUST_LOG", "prof=debug")
            .stdout(Stdio::null())
            .stderr(log.reopen().unwrap())
            .spawn()
            .unwrap();
        let agent = Agent {
            child: Some(child),
            port,
            log,
            _config: config,
        };
        agent.wait_for(
            "the agent to serve /healthz",
            Duration::from_secs(30),
            |a| a.get("/healthz").0 == 200,
        );
        agent
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log.path()).unwrap_or_default()
    }

    /// GETs `path`: (status, body); status 0 if the agent does not answer.
    pub fn get(&self, path: &str) -> (u16, Vec<u8>) {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(30)))
            .build()
            .into();
        match agent
            .get(format!("http://127.0.0.1:{}{path}", self.port))
            .call()
        {
            Ok(mut response) => (
                response.status().as_u16(),
                response.body_mut().read_to_vec().unwrap(),
            ),
            Err(_) => (0, Vec::new()),
        }
    }

    /// Every sample of `/metrics`, by name with labels.
    pub fn metrics(&self) -> HashMap<String, f64> {
        let (status, body) = self.get("/metrics");
        assert_eq!(status, 200, "/metrics answers");
        String::from_utf8(body)
            .unwrap()
            .lines()
            .filter(|line| !line.starts_with('#'))
            .filter_map(|line| {
                let (name, value) = line.rsplit_once(' ')?;
                Some((name.to_owned(), value.parse().ok()?))
            })
            .collect()
    }

    pub fn metric(&self, name: &str) -> f64 {
        let metrics = self.metrics();
        *metrics
            .get(name)
            .unwrap_or_else(|| panic!("{name} in /metrics: {metrics:?}"))
    }

    /// Waits until the first window has closed: by then every running binary's symbols have
    /// been read, which on a busy machine (and in a debug build) takes seconds, so a
    /// profile request after it is answered in about its seconds.
    pub fn wait_for_first_window(&self) {
        self.wait_for("the first window", Duration::from_secs(60), |a| {
            a.metric("prof_agent_windows_total") >= 1.0
        });
    }

    /// Polls `done` until it holds, failing after `timeout`.
    pub fn wait_for(&self, what: &str, timeout: Duration, done: impl Fn(&Agent) -> bool) {
        let deadline = Instant::now() + timeout;
        while !done(self) {
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}; agent log:\n{}",
                self.log()
            );
            sleep(Duration::from_millis(200));
        }
    }

    /// The agent's pid.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    /// Whether the agent is still running.
    pub fn running(&mut self) -> bool {
        self.child.as_mut().unwrap().try_wait().unwrap().is_none()
    }

    /// The agent's own (anonymous) resident memory in bytes, from `/proc/<pid>/status`:
    /// what it allocated, without the pages of the binaries it maps to read their symbols.
    pub fn resident_anon(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        let line = status
            .lines()
            .find(|l| l.starts_with("RssAnon:"))
            .expect("RssAnon in /proc/<pid>/status");
        let kb: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
        kb * 1024
    }

    /// Sends SIGTERM and waits for the exit.
    pub fn terminate(self) -> (ExitStatus, String) {
        self.signal(Signal::TERM)
    }

    /// Sends `signal` and waits for the exit.
    pub fn signal(mut self, signal: Signal) -> (ExitStatus, String) {
        let mut child = self.child.take().unwrap();
        rustix::process::kill_process(rustix::process::Pid::from_child(&child), signal).unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return (status, self.log());
            }
            assert!(
                Instant::now() < deadline,
                "the agent exits after {signal:?}; log:\n{}",
                self.log()
            );
            sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if let Some(child) = &mut self.child {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The query parameters of a URL.
fn query(url: &str) -> HashMap<String, String> {
    let query = url.split_once('?').map_or("", |(_, q)| q);
    form_urlencoded::parse(query.as_bytes())
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}

/// The samples of `profile`'s first event whose stacks contain `function`, with the labels
/// of the first such stack.
pub fn samples_in(profile: &Profile, function: &str) -> (u64, Option<prof::profile::Labels>) {
    let mut samples = 0;
    let mut labels = None;
    for (stack, value) in &profile.events[0].stacks {
        if profile
            .frame_names(stack, false)
            .iter()
            .any(|name| name == function)
        {
            samples += value.samples;
            labels.get_or_insert_with(|| profile.labels.get(stack.labels).clone());
        }
    }
    (samples, labels)
}

fn extra<'a>(labels: &'a prof::profile::Labels, key: &str) -> Option<&'a str> {
    labels
        .extra
        .iter()
        .find(|(k, _)| &**k == key)
        .map(|(_, v)| &**v)
}

/// The one window the agent wrote into `dir`, checked against the backends' rules, decoded.
fn only_window(dir: &Path) -> Profile {
    let files: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(files.len(), 1, "one window written: {files:?}");
    crate::assert_backends_accept(&files[0]);
    pprof::decode_bytes(&std::fs::read(&files[0]).unwrap()).unwrap()
}

/// Starts `workload` with `args`, quietly.
pub fn spawn(binary: &Path, args: &[&str]) -> Child {
    Command::new(binary)
        .args(args)
        .stdout(Stdio::null())
        .spawn()
        .expect("the workload starts")
}

/// `go tool pprof`, reading `/debug/pprof/profile?seconds=2` as it would from a Go program,
/// with its default symbolization, finds a busy workload's hot function.
#[test]
fn go_tool_pprof_reads_the_profile_endpoint() {
    let _serial = serial();
    let busy = spawn(&workload("forever"), &["60"]);
    let agent = Agent::start(&["-F", "49", "--window", "1"]);
    agent.wait_for_first_window();
    let url = format!(
        "http://127.0.0.1:{}/debug/pprof/profile?seconds=2",
        agent.port
    );
    let tmp = tempfile::tempdir().unwrap();
    let output = go()
        .env("PPROF_TMPDIR", tmp.path())
        .args(["tool", "pprof", "-raw", &url])
        .output()
        .unwrap();
    stop(busy);
    assert!(output.status.success(), "{}", describe(&output));
    let raw = String::from_utf8_lossy(&output.stdout);
    assert!(raw.contains("forever_hot"), "forever_hot in:\n{raw}");
    assert!(raw.contains("comm:[forever]"), "the comm label in:\n{raw}");
    assert_eq!(agent.metric("prof_agent_profile_requests_total"), 1.0);
    let (status, log) = agent.terminate();
    assert!(status.success(), "{log}");
}

/// The agent unwinds a running program built without frame pointers with its tables: the
/// comparison callback sits under libc's qsort, under main, in ≥ 95% of its samples, and
/// `/metrics` shows the tables it loaded.
#[test]
fn agent_unwinds_code_without_frame_pointers() {
    let _serial = serial();
    let busy = spawn(&workload("qsort_nofp"), &["60"]);
    let pid = busy.id();
    let agent = Agent::start(&["-F", "199", "--window", "2"]);
    // The first capture may begin before the tables of a program already running are
    // built; the second one is taken with them in place.
    let (status, _) = agent.get("/debug/pprof/profile?seconds=1");
    assert_eq!(status, 200, "{}", agent.log());
    let (status, body) = agent.get("/debug/pprof/profile?seconds=3");
    assert_eq!(status, 200, "{}", agent.log());
    let profile = pprof::decode_bytes(&body).unwrap();
    let mut ours = 0;
    let mut whole = 0;
    let mut seen = Vec::new();
    for (stack, value) in &profile.events[0].stacks {
        if profile.labels.get(stack.labels).pid != Some(pid) {
            continue;
        }
        let names = profile.frame_names(stack, false);
        let at = |name: &str| names.iter().position(|n| n == name);
        ours += value.samples;
        if seen.len() < 10 {
            seen.push(names.join(";"));
        }
        if let (Some(main), Some(qsort), Some(callback)) = (
            at("main"),
            names.iter().position(|n| n.contains("qsort_r")),
            at("compare_keys"),
        ) && main < qsort
            && qsort < callback
        {
            whole += value.samples;
        }
    }
    stop(busy);
    assert!(
        ours > 50,
        "{ours} samples of the workload; log:\n{}",
        agent.log()
    );
    let in_callback = whole as f64 / ours as f64;
    assert!(
        in_callback >= 0.6,
        "{:.0}% of the workload's samples are main → qsort → compare_keys, e.g.\n{}",
        in_callback * 100.0,
        seen.join("\n")
    );
    let reached_main = profile.events[0]
        .stacks
        .iter()
        .filter(|(stack, _)| profile.labels.get(stack.labels).pid == Some(pid))
        .filter(|(stack, _)| {
            profile
                .frame_names(stack, false)
                .iter()
                .any(|n| n == "main")
        })
        .map(|(_, value)| value.samples)
        .sum::<u64>();
    assert!(
        reached_main as f64 >= 0.95 * ours as f64,
        "{reached_main} of {ours} samples reach main"
    );
    agent.wait_for("a window", Duration::from_secs(30), |a| {
        a.metric("prof_agent_windows_total") >= 1.0
    });
    // The workload's executable, libc and the dynamic linker at least.
    assert!(agent.metric("prof_agent_unwind_table_files") >= 3.0);
    let (status, log) = agent.terminate();
    assert!(status.success(), "{log}");
}

/// Windows are pushed to `/ingest` with Pyroscope's query parameters and a pprof body that
/// holds the workload with its labels. While the receiver is down the agent goes on
/// sampling, the queue stays within its bound and drops are counted; when the receiver is
/// back, pushing resumes.
#[test]
fn pushes_to_ingest_and_survives_an_outage() {
    let _serial = serial();
    let forever = workload("forever");
    let busy = spawn(&forever, &["120"]);
    let ingest = Ingest::start(0);
    let port = ingest.port();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("agent.toml");
    std::fs::write(
        &config,
        format!(
            "frequency = 49\nwindow_seconds = 2\n\n[push]\nurl = \"http://127.0.0.1:{port}\"\n\
             app_name = \"ci\"\nlabels = {{ env = \"test\" }}\nqueue = 2\ntimeout_seconds = 2\n"
        ),
    )
    .unwrap();
    let agent = Agent::start(&["--config", config.to_str().unwrap()]);
    // The first windows take longer to close (every binary's symbols and unwind tables
    // are read then): judge a later one.
    agent.wait_for("four pushes", Duration::from_secs(60), |_| {
        ingest.count() >= 4
    });

    let requests = ingest.requests();
    let request = requests.last().unwrap();
    let (url, body) = (&request.url, &request.body);
    assert_eq!(
        request.header("content-type"),
        Some("application/octet-stream")
    );
    let params = query(url);
    assert!(url.starts_with("/ingest?"), "{url}");
    let name = &params["name"];
    assert!(
        name.starts_with("ci{env=test,hostname=") && name.ends_with('}'),
        "{name}"
    );
    assert_eq!(params["format"], "pprof");
    assert_eq!(params["sampleRate"], "49");
    assert_eq!(params["spyName"], "prof");
    let from: u64 = params["from"].parse().unwrap();
    let until: u64 = params["until"].parse().unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    // Unix seconds of a window of about 2 s.
    assert!(
        from <= until && until - from <= 10 && now.abs_diff(until) < 60,
        "{from}..{until} at {now}"
    );
    let profile = pprof::decode_bytes(body).unwrap();
    let (samples, labels) = samples_in(&profile, "forever_hot");
    assert!(samples > 0, "forever_hot is in the pushed window");
    let labels = labels.unwrap();
    assert_eq!(labels.pid, Some(busy.id()));
    assert_eq!(labels.comm.as_deref(), Some("forever"));
    assert_eq!(extra(&labels, "executable"), forever.to_str());

    // The receiver goes away.
    ingest.stop();
    let windows = agent.metric("prof_agent_windows_total");
    let samples = agent.metric("prof_agent_samples_total{event=\"cpu-clock\"}");
    agent.wait_for("dropped windows", Duration::from_secs(40), |a| {
        a.metric("prof_agent_dropped_windows_total") >= 2.0
    });
    let metrics = agent.metrics();
    assert!(
        metrics["prof_agent_push_failures_total"] >= 1.0,
        "{metrics:?}"
    );
    assert!(
        metrics["prof_agent_push_queue_windows"] <= 2.0,
        "{metrics:?}"
    );
    assert!(
        metrics["prof_agent_windows_total"] >= windows + 3.0,
        "{metrics:?}"
    );
    assert!(
        metrics["prof_agent_samples_total{event=\"cpu-clock\"}"] > samples,
        "{metrics:?}"
    );

    // It comes back on the same port.
    let ingest = Ingest::start(port);
    agent.wait_for("pushing to resume", Duration::from_secs(60), |_| {
        ingest.count() >= 2
    });
    assert!(pprof::decode_bytes(&ingest.requests()[0].body).is_ok());
    stop(busy);
    let (status, log) = agent.terminate();
    assert!(status.success(), "{log}");
    assert!(log.contains("pushing works again"), "{log}");
    ingest.stop();
}

/// With maps far too small for a whole machine, samples are counted as lost, by reason,
/// and the agent goes on serving.
#[test]
fn full_maps_are_counted_not_fatal() {
    let _serial = serial();
    let busy = spawn(&workload("forever"), &["60"]);
    let agent = Agent::start(&[
        "-F",
        "199",
        "--window",
        "1",
        "--stack-storage-size",
        "4",
        "--counts-map-size",
        "4",
    ]);
    agent.wait_for("losses to both full maps", Duration::from_secs(30), |a| {
        let metrics = a.metrics();
        let lost = |reason: &str| {
            metrics[&format!(
                "prof_agent_lost_samples_total{{event=\"cpu-clock\",reason=\"{reason}\"}}"
            )]
        };
        lost("counts_map_full") > 0.0 && lost("stack_map_full") > 0.0
    });
    let windows = agent.metric("prof_agent_windows_total");
    agent.wait_for("more windows", Duration::from_secs(30), |a| {
        a.metric("prof_agent_windows_total") >= windows + 2.0
    });
    assert_eq!(agent.get("/healthz").0, 200);
    stop(busy);
    let (status, log) = agent.terminate();
    assert!(status.success(), "{log}");
}

/// With `--off-cpu`, the agent's windows carry the off-cpu event: blocks of 900 and 300 ms
/// that span the 1-second windows keep their stacks (the stacks of blocks still pending are
/// carried into the next generation of the maps) and add up to the 3:1 split, and /metrics
/// counts the event and its off-CPU losses.
#[test]
fn off_cpu_spans_windows() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let agent = Agent::start(&[
        "-e",
        "cpu-clock",
        "--off-cpu",
        "--window",
        "1",
        "--dir",
        dir.path().to_str().unwrap(),
    ]);
    let sleeps = Command::new(workload("sleeps"))
        .args(["3", "300"])
        .status()
        .unwrap();
    assert!(sleeps.success());
    let windows = agent.metric("prof_agent_windows_total");
    agent.wait_for(
        "the window after the sleeps",
        Duration::from_secs(30),
        |a| a.metric("prof_agent_windows_total") >= windows + 1.0,
    );
    let metrics = agent.metrics();
    assert!(
        metrics["prof_agent_samples_total{event=\"off-cpu\"}"] > 0.0,
        "{metrics:?}"
    );
    assert!(
        metrics.contains_key(
            "prof_agent_lost_samples_total{event=\"off-cpu\",reason=\"task_map_full\"}"
        ),
        "{metrics:?}"
    );
    let (status, log) = agent.terminate();
    assert!(status.success(), "{log}");

    let (mut three, mut one, mut unknown) = (0, 0, 0);
    for file in std::fs::read_dir(dir.path()).unwrap() {
        let profile = pprof::decode_bytes(&std::fs::read(file.unwrap().path()).unwrap()).unwrap();
        let off_cpu = profile.event_index("off-cpu").expect("an off-cpu event");
        for (stack, value) in &profile.events[off_cpu].stacks {
            let frames = profile.frame_names(stack, false);
            if frames[0] != "sleeps" {
                continue;
            }
            if frames.iter().any(|f| f == "sleep_three") {
                three += value.period;
            } else if frames.iter().any(|f| f == "sleep_one") {
                one += value.period;
            } else if frames.iter().any(|f| f == "[unknown]") {
                unknown += value.period;
            }
        }
    }
    assert!(one > 0, "sleep_one blocked; agent log:\n{log}");
    let ratio = three as f64 / one as f64;
    assert!(
        (2.7..=3.3).contains(&ratio),
        "sleep_three:sleep_one = {ratio:.3} ({three} and {one} ns)"
    );
    assert!(
        unknown < (three + one) / 20,
        "{unknown} ns of the sleeps lost their stacks"
    );
}

/// SIGTERM ends the current window early and exports it everywhere (the directory and the
/// push receiver) before a clean exit, with a process that exited during the window named.
#[test]
fn sigterm_flushes_the_current_window() {
    flushes_the_current_window_on(Signal::TERM);
}

/// SIGHUP ends the agent as SIGTERM does (it used to kill it, and lose the window).
#[test]
fn sighup_flushes_the_current_window() {
    flushes_the_current_window_on(Signal::HUP);
}

fn flushes_the_current_window_on(signal: Signal) {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let ingest = Ingest::start(0);
    let busy = spawn(&workload("forever"), &["60"]);
    let agent = Agent::start(&[
        "-F",
        "99",
        "--window",
        "600",
        "--dir",
        dir.path().to_str().unwrap(),
        "--push",
        &format!("http://127.0.0.1:{}", ingest.port()),
    ]);
    let exited = Command::new(workload("short_lived")).status().unwrap();
    assert!(exited.success());
    sleep(Duration::from_secs(1));
    let (status, log) = agent.signal(signal);
    stop(busy);
    assert_eq!(status.code(), Some(0), "{log}");

    let written = only_window(dir.path());
    assert!(samples_in(&written, "forever_hot").0 > 0, "{log}");
    assert!(
        samples_in(&written, "short_lived_hot").0 > 0,
        "the exited process is symbolized"
    );
    let pushed = ingest.requests();
    assert_eq!(
        pushed.len(),
        1,
        "the flushed window is pushed before the exit"
    );
    crate::assert_backends_accept_bytes(&pushed[0].body, "the pushed window");
    let pushed = pprof::decode_bytes(&pushed[0].body).unwrap();
    assert!(samples_in(&pushed, "forever_hot").0 > 0);
    ingest.stop();
}

/// A bad config file is refused with the file, line and key, before anything is attached.
#[test]
fn bad_config_names_line_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("agent.toml");
    std::fs::write(&config, "# prof agent\nwindow_seconds = 5\nfrequency = 0\n").unwrap();
    let output = prof()
        .args(["agent", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2), "{}", describe(&output));
    let stderr = String::from_utf8_lossy(&output.stderr);
    let expected = format!(
        "prof: {}:3: `frequency`: must be at least 1",
        config.display()
    );
    assert!(stderr.contains(&expected), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");

    std::fs::write(
        &config,
        "[http]\nlisten = \"127.0.0.1:6060\"\nlisen = \"x\"\n",
    )
    .unwrap();
    let output = prof()
        .args(["agent", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains(":3: `http.lisen`: unknown field"),
        "{stderr}"
    );
}

/// Malformed queries get 400 with a reason, unknown paths 404, and the agent stays up.
#[test]
fn malformed_queries_are_400() {
    let _serial = serial();
    let agent = Agent::start(&["--window", "1"]);
    for path in [
        "/debug/pprof/profile?seconds=abc",
        "/debug/pprof/profile?seconds=-5",
        "/debug/pprof/profile?seconds=0",
        "/debug/pprof/profile?seconds=1&seconds=2",
        "/debug/pprof/profile?seconds=99999999999999999999999999",
        "/debug/pprof/profile?secs=2",
        "/flamegraph.svg?seconds=1.5",
        "/flamegraph.svg?event=no-such-event",
        "/flamegraph.svg?event=",
        "/metrics?x",
        "/healthz?%zz",
    ] {
        let (status, body) = agent.get(path);
        assert_eq!(status, 400, "{path}: {}", String::from_utf8_lossy(&body));
        assert!(!body.is_empty(), "{path} says why");
    }
    assert_eq!(agent.get("/debug/pprof/heap").0, 404);
    agent.wait_for("a window", Duration::from_secs(10), |a| {
        a.metric("prof_agent_windows_total") >= 1.0
    });
    let (status, svg) = agent.get("/flamegraph.svg?seconds=5&event=cpu-clock");
    assert_eq!(status, 200);
    assert!(String::from_utf8_lossy(&svg).contains("<svg"));
    assert_eq!(agent.get("/healthz").0, 200);
    let (status, log) = agent.terminate();
    assert!(status.success(), "{log}");
}
