//! Where names come from: libc's separate debug file, perf maps of JIT code, a container's
//! own copy of a library, and profiles whose unresolved frames `go tool pprof` leaves alone.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::thread::sleep;
use std::time::Duration;

use crate::ingest::Ingest;
use crate::record::record_ok;
use crate::report::go;
use crate::{
    assert_backends_accept, assert_share, decode_pprof, describe, has_frame, read_folded, serial,
    weight, workload,
};

/// Runs a command that must succeed.
fn run(command: &mut Command) {
    let output = command.output().unwrap();
    assert!(
        output.status.success(),
        "{command:?}: {}",
        describe(&output)
    );
}

/// With libc6-dbg installed (scripts/test.sh installs it), libc's internal functions have
/// names: the frame above `main` is `__libc_start_call_main`, which libc's own symbol table
/// lacks.
#[test]
fn libc_internals_are_named_from_the_debug_file() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("libc.folded");
    let pb = dir.path().join("libc.pb.gz");
    record_ok(
        "cpu-clock",
        &[&out, &pb],
        &[],
        &[workload("forever").into_os_string(), "1".into()],
    );
    let stacks = read_folded(&out);
    let ours = |f: &[String]| f[0] == "forever";
    let named = |f: &[String]| {
        f.windows(2)
            .any(|w| w[0] == "__libc_start_call_main" && w[1] == "main")
    };
    assert_share(
        &stacks,
        ours,
        named,
        0.9,
        "__libc_start_call_main above main",
    );
    assert_backends_accept(&pb);
}

/// A copy of libc without symbols, build id or debug link (so no debug file applies)
/// leaves the frame above `main` unresolved; `go tool pprof -raw` still reads the profile,
/// from the file and from an HTTP server that has no `/debug/pprof/symbol`, because every
/// mapping says it was symbolized. The same profile with the flags cleared makes pprof ask
/// that server and fail, so the check is real.
#[test]
fn go_tool_pprof_accepts_unresolved_frames() {
    let dir = tempfile::tempdir().unwrap();
    let lib = dir.path().join("lib");
    std::fs::create_dir(&lib).unwrap();
    run(Command::new("objcopy")
        .args([
            "--strip-all",
            "--remove-section=.gnu_debuglink",
            "--remove-section=.note.gnu.build-id",
            "/lib/x86_64-linux-gnu/libc.so.6",
        ])
        .arg(lib.join("libc.so.6")));
    let out = dir.path().join("bare.folded");
    let pb = dir.path().join("bare.pb.gz");
    {
        let _serial = serial();
        let command = [
            "env".into(),
            format!("LD_LIBRARY_PATH={}", lib.display()).into(),
            workload("forever").into_os_string(),
            "1".into(),
        ];
        record_ok("cpu-clock", &[&out, &pb], &[], &command);
    }
    let stacks = read_folded(&out);
    let ours = |f: &[String]| f[0] == "forever";
    let unresolved_caller =
        |f: &[String]| f.windows(2).any(|w| w[0] == "[unknown]" && w[1] == "main");
    assert_share(
        &stacks,
        ours,
        unresolved_caller,
        0.9,
        "an unresolved libc frame above main",
    );
    // Only the stripped copy is judged: `env`, before it execs the workload, runs in the
    // system's libc, whose names are known.
    assert_eq!(
        weight(&stacks, |f| ours(f)
            && has_frame(f, "__libc_start_call_main")),
        0,
        "{stacks:?}"
    );
    assert_backends_accept(&pb);

    let raw = |source: &str| {
        go().args(["tool", "pprof", "-raw", source])
            .output()
            .unwrap()
    };
    let from_file = raw(pb.to_str().unwrap());
    assert!(from_file.status.success(), "{}", describe(&from_file));

    let flagged = std::fs::read(&pb).unwrap();
    let unflagged = without_symbolized_flags(&flagged);
    let server = Ingest::serving(vec![
        ("/flagged/debug/pprof/profile".to_owned(), flagged),
        ("/unflagged/debug/pprof/profile".to_owned(), unflagged),
    ]);
    let port = server.port();
    let url = |what: &str| format!("http://127.0.0.1:{port}/{what}/debug/pprof/profile");
    let fetched = raw(&url("flagged"));
    assert!(fetched.status.success(), "{}", describe(&fetched));
    let text = String::from_utf8_lossy(&fetched.stdout);
    assert!(text.contains("forever_hot"), "{text}");
    let asked = raw(&url("unflagged"));
    assert!(
        String::from_utf8_lossy(&asked.stderr).contains("404"),
        "without the flags pprof asks the server for symbols: {}",
        describe(&asked)
    );
    let asked_for_symbols = |what: &str| {
        let path = format!("/{what}/debug/pprof/symbol");
        server.requests().iter().any(|r| r.url.starts_with(&path))
    };
    assert!(!asked_for_symbols("flagged"), "{:?}", server.requests());
    assert!(asked_for_symbols("unflagged"), "{:?}", server.requests());
    server.stop();
}

/// `bytes`, a gzipped pprof file, with every mapping's `HasFunctions` and line flags
/// cleared, as prof wrote them before.
fn without_symbolized_flags(bytes: &[u8]) -> Vec<u8> {
    use prost::Message;
    let mut message = decode_pprof(bytes);
    for mapping in &mut message.mapping {
        mapping.has_functions = false;
        mapping.has_filenames = false;
        mapping.has_line_numbers = false;
        mapping.has_inline_frames = false;
    }
    message.encode_to_vec()
}

/// `node`, which the JIT test runs. scripts/test.sh installs it (Debian's nodejs) where it
/// is missing.
fn node() -> PathBuf {
    let found = Command::new("node").arg("--version").output();
    assert!(
        found.is_ok_and(|o| o.status.success()),
        "this test needs Node.js (apt-get install nodejs; scripts/test.sh installs it)"
    );
    PathBuf::from("node")
}

/// `prof record -- node --perf-basic-prof script.js` names the script's hot JavaScript
/// function, from the perf map node writes, in at least half of node's samples.
#[test]
fn jit_frames_are_named_from_perf_maps() {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/workloads/hot.js");
    let node = node();
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("node.folded");
    let output = record_ok(
        "cpu-clock",
        &[&out],
        &[],
        &[
            node.into_os_string(),
            "--perf-basic-prof".into(),
            // It also writes V8's log, into the current folder unless told otherwise.
            "--no-logfile-per-isolate".into(),
            format!("--logfile={}", dir.path().join("v8.log").display()).into(),
            script.into_os_string(),
            "2".into(),
        ],
    );
    let stacks = read_folded(&out);
    let ours = |f: &[String]| f[0] == "node";
    let hot = |f: &[String]| f.iter().any(|frame| frame.contains("hotLoop"));
    assert_share(&stacks, ours, hot, 0.5, "node's samples in hotLoop");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        !stderr.contains("JIT or anonymous code without a perf map"),
        "{stderr}"
    );
}

/// Builds libspin.so twice into `dir`, under `host/` naming its hot function `alpha_spin`
/// and under `private/` naming it `gamma_spin` (same length, so the same layout), and the
/// `nsspin` program linked against `host/libspin.so`. Returns the program.
fn build_spin(dir: &Path) -> PathBuf {
    let sources = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/workloads");
    for (sub, hot) in [("host", "alpha_spin"), ("private", "gamma_spin")] {
        std::fs::create_dir_all(dir.join(sub)).unwrap();
        run(Command::new("cc")
            .args(["-O1", "-g", "-fno-omit-frame-pointer", "-shared", "-fPIC"])
            .arg(format!("-DHOT={hot}"))
            .arg(sources.join("libspin.c"))
            .arg("-o")
            .arg(dir.join(sub).join("libspin.so")));
    }
    let program = dir.join("nsspin");
    let host = dir.join("host");
    run(Command::new("cc")
        .args(["-O1", "-g", "-fno-omit-frame-pointer"])
        .arg(sources.join("nsspin.c"))
        .arg(format!("-L{}", host.display()))
        .arg(format!("-Wl,-rpath,{}", host.display()))
        .args(["-lspin", "-o"])
        .arg(&program));
    program
}

/// The shell command that runs `program seconds` in a new mount namespace where the private
/// libspin.so is mounted over the host's.
fn in_own_namespace(dir: &Path, program: &Path, seconds: &str) -> Vec<String> {
    let script = format!(
        "mount --bind {private} {host} && exec {program} {seconds}",
        private = dir.join("private/libspin.so").display(),
        host = dir.join("host/libspin.so").display(),
        program = program.display(),
    );
    [
        "unshare",
        "-m",
        "--propagation",
        "private",
        "sh",
        "-c",
        &script,
    ]
    .map(str::to_owned)
    .to_vec()
}

/// A process in a mount namespace of its own (`unshare -m`), running a private copy of a
/// library mounted over the host's, is symbolized from its own copy while it lives. Once
/// it has exited, the host's file, whose build id is not the one the process mapped, is
/// not used: its frames are `[unknown]`, counted as a replaced binary.
#[test]
fn other_mount_namespaces_use_their_own_files() {
    let dir = tempfile::tempdir().unwrap();
    let program = build_spin(dir.path());
    let _serial = serial();
    let command = in_own_namespace(dir.path(), &program, "20");
    let mut child = Command::new(&command[0])
        .args(&command[1..])
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    sleep(Duration::from_millis(500));
    let out = dir.path().join("live.folded");
    let pid = child.id().to_string();
    record_ok("cpu-clock", &[&out], &["-p", &pid, "-d", "1"], &[]);
    let _ = child.kill();
    let _ = child.wait();
    let stacks = read_folded(&out);
    let private = |f: &[String]| has_frame(f, "gamma_spin");
    assert_share(&stacks, |_| true, private, 0.8, "the private copy's names");
    assert_eq!(
        weight(&stacks, |f| has_frame(f, "alpha_spin")),
        0,
        "{stacks:?}"
    );

    let out = dir.path().join("exited.folded");
    let command: Vec<_> = in_own_namespace(dir.path(), &program, "1")
        .into_iter()
        .map(Into::into)
        .collect();
    let output = record_ok("cpu-clock", &[&out], &[], &command);
    let stacks = read_folded(&out);
    assert_eq!(
        weight(&stacks, |f| has_frame(f, "alpha_spin")),
        0,
        "{stacks:?}"
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("binary replaced since the process exited"),
        "{stderr}"
    );
}
