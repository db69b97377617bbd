//! Unwinding code built without frame pointers: the unwind tables walked in the kernel give
//! whole stacks, from the sampled function up to `main`, through libc and std.

use std::ffi::OsString;

use crate::record::record_ok;
use crate::{
    assert_share, describe, has_frame, prof, read_folded, serial, weight, workload,
    workload_with_library,
};

/// The position of the first frame for which `matches` holds.
fn position(frames: &[String], matches: impl Fn(&str) -> bool) -> Option<usize> {
    frames.iter().position(|f| matches(f))
}

/// Records `command` with cpu-clock into a folded file and returns its stacks and prof's
/// stderr.
fn record(command: &[OsString], flags: &[&str]) -> (Vec<(Vec<String>, u64)>, String) {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.folded");
    let output = record_ok("cpu-clock", &[&out], flags, command);
    (
        read_folded(&out),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// Whether `callers` appear in `frames` outermost first, in that order, and `callee`
/// below the last of them.
fn in_order(frames: &[String], callers: &[&dyn Fn(&str) -> bool], callee: &str) -> bool {
    let mut at = 0;
    for caller in callers {
        match position(&frames[at..], caller) {
            Some(found) => at += found + 1,
            None => return false,
        }
    }
    position(&frames[at..], |f| f == callee).is_some()
}

/// Asserts that ≥ 95% of the samples of process `comm` reach `main`, and that ≥ 95% of those
/// through `callee` have `callers` above it, outermost first, in that order. (Samples taken
/// before a process's tables arrive are walked by frame pointer and counted; the 5% bounds
/// them.)
fn assert_whole_stacks(
    stacks: &[(Vec<String>, u64)],
    comm: &str,
    callers: &[&dyn Fn(&str) -> bool],
    callee: &str,
    stderr: &str,
) {
    let ours = |f: &[String]| f[0] == comm;
    assert_share(
        stacks,
        ours,
        |f| has_frame(f, "main"),
        0.95,
        &format!("{comm}'s samples that reach main\n{stderr}"),
    );
    assert_share(
        stacks,
        |f| ours(f) && has_frame(f, callee),
        |f| in_order(f, callers, callee),
        0.95,
        &format!("{callee} under its callers\n{stderr}"),
    );
}

/// C at -O2 without frame pointers, its comparison callback run by libc's qsort (no frame
/// pointers either): ≥ 95% of samples reach main, and the callback sits under qsort, under
/// the functions that called qsort.
#[test]
fn c_without_frame_pointers_keeps_its_callers() {
    let _serial = serial();
    let (stacks, stderr) = record(&[workload("qsort_nofp").into_os_string()], &[]);
    assert_whole_stacks(
        &stacks,
        "qsort_nofp",
        &[
            &|f| f == "main",
            &|f| f == "sort_for",
            &|f| f == "sort_batch",
            &|f| f.contains("qsort"),
        ],
        "compare_keys",
        &stderr,
    );
}

/// The same program with `--unwind fp`: the kernel's frame-pointer walker loses the callers,
/// which is what the tables are for (this keeps the test above honest).
#[test]
fn frame_pointers_alone_lose_the_callers() {
    let _serial = serial();
    let (stacks, _) = record(
        &[workload("qsort_nofp").into_os_string()],
        &["--unwind", "fp"],
    );
    let ours = |f: &[String]| f[0] == "qsort_nofp";
    let reached = weight(&stacks, |f| ours(f) && has_frame(f, "main")) as f64;
    let all = weight(&stacks, ours) as f64;
    assert!(
        reached / all < 0.5,
        "with frame pointers only, {:.0}% reach main",
        100.0 * reached / all
    );
}

/// A default Rust release build (no forced frame pointers; std prebuilt without them), its
/// closure called from std's sort: ≥ 95% reach main, the closure's callee under sort_round.
#[test]
fn rust_release_build_keeps_its_callers() {
    let _serial = serial();
    let (stacks, stderr) = record(&[workload("sort_nofp").into_os_string()], &[]);
    let stacks: Vec<(Vec<String>, u64)> = stacks
        .into_iter()
        .map(|(frames, n)| {
            // Rust frames are paths (sort_nofp::main); keep the last segment.
            let frames = frames
                .into_iter()
                .map(|f| f.rsplit("::").next().unwrap_or(&f).to_owned())
                .collect();
            (frames, n)
        })
        .collect();
    assert_whole_stacks(
        &stacks,
        "sort_nofp",
        &[&|f| f == "main", &|f| f == "sort_round", &|f| {
            f.contains("sort")
        }],
        "weigh",
        &stderr,
    );
}

/// A library built without frame pointers calling back into a program built with them:
/// the walk switches between tables and frame pointers frame by frame.
#[test]
fn library_without_frame_pointers_calls_back_into_the_program() {
    let _serial = serial();
    let (stacks, stderr) = record(&[workload_with_library().into_os_string()], &[]);
    assert_whole_stacks(
        &stacks,
        "callback_main",
        &[
            &|f| f == "main",
            &|f| f == "drive",
            &|f| f == "lib_walk",
            &|f| f == "lib_step",
        ],
        "on_item",
        &stderr,
    );
}

/// A 0.3 s command without frame pointers is unwound from its first samples: its
/// executable and libraries are loaded before it starts. (Samples taken during its exec,
/// before it maps anything, count as "not loaded yet"; they are a handful at most.)
#[test]
fn short_command_without_frame_pointers_reaches_main() {
    let _serial = serial();
    let (stacks, stderr) = record(
        &[workload("qsort_nofp").into_os_string(), "0.3".into()],
        &["-F", "1999"],
    );
    assert!(weight(&stacks, |f| f[0] == "qsort_nofp") > 0, "{stderr}");
    assert_whole_stacks(
        &stacks,
        "qsort_nofp",
        &[&|f| f == "main", &|f| f == "sort_for", &|f| {
            f.contains("qsort")
        }],
        "compare_keys",
        &stderr,
    );
}

/// The summary states the tables' size and the kernel memory they reserve. Tables too
/// small for libc say so, in the tables line and in the samples whose walk they cut short.
/// A bad mode is refused with one line.
#[test]
fn summary_states_the_tables_and_what_did_not_fit() {
    let _serial = serial();
    let (_, stderr) = record(
        &[workload("qsort_nofp").into_os_string(), "0.5".into()],
        &["--unwind-table-size", "5000"],
    );
    let line = stderr
        .lines()
        .find(|l| l.starts_with("unwind tables: "))
        .unwrap_or_else(|| panic!("an unwind tables line in\n{stderr}"));
    assert!(line.contains("of 5,000 rows"), "{line}");
    assert!(line.contains("MiB of kernel memory reserved"), "{line}");
    assert!(
        line.contains("did not fit (raise --unwind-table-size)"),
        "{line}"
    );
    assert!(
        stderr.contains("tables full (raise --unwind-table-size)"),
        "libc's table did not fit, and the samples in qsort say so:\n{stderr}"
    );

    let output = prof()
        .args(["record", "--unwind", "dwarf", "--", "true"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2), "{}", describe(&output));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("auto") && stderr.contains("fp"), "{stderr}");
}
