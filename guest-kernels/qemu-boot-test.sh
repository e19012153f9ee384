#!/usr/bin/env bash
# Boot a guest kernel + initramfs under QEMU (TCG, no KVM) and wait for the
# /init marker line "SEGVMM_INIT_OK uptime=<seconds>".
#
#   guest-kernels/qemu-boot-test.sh KERNEL [INITRAMFS] [-- EXTRA QEMU ARGS]
#
# Env: APPEND (kernel command line), TIMEOUT (s, default 120), SMP (1), MEM (256M),
#      QEMU_LOG (file for the serial log; default out/qemu-<kernel>.log).
# Prints the marker, the wall time from QEMU start to the marker, and whether
# the guest then powered off / halted. Exit 0 iff the marker was seen.
# Installs qemu-system-x86 with apt-get if it is missing (root only).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
die() {
	echo "qemu-boot-test.sh: error: $*" >&2
	exit 1
}

[[ $# -ge 1 ]] || die "usage: $0 KERNEL [INITRAMFS] [-- QEMU ARGS]"
KERNEL="$1"
shift
INITRD="$HERE/out/initramfs.cpio"
if [[ $# -ge 1 && "$1" != "--" ]]; then
	INITRD="$1"
	shift
fi
[[ $# -ge 1 && "$1" == "--" ]] && shift
EXTRA=("$@")

[[ -s "$KERNEL" ]] || die "kernel '$KERNEL' not found"
[[ -s "$INITRD" ]] || die "initramfs '$INITRD' not found"
if ! command -v qemu-system-x86_64 >/dev/null; then
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends qemu-system-x86 ||
		die "qemu-system-x86_64 missing and apt-get install qemu-system-x86 failed"
fi

APPEND="${APPEND:-console=ttyS0 panic=-1 reboot=k}"
TIMEOUT="${TIMEOUT:-120}"
LOG="${QEMU_LOG:-$HERE/out/qemu-$(basename "$KERNEL").log}"

rm -f "$LOG" # a stale log would be mistaken for this boot
t0=$(date +%s.%N)
# -no-reboot: a guest reboot (panic=-1, reboot=k) ends QEMU instead of looping.
qemu-system-x86_64 -accel tcg -cpu max -m "${MEM:-256M}" -smp "${SMP:-1}" \
	-nodefaults -no-user-config -display none -serial "file:$LOG" -no-reboot \
	-kernel "$KERNEL" -initrd "$INITRD" -append "$APPEND" "${EXTRA[@]}" </dev/null &
QPID=$!
trap 'kill "$QPID" 2>/dev/null || true' EXIT

elapsed() { awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.2f", b - a }'; }
marker_s="" end="running"
while kill -0 "$QPID" 2>/dev/null; do
	if [[ -z "$marker_s" ]] && grep -q 'SEGVMM_INIT_OK' "$LOG" 2>/dev/null; then
		marker_s="$(elapsed)"
	fi
	# No ACPI in the small kernel: it halts instead of powering off.
	if grep -qE 'reboot: Power down|System halted|Kernel panic' "$LOG" 2>/dev/null; then
		sleep 0.5
		end="$(grep -oE 'reboot: Power down|System halted|Kernel panic[^\r]*' "$LOG" | head -n1)"
		break
	fi
	if awk -v e="$(elapsed)" -v t="$TIMEOUT" 'BEGIN { exit !(e > t) }'; then
		end="timeout"
		break
	fi
	sleep 0.05
done
kill -0 "$QPID" 2>/dev/null || [[ "$end" != running ]] || end="qemu exited (guest powered off)"
kill "$QPID" 2>/dev/null || true
wait "$QPID" 2>/dev/null || true
[[ -n "$marker_s" ]] || ! grep -q 'SEGVMM_INIT_OK' "$LOG" || marker_s="$(elapsed) (seen after exit)"

tr -d '\r' <"$LOG"
echo "----"
echo "kernel:   $KERNEL"
echo "append:   $APPEND"
echo "marker:   $(grep -o 'SEGVMM_INIT_OK.*' "$LOG" | tr -d '\r' || echo NONE)"
echo "marker wall time from QEMU start: ${marker_s:-none} s"
echo "end:      $end; total $(elapsed) s"
grep -q 'SEGVMM_INIT_OK' "$LOG" || die "no SEGVMM_INIT_OK marker within ${TIMEOUT}s (log: $LOG)"
