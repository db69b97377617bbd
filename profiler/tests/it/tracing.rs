//! Tracepoint events and off-CPU time: real tracepoints, the real programs linked through BPF
//! perf links, and what they count. Recording needs tracefs for the tracepoint ids; prof
//! mounts a private one when none is mounted, and these tests check that the machine's mounts
//! are as they were afterwards.

use std::path::Path;
use std::process::Command;

use prof::export::pprof;

use crate::record::record_ok;
use crate::report::go;
use crate::{assert_share, describe, has_frame, prof, read_folded, serial, weight, workload};

/// The stacks of process `comm` only.
fn of(stacks: Vec<(Vec<String>, u64)>, comm: &str) -> Vec<(Vec<String>, u64)> {
    stacks.into_iter().filter(|(f, _)| f[0] == comm).collect()
}

/// The tracefs mounts of this machine, as `/proc/self/mounts` lists them.
fn tracefs_mounts() -> Vec<String> {
    std::fs::read_to_string("/proc/self/mounts")
        .unwrap()
        .lines()
        .filter(|line| line.split_whitespace().nth(2) == Some("tracefs"))
        .map(str::to_owned)
        .collect()
}

/// A workload that blocks 3 ms in sleep_three() for each 1 ms in sleep_one() (nanosleep)
/// shows the 3:1 split in off-CPU time within ±10%, and the two functions hold at least 90%
/// of the time it spent blocked.
#[test]
fn off_cpu_time_keeps_the_sleep_ratio() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("sleeps.folded");
    let output = record_ok(
        "cpu-clock",
        &[&out],
        &["--off-cpu"],
        &[
            workload("sleeps").into_os_string(),
            "25".into(),
            "10".into(),
        ],
    );
    assert!(dir.path().join("sleeps.cpu-clock.folded").exists());
    let stacks = of(
        read_folded(&dir.path().join("sleeps.off-cpu.folded")),
        "sleeps",
    );
    let three = weight(&stacks, |f| has_frame(f, "sleep_three"));
    let one = weight(&stacks, |f| has_frame(f, "sleep_one"));
    assert!(one > 0, "sleep_one blocked: {stacks:?}");
    let ratio = three as f64 / one as f64;
    assert!(
        (2.7..=3.3).contains(&ratio),
        "sleep_three:sleep_one = {ratio:.3}, want 3 ± 10%: {stacks:?}"
    );
    assert_share(
        &stacks,
        |_| true,
        |f| has_frame(f, "sleep_three") || has_frame(f, "sleep_one"),
        0.9,
        "blocked time in the two sleeping functions",
    );
    // 25 × (30 + 10) ms: the blocked time is in nanoseconds, and about that much.
    let total = weight(&stacks, |_| true);
    assert!(
        (900_000_000..2_000_000_000).contains(&total),
        "{total} ns blocked"
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("s off CPU"), "{stderr}");
    assert!(stderr.contains("off-cpu cost: "), "{stderr}");
}

/// Off-CPU stacks are walked by the same unwinder as samples: in a program built without
/// frame pointers that sleeps through libc, the unwind tables find main and the napping
/// function above libc's nanosleep, and keep the 3:1 split; with `--unwind fp` the kernel's
/// frame-pointer walker loses them.
#[test]
fn off_cpu_stacks_use_the_unwind_tables() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("naps.folded");
    let command = [workload("naps_nofp").into_os_string()];
    let record = |flags: &[&str]| {
        let output = record_ok("off-cpu", &[&out], flags, &command);
        (
            of(read_folded(&out), "naps_nofp"),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    };
    let under = |f: &[String], caller: &str| {
        let main = f.iter().position(|x| x == "main");
        let napping = f.iter().position(|x| x == caller);
        let sleep = f.iter().position(|x| x.contains("nanosleep"));
        matches!((main, napping, sleep), (Some(m), Some(n), Some(s)) if m < n && n < s)
    };
    let (stacks, stderr) = record(&[]);
    assert_share(
        &stacks,
        |_| true,
        |f| under(f, "nap_long") || under(f, "nap_short"),
        0.9,
        &format!("blocked time under main, a nap function and nanosleep\n{stderr}"),
    );
    let ratio = weight(&stacks, |f| under(f, "nap_long")) as f64
        / weight(&stacks, |f| under(f, "nap_short")).max(1) as f64;
    assert!(
        (2.7..=3.3).contains(&ratio),
        "nap_long:nap_short = {ratio:.3}"
    );

    let (stacks, _) = record(&["--unwind", "fp"]);
    assert_eq!(
        weight(&stacks, |f| has_frame(f, "nap_long")),
        0,
        "frame pointers alone skip the napping function: {stacks:?}"
    );
}

/// A thread blocked reading a pipe shows the function that reads, with the kernel's pipe
/// read and the scheduler above it, in the off-CPU graph.
#[test]
fn blocked_in_the_kernel_shows_kernel_frames() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("pipe.folded");
    record_ok(
        "off-cpu",
        &[&out],
        &[],
        &[workload("pipe_wait").into_os_string()],
    );
    let stacks = of(read_folded(&out), "pipe_wait");
    let reading = |f: &[String]| {
        has_frame(f, "wait_for_byte")
            && f.iter()
                .any(|x| x.contains("pipe_read") && x.ends_with("_[k]"))
            && f.last().is_some_and(|leaf| leaf.ends_with("_[k]"))
    };
    // Two threads block about as long: the reader on the pipe, the writer in nanosleep.
    assert_share(&stacks, |_| true, reading, 0.4, "blocked reading the pipe");
}

/// `-e sched:sched_switch` counts context switches with the stacks of the thread that leaves
/// the CPU: the sleeping functions.
#[test]
fn sched_switch_records_the_function_that_sleeps() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("switch.folded");
    record_ok(
        "sched:sched_switch",
        &[&out],
        &[],
        &[workload("sleeps").into_os_string(), "20".into(), "5".into()],
    );
    let stacks = of(read_folded(&out), "sleeps");
    let sleeping = |f: &[String]| has_frame(f, "sleep_three") || has_frame(f, "sleep_one");
    assert_share(&stacks, |_| true, sleeping, 0.8, "switches in the sleepers");
    // Each of the 40 sleeps switches out at least once.
    assert!(
        weight(&stacks, sleeping) >= 40,
        "one switch per sleep: {stacks:?}"
    );
}

/// `-e syscalls:sys_enter_write` counts every write(2) of the command exactly once: the
/// tracepoint's program is linked once, not once per CPU, although the kernel runs it for
/// hits on every CPU. With `-c 7` it counts one hit in 7, weighed 7.
#[test]
fn sys_enter_write_counts_each_write_once() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("writes.folded");
    let writes = workload("writes");
    record_ok(
        "syscalls:sys_enter_write",
        &[&out],
        &[],
        &[writes.clone().into_os_string(), "5000".into()],
    );
    let stacks = of(read_folded(&out), "writes");
    assert_eq!(
        weight(&stacks, |f| has_frame(f, "write_bytes")),
        5000,
        "{stacks:?}"
    );
    assert_eq!(
        weight(&stacks, |_| true),
        5000,
        "no other write: {stacks:?}"
    );

    record_ok(
        "syscalls:sys_enter_write",
        &[&out],
        &["-c", "7"],
        &[writes.into_os_string(), "7000".into()],
    );
    let stacks = of(read_folded(&out), "writes");
    let counted = weight(&stacks, |_| true);
    // Each CPU keeps fewer than 7 hits it has not counted yet.
    let cpus = std::thread::available_parallelism().unwrap().get() as u64;
    assert!(
        counted % 7 == 0 && (7000 - 7 * cpus..=7000).contains(&counted),
        "{counted} writes estimated from one hit in 7: {stacks:?}"
    );
}

/// A tracepoint's program runs wherever the tracepoint fires, so it checks the CPU itself:
/// with `-C 0`, writes made on CPU 1 are not counted, writes made on CPU 0 are.
#[test]
fn tracepoints_count_only_the_recorded_cpus() {
    let _serial = serial();
    assert!(
        std::thread::available_parallelism().unwrap().get() >= 2,
        "this test needs 2 CPUs, as the machines prof is tested on have"
    );
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("cpu.folded");
    let on_cpu = |cpu: &str| {
        let command = [
            "taskset".into(),
            "-c".into(),
            cpu.into(),
            workload("writes").into_os_string(),
            "300".into(),
        ];
        record_ok("syscalls:sys_enter_write", &[&out], &["-C", "0"], &command);
        weight(&of(read_folded(&out), "writes"), |_| true)
    };
    assert_eq!(on_cpu("1"), 0, "writes on CPU 1 are not recorded");
    assert_eq!(on_cpu("0"), 300, "writes on CPU 0 are");
}

/// Sampling events, a tracepoint and off-CPU time in one recording: three flame graphs, and
/// one pprof file with all three events, which `go tool pprof` reads.
#[test]
fn mixed_events_write_three_graphs_and_one_pprof() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let svg = dir.path().join("mixed.svg");
    let pb = dir.path().join("mixed.pb.gz");
    record_ok(
        "cpu-clock,sched:sched_switch",
        &[&svg, &pb],
        &["--off-cpu"],
        &[workload("sleeps").into_os_string(), "10".into(), "5".into()],
    );
    for (name, needle) in [
        ("mixed.cpu-clock.svg", "cpu-clock"),
        ("mixed.sched_sched_switch.svg", "sched:sched_switch"),
        ("mixed.off-cpu.svg", "off-cpu"),
    ] {
        let text = std::fs::read_to_string(dir.path().join(name))
            .unwrap_or_else(|err| panic!("{name}: {err}"));
        assert!(text.contains(needle), "{name} names its event");
    }
    let profile = pprof::decode_bytes(&std::fs::read(&pb).unwrap()).unwrap();
    let names: Vec<&str> = profile.events.iter().map(|e| e.name.as_str()).collect();
    assert_eq!(names, ["cpu-clock", "sched:sched_switch", "off-cpu"]);
    let raw = go()
        .args(["tool", "pprof", "-raw"])
        .arg(&pb)
        .output()
        .unwrap();
    assert!(raw.status.success(), "{}", describe(&raw));
    let text = String::from_utf8_lossy(&raw.stdout);
    let types = text
        .lines()
        .find(|l| l.trim_start().starts_with("samples/count"))
        .unwrap_or_else(|| panic!("the sample types in {text}"));
    // The types backends accept (no `-` or `:`): cpu-clock is `cpu`, the others their perf
    // names made safe.
    for needle in [
        "cpu/nanoseconds",
        "sched_sched_switch_samples/count",
        "sched_sched_switch/count",
        "off_cpu_samples/count",
        "off_cpu/nanoseconds",
    ] {
        assert!(types.contains(needle), "{needle} in {types}");
    }
}

/// `prof report --event cpu-clock+off-cpu` draws one graph of a thread's time, running and
/// blocked: every stack of either event, with the sum of both.
#[test]
fn wall_clock_view_adds_cpu_and_off_cpu_time() {
    let dir = tempfile::tempdir().unwrap();
    let pb = dir.path().join("wall.pb.gz");
    {
        let _serial = serial();
        // Runs (write_bytes) and blocks (sleep_*), one after the other.
        let command = format!(
            "{} 10 5 && {} 200000",
            workload("sleeps").display(),
            workload("writes").display()
        );
        record_ok(
            "cpu-clock",
            &[&pb],
            &["--off-cpu"],
            &["sh".into(), "-c".into(), command.into()],
        );
    }
    let folded = |event: &str| {
        let out = dir.path().join(format!("{event}.folded"));
        let output = prof()
            .args(["report", "--event", event, "-o"])
            .arg(&out)
            .arg(&pb)
            .output()
            .unwrap();
        assert!(output.status.success(), "{}", describe(&output));
        read_folded(&out)
    };
    let wall = folded("cpu-clock+off-cpu");
    let cpu = folded("cpu-clock");
    let off = folded("off-cpu");
    let total = |stacks: &[(Vec<String>, u64)]| weight(stacks, |_| true);
    assert_eq!(total(&wall), total(&cpu) + total(&off));
    assert!(
        weight(&wall, |f| has_frame(f, "write_bytes")) > 0,
        "{wall:?}"
    );
    assert!(
        weight(&wall, |f| has_frame(f, "sleep_three")) > 0,
        "{wall:?}"
    );

    let output = prof()
        .args(["report", "--event", "cpu-clock+nothing"])
        .arg(&pb)
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2), "{}", describe(&output));
    assert!(String::from_utf8_lossy(&output.stderr).contains("no event `nothing`"));
}

/// Recording a tracepoint leaves the machine's mounts as they were: with tracefs unmounted,
/// prof mounts a private one and removes it; with tracefs mounted (the test mounts it when it
/// is not, and unmounts it after), prof reads that one and leaves it.
#[test]
fn tracefs_is_left_as_found() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("tp.folded");
    let command = [workload("writes").into_os_string(), "10".into()];
    let before = tracefs_mounts();
    record_ok("syscalls:sys_enter_write", &[&out], &[], &command);
    assert_eq!(tracefs_mounts(), before, "the mounts are as they were");

    let standard = Path::new("/sys/kernel/tracing");
    let mounted_here = if prof::tracefs::mount_point().is_none() {
        let status = Command::new("mount")
            .args(["-t", "tracefs", "nodev"])
            .arg(standard)
            .status()
            .unwrap();
        assert!(
            status.success(),
            "mounting tracefs at {}",
            standard.display()
        );
        true
    } else {
        false
    };
    let with_mount = tracefs_mounts();
    let output = prof()
        .args(["record", "-e", "syscalls:sys_enter_write", "-o"])
        .arg(&out)
        .arg("--")
        .args(&command)
        .env("RUST_LOG", "prof=debug")
        .output()
        .unwrap();
    let after = tracefs_mounts();
    if mounted_here {
        let status = Command::new("umount").arg(standard).status().unwrap();
        assert!(status.success(), "unmounting {}", standard.display());
    }
    assert!(output.status.success(), "{}", describe(&output));
    assert_eq!(
        after, with_mount,
        "prof used the mounted tracefs and left it"
    );
    assert!(
        !String::from_utf8_lossy(&output.stderr).contains("mounted a private tracefs"),
        "{}",
        describe(&output)
    );
    assert_eq!(tracefs_mounts(), before, "the machine is as it was found");
    assert_eq!(weight(&of(read_folded(&out), "writes"), |_| true), 10);
}

/// `prof list` names the off-cpu event and the tracepoint categories; `prof list sched` lists
/// the scheduler's tracepoints; an unknown category gets a suggestion and exit 2.
#[test]
fn list_shows_tracepoints() {
    let _serial = serial();
    let output = prof().arg("list").output().unwrap();
    assert!(output.status.success(), "{}", describe(&output));
    let text = String::from_utf8_lossy(&output.stdout);
    let off_cpu = text
        .lines()
        .find(|l| l.starts_with("off-cpu "))
        .unwrap_or_else(|| panic!("off-cpu listed: {text}"));
    assert!(off_cpu.contains("yes"), "{off_cpu}");
    assert!(text.contains("Tracepoint categories"), "{text}");
    assert!(
        text.contains("sched (") && text.contains("syscalls ("),
        "{text}"
    );

    let output = prof().args(["list", "sched"]).output().unwrap();
    assert!(output.status.success(), "{}", describe(&output));
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(text.lines().any(|l| l == "sched:sched_switch"), "{text}");

    let output = prof().args(["list", "schd"]).output().unwrap();
    assert_eq!(output.status.code(), Some(2), "{}", describe(&output));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("did you mean") && stderr.contains("`sched`"),
        "{stderr}"
    );
}
