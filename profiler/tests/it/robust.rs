//! Robustness: no signal, input, closed pipe or full disk makes prof panic, lose a profile,
//! leave a temporary file or take unbounded memory. Each test reproduces one way it used to.

use std::fs::{self, File};
use std::io::{Read, Write};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread::sleep;
use std::time::{Duration, Instant};

use prof::export::pprof::proto;
use prost::Message;

use crate::{describe, has_frame, prof, read_folded, serial, weight, workload};

/// Asserts exit 2 and exactly one line on stderr, `prof: ...`, holding every needle.
fn assert_one_line(status: ExitStatus, stderr: &[u8], needles: &[&str]) -> String {
    let text = String::from_utf8_lossy(stderr);
    assert_eq!(status.code(), Some(2), "{status}: {text}");
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 1, "one line: {text}");
    assert!(lines[0].starts_with("prof: "), "{text}");
    for needle in needles {
        assert!(lines[0].contains(needle), "`{needle}` in {text}");
    }
    lines[0].to_owned()
}

/// Runs `command` to its end and returns its status, stderr and peak resident memory in
/// bytes, from the kernel's account of that one child (wait4's rusage).
fn run_measured(mut command: Command) -> (ExitStatus, Vec<u8>, u64) {
    let mut child = command
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = Vec::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_end(&mut stderr)
        .unwrap();
    let mut status = 0;
    // SAFETY: an all-zero rusage is a valid value of this plain C struct.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: wait4 on our own child, with pointers to live locals; std's Child is not
    // waited for afterwards, so the pid is reaped exactly once.
    let pid = unsafe { libc::wait4(child.id() as i32, &mut status, 0, &mut usage) };
    assert_eq!(pid, child.id() as i32, "wait4");
    std::mem::forget(child);
    let status = ExitStatus::from_raw(status);
    (status, stderr, usage.ru_maxrss as u64 * 1024)
}

/// A budget that a reader of hostile input must stay under.
const RSS_BOUND: u64 = 1 << 30;

fn scratch() -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("robust");
    fs::create_dir_all(&dir).unwrap();
    dir
}

/// A gzip file of 1.5 GB of zeros: 1.5 MB on disk. Made once per run, by gzip.
fn gzip_bomb() -> &'static Path {
    static BOMB: OnceLock<PathBuf> = OnceLock::new();
    BOMB.get_or_init(|| {
        let path = scratch().join("bomb.pb.gz");
        if !path.exists() {
            let partial = path.with_extension("partial");
            let status = Command::new("sh")
                .arg("-c")
                .arg(format!(
                    "head -c 1500M /dev/zero | gzip -1 > {}",
                    partial.display()
                ))
                .status()
                .unwrap();
            assert!(status.success(), "making the gzip bomb");
            fs::rename(&partial, &path).unwrap();
        }
        path
    })
}

/// A gzip bomb and /dev/zero end in one line naming --max-input-size, with prof's peak
/// memory (from the kernel) under 1 GB; a raised limit is taken.
#[test]
fn gzip_bomb_and_dev_zero_in_bounded_memory() {
    let bomb = gzip_bomb();
    assert!(fs::metadata(bomb).unwrap().len() < 10 << 20);
    for input in [bomb, Path::new("/dev/zero")] {
        let mut command = prof();
        command.arg("report").arg(input);
        let (status, stderr, rss) = run_measured(command);
        assert_one_line(status, &stderr, &["larger than", "--max-input-size"]);
        assert!(rss < RSS_BOUND, "{}: peak RSS {rss} bytes", input.display());
    }
    let mut command = prof();
    command.args(["report", "--max-input-size", "2G"]).arg(bomb);
    let (status, stderr, rss) = run_measured(command);
    // Read in full, it is zeros: not a profile, and refused as such, not for its size.
    assert_one_line(status, &stderr, &["not a pprof profile"]);
    assert!(rss > RSS_BOUND, "the raised limit was used: {rss}");
}

/// A pprof message of one location and one sample whose stack lists it `frames` times,
/// written as location ids by hand (a packed run of 0x01 bytes), gzipped.
fn deep_stack_pprof(path: &Path, frames: usize) {
    let head = one_function_pprof(&[]);
    let mut sample = Vec::new();
    // Field 1 (location_id), packed: key 0x0a, length, then one byte per id.
    sample.push(0x0a);
    varint(frames as u64, &mut sample);
    sample.resize(sample.len() + frames, 1);
    // Field 2 (value): key 0x10, 1.
    sample.extend([0x10, 1]);
    let mut bytes = head.encode_to_vec();
    // Field 2 of the profile (sample): key 0x12, length, the sample.
    bytes.push(0x12);
    varint(sample.len() as u64, &mut bytes);
    bytes.extend(sample);
    let mut gzip =
        flate2::write::GzEncoder::new(File::create(path).unwrap(), flate2::Compression::best());
    gzip.write_all(&bytes).unwrap();
    gzip.finish().unwrap();
}

/// Appends `n` in protobuf's varint encoding.
fn varint(mut n: u64, out: &mut Vec<u8>) {
    while n >= 0x80 {
        out.push(n as u8 | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
}

/// One stack of 30 million frames, 29 KB gzipped, is refused naming --max-stack-depth,
/// in bounded memory, and leaves no output.
#[test]
fn thirty_million_frames_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("deep.pb.gz");
    deep_stack_pprof(&input, 30_000_000);
    assert!(fs::metadata(&input).unwrap().len() < 100_000);
    let mut command = prof();
    command
        .arg("report")
        .arg(&input)
        .arg("-o")
        .arg(dir.path().join("x.svg"));
    let (status, stderr, rss) = run_measured(command);
    assert_one_line(
        status,
        &stderr,
        &["more than 4,096 frames", "--max-stack-depth"],
    );
    assert!(rss < RSS_BOUND, "peak RSS {rss} bytes");
    assert!(!dir.path().join("x.svg").exists());
}

/// A folded profile with `functions` functions, each its own stack.
fn many_functions(path: &Path, functions: usize) {
    let mut text = String::new();
    for i in 0..functions {
        text.push_str(&format!("app;main;function_number_{i} {}\n", i + 1));
    }
    fs::write(path, text).unwrap();
}

/// `prof report … | head -1`: the closed pipe ends prof quietly with status 0; `> /dev/full`
/// is one `prof:` line and status 2; a stderr on /dev/full is ignored.
#[test]
fn closed_and_full_pipes() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("many.folded");
    many_functions(&input, 20_000);
    let mut child = prof()
        .arg("report")
        .arg(&input)
        .args(["--top", "100000"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = [0u8; 64];
    let mut stdout = child.stdout.take().unwrap();
    assert!(stdout.read(&mut first).unwrap() > 0);
    drop(stdout);
    let output = child.wait_with_output().unwrap();
    assert_eq!(output.status.code(), Some(0), "{}", describe(&output));
    assert!(output.stderr.is_empty(), "{}", describe(&output));

    let output = prof()
        .arg("report")
        .arg(&input)
        .stdout(File::create("/dev/full").unwrap())
        .output()
        .unwrap();
    assert_one_line(
        output.status,
        &output.stderr,
        &["writing to stdout", "No space"],
    );

    // An error with nowhere to print it still exits 2, without a panic.
    let status = prof()
        .args(["report", "/nonexistent.pb.gz"])
        .stderr(File::create("/dev/full").unwrap())
        .status()
        .unwrap();
    assert_eq!(status.code(), Some(2));
    let out = dir.path().join("again.folded");
    let status = prof()
        .arg("report")
        .arg(&input)
        .arg("-o")
        .arg(&out)
        .stderr(File::create("/dev/full").unwrap())
        .status()
        .unwrap();
    assert!(status.success(), "{status}");
    assert_eq!(read_folded(&out).len(), 20_000);
}

/// `prof record … 2>/dev/full` writes its profile and exits with the command's status,
/// though it cannot print its summary.
#[test]
fn record_with_stderr_on_dev_full() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("x.svg");
    let status = prof()
        .args(["record", "-e", "cpu-clock", "-o"])
        .arg(&out)
        .args(["--", "sh", "-c", "exit 3"])
        .stderr(File::create("/dev/full").unwrap())
        .status()
        .unwrap();
    assert_eq!(status.code(), Some(3));
    assert!(fs::read_to_string(&out).unwrap().contains("</svg>"));
}

/// A sample of what clap itself refuses: each is one `prof:` line with status 2, and none
/// suggests `-- -5`, which would run a command named `-5`; --help and --version still
/// print normally.
#[test]
fn clap_errors_are_one_line() {
    let cases: &[&[&str]] = &[
        &["record", "-F", "-5", "--", "true"],
        &["record", "-p", "-1"],
        &["record", "-d", "-1", "--", "true"],
        &["record", "-d", "2e19", "--", "true"],
        &["record", "-F", "99", "-c", "1000", "--", "true"],
        &["record", "-p", ""],
        &["record", "--stack-storage-size", "0", "--", "true"],
        &["record", "--no-such-flag"],
        &["report"],
        &["report", "x.pb.gz", "--top", "-3"],
        &["diff", "a.folded"],
        &["agent", "--window", "4000"],
        &["no-such-command"],
    ];
    for args in cases {
        let output = prof().args(*args).output().unwrap();
        let line = assert_one_line(output.status, &output.stderr, &["--help`"]);
        assert!(!line.contains("-- -"), "{args:?}: {line}");
    }
    let help = prof().args(["record", "--help"]).output().unwrap();
    assert!(help.status.success());
    assert!(String::from_utf8_lossy(&help.stdout).lines().count() > 20);
    let version = prof().arg("--version").output().unwrap();
    assert!(version.status.success());
    assert!(String::from_utf8_lossy(&version.stdout).starts_with("prof "));
}

/// Map sizes are checked against the machine's memory before anything is loaded: 2^32 - 1
/// stacks is one line that says what it would cost.
#[test]
fn map_sizes_say_what_they_cost() {
    let output = prof()
        .args(["record", "--stack-storage-size", "4294967295", "--", "true"])
        .output()
        .unwrap();
    assert_one_line(
        output.status,
        &output.stderr,
        &[
            "TB of kernel memory",
            "1,072 bytes each",
            "lower --stack-storage-size",
        ],
    );
}

fn signal(pid: u32, signal: rustix::process::Signal) {
    let pid = rustix::process::Pid::from_raw(pid as i32).unwrap();
    rustix::process::kill_process(pid, signal).unwrap();
}

/// Waits until a hidden `.prof-` temporary file appears in `dir`, polling, for at most
/// `limit`; returns whether one did.
fn wait_for_temporary(dir: &Path, child: &mut Child, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if names(dir).iter().any(|n| n.starts_with(".prof-")) {
            return true;
        }
        if child.try_wait().unwrap().is_some() {
            return false;
        }
        sleep(Duration::from_micros(500));
    }
    false
}

fn names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// Ctrl-C while `prof report` writes a large flame graph: the folder holds afterwards only
/// what was there before (no `.prof-` file, no half graph), prof exits 130 and one line
/// says what was discarded. Tried three times, as the defect showed in 3 of 3.
#[test]
fn signal_during_a_report_write_leaves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("wide.folded");
    many_functions(&input, 200_000);
    for _ in 0..3 {
        let mut child = prof()
            .arg("report")
            .arg(&input)
            .args(["--minwidth", "0", "-o"])
            .arg(dir.path().join("x.svg"))
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        assert!(
            wait_for_temporary(dir.path(), &mut child, Duration::from_secs(120)),
            "the write began"
        );
        signal(child.id(), rustix::process::Signal::INT);
        let output = child.wait_with_output().unwrap();
        assert_eq!(output.status.code(), Some(130), "{}", describe(&output));
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
        assert!(stderr.contains("quit without writing"), "{stderr}");
        assert!(stderr.contains("x.svg"), "{stderr}");
        assert_eq!(names(dir.path()), ["wide.folded"]);
    }
}

/// A second Ctrl-C while `prof record` writes its outputs: prof quits at once (130),
/// removes the file it was writing, and one line says which outputs it wrote and which it
/// discarded; the outputs it wrote are whole.
#[test]
fn second_signal_during_a_record_write() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let folded = dir.path().join("a.folded");
    let svg = dir.path().join("b.svg");
    // Thousands of short processes give tens of thousands of distinct stacks: the graph
    // takes long enough to write to be caught at it.
    let mut child = prof()
        .args([
            "record",
            "-e",
            "cpu-clock",
            "-F",
            "5000",
            "--minwidth",
            "0",
            "--stack-storage-size",
            "100000",
            "--counts-map-size",
            "200000",
            "-o",
        ])
        .arg(&folded)
        .arg("-o")
        .arg(&svg)
        .arg("--")
        .arg(workload("forker"))
        .arg("3000")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = child.stderr.take().unwrap();
    // The first signal stops the recording; the command is sent SIGTERM.
    sleep(Duration::from_secs(1));
    signal(child.id(), rustix::process::Signal::INT);
    assert!(
        wait_for_temporary(dir.path(), &mut child, Duration::from_secs(120)),
        "the write began"
    );
    signal(child.id(), rustix::process::Signal::INT);
    let status = child.wait().unwrap();
    let mut text = String::new();
    stderr.read_to_string(&mut text).unwrap();
    assert_eq!(status.code(), Some(130), "{text}");
    let line = text.lines().last().unwrap_or("");
    assert!(line.starts_with("prof: interrupted"), "{text}");
    assert!(line.contains("b.svg"), "{text}");
    let left = names(dir.path());
    assert!(
        !left.iter().any(|n| n.starts_with(".prof-")),
        "{left:?}: {text}"
    );
    if left.contains(&"a.folded".to_owned()) {
        assert!(line.contains("after writing"), "{text}");
        assert!(!read_folded(&folded).is_empty());
    } else {
        assert!(line.contains("quit without writing"), "{text}");
    }
}

/// SIGHUP (the terminal closing) ends a recording like SIGTERM: the profile is written and
/// the command is stopped, not left running as an orphan.
#[test]
fn sighup_writes_the_profile_and_stops_the_command() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("hup.folded");
    let child = prof()
        .args(["record", "-e", "cpu-clock", "-o"])
        .arg(&out)
        .arg("--")
        .arg(workload("forever"))
        .arg("30")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    sleep(Duration::from_millis(1500));
    // The command is a child of one of prof's threads.
    let spawned: Vec<u32> = fs::read_dir(format!("/proc/{}/task", child.id()))
        .unwrap()
        .filter_map(|task| fs::read_to_string(task.ok()?.path().join("children")).ok())
        .flat_map(|text| {
            text.split_whitespace()
                .filter_map(|pid| pid.parse().ok())
                .collect::<Vec<u32>>()
        })
        .collect();
    assert!(!spawned.is_empty(), "the command runs under prof");
    signal(child.id(), rustix::process::Signal::HUP);
    let output = child.wait_with_output().unwrap();
    // The command's status: killed by SIGTERM.
    assert_eq!(output.status.code(), Some(143), "{}", describe(&output));
    let stacks = read_folded(&out);
    assert!(
        weight(&stacks, |f| has_frame(f, "forever_hot")) > 0,
        "{stacks:?}"
    );
    for pid in spawned {
        assert!(
            !Path::new(&format!("/proc/{pid}")).exists(),
            "the command ({pid}) still runs"
        );
    }
}

/// A pprof message of one sample type and these (locations, value) samples; location 1 is
/// `main`.
fn one_function_pprof(samples: &[(Vec<u64>, i64)]) -> proto::Profile {
    proto::Profile {
        sample_type: vec![proto::ValueType { r#type: 1, unit: 2 }],
        sample: samples
            .iter()
            .map(|(locations, value)| proto::Sample {
                location_id: locations.clone(),
                value: vec![*value],
                label: Vec::new(),
            })
            .collect(),
        location: vec![proto::Location {
            id: 1,
            line: vec![proto::Line {
                function_id: 1,
                ..proto::Line::default()
            }],
            ..proto::Location::default()
        }],
        function: vec![proto::Function {
            id: 1,
            name: 3,
            ..proto::Function::default()
        }],
        string_table: ["", "cpu", "nanoseconds", "main"]
            .map(String::from)
            .to_vec(),
        ..proto::Profile::default()
    }
}

/// Writes [`one_function_pprof`] to `path`.
fn odd_pprof(path: &Path, samples: &[(Vec<u64>, i64)]) {
    fs::write(path, one_function_pprof(samples).encode_to_vec()).unwrap();
}

/// Samples with an empty stack render as `[unknown]` in a graph and a folded file that
/// prof reads back; values that add up past what pprof holds are refused in one line,
/// rather than wrapped into a 200% leaf.
#[test]
fn empty_stacks_and_overflowing_values() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("empty.pprof");
    odd_pprof(&input, &[(vec![], 1000), (vec![1], 250)]);
    let (svg, folded) = (dir.path().join("x.svg"), dir.path().join("x.folded"));
    let output = prof()
        .arg("report")
        .arg(&input)
        .arg("-o")
        .arg(&svg)
        .arg("-o")
        .arg(&folded)
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", describe(&output));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.lines().all(|l| l.starts_with("prof: wrote")),
        "{stderr}"
    );
    assert_eq!(
        fs::read_to_string(&folded).unwrap(),
        "[unknown] 1000\nmain 250\n"
    );
    assert!(fs::read_to_string(&svg).unwrap().contains("[unknown]"));
    let again = prof().arg("report").arg(&folded).output().unwrap();
    assert!(again.status.success(), "{}", describe(&again));

    let input = dir.path().join("overflow.pprof");
    odd_pprof(&input, &vec![(vec![1], i64::MAX); 3]);
    let output = prof().arg("report").arg(&input).output().unwrap();
    assert_one_line(
        output.status,
        &output.stderr,
        &["values add up to more than"],
    );
}

/// `prof diff --normalize` against an empty BEFORE says everything is new instead of a
/// share of nothing (+98098098000.0%).
#[test]
fn diff_against_an_empty_before() {
    let dir = tempfile::tempdir().unwrap();
    let (before, after) = (
        dir.path().join("before.pprof"),
        dir.path().join("after.pprof"),
    );
    odd_pprof(&before, &[]);
    odd_pprof(&after, &[(vec![1], 98_098_098)]);
    let svg = dir.path().join("d.svg");
    let output = prof()
        .arg("diff")
        .arg(&before)
        .arg(&after)
        .args(["--normalize", "-o"])
        .arg(&svg)
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", describe(&output));
    let text = fs::read_to_string(&svg).unwrap();
    assert!(text.contains("(all new: before is empty)"), "{text}");
    assert!(!text.contains("after: 98,098,098 events (+"), "{text}");
}

/// `-p` of a zombie (exited, never reaped by its parent) is refused at once instead of
/// recording until killed.
#[test]
fn zombie_pid_is_refused() {
    // `sleep 0` exits at once; its parent has become `sleep 20`, which never reaps it.
    let mut parent = Command::new("sh")
        .args(["-c", "sleep 0 & exec sleep 20"])
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let zombie = loop {
        let children = fs::read_to_string(format!("/proc/{0}/task/{0}/children", parent.id()))
            .unwrap_or_default();
        let zombie = children.split_whitespace().find_map(|pid| {
            let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            let state = stat.rsplit_once(") ")?.1.chars().next()?;
            (state == 'Z').then(|| pid.to_owned())
        });
        if let Some(zombie) = zombie {
            break zombie;
        }
        assert!(Instant::now() < deadline, "no zombie appeared");
        sleep(Duration::from_millis(10));
    };
    let output = prof()
        .args(["record", "-e", "cpu-clock", "-p", &zombie, "-o"])
        .arg(scratch().join("zombie.svg"))
        .output()
        .unwrap();
    let _ = parent.kill();
    let _ = parent.wait();
    assert_one_line(output.status, &output.stderr, &["has exited", "zombie"]);
}

/// `prof record -- ./forker N`, a loop of fork + exec /bin/true, at a high rate: the samples
/// of each child before its exec are named in the forker's code, and those after it in
/// ld.so, libc and true. Almost none of true's time has an unknown innermost user frame
/// (which was 44%, when stacks from before exec were looked up among true's mappings).
#[test]
fn execd_children_keep_their_names() {
    let _serial = serial();
    let max: u64 = fs::read_to_string("/proc/sys/kernel/perf_event_max_sample_rate")
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let freq = max.min(20_000).to_string();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("exec.folded");
    let output = prof()
        .args(["record", "-e", "cpu-clock", "-F", &freq])
        .args([
            "--stack-storage-size",
            "200000",
            "--counts-map-size",
            "200000",
        ])
        .arg("-o")
        .arg(&out)
        .arg("--")
        .arg(workload("forker"))
        .arg("1000")
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", describe(&output));
    let stacks = read_folded(&out);
    let innermost_user = |frames: &[String]| -> Option<String> {
        frames[1..]
            .iter()
            .rev()
            .find(|f| !f.ends_with("_[k]"))
            .cloned()
    };
    let true_time = weight(&stacks, |f| f[0] == "true");
    assert!(true_time > 0, "{}", describe(&output));
    let unknown = weight(&stacks, |f| {
        f[0] == "true" && innermost_user(f).as_deref() == Some("[unknown]")
    });
    let share = unknown as f64 / true_time as f64;
    assert!(
        share < 0.1,
        "{:.1}% of true's time has an unknown innermost frame: {}",
        share * 100.0,
        describe(&output)
    );
    assert!(
        weight(&stacks, |f| f[0] == "true"
            && f.iter().any(|n| n.starts_with("_dl_")))
            > 0,
        "true's time in ld.so is named"
    );
    assert!(
        weight(&stacks, |f| f[0] == "forker" && has_frame(f, "spawn_true")) > 0,
        "the children's time before exec is named in the forker"
    );
}

/// The shape of a random but valid pprof profile.
#[derive(Clone, Debug)]
struct RandomProfile {
    /// How many events (sample types), 1 to 3.
    events: usize,
    /// Function names.
    functions: Vec<String>,
    /// Per location, its lines as indexes into `functions` (none: an unresolved location).
    locations: Vec<Vec<usize>>,
    /// Per sample: location indexes (leaf first, possibly none), one value per event, and
    /// whether it carries pid and comm labels.
    samples: Vec<(Vec<usize>, Vec<i64>, bool)>,
    /// Whether the file is gzipped.
    gzip: bool,
}

const EVENT_NAMES: [&str; 3] = ["cpu", "alloc space", "wall/clock"];

impl RandomProfile {
    fn encode(&self) -> Vec<u8> {
        let mut strings: Vec<String> = vec![String::new()];
        let mut string = |text: &str| -> i64 {
            if let Some(i) = strings.iter().position(|s| s == text) {
                return i as i64;
            }
            strings.push(text.to_owned());
            strings.len() as i64 - 1
        };
        let sample_type = (0..self.events)
            .map(|e| proto::ValueType {
                r#type: string(EVENT_NAMES[e]),
                unit: string(if e == 1 { "bytes" } else { "nanoseconds" }),
            })
            .collect();
        let function = self
            .functions
            .iter()
            .enumerate()
            .map(|(i, name)| proto::Function {
                id: i as u64 + 1,
                name: string(name),
                ..proto::Function::default()
            })
            .collect();
        let location = self
            .locations
            .iter()
            .enumerate()
            .map(|(i, lines)| proto::Location {
                id: i as u64 + 1,
                address: 0x1000 + i as u64,
                line: lines
                    .iter()
                    .map(|&f| proto::Line {
                        function_id: f as u64 + 1,
                        line: 7,
                        column: 0,
                    })
                    .collect(),
                ..proto::Location::default()
            })
            .collect();
        let (pid, comm, app) = (string("pid"), string("comm"), string("app"));
        let sample = self
            .samples
            .iter()
            .map(|(locations, values, labelled)| proto::Sample {
                location_id: locations.iter().map(|&l| l as u64 + 1).collect(),
                value: values.clone(),
                label: if *labelled {
                    vec![
                        proto::Label {
                            key: pid,
                            num: 42,
                            ..proto::Label::default()
                        },
                        proto::Label {
                            key: comm,
                            str: app,
                            ..proto::Label::default()
                        },
                    ]
                } else {
                    Vec::new()
                },
            })
            .collect();
        let message = proto::Profile {
            sample_type,
            sample,
            location,
            function,
            string_table: strings,
            ..proto::Profile::default()
        };
        let bytes = message.encode_to_vec();
        if !self.gzip {
            return bytes;
        }
        let mut gzip = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gzip.write_all(&bytes).unwrap();
        gzip.finish().unwrap()
    }

    /// Each event's expected total, or `None` where it passes what pprof holds.
    fn totals(&self) -> Vec<Option<u64>> {
        (0..self.events)
            .map(|e| {
                self.samples.iter().try_fold(0u64, |sum, (_, values, _)| {
                    sum.checked_add(values[e] as u64)
                        .filter(|&n| n <= i64::MAX as u64)
                })
            })
            .collect()
    }
}

fn random_profile() -> impl proptest::strategy::Strategy<Value = RandomProfile> {
    use proptest::prelude::*;
    let names = prop::sample::select(vec![
        "main",
        "work",
        "a;b",
        "with space",
        "ünïcode",
        "looks_like_kernel_[k]",
        "[unknown]",
        "",
        "   ",
        "two\nlines",
        "std::vector<int>::push_back",
    ]);
    (
        1..=3usize,
        prop::collection::vec(names, 1..8),
        any::<bool>(),
    )
        .prop_flat_map(|(events, functions, gzip)| {
            let function_count = functions.len();
            let locations =
                prop::collection::vec(prop::collection::vec(0..function_count, 0..4), 1..30);
            (Just(events), Just(functions), locations, Just(gzip))
        })
        .prop_flat_map(|(events, functions, locations, gzip)| {
            // Values near the limits as well as ordinary ones, few enough of the former
            // that many profiles still fit.
            let value = prop_oneof![
                3 => Just(0i64),
                60 => 1..1_000_000i64,
                1 => (i64::MAX / 4)..=i64::MAX,
                1 => Just(i64::MAX),
            ];
            let sample = (
                prop::collection::vec(0..locations.len(), 0..80),
                prop::collection::vec(value, events),
                any::<bool>(),
            );
            (
                Just(events),
                Just(functions.into_iter().map(str::to_owned).collect()),
                Just(locations),
                prop::collection::vec(sample, 0..40),
                Just(gzip),
            )
        })
        .prop_map(
            |(events, functions, locations, samples, gzip)| RandomProfile {
                events,
                functions,
                locations,
                samples,
                gzip,
            },
        )
}

/// How many random profiles the property test tries: `PROF_PROPTEST_CASES`, default 40.
fn property_cases() -> u32 {
    std::env::var("PROF_PROPTEST_CASES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(40)
}

/// How many random profiles were refused for their totals, and how many rendered.
static REFUSED: AtomicUsize = AtomicUsize::new(0);
static RENDERED: AtomicUsize = AtomicUsize::new(0);

/// Checks `prof report` on one profile: no panic; a profile whose totals fit is rendered,
/// and each output it writes reads back with the same totals; one whose totals do not fit
/// is refused in one line.
fn check_report(case: &RandomProfile) -> Result<(), proptest::test_runner::TestCaseError> {
    use proptest::prop_assert;
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("random.pprof");
    fs::write(&input, case.encode()).unwrap();
    let outputs = ["out.svg", "out.folded", "out.pb.gz"].map(|name| dir.path().join(name));
    let mut command = prof();
    command.arg("report").arg(&input);
    for output in &outputs {
        command.arg("-o").arg(output);
    }
    let output = command.output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    prop_assert!(!stderr.contains("panicked"), "{}", describe(&output));
    let totals = case.totals();
    if totals.iter().any(Option::is_none) {
        REFUSED.fetch_add(1, Ordering::Relaxed);
        prop_assert!(output.status.code() == Some(2), "{}", describe(&output));
        prop_assert!(stderr.lines().count() == 1, "{stderr}");
        prop_assert!(stderr.contains("values add up to more than"), "{stderr}");
        return Ok(());
    }
    prop_assert!(output.status.success(), "{}", describe(&output));
    RENDERED.fetch_add(1, Ordering::Relaxed);
    let table = prof().arg("report").arg(&input).output().unwrap();
    prop_assert!(table.status.success(), "{}", describe(&table));

    let parts: Vec<String> = EVENT_NAMES[..case.events]
        .iter()
        .map(|name| prof::events::file_name_part(name))
        .collect();
    let files = prof::export::plan(&outputs, &parts).unwrap();
    let pprof = prof::export::read_profile(&outputs[2]);
    prop_assert!(pprof.is_ok(), "{:?}", pprof.err());
    let pprof = pprof.unwrap();
    for (event, total) in totals.iter().enumerate() {
        let total = total.unwrap();
        prop_assert!(pprof.events[event].total().period == total);
        let file = |format| {
            files
                .iter()
                .find(|f| f.format == format && f.event == Some(event))
                .unwrap()
                .path
                .clone()
        };
        let svg = fs::read_to_string(file(prof::export::Format::Svg)).unwrap();
        prop_assert!(svg.trim_end().ends_with("</svg>"));
        let folded = file(prof::export::Format::Folded);
        if total == 0 {
            prop_assert!(fs::read_to_string(&folded).unwrap().is_empty());
            continue;
        }
        let back = prof::export::read_profile(&folded);
        prop_assert!(
            back.is_ok(),
            "{:?}: {}",
            back.err(),
            fs::read_to_string(&folded).unwrap()
        );
        prop_assert!(back.unwrap().events[0].total().period == total);
    }
    Ok(())
}

/// Random but valid profiles (depths up to 80 locations of up to 3 inlined functions,
/// empty stacks, unresolved locations, odd names, values up to i64::MAX, one to three
/// events, gzipped or not) drive `prof report`: it never panics, and what it writes reads
/// back with the totals the profile holds.
#[test]
fn report_survives_random_profiles() {
    let config = proptest::test_runner::Config {
        cases: property_cases(),
        failure_persistence: None,
        ..proptest::test_runner::Config::default()
    };
    let mut runner = proptest::test_runner::TestRunner::new(config);
    runner
        .run(&random_profile(), |case| check_report(&case))
        .unwrap();
    // Both outcomes were tried, so neither check above went untested.
    let (refused, rendered) = (
        REFUSED.load(Ordering::Relaxed),
        RENDERED.load(Ordering::Relaxed),
    );
    assert!(
        refused > 0 && rendered > 0,
        "{refused} refused, {rendered} rendered"
    );
}
