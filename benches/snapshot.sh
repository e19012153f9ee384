#!/usr/bin/env bash
# Snapshot and restore figures (issue #15; README "Snapshots"): a 256 MiB measurement
# guest (chase over 248 MiB) paused mid-workload and snapshotted, then restored in map mode
# and in copy mode under each backing; each restore is stopped 0.5 s after its first
# instruction (--timeout), the figure is the VMM's set-up time from `segvmm restore` to
# the vCPU threads' start (report `run.boot_ms`) and its steps. Needs /dev/kvm and a
# release build. The guest runs with --track-dirty 100ms so that each full snapshot is
# followed by a diff snapshot. Copy mode's rate (bytes of the memory file / the copy step)
# is printed next to a plain memcpy of 256 MiB between resident buffers (glibc memcpy,
# best and median of 5, compiled here with gcc) measured in the same run; a backing the
# host cannot give prints the VMM's one-line refusal. Usage: benches/snapshot.sh [REPEATS]
set -euo pipefail
cd "$(dirname "$0")/.."
B=target/release/segvmm
N=${1:-3}
D=$(mktemp -d)
trap 'rm -rf "$D"' EXIT
mkdir "$D/snaps"
echo "load average before: $(cut -d' ' -f1-3 /proc/loadavg)"
memcpy_bw() {
    cat >"$D/memcpy.c" <<'C'
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
static double now(void) { struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t); return t.tv_sec + t.tv_nsec / 1e9; }
static int cmp(const void *a, const void *b) { double x = *(const double *)a, y = *(const double *)b; return (x > y) - (x < y); }
int main(void) {
    size_t n = 256UL << 20; double r[5];
    char *a = malloc(n), *b = malloc(n);
    if (!a || !b) return 1;
    memset(a, 1, n); memset(b, 2, n);
    for (int i = 0; i < 5; i++) { double t = now(); memcpy(b, a, n); r[i] = n / (now() - t) / (1 << 30); a[i] ^= b[n - 1 - i]; }
    qsort(r, 5, sizeof r[0], cmp);
    printf("plain memcpy 256 MiB (resident buffers): best %.2f GiB/s, median %.2f GiB/s\n", r[4], r[2]);
    return 0;
}
C
    gcc -O2 -o "$D/memcpy" "$D/memcpy.c" && "$D/memcpy"
}
memcpy_bw || echo "plain memcpy: gcc not available (skipped)"
$B run --footprint 248M --count 40000000 --seed 5 --api-socket "$D/s.sock" \
    --snapshot-dir "$D/snaps" --track-dirty 100ms --hotness-out "$D/h.hot" >/dev/null 2>&1 &
PID=$!
for _ in $(seq 200); do [ -S "$D/s.sock" ] && break; sleep 0.05; done
sleep 3
for i in $(seq "$N"); do
    $B snapshot create --api-socket "$D/s.sock" --out "s$i"
    # A diff right after: only what the guest dirtied since (chase writes little).
    $B snapshot create --api-socket "$D/s.sock" --out "d$i" --diff
done
$B snapshot create --api-socket "$D/s.sock" --out last --shutdown >/dev/null
wait $PID || true
du -h --apparent-size "$D/snaps/s1/memory" | sed 's/^/memory file (apparent): /'
du -h "$D/snaps/s1/memory" | sed 's/^/memory file (on disk):  /'
for mode in "map 4k" "copy 4k" "copy thp" "copy 2m" "copy 1g"; do
    set -- $mode
    for i in $(seq "$N"); do
        rm -f "$D/r.json"
        $B restore --from "$D/snaps/s1" --memory-mode "$1" --backing "$2" --quiet \
            --grow-pool --timeout 0.5 --report "$D/r.json" >/dev/null 2>"$D/err" || true
        [ -f "$D/r.json" ] || { echo "restore $1 $2: $(tail -1 "$D/err")"; continue; }
        python3 - "$D/r.json" "$1" "$2" "$(du -B1 "$D/snaps/s1/memory" | cut -f1)" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
run = r["run"]
steps = {s["step"]: round(s["ms"], 1) for s in run["setup_ms"]}
mem = run["memory"]
pf = mem.get("prefault", {})
copy = steps.get("memory_copy", 0.0)
data = int(sys.argv[4])
rate = f"{data / (copy / 1e3) / 2**30:.2f} GiB/s" if copy else "-"
bw = pf.get("memset_gib_per_s")
bw = f"; memset {bw:.2f} GiB/s" if bw else ""
print(f"restore {sys.argv[2]:4} {sys.argv[3]:3}: to first instruction {run['boot_ms']:6.1f} ms "
      f"(read+check {steps['host']:.1f}, RAM set-up {steps['memory']:.1f} of which prefault "
      f"{pf.get('ms', 0.0):.1f}, then copy {copy:.1f} = {rate}, kvm_vm {steps['kvm_vm']:.1f}, "
      f"vcpu_state {steps['vcpu_state']:.1f}){bw}")
PY
    done
done
memcpy_bw || true
echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
