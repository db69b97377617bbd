//! `prof agent`'s HTTP layer against hostile and ordinary clients: requests with bodies it
//! does not take, half-sent heads, huge heads, more connections than it allows, signals
//! during a scrape, and Go's symbol protocol as `go tool pprof` speaks it. After each
//! attack the agent still serves `/healthz`, and its own memory stays under its budget.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use prof::export::pprof;

use crate::agent::{Agent, samples_in, spawn};
use crate::record::stop;
use crate::report::go;
use crate::{describe, serial, workload};

/// The agent's budget for its own memory (README, BENCHMARKS.md): 50 MB.
const BUDGET: u64 = 50 << 20;

/// Sends `request` on a fresh connection and reads the answer until the server closes it
/// (or 30 s pass).
fn exchange(port: u16, request: &[u8]) -> String {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    // The server may refuse before it has read everything: a failed write is no failure.
    let _ = stream.write_all(request);
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    String::from_utf8_lossy(&answer).into_owned()
}

/// The status line's code of a raw answer.
fn status_of(answer: &str) -> &str {
    answer.split_whitespace().nth(1).unwrap_or("(no answer)")
}

/// Asserts that the agent is alive, serves `/healthz` and holds less than its budget.
fn assert_healthy(agent: &mut Agent, after: &str) {
    assert!(
        agent.running(),
        "the agent died after {after}:\n{}",
        agent.log()
    );
    assert_eq!(agent.get("/healthz").0, 200, "/healthz after {after}");
    let resident = agent.resident_anon();
    assert!(
        resident < BUDGET,
        "after {after}, the agent holds {} MB of its own memory",
        resident >> 20
    );
}

/// A request that declares a 100 GB body is refused with 413 without the body being read
/// (it used to abort the agent on the allocation), whatever its method.
#[test]
fn huge_content_length_is_refused() {
    let _serial = serial();
    let mut agent = Agent::start(&["--window", "1"]);
    for method in ["POST", "GET"] {
        let request = format!(
            "{method} /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999999\r\n\r\nabc"
        );
        let answer = exchange(agent.port, request.as_bytes());
        assert_eq!(status_of(&answer), "413", "{method}: {answer}");
        assert!(answer.contains("takes no request body"), "{answer}");
    }
    // The symbol endpoint takes a body, up to its limit.
    let answer = exchange(
        agent.port,
        b"POST /debug/pprof/symbol HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999999\r\n\r\n0x1",
    );
    assert_eq!(status_of(&answer), "413", "{answer}");
    assert!(answer.contains("max_body_bytes"), "{answer}");
    assert_healthy(&mut agent, "a 100 GB Content-Length");
    assert!(
        agent.metric("prof_agent_http_refused_total{reason=\"body_too_large\"}") >= 3.0,
        "counted"
    );
    let (status, log) = agent.terminate();
    assert!(status.success(), "{log}");
}

/// 200 connections that send half a request head are closed once the head timeout has
/// passed (and an idle kept-alive connection too); while they are open, `/healthz` is
/// served, and the agent's threads, descriptors and memory do not grow with them.
#[test]
fn half_sent_heads_are_closed_after_the_timeout() {
    let _serial = serial();
    let timeout = 2;
    let mut agent = Agent::start_with_config(
        &format!("[http]\nheader_timeout_seconds = {timeout}\n"),
        &["--window", "1"],
    );
    let pid = agent.pid();
    // Sockets only: the symbolizer opens the files of new processes meanwhile.
    let fds = || {
        std::fs::read_dir(format!("/proc/{pid}/fd"))
            .unwrap()
            .filter_map(|fd| std::fs::read_link(fd.ok()?.path()).ok())
            .filter(|target| target.to_string_lossy().starts_with("socket:"))
            .count()
    };
    let threads = || {
        std::fs::read_dir(format!("/proc/{pid}/task"))
            .unwrap()
            .count()
    };
    let (fds_before, threads_before) = (fds(), threads());

    let mut idle = TcpStream::connect(("127.0.0.1", agent.port)).unwrap();
    idle.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut half_open: Vec<TcpStream> = (0..200)
        .map(|_| {
            let mut stream = TcpStream::connect(("127.0.0.1", agent.port)).unwrap();
            stream
                .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ")
                .unwrap();
            stream
        })
        .collect();
    let opened = Instant::now();
    assert_eq!(agent.get("/healthz").0, 200, "served while 200 heads hang");
    assert!(
        threads() <= threads_before + 2,
        "{} threads for 200 connections, {threads_before} before",
        threads()
    );

    // Every one is closed by the server: a read sees the end (or a reset), not our own
    // 30-second read timeout.
    half_open.push(idle);
    for (i, stream) in half_open.iter_mut().enumerate() {
        stream
            .set_read_timeout(Some(Duration::from_secs(timeout + 30)))
            .unwrap();
        let mut rest = Vec::new();
        if let Err(err) = stream.read_to_end(&mut rest) {
            assert_eq!(
                err.kind(),
                std::io::ErrorKind::ConnectionReset,
                "connection {i} still open {:?} after it opened",
                opened.elapsed()
            );
        }
    }
    drop(half_open);
    let metrics = agent.metrics();
    assert!(
        metrics["prof_agent_http_refused_total{reason=\"header_timeout\"}"] >= 200.0,
        "{metrics:?}"
    );
    assert_healthy(&mut agent, "200 half-sent heads");
    assert!(
        fds() <= fds_before + 2,
        "{} sockets once they are closed, {fds_before} before",
        fds()
    );
    let (status, log) = agent.terminate();
    assert!(status.success(), "{log}");
}

/// Past `max_connections`, a connection is answered 503 and closed at once; once the
/// others close, the agent serves again.
#[test]
fn connections_past_the_limit_are_refused() {
    let _serial = serial();
    // A head timeout long enough that the held connections stay open through the test.
    let mut agent = Agent::start_with_config(
        "[http]\nmax_connections = 8\nheader_timeout_seconds = 120\n",
        &["--window", "1"],
    );
    // Hold eight connections. One that finds the slots still taken by a connection of our
    // earlier requests, not yet seen closed, is answered 503 and closed: replace it, until
    // the agent holds all eight in silence.
    let mut held: Vec<TcpStream> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while held.len() < 8 {
        assert!(
            Instant::now() < deadline,
            "the agent holds eight connections"
        );
        while held.len() < 8 {
            held.push(TcpStream::connect(("127.0.0.1", agent.port)).unwrap());
        }
        held.retain_mut(|stream| {
            stream
                .set_read_timeout(Some(Duration::from_millis(500)))
                .unwrap();
            let mut byte = [0u8; 1];
            matches!(
                stream.read(&mut byte),
                Err(err) if matches!(err.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut)
            )
        });
    }
    let probe = b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
    // The agent accepts in order: the ninth connection waits behind the eight.
    let answer = exchange(agent.port, probe);
    assert_eq!(status_of(&answer), "503", "{answer}\n{:?}", agent.metrics());
    assert!(answer.contains("too many connections"), "{answer}");
    let answer = exchange(agent.port, probe);
    assert_eq!(status_of(&answer), "503", "still full: {answer}");
    drop(held);
    agent.wait_for("the slots to free", Duration::from_secs(10), |a| {
        a.get("/healthz").0 == 200
    });
    assert!(agent.metric("prof_agent_http_refused_total{reason=\"too_many_connections\"}") >= 1.0);
    assert_healthy(&mut agent, "too many connections");
    let (status, log) = agent.terminate();
    assert!(status.success(), "{log}");
}

/// A 64 MB request head is answered 431 after the first 16 KiB and the connection closed;
/// the agent's memory does not follow the head (a 300 MB one took it to 370 MB).
#[test]
fn a_64_mb_header_is_refused() {
    let _serial = serial();
    let mut agent = Agent::start(&["--window", "1"]);
    let mut request = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Huge: ".to_vec();
    request.resize(request.len() + (64 << 20), b'a');
    request.extend_from_slice(b"\r\n\r\n");
    let answer = exchange(agent.port, &request);
    assert_eq!(status_of(&answer), "431", "{answer}");
    assert_healthy(&mut agent, "a 64 MB header");
    assert!(agent.metric("prof_agent_http_refused_total{reason=\"header_too_large\"}") >= 1.0);
    let (status, log) = agent.terminate();
    assert!(status.success(), "{log}");
}

/// SIGTERM while a 30-second profile request waits answers it with what was captured so
/// far, a valid profile holding the busy workload (the scraper used to get an empty reply),
/// and the agent exits 0.
#[test]
fn sigterm_during_a_scrape_answers_it() {
    let _serial = serial();
    let busy = spawn(&workload("forever"), &["60"]);
    let agent = Agent::start(&["-F", "99", "--window", "1"]);
    agent.wait_for_first_window();
    let port = agent.port;
    let scrape = std::thread::spawn(move || {
        let client: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(60)))
            .build()
            .into();
        let mut response = client
            .get(format!(
                "http://127.0.0.1:{port}/debug/pprof/profile?seconds=30"
            ))
            .call()
            .expect("an answer, not a dropped connection");
        (
            response.status().as_u16(),
            response.body_mut().read_to_vec().unwrap(),
        )
    });
    agent.wait_for("the capture to start", Duration::from_secs(30), |a| {
        a.log().contains("capture started")
    });
    std::thread::sleep(Duration::from_secs(2));
    let started = Instant::now();
    let (status, log) = agent.terminate();
    let (code, body) = scrape.join().unwrap();
    stop(busy);
    assert!(status.success(), "{log}");
    assert_eq!(code, 200, "{}", String::from_utf8_lossy(&body));
    let profile = pprof::decode_bytes(&body).unwrap();
    assert!(samples_in(&profile, "forever_hot").0 > 0, "{log}");
    let covered = profile.duration;
    assert!(
        covered < Duration::from_secs(30) && started.elapsed() < Duration::from_secs(30),
        "answered early: {covered:?}"
    );
}

/// The symbol endpoint speaks Go's protocol: GET says symbols are available, POST names
/// the addresses of a profile the agent served, one `0xaddr name` line each.
#[test]
fn symbol_endpoint_names_served_addresses() {
    let _serial = serial();
    let busy = spawn(&workload("forever"), &["60"]);
    let agent = Agent::start(&["-F", "99", "--window", "1"]);
    agent.wait_for_first_window();
    let (status, body) = agent.get("/debug/pprof/symbol");
    assert_eq!((status, body.as_slice()), (200, &b"num_symbols: 1\n"[..]));

    let (status, body) = agent.get("/debug/pprof/profile?seconds=1");
    assert_eq!(status, 200);
    let profile = pprof::decode_bytes(&body).unwrap();
    let hot: Vec<u64> = profile
        .locations
        .iter()
        .map(|(_, location)| location)
        .filter(|l| l.lines.iter().any(|line| &*line.function == "forever_hot"))
        .map(|l| l.address)
        .collect();
    assert!(!hot.is_empty(), "forever_hot in the profile");
    let query: Vec<String> = hot.iter().map(|a| format!("{a:#x}")).collect();
    let answer = post(
        agent.port,
        "/debug/pprof/symbol",
        &format!("{}+0x1", query.join("+")),
    );
    stop(busy);
    let mut lines = answer.lines();
    assert_eq!(lines.next(), Some("num_symbols: 1"), "{answer}");
    for address in &hot {
        assert!(
            answer.contains(&format!("{address:#x} forever_hot\n")),
            "{address:#x} named in:\n{answer}"
        );
    }
    assert_eq!(
        answer.lines().count(),
        1 + hot.len(),
        "0x1 is left out:\n{answer}"
    );
    let (status, log) = agent.terminate();
    assert!(status.success(), "{log}");
}

/// POSTs `body` to `path`; the answer's body.
fn post(port: u16, path: &str, body: &str) -> String {
    let client: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_secs(30)))
        .build()
        .into();
    client
        .post(format!("http://127.0.0.1:{port}{path}"))
        .send(body)
        .unwrap()
        .body_mut()
        .read_to_string()
        .unwrap()
}

/// `go tool pprof` reads the profile endpoint while a stripped program runs. With its default
/// symbolization it asks nothing more (every mapping says prof symbolized it), so a stripped
/// frame no longer makes it abort on a 404; told to symbolize remotely even so
/// (`-symbolize=remote:force`), it asks the agent's `/debug/pprof/symbol`, and the fetch
/// still succeeds.
#[test]
fn go_tool_pprof_symbolizes_through_the_agent() {
    let _serial = serial();
    let tmp = tempfile::tempdir().unwrap();
    let stripped = tmp.path().join("forever-stripped");
    std::fs::copy(workload("forever"), &stripped).unwrap();
    let strip = Command::new("strip").arg(&stripped).status().unwrap();
    assert!(strip.success(), "strip (binutils) runs");
    let busy = spawn(&stripped, &["60"]);
    let agent = Agent::start(&["-F", "99", "--window", "1"]);
    agent.wait_for_first_window();
    let url = format!(
        "http://127.0.0.1:{}/debug/pprof/profile?seconds=2",
        agent.port
    );
    let pprof = |symbolize: &str| {
        go().env("PPROF_TMPDIR", tmp.path())
            .args(["tool", "pprof", "-raw", symbolize, &url])
            .output()
            .unwrap()
    };
    let plain = pprof("-symbolize=remote");
    assert!(plain.status.success(), "{}", describe(&plain));
    let raw = String::from_utf8_lossy(&plain.stdout);
    assert!(
        raw.contains("comm:[forever-strippe]"),
        "the stripped workload in:\n{raw}"
    );
    assert_eq!(
        agent.metric("prof_agent_symbol_requests_total"),
        0.0,
        "mappings marked symbolized need no symbol requests: {}",
        describe(&plain)
    );
    let forced = pprof("-symbolize=remote:force");
    stop(busy);
    assert!(forced.status.success(), "{}", describe(&forced));
    assert!(
        agent.metric("prof_agent_symbol_requests_total") >= 1.0,
        "pprof asked for symbols: {}",
        describe(&forced)
    );
    let (status, log) = agent.terminate();
    assert!(status.success(), "{log}");
    assert!(Path::new(&stripped).exists());
}
