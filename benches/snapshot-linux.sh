#!/usr/bin/env bash
# The small kernel booted once, restored many times (issue #15; README "Snapshots"). In one
# run: (a) segvmm boots the small kernel with the waiting /init (`-- wait`) to its
# SEGVMM_INIT_WAIT line; (b) QEMU TCG boots the same kernel + initramfs + command line to
# the same line (when qemu-system-x86_64 is installed); (c) that segvmm guest, snapshotted
# while /init waits (`snapshot create --shutdown`), is restored REPEATS times in map mode
# and in copy mode with a line on stdin: the wall time from launching `segvmm restore` to
# /init's `SEGVMM_INIT_NEXT <line>` on its stdout, and to the VMM's exit (guest powered
# off). Prints medians and every sample, and the load average (the figures are wall
# times: a loaded host inflates them). Needs /dev/kvm, a release build and
# guest-kernels/out/{small-kernel,initramfs.cpio} from guest-kernels/build.sh.
# Usage: benches/snapshot-linux.sh [REPEATS (default 5)]
set -euo pipefail
cd "$(dirname "$0")/.."
B=target/release/segvmm
N=${1:-5}
K=guest-kernels/out/small-kernel
I=guest-kernels/out/initramfs.cpio
CMDLINE="console=ttyS0 reboot=k panic=-1 -- wait"
for f in "$B" "$K" "$I"; do [ -s "$f" ] || { echo "missing $f" >&2; exit 2; }; done
D=$(mktemp -d)
QPID=""
trap '[ -n "$QPID" ] && kill "$QPID" 2>/dev/null; rm -rf "$D"' EXIT
mkdir "$D/snaps"
echo "load average before: $(cut -d' ' -f1-3 /proc/loadavg)"

# Wall seconds from $1 (date +%s.%N) until FILE ($2) has a line matching $3 (limit $4 s).
wait_marker() {
    local t0="$1" f="$2" re="$3" lim="$4" now
    while :; do
        now=$(date +%s.%N)
        grep -q "$re" "$f" 2>/dev/null && { awk -v a="$t0" -v b="$now" 'BEGIN{printf "%.2f", b-a}'; return 0; }
        awk -v a="$t0" -v b="$now" -v l="$lim" 'BEGIN{exit !(b-a > l)}' && return 1
        sleep 0.02
    done
}

# (a) segvmm boot to SEGVMM_INIT_WAIT, then the snapshot.
t0=$(date +%s.%N)
$B run --kernel "$K" --initrd "$I" --memory 256M --cmdline "$CMDLINE" --timeout 600 \
    --api-socket "$D/s.sock" --snapshot-dir "$D/snaps" </dev/null >"$D/boot.out" 2>"$D/boot.err" &
PID=$!
boot=$(wait_marker "$t0" "$D/boot.out" SEGVMM_INIT_WAIT 600) || { echo "segvmm boot: no marker" >&2; tail -3 "$D/boot.err" >&2; exit 1; }
$B snapshot create --api-socket "$D/s.sock" --out wait --shutdown | sed 's/^/snapshot: /'
wait $PID || true
echo "segvmm boot of the small kernel to SEGVMM_INIT_WAIT: ${boot} s"
echo "memory file: $(du -h --apparent-size "$D/snaps/wait/memory" | cut -f1) apparent, $(du -h "$D/snaps/wait/memory" | cut -f1) on disk"

# (b) QEMU TCG, same kernel, initramfs and command line.
if command -v qemu-system-x86_64 >/dev/null; then
    t0=$(date +%s.%N)
    qemu-system-x86_64 -accel tcg -cpu max -m 256M -smp 1 -nodefaults -no-user-config \
        -display none -serial "file:$D/qemu.log" -no-reboot \
        -kernel "$K" -initrd "$I" -append "$CMDLINE" </dev/null >/dev/null 2>&1 &
    QPID=$!
    q=$(wait_marker "$t0" "$D/qemu.log" SEGVMM_INIT_WAIT 120) && echo "QEMU TCG boot to SEGVMM_INIT_WAIT: ${q} s" ||
        echo "QEMU TCG: no SEGVMM_INIT_WAIT within 120 s"
    kill "$QPID" 2>/dev/null || true
    wait "$QPID" 2>/dev/null || true
    QPID=""
else
    echo "QEMU TCG: qemu-system-x86_64 is not installed (skipped)"
fi

# (c) restores to SEGVMM_INIT_NEXT, map and copy.
python3 - "$B" "$D/snaps/wait" "$N" <<'PY'
import statistics, subprocess, sys, time
b, snap, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
for mode in ("map", "copy"):
    nxt, ends = [], []
    for i in range(n):
        line = f"go {mode} {i}"
        t0 = time.perf_counter()
        p = subprocess.Popen([b, "restore", "--from", snap, "--memory-mode", mode,
                              "--timeout", "60"], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        p.stdin.write((line + "\n").encode())
        p.stdin.close()
        got = None
        for raw in p.stdout:
            if f"SEGVMM_INIT_NEXT {line}".encode() in raw:
                got = time.perf_counter() - t0
                break
        p.stdout.read()
        rc = p.wait()
        ends.append(time.perf_counter() - t0)
        if got is None or rc != 0:
            print(f"restore {mode} #{i}: no SEGVMM_INIT_NEXT line or exit {rc}")
            continue
        nxt.append(got)
    if nxt:
        ms = lambda v: " ".join(f"{x * 1e3:.1f}" for x in v)
        print(f"restore {mode:4} to SEGVMM_INIT_NEXT: median {statistics.median(nxt) * 1e3:.1f} ms "
              f"(samples {ms(nxt)}); to exit (powered off) median {statistics.median(ends) * 1e3:.1f} ms")
PY
echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
