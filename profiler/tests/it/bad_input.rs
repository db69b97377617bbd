//! Bad input: each case gets one `prof: …` line on stderr, exit status 2, and no output file.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output};

use crate::{describe, prof, serial};

/// The non-warning lines of stderr.
fn error_lines(output: &Output) -> Vec<String> {
    String::from_utf8_lossy(&output.stderr)
        .lines()
        .filter(|l| !l.starts_with("prof: warning:"))
        .map(str::to_owned)
        .collect()
}

/// Asserts exit 2 and a single `prof: ` line that contains every one of `needles`.
fn assert_refused(output: &Output, needles: &[&str]) {
    assert_eq!(output.status.code(), Some(2), "{}", describe(output));
    let lines = error_lines(output);
    assert_eq!(lines.len(), 1, "one line: {}", describe(output));
    assert!(lines[0].starts_with("prof: "), "{}", describe(output));
    for needle in needles {
        assert!(lines[0].contains(needle), "`{needle}` in: {}", lines[0]);
    }
}

/// Runs `prof record <args> -o <dir>/out.svg -- true`, returns the output and whether
/// out.svg exists afterwards.
fn record(args: &[&str]) -> (Output, bool) {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.svg");
    let output = prof()
        .arg("record")
        .args(args)
        .arg("-o")
        .arg(&out)
        .args(["--", "true"])
        .output()
        .unwrap();
    (output, out.exists())
}

/// A copy of the prof binary that any user can run (the build folder may be private).
fn world_executable_prof(dir: &Path) -> std::path::PathBuf {
    let copy = dir.join("prof");
    std::fs::copy(env!("CARGO_BIN_EXE_prof"), &copy).unwrap();
    std::fs::set_permissions(&copy, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o777)).unwrap();
    copy
}

/// `<binary> record -e cpu-clock -o <out> -- <command>`, run as the user `nobody`.
fn record_as_nobody(binary: &Path, out: &Path, command: &[&std::ffi::OsStr]) -> Output {
    record_as_nobody_with(binary, &[], out, command)
}

/// `<binary> record -e cpu-clock <flags> -o <out> -- <command>`, run as the user `nobody`.
fn record_as_nobody_with(
    binary: &Path,
    flags: &[&str],
    out: &Path,
    command: &[&std::ffi::OsStr],
) -> Output {
    Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        .arg(binary)
        .args(["record", "-e", "cpu-clock"])
        .args(flags)
        .arg("-o")
        .arg(out)
        .arg("--")
        .args(command)
        .output()
        .expect("setpriv (util-linux) runs")
}

/// A copy of the prof binary that any user can run, with CAP_BPF and CAP_PERFMON.
fn prof_with_capabilities(dir: &Path) -> std::path::PathBuf {
    let binary = world_executable_prof(dir);
    let status = Command::new("setcap")
        .args(["cap_bpf,cap_perfmon+ep"])
        .arg(&binary)
        .status()
        .expect("setcap (libcap2-bin) runs");
    assert!(status.success());
    binary
}

/// Not root: the error says to use sudo or grant CAP_BPF and CAP_PERFMON.
#[test]
fn not_root_says_how_to_fix_it() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let binary = world_executable_prof(dir.path());
    let out = dir.path().join("out.svg");
    let output = record_as_nobody(&binary, &out, &["true".as_ref()]);
    assert_refused(
        &output,
        &[
            "needs root",
            "CAP_BPF",
            "CAP_PERFMON",
            "sudo",
            "perf_event_paranoid",
        ],
    );
    assert!(!out.exists());
}

/// The fix the error suggests works: an unprivileged user can record once the binary has
/// CAP_BPF and CAP_PERFMON.
#[test]
fn capabilities_instead_of_root_work() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let binary = prof_with_capabilities(dir.path());
    let out = dir.path().join("caps.folded");
    let ratio = crate::workload("ratio");
    let output = record_as_nobody(&binary, &out, &[ratio.as_os_str(), "30".as_ref()]);
    assert!(output.status.success(), "{}", describe(&output));
    let stacks = crate::read_folded(&out);
    assert!(
        crate::weight(&stacks, |f| crate::has_frame(f, "hot_three")) > 0,
        "{stacks:?}"
    );
}

/// Root without CAP_BPF and CAP_PERFMON (and CAP_SYS_ADMIN) is refused the same way.
#[test]
fn missing_capabilities_are_named() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.svg");
    let output = Command::new("setpriv")
        .args([
            "--inh-caps=-bpf,-perfmon,-sys_admin",
            "--bounding-set=-bpf,-perfmon,-sys_admin",
            "--",
        ])
        .arg(env!("CARGO_BIN_EXE_prof"))
        .args(["record", "-e", "cpu-clock", "-o"])
        .arg(&out)
        .args(["--", "true"])
        .output()
        .expect("setpriv (util-linux) runs");
    assert_refused(&output, &["missing: CAP_BPF, CAP_PERFMON", "setcap"]);
    assert!(!out.exists());
}

/// An unknown event suggests close names and `prof list`.
#[test]
fn unknown_event_suggests() {
    let (output, written) = record(&["-e", "cpu-clok"]);
    assert_refused(
        &output,
        &[
            "unknown event `cpu-clok`",
            "did you mean `cpu-clock`",
            "prof list",
        ],
    );
    assert!(!written);
}

/// An unknown tracepoint suggests the close name and how to list the category; an unknown
/// category suggests close categories.
#[test]
fn unknown_tracepoint_suggests() {
    let _serial = serial();
    let (output, written) = record(&["-e", "sched:sched_swich"]);
    assert_refused(
        &output,
        &[
            "unknown tracepoint `sched:sched_swich`",
            "did you mean `sched:sched_switch`",
            "prof list sched",
        ],
    );
    assert!(!written);
    let (output, written) = record(&["-e", "cpu-clock,schd:sched_switch"]);
    assert_refused(&output, &["no category `schd`", "`sched`", "prof list"]);
    assert!(!written);
}

/// `--off-cpu` where it cannot work says why: here as a user with CAP_BPF and CAP_PERFMON
/// but not CAP_SYS_ADMIN, who can neither mount tracefs (when it is not mounted) nor read it
/// (when root mounted it), so the sched_switch tracepoint cannot be found.
#[test]
fn off_cpu_without_tracefs_says_why() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let binary = prof_with_capabilities(dir.path());
    let out = dir.path().join("off.svg");
    let output = record_as_nobody_with(&binary, &["--off-cpu"], &out, &["true".as_ref()]);
    let why = if prof::tracefs::mount_point().is_some() {
        "run prof as root"
    } else {
        "cannot mount it without CAP_SYS_ADMIN"
    };
    assert_refused(
        &output,
        &["--off-cpu needs the sched:sched_switch tracepoint", why],
    );
    assert!(!out.exists());
}

/// Without a hardware PMU, any hardware event but cycles fails naming the event and the
/// reason; cycles falls back to cpu-clock with one warning and records. (With a PMU, both
/// record.)
#[test]
fn hardware_events_without_a_pmu() {
    let _serial = serial();
    let (output, written) = record(&["-e", "instructions"]);
    if prof::events::hardware_pmu_present() {
        assert!(output.status.success(), "{}", describe(&output));
        return;
    }
    assert_refused(
        &output,
        &[
            "`instructions` is not supported",
            "no hardware PMU",
            "ENOENT",
        ],
    );
    assert!(!written);

    let (output, written) = record(&["-e", "cycles"]);
    assert!(output.status.success(), "{}", describe(&output));
    assert!(written);
    let stderr = String::from_utf8_lossy(&output.stderr);
    let warnings: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with("prof: warning:"))
        .collect();
    assert_eq!(warnings.len(), 1, "{stderr}");
    assert!(
        warnings[0].contains("falling back to cpu-clock"),
        "{stderr}"
    );
}

/// A pid that does not exist, and a thread id given for a process id.
#[test]
fn missing_pid_and_thread_ids() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.svg");
    // Above the kernel's pid_max limit, so it can never exist.
    let output = prof()
        .args(["record", "-e", "cpu-clock", "-p", "99999999", "-o"])
        .arg(&out)
        .output()
        .unwrap();
    assert_refused(&output, &["no process with pid 99999999"]);
    // A thread of this test process: its tid is not a pid.
    let (tid_sender, tid) = std::sync::mpsc::channel();
    let (done, wait) = std::sync::mpsc::channel::<()>();
    let thread = std::thread::spawn(move || {
        tid_sender
            .send(rustix::thread::gettid().as_raw_nonzero().get())
            .unwrap();
        wait.recv().ok();
    });
    let tid = tid.recv().unwrap().to_string();
    let pid = std::process::id().to_string();
    let output = prof()
        .args(["record", "-e", "cpu-clock", "-p", &tid, "-o"])
        .arg(&out)
        .output()
        .unwrap();
    done.send(()).unwrap();
    thread.join().unwrap();
    assert_refused(
        &output,
        &["is a thread of process", &format!("use -p {pid}")],
    );
    assert!(!out.exists());
}

/// A command that cannot be run: missing, and not executable.
#[test]
fn command_that_cannot_run() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.svg");
    let output = prof()
        .args(["record", "-e", "cpu-clock", "-o"])
        .arg(&out)
        .args(["--", "/nonexistent/program"])
        .output()
        .unwrap();
    assert_refused(&output, &["cannot run `/nonexistent/program`", "not found"]);
    let data = dir.path().join("data.txt");
    std::fs::write(&data, "not a program").unwrap();
    let output = prof()
        .args(["record", "-e", "cpu-clock", "-o"])
        .arg(&out)
        .arg("--")
        .arg(&data)
        .output()
        .unwrap();
    assert_refused(&output, &["not an executable file"]);
    assert!(!out.exists());
}

/// Output folders that are missing, not folders, or not writable are refused before
/// recording starts (the workload never runs).
#[test]
fn unwritable_outputs_are_refused_up_front() {
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("ran");
    let run = |out: &Path| {
        prof()
            .args(["record", "-e", "cpu-clock", "-o"])
            .arg(out)
            .args(["--", "touch"])
            .arg(&marker)
            .output()
            .unwrap()
    };
    let output = run(&dir.path().join("missing/out.svg"));
    assert_refused(&output, &["does not exist"]);
    let file = dir.path().join("file");
    std::fs::write(&file, "x").unwrap();
    let output = run(&file.join("out.svg"));
    assert_refused(&output, &["is not a folder"]);
    // /proc accepts no new files, even from root.
    let output = run(Path::new("/proc/out.svg"));
    assert_refused(&output, &["cannot write to output folder `/proc`"]);
    let output = run(&dir.path().join("out.png"));
    assert_refused(&output, &["cannot tell the format", ".svg", ".folded"]);
    assert!(
        !marker.exists(),
        "the command must not run when outputs are refused"
    );
}

/// `-F` above kernel.perf_event_max_sample_rate names the sysctl.
#[test]
fn frequency_above_the_kernel_limit() {
    let max: u64 = std::fs::read_to_string("/proc/sys/kernel/perf_event_max_sample_rate")
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let too_high = (max + 1).to_string();
    let (output, written) = record(&["-e", "cpu-clock", "-F", &too_high]);
    assert_refused(&output, &["kernel.perf_event_max_sample_rate", &too_high]);
    assert!(!written);
}

/// Flag combinations that make no sense are usage errors (exit 2).
#[test]
fn conflicting_flags() {
    let output = prof()
        .args(["record", "-F", "99", "-c", "1000", "--", "true"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2), "{}", describe(&output));
    let output = prof()
        .args(["record", "-p", "1", "--", "true"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2), "{}", describe(&output));
    let (output, _) = record(&["-e", "cpu-clock", "-C", "4000"]);
    assert_refused(&output, &["CPU 4000 is not online"]);
    let (output, _) = record(&["-e", "cpu-clock,cpu-clock"]);
    assert_refused(&output, &["listed twice"]);
    let (output, _) = record(&["-e", "cpu-clock:x"]);
    assert_refused(&output, &["unsupported modifier `x`"]);
}
