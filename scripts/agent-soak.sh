#!/bin/bash
# Measures prof agent's own cost (not a test): CPU time at the default 19 Hz with both CPUs
# busy, and resident memory over a churning machine, where at least 1,000 short processes
# start and end and 50 distinct binaries keep running.
#
#   sudo scripts/agent-soak.sh [SECONDS]      # default 600 (10 minutes)
#   sudo BASELINE=/path/to/other/prof scripts/agent-soak.sh 600
#
# With BASELINE, that binary's agent runs beside this build's, through the same churn, and
# the script prints its figures too, with this build's CPU time as a ratio of it: timings on
# these VMs swing too much between runs to compare figures from two runs.
#
# It prints the agent's CPU time as a share of one core, and its RSS every 10 s (also in
# $OUT/rss.csv, with the anonymous part, RssAnon, which leaves out the pages of other
# programs' binaries that the agent maps to read their symbols), with the first, last, smallest and largest values and the slope of a
# least-squares line over the run after its first minute (MB per minute).
set -euo pipefail
cd "$(dirname "$0")/.."
SECONDS_TOTAL=${1:-600}
OUT=${OUT:-$(mktemp -d /tmp/prof-soak.XXXXXX)}
mkdir -p "$OUT"
BINARIES=50
PROF=target/release/prof
BASELINE=${BASELINE:-}
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
base=""
if [ -n "$BASELINE" ]; then
    mkdir -p "$OUT/windows-baseline"
    "$BASELINE" agent --listen 127.0.0.1:16062 --dir "$OUT/windows-baseline" \
        >"$OUT/baseline.log" 2>&1 &
    base=$!
    pids+=($base)
fi
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
cpu_of() { awk -v t="$ticks" '{ print ($14 + $15) / t }' "/proc/$1/stat"; }
rss_of() { awk '/^VmRSS/ { print $2 / 1024 }' "/proc/$1/status"; }
# The agent's own memory, without the file pages of the binaries it maps to read symbols.
anon_of() { awk '/^RssAnon/ { print $2 / 1024 }' "/proc/$1/status"; }
cpu() { cpu_of "$agent"; }
echo "second,rss_mb,cpu_seconds,rss_anon_mb,baseline_rss_mb,baseline_cpu_seconds,baseline_rss_anon_mb" \
    >"$OUT/rss.csv"
baseline_columns() { [ -z "$base" ] || echo ",$(rss_of "$base"),$(cpu_of "$base"),$(anon_of "$base")"; }
start=$(date +%s.%N)
cpu_start=$(cpu)
[ -z "$base" ] || base_start=$(cpu_of "$base")
cpu_minute=""
for ((s = 10; s <= SECONDS_TOTAL; s += 10)); do
    sleep 10
    echo "$s,$(rss_of "$agent"),$(cpu),$(anon_of "$agent")$(baseline_columns)" >>"$OUT/rss.csv"
    [ "$s" -eq 60 ] && { cpu_minute=$(cpu); t_minute=$(date +%s.%N); }
done
end=$(date +%s.%N)
cpu_end=$(cpu)
[ -z "$base" ] || base_end=$(cpu_of "$base")
kill -TERM "$agent" $base
wait "$agent" || true
metrics_ok=$(grep -c "stopped" "$OUT/agent.log" || true)

awk -F, -v cs="$cpu_start" -v ce="$cpu_end" -v cm="$cpu_minute" -v t0="$start" -v t1="$end" \
    -v tm="${t_minute:-$start}" -v shorts="$(cat "$OUT/short-processes")" -v bins="$BINARIES" '
NR > 1 {
    rss[NR] = $2; sec[NR] = $1; n = NR; an[NR] = $4
    if (min == "" || $2 < min) min = $2
    if ($2 > max) max = $2
    if (amax == "" || $4 > amax) amax = $4
    if ($1 > 60) { k++; sx += $1; sy += $2; sxx += $1 * $1; sxy += $1 * $2 }
}
END {
    printf "agent CPU, whole run: %.2f s in %.0f s = %.3f%% of one core\n", ce - cs, t1 - t0, 100 * (ce - cs) / (t1 - t0)
    if (cm != "") printf "agent CPU after the first minute: %.2f s in %.0f s = %.3f%% of one core\n", ce - cm, t1 - tm, 100 * (ce - cm) / (t1 - tm)
    printf "RSS MB: first %.1f, last %.1f, min %.1f, max %.1f\n", rss[2], rss[n], min, max
    printf "anonymous RSS MB (its own memory, without mapped binaries): first %.1f, last %.1f, max %.1f\n", an[2], an[n], amax
    if (k > 1) printf "RSS trend after the first minute: %+.3f MB per minute\n", 60 * (k * sxy - sx * sy) / (k * sxx - sx * sx)
    printf "churn: %d short processes started, %d distinct binaries running, both CPUs spinning\n", shorts, bins
}' "$OUT/rss.csv"
echo "windows written: $(ls "$OUT/windows" | wc -l) (rotated), agent stopped cleanly: $metrics_ok"
if [ -n "$base" ]; then
    awk -F, -v cs="$cpu_start" -v ce="$cpu_end" -v bs="$base_start" -v be="$base_end" \
        -v t0="$start" -v t1="$end" -v bin="$BASELINE" '
    NR > 1 { if ($5 > max) max = $5; if ($7 > amax) amax = $7; first = first == "" ? $5 : first; last = $5 }
    END {
        printf "baseline %s CPU, whole run: %.2f s in %.0f s = %.3f%% of one core\n", bin, be - bs, t1 - t0, 100 * (be - bs) / (t1 - t0)
        printf "baseline RSS MB: first %.1f, last %.1f, max %.1f; anonymous max %.1f\n", first, last, max, amax
        if (be > bs) printf "this build CPU / baseline CPU: %.2f\n", (ce - cs) / (be - bs)
    }' "$OUT/rss.csv"
fi
echo "details: $OUT"
