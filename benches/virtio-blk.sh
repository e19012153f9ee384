#!/usr/bin/env bash
# virtio-blk throughput, IOPS and exits per request (issue #16; README "virtio-blk speed").
# The small kernel boots from a copy of rootfs.ext4 (root=/dev/vda, read-only) with a
# scratch raw image (SIZE_MIB, written through once so that it is allocated) as a second
# disk, /dev/vdb; its /init (segvmm_test=bench) runs /usr/bin/segvmm-rio (rootfs/rio.c,
# O_DIRECT) once and powers off. One boot per test: seqread, seqwrite (1 MiB requests,
# MIB MiB), randread, randwrite (4 KiB at random offsets, OPS requests), and `none` (the
# boot alone). Each runs with the disk's event_idx=on and event_idx=off, N times (in turn,
# repetition by repetition); medians.
#
# Exits per request = (the run's user-space MMIO exits, the report's kvm_stats mmio_exits,
# minus those of the `none` boot of the same mode) / the requests the guest's /dev/vdb
# completed meanwhile (SEGVMM_RIO_REQS, from /sys/block/vdb/stat); interrupts per request =
# the guest's count of vdb's interrupts during the test (SEGVMM_RIO_IRQS, /proc/interrupts)
# / those requests. The same segvmm-rio binary (dumped from the image) then
# runs the same I/O on the host against the scratch image, O_DIRECT. Prints a table and
# the load average. Guest figures are measured by the guest's clock around the I/O only.
#
# Needs /dev/kvm, a release build, guest-kernels/out/{small-kernel,rootfs.ext4} from
# guest-kernels/build.sh and debugfs (e2fsprogs) or gcc.
# Environment: N (default 3), MIB (default 32), OPS (default 1000), SIZE_MIB (default 256),
# JOBS (default 1: segvmm-rio processes sharing the requests, so up to JOBS in flight; with
# more than one, give the guest vCPUs through SEGVMM_ARGS, e.g. "--vcpus 2"),
# TESTS (default "seqread seqwrite randread randwrite"), EVENT_IDX (default "on off"),
# SEGVMM_ARGS: extra `segvmm run` arguments for every boot (e.g. "--ioeventfd off" where
# that option exists: run the script once per setting to compare).
# Usage: benches/virtio-blk.sh
set -euo pipefail
cd "$(dirname "$0")/.."
B=target/release/segvmm
K=guest-kernels/out/small-kernel
R=guest-kernels/out/rootfs.ext4
N=${N:-3}
MIB=${MIB:-32}
OPS=${OPS:-1000}
SIZE_MIB=${SIZE_MIB:-256}
TESTS=${TESTS:-seqread seqwrite randread randwrite}
EVENT_IDX=${EVENT_IDX:-on off}
SEGVMM_ARGS=${SEGVMM_ARGS:-}
for f in "$B" "$K" "$R"; do [ -s "$f" ] || { echo "missing $f" >&2; exit 2; }; done
JOBS=${JOBS:-1}
for v in N MIB OPS SIZE_MIB JOBS; do
    [[ "${!v}" =~ ^[1-9][0-9]{0,5}$ ]] || { echo "$v=${!v}: expected a number from 1 to 999999" >&2; exit 2; }
done
D=$(mktemp -d)
trap 'rm -rf "$D"' EXIT
echo "load average before: $(cut -d' ' -f1-3 /proc/loadavg)"

cp --sparse=always "$R" "$D/root.ext4"
dd if=/dev/zero of="$D/scratch.img" bs=1M count="$SIZE_MIB" conv=fsync status=none
# The guest's segvmm-rio, to run the same binary on the host.
if command -v debugfs >/dev/null || [ -x /sbin/debugfs ]; then
    PATH="$PATH:/sbin:/usr/sbin" debugfs -R "dump /usr/bin/segvmm-rio $D/rio" "$D/root.ext4" >/dev/null 2>&1 || true
fi
if [ ! -s "$D/rio" ]; then
    gcc -static -O2 -o "$D/rio" guest-kernels/rootfs/rio.c
fi
chmod +x "$D/rio"

python3 - "$B" "$K" "$D" "$N" "$MIB" "$OPS" "$TESTS" "$EVENT_IDX" "$SEGVMM_ARGS" "$JOBS" <<'PY'
import json, re, shlex, statistics, subprocess, sys
b, kernel, d, n, mib, ops, tests, modes, extra, jobs = sys.argv[1:]
n, tests, modes, extra = int(n), tests.split(), modes.split(), shlex.split(extra)
LINE = re.compile(r"SEGVMM_RIO test=(\S+)(.*)")

def boot(test, mode):
    """One boot; (rio fields, requests, mmio exits, device interrupts)."""
    cmdline = (f"console=ttyS0 reboot=k panic=-1 percpu_alloc=page root=/dev/vda "
               f"segvmm_test=bench segvmm_rio={test} segvmm_mib={mib} segvmm_ops={ops} "
               f"segvmm_jobs={jobs}")
    rep = f"{d}/r.json"
    args = [b, "run", "--kernel", kernel, "--memory", "128M", "--timeout", "600",
            "--disk", f"{d}/root.ext4,ro,event_idx={mode}",
            "--disk", f"{d}/scratch.img,event_idx={mode}",
            "--report", rep, "--cmdline", cmdline] + extra
    p = subprocess.run(args, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                       errors="replace")
    m = LINE.search(p.stdout)
    reqs = re.search(r"SEGVMM_RIO_REQS (\d+)", p.stdout)
    irqs = re.search(r"SEGVMM_RIO_IRQS (\d+)", p.stdout)
    if p.returncode != 0 or not m or not reqs or not irqs or m.group(1) != test:
        sys.exit(f"{test} event_idx={mode}: no result (exit {p.returncode})\n"
                 f"{p.stdout[-1500:]}\n{p.stderr[-800:]}")
    fields = dict(kv.split("=", 1) for kv in m.group(2).split())
    stats = json.load(open(rep))["kvm_stats"]["vcpu_total"]
    return fields, int(reqs.group(1)), stats["mmio_exits"], int(irqs.group(1))

med = statistics.median
# Repetition by repetition, every mode and test in turn: a load change on the shared host
# then spreads over all of them instead of favouring whichever ran last.
res = {}
for _ in range(n):
    for mode in modes:
        for test in ["none"] + tests:
            res.setdefault((mode, test), []).append(boot(test, mode))
rows = []
for mode in modes:
    base_mmio = med(x[2] for x in res[(mode, "none")])
    for test in tests:
        runs = res[(mode, test)]
        reqs = med(r[1] for r in runs)
        mmio = med(r[2] for r in runs) - base_mmio
        irq = med(r[3] for r in runs)
        rows.append((test, f"guest, event_idx={mode}",
                     med(float(r[0]["mb_s"]) for r in runs),
                     med(float(r[0]["iops"]) for r in runs),
                     int(runs[0][0]["ops"]), reqs,
                     f"{mmio / reqs:.2f}" if reqs else "-",
                     f"{irq / reqs:.2f}" if reqs else "-"))
for test in tests:
    res = []
    for _ in range(n):
        p = subprocess.run([f"{d}/rio", test, f"{d}/scratch.img", mib, ops, jobs],
                           capture_output=True, text=True)
        m = LINE.search(p.stdout)
        if p.returncode != 0 or not m:
            sys.exit(f"host {test}: {p.stderr.strip()}")
        res.append(dict(kv.split("=", 1) for kv in m.group(2).split()))
    rows.append((test, "host file, O_DIRECT", med(float(r["mb_s"]) for r in res),
                 med(float(r["iops"]) for r in res), int(res[0]["ops"]), "-", "-", "-"))

print(f"\nmedians of {n} runs; seq: {mib} MiB in 1 MiB requests, rand: {ops} x 4 KiB; "
      f"{jobs} job(s); extra segvmm args: {' '.join(extra) or '(none)'}")
print(f"{'test':<10} {'where':<22} {'MB/s':>9} {'IOPS':>9} {'ops':>6} {'dev reqs':>8} "
      f"{'mmio exits/req':>14} {'irqs/req':>8}")
for t, w, mbs, iops, o, reqs, ex, irq in sorted(rows, key=lambda r: tests.index(r[0])):
    print(f"{t:<10} {w:<22} {mbs:>9.2f} {iops:>9.1f} {o:>6} {str(reqs):>8} {ex:>14} {irq:>8}")
PY
echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
uptime
