#!/usr/bin/env bash
# One measurement-guest snapshot restored under each backing (issue #15): a 256 MiB guest
# (chase over 248 MiB, seed 5) snapshotted on THP mid-workload, then restored to its end
# under 4k, thp, 2m and 1g (copy) and mapped from the file; one line each with what the
# host gave (bytes per page size, host-physically contiguous runs), the time the guest
# needed to finish and its checksum, next to the uninterrupted run's. Needs /dev/kvm and
# a release build (root for --grow-pool and frame numbers). Usage: benches/snapshot-backings.sh
set -euo pipefail
cd "$(dirname "$0")/.."
B=target/release/segvmm
D=$(mktemp -d)
trap 'rm -rf "$D"' EXIT
mkdir "$D/snaps"
ARGS=(--footprint 248M --count 20000000 --seed 5)
echo "uninterrupted: $($B run "${ARGS[@]}" 2>/dev/null | grep -o 'checksum 0x[0-9a-f]*')"
$B run "${ARGS[@]}" --api-socket "$D/s.sock" --snapshot-dir "$D/snaps" >/dev/null 2>&1 &
PID=$!
for _ in $(seq 200); do [ -S "$D/s.sock" ] && break; sleep 0.05; done
sleep 2
$B snapshot create --api-socket "$D/s.sock" --out mid --shutdown
wait $PID || true
for mode in "copy 4k" "copy thp" "copy 2m" "copy 1g" "map 4k"; do
    set -- $mode
    rm -f "$D/r.json"
    $B restore --from "$D/snaps/mid" --memory-mode "$1" --backing "$2" --grow-pool --quiet \
        --report "$D/r.json" >/dev/null 2>"$D/err" || true
    [ -f "$D/r.json" ] || { echo "restore $1 $2: $(tail -1 "$D/err")"; continue; }
    python3 - "$D/r.json" "$1" "$2" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
run, res = r["run"], r.get("result") or {}
m = run["memory"]
pages = ", ".join(f"{k} {v >> 20} MiB" for k, v in m["bytes_by_page_size"].items() if v)
runs = m.get("contiguous_runs")
largest = (m.get("largest_run_bytes") or 0) >> 20
ck = res.get("checksum")
print(f"restore {sys.argv[2]:4} {sys.argv[3]:3}: host gave {pages or '-'}; "
      f"runs {runs if runs is not None else 'n/a'} (largest {largest} MiB); "
      f"finished in {run['run_ms']:.0f} ms, shadow page faults "
      f"{run['kvm_stats']['vcpu_total'].get('pf_fixed', '-')}; "
      f"checksum {hex(ck) if ck is not None else 'none'}")
PY
done
