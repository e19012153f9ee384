#!/usr/bin/env bash
# Runs the cargo-fuzz targets (nightly + cargo-fuzz). Usage:
#   fuzz/run.sh [SECONDS_PER_TARGET] [TARGET...]      (default 600 s, every target)
# Environment: JOBS (parallel libFuzzer jobs per target, default 1), RSS_MB (default 1024),
# SANITIZER (address|none, default none: the targets are safe Rust; use address to check
# the unsafe parts). Each target starts from fuzz/seeds/TARGET (committed) plus
# fuzz/corpus/TARGET (grown by earlier runs, ignored by git); crashes go to
# fuzz/artifacts/TARGET. Prints executions per target and exits non-zero on a finding.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
secs=${1:-600}
shift || true
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(ptsnap walker hotness traces api_request loader emulate)
if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
    echo "fuzz/run.sh: nightly + cargo-fuzz not available; tests/fuzz_entry.rs covers the targets on stable" >&2
    exit 0
fi
san=${SANITIZER:-none}
cargo +nightly fuzz build -O -s "$san" >/dev/null
status=0
for t in "${targets[@]}"; do
    mkdir -p "corpus/$t" "artifacts/$t"
    log=$(mktemp)
    if ! cargo +nightly fuzz run -O -s "$san" "$t" "corpus/$t" "seeds/$t" -- \
        -max_total_time="$secs" -rss_limit_mb="${RSS_MB:-1024}" -max_len=65536 \
        -timeout=10 -jobs="${JOBS:-1}" -workers="${JOBS:-1}" -print_final_stats=1 \
        -artifact_prefix="artifacts/$t/" >"$log" 2>&1; then
        status=1
        echo "FINDING in $t:" >&2
        tail -30 "$log" >&2
    fi
    # (in -jobs mode the parent log repeats the worker's fuzz-N.log: count the parent only)
    execs=$(grep -h "stat::number_of_executed_units" "$log" 2>/dev/null | awk '{s+=$2} END {print s+0}')
    echo "$t: $execs executions in ${secs}s, $(ls "artifacts/$t" | wc -l) artifacts"
    rm -f "$log" fuzz-*.log
done
exit $status
