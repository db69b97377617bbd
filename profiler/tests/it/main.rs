//! prof's integration tests: one binary, run as root, that records real workloads with the
//! real BPF program attached to real (software) perf events, and checks what comes out.
//!
//! Tests that record take a global lock: on a 2-vCPU machine, two recordings at once would
//! disturb each other's proportions. They never skip: without
//! root they fail and say why.

mod agent;
mod agent_http;
mod agent_prometheus;
mod agent_push;
mod bad_input;
mod ingest;
mod record;
mod report;
mod robust;
mod symbols;
mod tracing;
mod unwind;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::{Mutex, MutexGuard, OnceLock};

/// The prof binary under test.
pub fn prof() -> Command {
    Command::new(env!("CARGO_BIN_EXE_prof"))
}

/// Serializes the tests that record or measure.
pub fn serial() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    let guard = LOCK.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    assert!(
        rustix::process::geteuid().is_root(),
        "prof's integration tests load BPF programs and must run as root \
         (use scripts/test.sh, which runs them with sudo when needed)"
    );
    guard
}

/// C flags of the workloads built with frame pointers, up to the output path.
const FRAME_POINTERS: [&str; 6] = [
    "-O1",
    "-g",
    "-fno-omit-frame-pointer",
    "-Wall",
    "-Werror",
    "-o",
];
/// C flags of the workloads built as release code is, without frame pointers.
const NO_FRAME_POINTERS: [&str; 6] = [
    "-O2",
    "-g",
    "-fomit-frame-pointer",
    "-Wall",
    "-Werror",
    "-o",
];

/// Builds the workload `tests/workloads/<name>.{c,cpp,rs}` with debug info, once per run,
/// and returns the binary's path. Workloads named `*_nofp` are built as users build release
/// code, at -O2 without frame pointers (Rust: `-O`, without forced frame pointers); the
/// others with frame pointers.
pub fn workload(name: &str) -> PathBuf {
    static BUILT: OnceLock<Mutex<HashMap<String, PathBuf>>> = OnceLock::new();
    let built = BUILT.get_or_init(Default::default);
    let mut built = built
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    if let Some(path) = built.get(name) {
        return path.clone();
    }
    let sources = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/workloads");
    let out_dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("workloads");
    std::fs::create_dir_all(&out_dir).unwrap();
    let binary = out_dir.join(name);
    let no_frame_pointers = name.ends_with("_nofp");
    let c_flags = if no_frame_pointers {
        NO_FRAME_POINTERS
    } else {
        FRAME_POINTERS
    };
    let (source, mut compiler) = match ["c", "cpp", "rs"]
        .into_iter()
        .map(|ext| sources.join(format!("{name}.{ext}")))
        .find(|path| path.exists())
    {
        Some(path) if path.extension().unwrap() == "c" => (path, Command::new("cc")),
        Some(path) if path.extension().unwrap() == "cpp" => (path, Command::new("c++")),
        Some(path) => (path, Command::new("rustc")),
        None => panic!("no workload source for {name} in {}", sources.display()),
    };
    if source.extension().unwrap() == "rs" {
        compiler.args(["-O", "-g"]);
        if !no_frame_pointers {
            compiler.args(["-C", "force-frame-pointers=yes"]);
        }
        compiler.arg("-o");
    } else {
        compiler.args(c_flags);
    }
    let status = compiler
        .arg(&binary)
        .arg(&source)
        .status()
        .expect("the workload's compiler runs (cc, c++ or rustc)");
    assert!(status.success(), "compiling {}", source.display());
    built.insert(name.to_owned(), binary.clone());
    binary
}

/// Builds `callback_main.c` with frame pointers against `libwalk.so`, built from
/// `walk_lib.c` at -O2 without frame pointers, and returns the program's path.
pub fn workload_with_library() -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT
        .get_or_init(|| {
            let sources = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/workloads");
            let out_dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("workloads");
            std::fs::create_dir_all(&out_dir).unwrap();
            let library = out_dir.join("libwalk.so");
            let program = out_dir.join("callback_main");
            let status = Command::new("cc")
                .args([
                    "-O2",
                    "-g",
                    "-fomit-frame-pointer",
                    "-fPIC",
                    "-shared",
                    "-o",
                ])
                .arg(&library)
                .arg(sources.join("walk_lib.c"))
                .status()
                .expect("cc runs");
            assert!(status.success(), "compiling walk_lib.c");
            let status = Command::new("cc")
                .args(FRAME_POINTERS)
                .arg(&program)
                .arg(sources.join("callback_main.c"))
                .arg(format!("-L{}", out_dir.display()))
                .arg("-lwalk")
                .arg(format!("-Wl,-rpath,{}", out_dir.display()))
                .status()
                .expect("cc runs");
            assert!(status.success(), "compiling callback_main.c");
            program
        })
        .clone()
}

/// A folded-stacks file: (frames root first, count) per line.
pub fn read_folded(path: &Path) -> Vec<(Vec<String>, u64)> {
    let text = std::fs::read_to_string(path)
        .unwrap_or_else(|err| panic!("reading {}: {err}", path.display()));
    text.lines()
        .map(|line| {
            let (stack, count) = line.rsplit_once(' ').expect("`stack count` lines");
            let frames = stack.split(';').map(str::to_owned).collect();
            (frames, count.parse().expect("the count is an integer"))
        })
        .collect()
}

/// Sum of counts of stacks that satisfy `pred`.
pub fn weight(stacks: &[(Vec<String>, u64)], pred: impl Fn(&[String]) -> bool) -> u64 {
    stacks
        .iter()
        .filter(|(frames, _)| pred(frames))
        .map(|(_, n)| n)
        .sum()
}

/// Asserts that among the stacks matching `within`, those also matching `matching` carry at
/// least `min` of the weight; `what` names the check in the failure message.
pub fn assert_share(
    stacks: &[(Vec<String>, u64)],
    within: impl Fn(&[String]) -> bool,
    matching: impl Fn(&[String]) -> bool,
    min: f64,
    what: &str,
) {
    let all = weight(stacks, &within);
    assert!(all > 0, "{what}: no stack to judge by in {stacks:?}");
    let share = weight(stacks, |f| within(f) && matching(f)) as f64 / all as f64;
    assert!(
        share >= min,
        "{what}: {:.1}% < {:.0}% in {stacks:?}",
        share * 100.0,
        min * 100.0
    );
}

/// Whether the stack has a frame equal to `name`.
pub fn has_frame(frames: &[String], name: &str) -> bool {
    frames.iter().any(|f| f == name)
}

/// stderr as text, and a readable dump of an output for assertion messages.
pub fn describe(output: &Output) -> String {
    format!(
        "status: {}\nstdout:\n{}\nstderr:\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// Asserts that the pprof file at `path` is one that real backends accept: it breaks none
/// of the rules of Pyroscope's ingester and Go's `profile.CheckValid` (see
/// `prof::export::pprof::backend_rule_violations`), a CPU-time event is `cpu`/`nanoseconds`
/// (also the period type) with its sample count `samples`/`count`, as in Go's CPU profiles,
/// and every mapping says it was symbolized, so `go tool pprof` never asks a server for
/// symbols. Returns the decoded message.
pub fn assert_backends_accept(path: &Path) -> prof::export::pprof::proto::Profile {
    let bytes = std::fs::read(path).unwrap_or_else(|err| panic!("{}: {err}", path.display()));
    assert_backends_accept_bytes(&bytes, &path.display().to_string())
}

/// [`assert_backends_accept`] for a gzipped pprof file's bytes; `what` names it.
pub fn assert_backends_accept_bytes(
    bytes: &[u8],
    what: &str,
) -> prof::export::pprof::proto::Profile {
    let message = decode_pprof(bytes);
    let broken = prof::export::pprof::backend_rule_violations(&message);
    assert!(broken.is_empty(), "{what}: {broken:?}");
    let types = message.sample_type_names();
    let clock = message.comment.iter().any(|&i| {
        let comment = message.text(i);
        comment.starts_with("prof event cpu=cpu-clock")
            || comment.starts_with("prof event cpu=task-clock")
    });
    if clock {
        assert!(types.contains(&("cpu", "nanoseconds")), "{types:?}");
        assert!(types.contains(&("samples", "count")), "{types:?}");
        let period = message.period_type.expect("a period type");
        assert_eq!(
            (message.text(period.r#type), message.text(period.unit)),
            ("cpu", "nanoseconds")
        );
    }
    for mapping in &message.mapping {
        let file = message.text(mapping.filename);
        assert!(mapping.has_functions, "{file}: {mapping:?}");
    }
    message
}

/// The pprof message in `bytes`, a gzipped pprof file as prof writes them.
pub fn decode_pprof(bytes: &[u8]) -> prof::export::pprof::proto::Profile {
    use prost::Message;
    let mut raw = Vec::new();
    std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(bytes), &mut raw)
        .expect("prof writes gzipped pprof");
    prof::export::pprof::proto::Profile::decode(raw.as_slice()).unwrap()
}
