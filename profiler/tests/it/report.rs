//! Profiles as data: prof's pprof files read by `go tool pprof`, other programs' pprof read
//! by `prof report`, ratio and differential graphs, golden outputs, and bad input.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use crate::record::record_ok;
use crate::{assert_backends_accept, describe, prof, read_folded, serial, workload};

/// `go`, which the tests need for `go tool pprof`, the reference pprof reader, and to write
/// a Go program's profile. scripts/test.sh installs it (Debian's golang-go).
pub fn go() -> Command {
    let found = Command::new("go").arg("version").output();
    assert!(
        found.is_ok_and(|o| o.status.success()),
        "these tests need `go` (apt-get install golang-go; scripts/test.sh installs it)"
    );
    let cache = Path::new(env!("CARGO_TARGET_TMPDIR")).join("go-cache");
    let mut go = Command::new("go");
    go.env("GOCACHE", &cache)
        .env("HOME", env!("CARGO_TARGET_TMPDIR"))
        .env("GO111MODULE", "off");
    go
}

/// Runs `go tool pprof <args> <file>` and returns its stdout; it must succeed.
fn go_pprof(args: &[&str], file: &Path) -> String {
    let output = go()
        .args(["tool", "pprof"])
        .args(args)
        .arg(file)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "go tool pprof {args:?}: {}",
        describe(&output)
    );
    String::from_utf8(output.stdout).unwrap()
}

/// The function on the first row of `go tool pprof -top` output.
fn top_function(top: &str) -> &str {
    let mut rows = top
        .lines()
        .skip_while(|l| !l.trim_start().starts_with("flat"));
    rows.next();
    rows.next()
        .and_then(|row| row.split_whitespace().last())
        .unwrap_or_else(|| panic!("a row in {top}"))
}

/// Runs prof with `args` and asserts it succeeded.
fn prof_ok(args: &[&str]) -> Output {
    let output = prof().args(args).output().unwrap();
    assert!(
        output.status.success(),
        "prof {args:?}: {}",
        describe(&output)
    );
    output
}

fn path(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// `go tool pprof` reads what `prof record -o x.pb.gz` writes: each event's hot function
/// tops its own sample index, samples carry pid and comm labels, locations point to the
/// workload's mapping with its build id, and functions have file names and lines.
#[test]
fn go_tool_pprof_reads_recorded_profiles() {
    let dir = tempfile::tempdir().unwrap();
    let pb = dir.path().join("prof.pb.gz");
    let binary = workload("spin_faults");
    {
        let _serial = serial();
        record_ok(
            "cpu-clock,page-faults",
            &[&pb],
            &[],
            &[binary.clone().into_os_string()],
        );
    }
    let message = assert_backends_accept(&pb);
    assert!(
        message.mapping.iter().any(|m| m.has_line_numbers),
        "DWARF lines for the workload: {:?}",
        message.mapping
    );
    let faults = go_pprof(&["-top", "-sample_index=page_faults"], &pb);
    assert_eq!(top_function(&faults), "touch_pages", "{faults}");
    let clock = go_pprof(&["-top", "-sample_index=cpu"], &pb);
    assert_eq!(top_function(&clock), "spin", "{clock}");
    assert!(clock.contains("Type: cpu"), "{clock}");
    let samples = go_pprof(&["-top", "-sample_index=samples"], &pb);
    assert_eq!(top_function(&samples), "spin", "{samples}");
    let samples = go_pprof(&["-top", "-sample_index=page_faults_samples"], &pb);
    assert_eq!(top_function(&samples), "touch_pages", "{samples}");
    // go tool pprof can save it again (as it saves every profile it fetches), and the
    // copy still passes.
    let saved = dir.path().join("saved.pb.gz");
    go_pprof(&["-proto", "-output", path(&saved)], &pb);
    assert_backends_accept(&saved);

    let raw = go_pprof(&["-raw"], &pb);
    assert!(raw.contains("pid:["), "pid labels: {raw}");
    assert!(raw.contains("comm:[spin_faults]"), "comm labels: {raw}");
    assert!(raw.contains(path(&binary)), "the workload's mapping: {raw}");
    assert!(
        raw.contains("spin_faults.c:"),
        "file names and lines: {raw}"
    );
    assert!(
        raw.contains("[kernel.kallsyms]"),
        "the kernel mapping: {raw}"
    );
    let build_id = Command::new("readelf")
        .args(["-n"])
        .arg(&binary)
        .output()
        .unwrap();
    let notes = String::from_utf8_lossy(&build_id.stdout);
    let id = notes
        .lines()
        .find_map(|l| l.trim().strip_prefix("Build ID: "))
        .expect("the workload has a build id");
    assert!(raw.contains(id), "build id {id} in {raw}");
    let comments = go_pprof(&["-comments"], &pb);
    assert!(comments.contains("prof losses cpu-clock:"), "{comments}");
}

/// What `report` renders from a pprof file equals what `record` wrote directly, and a
/// re-written pprof file renders the same again.
#[test]
fn report_renders_what_record_wrote() {
    let dir = tempfile::tempdir().unwrap();
    let (folded, pb) = (dir.path().join("rec.folded"), dir.path().join("rec.pb.gz"));
    {
        let _serial = serial();
        let command = [workload("spin_faults").into_os_string()];
        record_ok("cpu-clock,page-faults", &[&folded, &pb], &[], &command);
    }
    let again = dir.path().join("again.pb.gz");
    let from_report = dir.path().join("rep.folded");
    prof_ok(&[
        "report",
        path(&pb),
        "-o",
        path(&from_report),
        "-o",
        path(&again),
    ]);
    let from_again = dir.path().join("again.folded");
    prof_ok(&["report", path(&again), "-o", path(&from_again)]);
    for event in ["cpu-clock", "page-faults"] {
        let recorded = read_folded(&dir.path().join(format!("rec.{event}.folded")));
        assert!(!recorded.is_empty());
        let reported = read_folded(&dir.path().join(format!("rep.{event}.folded")));
        assert_eq!(recorded, reported, "{event}: record vs report");
        let twice = read_folded(&dir.path().join(format!("again.{event}.folded")));
        assert_eq!(recorded, twice, "{event}: after a pprof round trip");
    }
    // No -o: the table of each event's hottest functions.
    let table = prof_ok(&["report", path(&pb), "--top", "3"]);
    let text = String::from_utf8(table.stdout).unwrap();
    assert!(
        text.contains("cpu-clock: ") && text.contains("page-faults: "),
        "{text}"
    );
    let faults = text.split("page-faults: ").nth(1).unwrap();
    let first = faults.lines().nth(2).unwrap();
    assert!(first.ends_with("touch_pages"), "{text}");
    assert_eq!(faults.lines().count(), 5, "--top 3: {text}");
}

/// A CPU profile that Go's runtime/pprof wrote is read and rendered by `prof report`.
#[test]
fn report_reads_go_runtime_pprof() {
    let dir = tempfile::tempdir().unwrap();
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/workloads/gocpu.go");
    let binary = dir.path().join("gocpu");
    let built = go()
        .arg("build")
        .arg("-o")
        .arg(&binary)
        .arg(&source)
        .output()
        .unwrap();
    assert!(built.status.success(), "go build: {}", describe(&built));
    let profile = dir.path().join("cpu.pprof");
    let ran = Command::new(&binary).arg(&profile).output().unwrap();
    assert!(ran.status.success(), "{}", describe(&ran));

    let table = prof_ok(&["report", path(&profile), "--top", "5"]);
    let text = String::from_utf8(table.stdout).unwrap();
    assert!(text.starts_with("cpu: "), "{text}");
    let first = text.lines().nth(2).unwrap();
    assert!(first.ends_with("main.hotLoop"), "{text}");
    let svg = dir.path().join("go.svg");
    prof_ok(&["report", path(&profile), "-o", path(&svg), "--reverse"]);
    let svg = std::fs::read_to_string(&svg).unwrap();
    assert!(
        svg.contains("main.hotLoop") && svg.contains("prof: cpu"),
        "{svg}"
    );
}

/// The title of a frame and its fill colour, for every frame of an inferno SVG.
fn frames_with_colours(svg: &str) -> Vec<(String, String)> {
    svg.split("<g><title>")
        .skip(1)
        .filter_map(|frame| {
            let title = frame.split(" (").next()?.to_owned();
            let fill = frame.split("fill=\"").nth(1)?.split('"').next()?.to_owned();
            Some((title, fill))
        })
        .collect()
}

/// The ratio graph of page-faults per cpu-clock colours touch_pages, which faults far more
/// per unit of CPU time than the whole profile, red, and spin, which never faults, blue.
/// (Colours saturate at 8× the profile's ratio: the workload spins long enough that
/// touch_pages takes well under an eighth of the CPU time, whatever the machine's speed.)
#[test]
fn ratio_graph_colours_by_events_ratio() {
    let dir = tempfile::tempdir().unwrap();
    let pb = dir.path().join("prof.pb.gz");
    {
        let _serial = serial();
        let command = [
            workload("spin_faults").into_os_string(),
            "10".into(),
            "150000000".into(),
        ];
        record_ok("cpu-clock,page-faults", &[&pb], &[], &command);
    }
    let svg = dir.path().join("ratio.svg");
    prof_ok(&[
        "report",
        path(&pb),
        "--ratio",
        "page-faults/cpu-clock",
        "-o",
        path(&svg),
    ]);
    let svg = std::fs::read_to_string(&svg).unwrap();
    assert!(svg.contains("prof: page-faults per cpu-clock"), "{svg}");
    let frames = frames_with_colours(&svg);
    let colour = |name: &str| {
        frames
            .iter()
            .find(|(title, _)| title == name)
            .map(|(_, fill)| fill.clone())
            .unwrap_or_else(|| panic!("{name} in {frames:?}"))
    };
    assert_eq!(colour("touch_pages"), "rgb(250,100,100)", "saturated red");
    assert_eq!(colour("spin"), "rgb(100,100,250)", "saturated blue");
}

/// A differential graph of a recording against itself, once as pprof and once as folded
/// stacks, finds no change anywhere; against a longer run, `--normalize` compares shares.
#[test]
fn diff_compares_pprof_and_folded() {
    let dir = tempfile::tempdir().unwrap();
    let (pb, folded) = (
        dir.path().join("a.pb.gz"),
        dir.path().join("a.cpu-clock.folded"),
    );
    {
        let _serial = serial();
        let command = [workload("spin_faults").into_os_string()];
        record_ok("cpu-clock", &[&pb, &folded], &[], &command);
    }
    let lines = dir.path().join("diff.folded");
    prof_ok(&["diff", path(&pb), path(&folded), "-o", path(&lines)]);
    let text = std::fs::read_to_string(&lines).unwrap();
    assert!(!text.is_empty());
    for line in text.lines() {
        let mut fields = line.rsplitn(3, ' ');
        let (after, before) = (fields.next().unwrap(), fields.next().unwrap());
        assert_eq!(before, after, "unchanged: {line}");
    }
    let svg = dir.path().join("diff.svg");
    prof_ok(&[
        "diff",
        path(&pb),
        path(&folded),
        "--normalize",
        "-o",
        path(&svg),
    ]);
    let svg = std::fs::read_to_string(&svg).unwrap();
    assert!(svg.contains("prof diff: cpu-clock") && svg.contains("before scaled"));
    // No frame changed, so none is coloured red or blue.
    for (title, fill) in frames_with_colours(&svg) {
        assert!(
            !fill.starts_with("rgb(255,") && !fill.ends_with(",255)"),
            "{title} coloured {fill}"
        );
    }
}

/// A graph of 100,000 unique stacks stays small: narrow frames are pruned, and the subtitle
/// says how many.
#[test]
fn huge_profiles_are_pruned() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("huge.folded");
    let mut text = String::from("app;main;hot 100000000\n");
    for i in 0..100_000 {
        text.push_str(&format!("app;main;cold_{};leaf_{} 1\n", i % 1000, i));
    }
    std::fs::write(&input, text).unwrap();
    let svg = dir.path().join("huge.svg");
    prof_ok(&["report", path(&input), "-o", path(&svg)]);
    let svg = std::fs::read_to_string(&svg).unwrap();
    assert!(
        svg.contains("frames too narrow to draw pruned"),
        "{}",
        &svg[..2000]
    );
    let frames = svg.matches("<g><title>").count();
    assert!(frames < 100, "{frames} frames drawn");
}

/// Golden files: rendering a fixed, real recording gives exactly the blessed SVG, folded
/// stacks and table. `PROF_BLESS=1 cargo test --test it golden` re-blesses them after an
/// intended change.
#[test]
fn golden_outputs() {
    let golden = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden");
    let input = golden.join("spin_faults.pb.gz");
    let dir = tempfile::tempdir().unwrap();
    let out = |name: &str| dir.path().join(name);
    let svg = ["--title", "golden", "--event", "page-faults"];
    let cases: Vec<(&str, Vec<String>, PathBuf)> = vec![
        ("top.txt", strings(&["--top", "8"]), PathBuf::new()),
        (
            "cpu-clock.folded",
            strings(&["--event", "cpu-clock", "--per-pid"]),
            out("c.folded"),
        ),
        ("page-faults.svg", strings(&svg), out("p.svg")),
        (
            "reverse.svg",
            strings(&["--event", "cpu-clock", "--reverse", "--colors", "hot"]),
            out("r.svg"),
        ),
        (
            "ratio.svg",
            strings(&["--ratio", "page-faults/cpu-clock"]),
            out("ratio.svg"),
        ),
    ];
    let bless = std::env::var_os("PROF_BLESS").is_some();
    let mut stale = Vec::new();
    for (name, args, output) in cases {
        let mut command = prof();
        command.arg("report").arg(&input).args(&args);
        if !output.as_os_str().is_empty() {
            command.arg("-o").arg(&output);
        }
        let run = command.output().unwrap();
        assert!(run.status.success(), "{name}: {}", describe(&run));
        let actual = if output.as_os_str().is_empty() {
            run.stdout
        } else {
            std::fs::read(&output).unwrap()
        };
        let path = golden.join(name);
        if bless {
            std::fs::write(&path, &actual).unwrap();
        } else if std::fs::read(&path).ok().as_deref() != Some(actual.as_slice()) {
            stale.push(name);
        }
    }
    assert!(
        stale.is_empty(),
        "{stale:?} differ from tests/golden; if the change is intended, re-bless with \
         PROF_BLESS=1 cargo test --test it golden"
    );
}

fn strings(args: &[&str]) -> Vec<String> {
    args.iter().map(|a| a.to_string()).collect()
}

/// Bad input gets one line naming the problem, exit 2, and no panic.
#[test]
fn bad_profiles_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let golden = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/spin_faults.pb.gz");
    let bytes = std::fs::read(&golden).unwrap();
    let file = |name: &str, content: &[u8]| {
        let path = dir.path().join(name);
        std::fs::write(&path, content).unwrap();
        path
    };
    let truncated = file("truncated.pb.gz", &bytes[..bytes.len() / 2]);
    let mut flipped = flate2_gunzip(&bytes);
    let middle = flipped.len() / 2;
    flipped[middle] ^= 0xff;
    flipped.truncate(flipped.len() - 1);
    let corrupt = file("corrupt.pprof", &flipped);
    let empty = file("empty.pb.gz", b"");
    let text = file("notes.pprof", b"these are my notes, not a profile\n");
    let svg = file("graph.svg", b"<svg></svg>");
    let golden_s = path(&golden);
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["report", path(&truncated)], "does not decompress"),
        (vec!["report", path(&corrupt)], "as pprof"),
        (vec!["report", path(&empty)], "is empty"),
        (vec!["report", path(&text)], "not a pprof profile"),
        (
            vec!["report", path(&svg)],
            "is a flame graph, not a profile",
        ),
        (vec!["report", "/nonexistent/x.pb.gz"], "cannot read"),
        (
            vec!["report", golden_s, "--event", "cycles"],
            "has no event `cycles`; it has: cpu-clock, page-faults",
        ),
        (
            vec![
                "report",
                golden_s,
                "--ratio",
                "cache-misses/cycles",
                "-o",
                "x.svg",
            ],
            "has no event `cache-misses`",
        ),
        (
            vec!["report", golden_s, "--ratio", "page-faults", "-o", "x.svg"],
            "NUMERATOR/DENOMINATOR",
        ),
        (
            vec!["report", golden_s, "--ratio", "page-faults/cpu-clock"],
            "give it an output",
        ),
        (
            vec!["report", golden_s, "--colors", "plaid", "-o", "x.svg"],
            "unknown palette `plaid`",
        ),
        (
            vec!["report", golden_s, "-o", "x.png"],
            "cannot tell the format",
        ),
        (vec!["diff", golden_s, path(&empty)], "is empty"),
        (
            vec!["diff", golden_s, golden_s, "--event", "nope"],
            "has no event `nope`",
        ),
    ];
    for (args, expected) in cases {
        let output = prof().current_dir(dir.path()).args(&args).output().unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(
            output.status.code(),
            Some(2),
            "{args:?}: {}",
            describe(&output)
        );
        assert!(
            stderr.starts_with("prof: ") && stderr.lines().count() == 1,
            "{args:?}: {stderr}"
        );
        assert!(
            stderr.contains(expected),
            "{args:?}: want `{expected}` in {stderr}"
        );
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
    assert!(
        !dir.path().join("x.svg").exists(),
        "no output from a refused command"
    );
}

fn flate2_gunzip(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(bytes), &mut out).unwrap();
    out
}
