//! Compiles the BPF object in `../ebpf` (`profile.bpf.c` and the headers it includes) with
//! clang into `OUT_DIR/profile.bpf.o`, which `src/bpf/abi.rs` embeds.
//!
//! The BPF side is C rather than Rust (aya-ebpf) because the Rust path needs a nightly
//! toolchain with rust-src, `-Z build-std=core` and a bpf-linker built against rustc's own
//! LLVM, none of which a fresh Debian machine has. The flags: `-target bpf` with
//! `-D__TARGET_ARCH_x86` for libbpf's headers, and the multiarch include directory, without
//! which clang does not find `asm/types.h`.

use std::env;
use std::path::PathBuf;
use std::process::Command;

fn main() {
    let manifest_dir = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let ebpf_dir = manifest_dir.join("../ebpf");
    let source = ebpf_dir.join("profile.bpf.c");
    let out = PathBuf::from(env::var_os("OUT_DIR").expect("set by cargo")).join("profile.bpf.o");
    println!("cargo:rerun-if-changed={}", source.display());
    println!("cargo:rerun-if-changed={}", ebpf_dir.display());
    println!("cargo:rerun-if-env-changed=PROF_CLANG");

    let clang = env::var("PROF_CLANG").unwrap_or_else(|_| "clang".to_owned());
    let arch_include = format!("-I/usr/include/{}-linux-gnu", env::consts::ARCH);
    let status = Command::new(&clang)
        .args([
            "-O2",
            "-g",
            "-target",
            "bpf",
            "-D__TARGET_ARCH_x86",
            &arch_include,
        ])
        .arg("-Wall")
        .arg("-Werror")
        .arg("-c")
        .arg(&source)
        .arg("-o")
        .arg(&out)
        .status();
    match status {
        Ok(status) if status.success() => {}
        Ok(status) => panic!(
            "{clang} failed to compile {} ({status}); the BPF program must build cleanly",
            source.display()
        ),
        Err(err) => panic!(
            "cannot run `{clang}` to build the BPF program ({err}).\n\
             Install it with: sudo apt-get install -y clang libbpf-dev\n\
             (or point PROF_CLANG at a clang that can target bpf)"
        ),
    }
}
