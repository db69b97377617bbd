#!/bin/bash
# Measures prof agent's own cost (not a test): CPU time at the default 19 Hz with both CPUs
# busy, and resident memory over a churning machine, where at least 1,000 short processes
# start and end and 50 distinct binaries keep running.
#
#   sudo scripts/agent-soak.sh [SECONDS]      # default 600 (10 minutes)
#
# It prints the agent's CPU time as a share of one core, and its RSS every 10 s (also in
# $OUT/rss.csv), with the first, last, smallest and largest values and the slope of a
# least-squares line over the run after its first minute (MB per minute).
set -euo pipefail
cd "$(dirname "$0")/.."
SECONDS_TOTAL=${1:-600}
OUT=${OUT:-$(mktemp -d /tmp/prof-soak.XXXXXX)}
mkdir -p "$OUT"
BINARIES=50
PROF=target/release/prof
[ "$(id -u)" -eq 0 ] || { echo "run as root (the agent loads BPF)" >&2; exit 1; }
cargo build --release --quiet

# 50 distinct binaries (each built with its own id, so each has its own build id and
# symbols): each wakes every 100 ms and burns about 1 ms, or, with an argument, burns for
# that many milliseconds and exits (the short processes).
cat > "$OUT/churn.c" <<'C'
#include <stdlib.h>
#include <time.h>
#include <unistd.h>
static volatile unsigned long sink;
#define NAME_(a, b) a##b
#define NAME(a, b) NAME_(a, b)
__attribute__((noinline)) void NAME(churn_work_, ID)(long ms)
{
	struct timespec start, now;
	clock_gettime(CLOCK_MONOTONIC, &start);
	do {
		for (int i = 0; i < 10000; i++)
			sink = sink * 6364136223846793005UL + ID;
		clock_gettime(CLOCK_MONOTONIC, &now);
	} while ((now.tv_sec - start.tv_sec) * 1000 + (now.tv_nsec - start.tv_nsec) / 1000000 < ms);
}
int main(int argc, char **argv)
{
	if (argc > 1) {
		NAME(churn_work_, ID)(atol(argv[1]));
		return 0;
	}
	for (;;) {
		NAME(churn_work_, ID)(1);
		usleep(100000);
	}
}
C
for i in $(seq 1 $BINARIES); do
    cc -O1 -g -fno-omit-frame-pointer -DID="$i" -o "$OUT/churn-$i" "$OUT/churn.c"
done
cat > "$OUT/spin.c" <<'C'
int main(void) { volatile unsigned long x = 1; for (;;) x = x * 6364136223846793005UL + 1; }
C
cc -O1 -o "$OUT/spin" "$OUT/spin.c"

pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; }
trap cleanup EXIT

# Both CPUs busy, and the 50 binaries running.
"$OUT/spin" & pids+=($!)
"$OUT/spin" & pids+=($!)
for i in $(seq 1 $BINARIES); do "$OUT/churn-$i" & pids+=($!); done

mkdir -p "$OUT/windows"
"$PROF" agent --listen 127.0.0.1:16061 --dir "$OUT/windows" >"$OUT/agent.log" 2>&1 &
agent=$!
pids+=($agent)
sleep 2

# Short processes: one of the binaries for 20-80 ms, about four a second.
(
    n=0
    while :; do
        i=$(( (n % BINARIES) + 1 ))
        "$OUT/churn-$i" $(( 20 + (n * 7) % 60 )) &
        n=$((n + 1))
        echo $n >"$OUT/short-processes"
        sleep 0.25
    done
) & pids+=($!)

ticks=$(getconf CLK_TCK)
cpu() { awk -v t="$ticks" '{ print ($14 + $15) / t }' "/proc/$agent/stat"; }
rss() { awk '/^VmRSS/ { print $2 / 1024 }' "/proc/$agent/status"; }
echo "second,rss_mb,cpu_seconds" >"$OUT/rss.csv"
start=$(date +%s.%N)
cpu_start=$(cpu)
cpu_minute=""
for ((s = 10; s <= SECONDS_TOTAL; s += 10)); do
    sleep 10
    echo "$s,$(rss),$(cpu)" >>"$OUT/rss.csv"
    [ "$s" -eq 60 ] && { cpu_minute=$(cpu); t_minute=$(date +%s.%N); }
done
end=$(date +%s.%N)
cpu_end=$(cpu)
kill -TERM "$agent"
wait "$agent" || true
metrics_ok=$(grep -c "stopped" "$OUT/agent.log" || true)

awk -F, -v cs="$cpu_start" -v ce="$cpu_end" -v cm="$cpu_minute" -v t0="$start" -v t1="$end" \
    -v tm="${t_minute:-$start}" -v shorts="$(cat "$OUT/short-processes")" -v bins="$BINARIES" '
NR > 1 {
    rss[NR] = $2; sec[NR] = $1; n = NR
    if (min == "" || $2 < min) min = $2
    if ($2 > max) max = $2
    if ($1 > 60) { k++; sx += $1; sy += $2; sxx += $1 * $1; sxy += $1 * $2 }
}
END {
    printf "agent CPU, whole run: %.2f s in %.0f s = %.3f%% of one core\n", ce - cs, t1 - t0, 100 * (ce - cs) / (t1 - t0)
    if (cm != "") printf "agent CPU after the first minute: %.2f s in %.0f s = %.3f%% of one core\n", ce - cm, t1 - tm, 100 * (ce - cm) / (t1 - tm)
    printf "RSS MB: first %.1f, last %.1f, min %.1f, max %.1f\n", rss[2], rss[n], min, max
    if (k > 1) printf "RSS trend after the first minute: %+.3f MB per minute\n", 60 * (k * sxy - sx * sy) / (k * sxx - sx * sx)
    printf "churn: %d short processes started, %d distinct binaries running, both CPUs spinning\n", shorts, bins
}' "$OUT/rss.csv"
echo "windows written: $(ls "$OUT/windows" | wc -l) (rotated), agent stopped cleanly: $metrics_ok"
echo "details: $OUT"
