#!/bin/sh
# Installs what the build and tests need (clang, libbpf-dev, libcap2-bin; golang-go for
# `go tool pprof`, the reference pprof reader the tests check prof's files with; prometheus,
# whose promtool and server check the agent's /metrics; libc6-dbg, whose separate debug file
# names libc's internal functions; nodejs, whose perf maps name JIT code; binutils' objcopy
# and util-linux's unshare), then runs prof's
# checks and tests: formatting, clippy, the unit tests, and the integration tests, which
# load the real BPF program and attach it to real perf events, so they run as root
# (through sudo when this user is not root). Last, a smoke run of the benchmarks.
# CI (.ci/run) runs exactly this.
set -eu
cd "$(dirname "$0")/.."
sudo=""
[ "$(id -u)" -eq 0 ] || sudo=sudo

if ! command -v clang >/dev/null || [ ! -e /usr/include/bpf/bpf_helpers.h ] \
    || [ ! -x /usr/sbin/setcap ] || ! command -v go >/dev/null \
    || ! command -v prometheus >/dev/null || ! command -v promtool >/dev/null \
    || ! dpkg -s libc6-dbg >/dev/null 2>&1 || ! command -v node >/dev/null \
    || ! command -v objcopy >/dev/null || ! command -v unshare >/dev/null; then
    $sudo apt-get update -qq
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq clang libbpf-dev libcap2-bin \
        golang-go prometheus libc6-dbg nodejs binutils util-linux
fi
cargo fmt --all --check
cargo clippy --workspace --all-targets -- -D warnings
if [ -n "$sudo" ]; then
    # Build as this user, run the test binaries as root.
    export CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_RUNNER="sudo -E"
fi
cargo test --workspace
# The benchmarks must keep building and running; a one-pass smoke run on small inputs.
# Their timings never gate CI (BENCHMARKS.md has the figures; scripts/bench.sh runs them).
PROF_BENCH_SMOKE=1 cargo bench -p prof-benches --bench stages -- --test
cargo run --release -q -p prof-benches --bin kernel-cost -- --seconds 0.3 --only "shallow, user+kernel"
cargo run --release -q -p prof-benches --bin run-array -- --calls 20000 --rounds 1 --ks 1,2
