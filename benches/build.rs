//! Compiles the run-array benchmark's BPF programs (`bpf/run_array.bpf.c`) into
//! `OUT_DIR/run_array.bpf.o`, with the flags `profiler/build.rs` explains.

use std::env;
use std::path::PathBuf;
use std::process::Command;

fn main() {
    let source = PathBuf::from("bpf/run_array.bpf.c");
    let out = PathBuf::from(env::var_os("OUT_DIR").expect("set by cargo")).join("run_array.bpf.o");
    println!("cargo:rerun-if-changed={}", source.display());
    println!("cargo:rerun-if-env-changed=PROF_CLANG");
    let clang = env::var("PROF_CLANG").unwrap_or_else(|_| "clang".to_owned());
    let status = Command::new(&clang)
        .args([
            "-O2",
            "-g",
            "-target",
            "bpf",
            "-D__TARGET_ARCH_x86",
            "-Wall",
            "-Werror",
        ])
        .arg(format!("-I/usr/include/{}-linux-gnu", env::consts::ARCH))
        .arg("-c")
        .arg(&source)
        .arg("-o")
        .arg(&out)
        .status()
        .unwrap_or_else(|err| {
            panic!("cannot run `{clang}` ({err}): sudo apt-get install -y clang libbpf-dev")
        });
    assert!(
        status.success(),
        "{clang} failed to compile {}",
        source.display()
    );
}
