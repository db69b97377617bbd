//! Recordings of real workloads: where the samples land, and how they are named.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::thread::sleep;
use std::time::Duration;

use crate::{assert_share, describe, has_frame, prof, read_folded, serial, weight, workload};

/// Starts `binary` with `args`, quietly, and waits `settle` for it to get going.
fn start(binary: &Path, args: &[&str], settle: Duration) -> Child {
    let child = Command::new(binary)
        .args(args)
        .stdout(Stdio::null())
        .spawn()
        .expect("workload starts");
    sleep(settle);
    child
}

pub fn stop(mut child: Child) {
    let _ = child.kill();
    let _ = child.wait();
}

/// A `prof record` running in the background, its stderr collected.
pub struct Recording {
    child: Child,
    stderr: std::sync::mpsc::Receiver<String>,
    lines: Vec<String>,
}

impl Recording {
    /// Starts `prof record <args>` and returns once it samples (its "sampling started" debug
    /// line), so that what the test does next is recorded however long start-up took.
    pub fn start(args: &[&std::ffi::OsStr]) -> Recording {
        let mut child = prof()
            .arg("record")
            .args(args)
            .env("RUST_LOG", "prof=debug")
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let (sender, receiver) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufRead::lines(std::io::BufReader::new(stderr)) {
                let Ok(line) = line else { break };
                if sender.send(line).is_err() {
                    break;
                }
            }
        });
        let mut recording = Recording {
            child,
            stderr: receiver,
            lines: Vec::new(),
        };
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while !recording
            .lines
            .iter()
            .any(|l| l.contains("sampling started"))
        {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match recording.stderr.recv_timeout(left) {
                Ok(line) => recording.lines.push(line),
                Err(_) => panic!(
                    "prof record did not start sampling:\n{}",
                    recording.lines.join("\n")
                ),
            }
        }
        recording
    }

    /// The child, to signal it.
    pub fn child(&self) -> &Child {
        &self.child
    }

    /// Waits for prof to exit; its status and all it wrote to stderr.
    pub fn finish(mut self) -> (std::process::ExitStatus, String) {
        let status = self.child.wait().unwrap();
        self.lines.extend(self.stderr.iter());
        (status, self.lines.join("\n"))
    }
}

/// Runs `prof record -e <events> <flags> -o <output>... [-- <command>]` to completion and
/// asserts that it succeeded.
pub fn record_ok(events: &str, outputs: &[&Path], flags: &[&str], command: &[OsString]) -> Output {
    let mut prof = prof();
    prof.args(["record", "-e", events]).args(flags);
    for output in outputs {
        prof.arg("-o").arg(output);
    }
    if !command.is_empty() {
        prof.arg("--").args(command);
    }
    let output = prof.output().unwrap();
    assert!(output.status.success(), "{}", describe(&output));
    output
}

/// Two functions doing the same work per call in a 3:1 ratio are recorded 3:1 (±10%), and
/// at least 90% of the workload's samples unwind all the way to `main`.
#[test]
fn hot_functions_keep_their_ratio() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("ratio.folded");
    let output = record_ok(
        "cpu-clock",
        &[&out],
        &["-F", "999"],
        &[workload("ratio").into_os_string()],
    );
    let stacks = read_folded(&out);
    let ours: Vec<_> = stacks
        .into_iter()
        .filter(|(frames, _)| frames[0] == "ratio")
        .collect();
    let three = weight(&ours, |f| has_frame(f, "hot_three"));
    let one = weight(&ours, |f| has_frame(f, "hot_one"));
    assert!(one > 0, "hot_one was sampled: {ours:?}");
    let ratio = three as f64 / one as f64;
    assert!(
        (2.7..=3.3).contains(&ratio),
        "hot_three:hot_one = {ratio:.3}, want 3 ± 10%"
    );
    assert_share(
        &ours,
        |_| true,
        |f| has_frame(f, "main"),
        0.9,
        "stacks that reach main",
    );
    // The summary names the hottest functions.
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("hot_three"), "{stderr}");
}

/// With cpu-clock and page-faults recorded by one program through two sets of cookies, each
/// event's samples land in the function that causes that event: the cookies keep the events
/// apart. Each event gets its own files, named after it.
#[test]
fn cookies_keep_events_apart() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let (folded, svg) = (dir.path().join("out.folded"), dir.path().join("out.svg"));
    let command = [workload("spin_faults").into_os_string()];
    let output = record_ok("cpu-clock,page-faults", &[&folded, &svg], &[], &command);
    for name in [
        "out.cpu-clock.folded",
        "out.page-faults.folded",
        "out.cpu-clock.svg",
        "out.page-faults.svg",
    ] {
        assert!(
            dir.path().join(name).exists(),
            "{name} written: {}",
            describe(&output)
        );
    }
    let is_ours = |f: &[String]| f[0] == "spin_faults";

    let faults = read_folded(&dir.path().join("out.page-faults.folded"));
    let touching = |f: &[String]| has_frame(f, "touch_pages");
    assert_share(
        &faults,
        is_ours,
        touching,
        0.8,
        "page faults in touch_pages",
    );

    let clock = read_folded(&dir.path().join("out.cpu-clock.folded"));
    let spinning = |f: &[String]| has_frame(f, "spin");
    assert_share(&clock, is_ours, spinning, 0.5, "cpu-clock in spin");

    let svg = std::fs::read_to_string(dir.path().join("out.page-faults.svg")).unwrap();
    assert!(svg.contains("touch_pages") && svg.contains("page-faults"));
}

/// `-p` samples a process that was already running, and only it.
#[test]
fn pid_mode_samples_a_running_process() {
    let _serial = serial();
    let child = start(&workload("forever"), &["20"], Duration::from_millis(200));
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("pid.folded");
    let pid = child.id().to_string();
    record_ok("cpu-clock", &[&out], &["-d", "1", "-p", &pid], &[]);
    stop(child);
    let stacks = read_folded(&out);
    assert!(!stacks.is_empty());
    assert!(
        stacks.iter().all(|(frames, _)| frames[0] == "forever"),
        "{stacks:?}"
    );
    let hot = |f: &[String]| has_frame(f, "forever_hot");
    assert_share(&stacks, |_| true, hot, 0.9, "samples in forever_hot");
}

/// `-a` sees every process: two different workloads both show up with their functions.
#[test]
fn all_cpus_sees_other_processes() {
    let _serial = serial();
    let forever = start(&workload("forever"), &["20"], Duration::ZERO);
    let ratio = start(&workload("ratio"), &["400"], Duration::from_millis(200));
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("all.folded");
    record_ok("cpu-clock", &[&out], &["-a", "-d", "1.5"], &[]);
    stop(forever);
    stop(ratio);
    let stacks = read_folded(&out);
    assert!(
        weight(&stacks, |f| f[0] == "forever"
            && has_frame(f, "forever_hot"))
            > 0,
        "{stacks:?}"
    );
    assert!(
        weight(&stacks, |f| f[0] == "ratio" && has_frame(f, "hot_three")) > 0,
        "{stacks:?}"
    );
}

/// A syscall-heavy workload shows kernel frames, marked `_[k]`, above its user frames.
#[test]
fn kernel_frames_appear_for_syscalls() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("sys.folded");
    record_ok(
        "cpu-clock",
        &[&out],
        &[],
        &[workload("syscalls").into_os_string()],
    );
    let stacks = read_folded(&out);
    let ours = |f: &[String]| f[0] == "syscalls";
    let in_kernel = |f: &[String]| f.iter().any(|x| x.ends_with("_[k]"));
    assert_share(&stacks, ours, in_kernel, 0.5, "samples with kernel frames");
    // User frames come first, then kernel frames: once a kernel frame appears, all are.
    let ordered = stacks.iter().all(|(frames, _)| {
        let first_kernel = frames
            .iter()
            .position(|f| f.ends_with("_[k]"))
            .unwrap_or(frames.len());
        frames[first_kernel..].iter().all(|f| f.ends_with("_[k]"))
    });
    assert!(ordered, "{stacks:?}");
    let reads = weight(&stacks, |f| {
        has_frame(f, "read_zeroes") && f.iter().any(|x| x.contains("read") && x.ends_with("_[k]"))
    });
    assert!(
        reads > 0,
        "a kernel read path under read_zeroes: {stacks:?}"
    );
}

/// A command that runs for 0.3 s and exits is still symbolized: named frames, not
/// `[unknown]`.
#[test]
fn short_lived_command_is_symbolized() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("short.folded");
    record_ok(
        "cpu-clock",
        &[&out],
        &[],
        &[workload("short_lived").into_os_string()],
    );
    let stacks = read_folded(&out);
    let ours = |f: &[String]| f[0] == "short_lived";
    let named = |f: &[String]| has_frame(f, "short_lived_hot") && has_frame(f, "main");
    assert_share(
        &stacks,
        ours,
        named,
        0.8,
        "named short_lived_hot under main",
    );
}

/// A process that starts and exits while `-a` records is symbolized from the side band.
#[test]
fn process_exiting_during_all_cpus_is_symbolized() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("exited.folded");
    let recording = Recording::start(&[
        "-a".as_ref(),
        "-e".as_ref(),
        "cpu-clock".as_ref(),
        "-d".as_ref(),
        "2".as_ref(),
        "-o".as_ref(),
        out.as_os_str(),
    ]);
    let status = Command::new(workload("short_lived")).status().unwrap();
    assert!(status.success());
    let (status, stderr) = recording.finish();
    assert!(status.success(), "{stderr}");
    let stacks = read_folded(&out);
    let ours = |f: &[String]| f[0] == "short_lived";
    let named = |f: &[String]| has_frame(f, "short_lived_hot");
    assert_share(
        &stacks,
        ours,
        named,
        0.8,
        "the exited process's named frames",
    );
}

/// Processes the command forks join the target set in the kernel.
#[test]
fn forked_children_are_followed() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("fork.folded");
    record_ok(
        "cpu-clock",
        &[&out],
        &[],
        &[workload("forker").into_os_string()],
    );
    let stacks = read_folded(&out);
    let child = |f: &[String]| has_frame(f, "child_hot");
    assert_share(&stacks, |_| true, child, 0.8, "samples in the forked child");
}

/// prof exits with the command's exit status, and the command's output stays on prof's
/// stdout.
#[test]
fn exit_status_and_output_pass_through() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let output = prof()
        .args(["record", "-e", "cpu-clock", "-o"])
        .arg(dir.path().join("x.folded"))
        .args(["--", "sh", "-c", "echo from-the-command; exit 7"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(7), "{}", describe(&output));
    assert_eq!(
        String::from_utf8_lossy(&output.stdout),
        "from-the-command\n"
    );
    assert!(dir.path().join("x.folded").exists());
}

fn signal(child: &Child, signal: rustix::process::Signal) {
    let pid = rustix::process::Pid::from_raw(child.id() as i32).unwrap();
    rustix::process::kill_process(pid, signal).unwrap();
}

/// Ctrl-C (SIGINT) stops an open-ended `-a` recording and still writes the profile.
#[test]
fn sigint_writes_the_profile() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("int.folded");
    let busy = start(&workload("forever"), &["20"], Duration::ZERO);
    let recording = Recording::start(&[
        "-a".as_ref(),
        "-e".as_ref(),
        "cpu-clock".as_ref(),
        "-o".as_ref(),
        out.as_os_str(),
    ]);
    sleep(Duration::from_millis(1000));
    signal(recording.child(), rustix::process::Signal::INT);
    let (status, stderr) = recording.finish();
    stop(busy);
    assert!(status.success(), "{stderr}");
    let stacks = read_folded(&out);
    assert!(
        weight(&stacks, |f| has_frame(f, "forever_hot")) > 0,
        "{stacks:?}\n{stderr}"
    );
}

/// SIGTERM to prof while it records a command: the command is stopped too, the profile is
/// written, and prof exits with the command's status (killed by SIGTERM: 143).
#[test]
fn sigterm_stops_the_command_and_writes_the_profile() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("term.folded");
    let recording = prof()
        .args(["record", "-e", "cpu-clock", "-o"])
        .arg(&out)
        .arg("--")
        .arg(workload("forever"))
        .arg("20")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    sleep(Duration::from_millis(1500));
    signal(&recording, rustix::process::Signal::TERM);
    let output = recording.wait_with_output().unwrap();
    assert_eq!(output.status.code(), Some(143), "{}", describe(&output));
    let stacks = read_folded(&out);
    assert!(
        weight(&stacks, |f| has_frame(f, "forever_hot")) > 0,
        "{stacks:?}"
    );
}

/// `prof list` marks software events usable here, and says why hardware events are not
/// where there is no PMU.
#[test]
fn list_shows_availability() {
    let output = prof().arg("list").output().unwrap();
    assert!(output.status.success(), "{}", describe(&output));
    let text = String::from_utf8_lossy(&output.stdout);
    let line = |name: &str| {
        text.lines()
            .find(|l| l.split_whitespace().next() == Some(name))
            .unwrap_or_else(|| panic!("{name} listed: {text}"))
            .to_owned()
    };
    assert!(line("cpu-clock").ends_with("yes"), "{text}");
    assert!(line("page-faults").ends_with("yes"), "{text}");
    assert!(line("LLC-load-misses").contains("hardware cache"), "{text}");
    if prof::events::hardware_pmu_present() {
        assert!(line("instructions").ends_with("yes"), "{text}");
    } else {
        assert!(
            line("instructions").contains("no: no hardware PMU"),
            "{text}"
        );
        assert!(
            line("cpu-cycles").contains("falls back to cpu-clock"),
            "{text}"
        );
    }
}

/// A stack map or counts map too small for the recording loses samples visibly: the kernel
/// counts them, the summary names the flag that fixes it, and the samples whose stack was not
/// stored stay in the profile as `[unknown]`.
#[test]
fn full_maps_are_counted_and_reported() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("small.folded");
    let command = [workload("spin_faults").into_os_string()];
    let small_stack_map = ["--stack-storage-size", "4"];
    let output = record_ok("cpu-clock,page-faults", &[&out], &small_stack_map, &command);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("stack map full (raise --stack-storage-size)"),
        "{stderr}"
    );
    let stacks = read_folded(&dir.path().join("small.cpu-clock.folded"));
    assert!(
        weight(&stacks, |f| has_frame(f, "[unknown]")) > 0,
        "{stacks:?}"
    );

    let output = record_ok("cpu-clock", &[&out], &["--counts-map-size", "2"], &command);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("counts map full (raise --counts-map-size)"),
        "{stderr}"
    );
}

/// C++ and Rust names are demangled, and inlined functions are frames of their own, under the
/// function they were inlined into.
#[test]
fn names_are_demangled_and_inlined_frames_shown() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("cpp.folded");
    record_ok(
        "cpu-clock",
        &[&out],
        &[],
        &[workload("demangle_cpp").into_os_string()],
    );
    let stacks = read_folded(&out);
    let demangled = |f: &[String]| has_frame(f, "geometry::Shape<unsigned long>::area_loop(long)");
    assert_share(
        &stacks,
        |_| true,
        demangled,
        0.8,
        "the demangled C++ method",
    );

    let out = dir.path().join("rs.folded");
    record_ok(
        "cpu-clock",
        &[&out],
        &[],
        &[workload("demangle_rs").into_os_string()],
    );
    let stacks = read_folded(&out);
    let method = "demangle_rs::geometry::Shape::area_loop";
    let demangled = |f: &[String]| has_frame(f, method);
    assert_share(
        &stacks,
        |_| true,
        demangled,
        0.8,
        "the demangled Rust method",
    );
    let inlined = weight(&stacks, |f| {
        f.windows(2)
            .any(|pair| pair[0] == method && pair[1].contains("wrapping_"))
    });
    assert!(
        inlined > 0,
        "an inlined wrapping_* frame above {method}: {stacks:?}"
    );
}

/// The summary reports what sampling cost in the kernel: a positive time per sample over at
/// least as many program runs as samples recorded, and a share of the one sampled CPU's
/// time below 100%.
#[test]
fn summary_reports_the_sampling_cost() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("cost.folded");
    let output = record_ok(
        "cpu-clock",
        &[&out],
        &["-F", "999", "-C", "0"],
        &[workload("forever").into_os_string(), "1".into()],
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    let number = |text: &str| -> f64 {
        text.replace(',', "")
            .parse()
            .unwrap_or_else(|_| panic!("a number, not `{text}`, in {stderr}"))
    };
    let samples = stderr
        .lines()
        .find_map(|line| line.strip_prefix("cpu-clock: "))
        .and_then(|rest| rest.split_once(" samples"))
        .map(|(n, _)| number(n))
        .unwrap_or_else(|| panic!("an event line in {stderr}"));
    let cost = stderr
        .lines()
        .find_map(|line| line.strip_prefix("sampling cost: "))
        .unwrap_or_else(|| panic!("a sampling cost line in {stderr}"));
    // "1,180 ns per sample in the kernel (17,449 samples), 0.41% of 1 CPU"
    let (ns, rest) = cost
        .split_once(" ns per sample in the kernel (")
        .expect(cost);
    let (runs, rest) = rest.split_once(" samples), ").expect(cost);
    let (share, cpus) = rest.split_once("% of ").expect(cost);
    assert!(number(ns) > 0.0, "{cost}");
    assert!(
        number(runs) >= samples,
        "{cost}: runs below {samples} samples"
    );
    let share = number(share);
    assert!((0.0..100.0).contains(&share), "{cost}");
    assert_eq!(cpus, "1 CPU", "{cost}");
}

/// A recording drains its maps while it runs, so it keeps more distinct stacks than the stack
/// map holds, and counts each exactly as a recording whose map held them all: 3000 functions
/// each call getppid() 3 times from their own place in a call tree (3000 distinct stacks,
/// about a thousand a second) through a stack map of 2048, and every stack arrives with its
/// 3 hits, none lost, none counted twice across a flip. The same workload recorded with maps
/// large enough never to flip gives the same stacks and counts. Stacks are compared from
/// `main` down: the first samples of a process may come before its unwind tables are loaded,
/// and their frame-pointer walk may miss the frames above `main` (counted as cut short), in
/// one recording and not the other.
#[test]
fn draining_while_recording_keeps_more_stacks_than_the_map_holds() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let record_tree = |name: &str, flags: &[&str]| {
        let out = dir.path().join(name);
        let output = record_ok(
            "syscalls:sys_enter_getppid",
            &[&out],
            flags,
            &[
                workload("call_tree").into_os_string(),
                "calls".into(),
                "3".into(),
                "1000".into(),
            ],
        );
        let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
        assert!(stderr.contains("lost: none"), "{stderr}");
        let mut stacks: BTreeMap<Vec<String>, u64> = BTreeMap::new();
        for (frames, count) in read_folded(&out) {
            if frames[0] != "call_tree" {
                continue;
            }
            let from_main = frames.iter().position(|f| f == "main").unwrap_or(0);
            *stacks.entry(frames[from_main..].to_vec()).or_default() += count;
        }
        (stacks, stderr)
    };
    // 2048 stacks: prof drains every 512 samples, about 18 times.
    let (drained, stderr) = record_tree("drained.folded", &["--stack-storage-size", "2048"]);
    assert_eq!(drained.values().sum::<u64>(), 9000, "{stderr}");
    assert_eq!(drained.len(), 3000, "distinct stacks: {stderr}");
    let wrong: Vec<_> = drained.iter().filter(|(_, n)| **n != 3).collect();
    assert!(wrong.is_empty(), "stacks not hit 3 times: {wrong:?}");
    // 65,536 stacks: prof would drain after 16,384 samples, which never come.
    let (whole, stderr) = record_tree(
        "whole.folded",
        &[
            "--stack-storage-size",
            "65536",
            "--counts-map-size",
            "65536",
        ],
    );
    assert_eq!(drained, whole, "{stderr}");
}
