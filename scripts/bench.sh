#!/bin/sh
# Runs prof's benchmarks (BENCHMARKS.md has the figures and what they mean):
#   scripts/bench.sh kernel    the BPF program's in-kernel cost per sample (kernel-cost)
#   scripts/bench.sh run-array what each attachment to a tracepoint costs: cookie, clone, lookup
#   scripts/bench.sh slowdown  a fixed workload under nothing, prof, perf -g and perf dwarf
#   scripts/bench.sh beside    each profiler on one CPU beside an unprofiled copy on the other
#                              (add --dwarf: prof's tables against perf --call-graph dwarf)
#   scripts/bench.sh big       a recording of ~150k unique stacks: prof against perf record -g,
#                              end of workload to outputs and peak RSS
#   scripts/bench.sh stages    criterion benches of drain, symbolization and export
#   scripts/bench.sh           all of them
# Arguments after the first go to the harness, e.g. `scripts/bench.sh slowdown --rounds 3`.
# It installs what it needs (clang and libbpf-dev as scripts/test.sh does, and linux-perf for
# the comparison), builds in release mode, and runs the harnesses as root (through sudo when
# this user is not root).
set -eu
cd "$(dirname "$0")/.."
sudo=""
[ "$(id -u)" -eq 0 ] || sudo=sudo
what="${1:-all}"
[ $# -gt 0 ] && shift

packages=""
if ! command -v clang >/dev/null || [ ! -e /usr/include/bpf/bpf_helpers.h ]; then
    packages="clang libbpf-dev"
fi
if [ "$what" = slowdown ] || [ "$what" = beside ] || [ "$what" = big ] || [ "$what" = all ]; then
    perf --version >/dev/null 2>&1 || packages="$packages linux-perf"
fi
if [ -n "$packages" ]; then
    $sudo apt-get update -qq
    # shellcheck disable=SC2086
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $packages
fi

cargo build --release -p prof --bin prof
cargo build --release -p prof-benches --bins
if [ "$what" = beside ] || [ "$what" = big ] || [ "$what" = all ]; then
    # inferno's own collapse and flame graph tools, for perf's side of the comparison.
    [ -x target/inferno/bin/inferno-collapse-perf ] \
        || cargo install -q inferno --version 0.12.8 --root target/inferno
    export INFERNO_BIN="$PWD/target/inferno/bin"
fi
if [ -n "$sudo" ]; then
    export CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_RUNNER="sudo -E"
fi
case "$what" in
kernel) $sudo target/release/kernel-cost "$@" ;;
run-array) $sudo target/release/run-array "$@" ;;
slowdown) $sudo target/release/slowdown "$@" ;;
beside) $sudo env INFERNO_BIN="$INFERNO_BIN" target/release/beside "$@" ;;
big) $sudo env INFERNO_BIN="$INFERNO_BIN" target/release/big "$@" ;;
stages) cargo bench -p prof-benches --bench stages -- "$@" ;;
all)
    $sudo target/release/kernel-cost
    $sudo target/release/run-array
    $sudo target/release/slowdown
    $sudo target/release/beside
    $sudo env INFERNO_BIN="$INFERNO_BIN" target/release/beside --dwarf
    $sudo env INFERNO_BIN="$INFERNO_BIN" target/release/big
    cargo bench -p prof-benches --bench stages
    ;;
*)
    echo "usage: scripts/bench.sh [kernel|run-array|slowdown|beside|big|stages|all] [harness arguments]" >&2
    exit 2
    ;;
esac
