#!/bin/sh
# Sets prof up on a fresh Debian machine with Rust installed, then records a real workload
# (examples/demo.rs: builds, indexes, sorts and checksums a text corpus) into flame graphs:
# demo.cpu-clock.svg (or demo.cycles.svg on machines with a hardware PMU) and
# demo.page-faults.svg, and demo.pb.gz (pprof, both events; try `target/release/prof report demo.pb.gz`).
set -eu
cd "$(dirname "$0")/.."
sudo=""
[ "$(id -u)" -eq 0 ] || sudo=sudo

# clang builds the BPF program; libbpf-dev has its headers.
if ! command -v clang >/dev/null || [ ! -e /usr/include/bpf/bpf_helpers.h ]; then
    $sudo apt-get update -qq
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq clang libbpf-dev
fi
cargo build --release --bin prof --example demo
$sudo target/release/prof record -e cycles,page-faults -o demo.svg -o demo.pb.gz -- target/release/examples/demo
