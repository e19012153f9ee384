#!/usr/bin/env bash
# Run segvmm on real KVM code: kvm_amd (SVM, with NPT and with npt=0 shadow paging) inside
# a QEMU TCG VM on this machine. See docs/realkvm.md.
#
#   tests/realkvm/run.sh --out DIR [--modes 1,0] [--timeout S] [--cmd-timeout S]
#                        [--segvmm BIN] [--mem 3G] [--smp 1] [--no-stock] CMDFILE
#
# CMDFILE holds one shell command a line (blank lines and '#' lines skipped), run by
# busybox sh inside the VM once per mode, in order, with `segvmm` on PATH, the guest
# kernels of guest-kernels/out under /gk, and $R = that command's own directory (also its
# working directory: write report files there). Everything under $R comes back.
#
# Unless --no-stock, /gk also holds stock-kernel and stock-virtio.cpio (busybox and the
# stock kernel's virtio modules; /init: tests/realkvm/stock-virtio-init.sh).
#
# Results: DIR/npt<M>/<N>/{cmd,stdout,stderr,rc,...}, DIR/npt<M>/modules.txt (kvm_amd's
# parameters and dmesg after loading), DIR/console.log (the VM's console), DIR/summary.txt.
# The VM is built from: the segvmm binary and the shared libraries `ldd` lists, busybox
# (busybox-static), the Debian cloud kernel and its kvm, kvm-amd, irqbypass modules (the
# .deb guest-kernels/build.sh fetches; fetched with apt-get download when missing), and
# guest-kernels/out/*.
#
# Exit: 0 every mode ran every command (whatever the commands' own exit codes);
#       1 the VM failed (console tail printed); 3 a prerequisite is missing (qemu,
#       busybox-static, the kernel package): callers may SKIP on it; 124 the VM did not
#       finish within --timeout (console tail printed; the commands done so far are in DIR).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
die() {
	echo "realkvm: error: $*" >&2
	exit 1
}
missing() {
	echo "realkvm: missing: $*" >&2
	exit 3
}
log() { echo "realkvm: $*" >&2; }

OUT="" MODES="1,0" TIMEOUT=600 CMD_TIMEOUT=300 MEM=3G SMP=1 STOCK=1
SEGVMM="$ROOT/target/release/segvmm"
while [[ $# -gt 1 ]]; do
	case "$1" in
	--out) OUT="$2" && shift 2 ;;
	--modes) MODES="$2" && shift 2 ;;
	--timeout) TIMEOUT="$2" && shift 2 ;;
	--cmd-timeout) CMD_TIMEOUT="$2" && shift 2 ;;
	--segvmm) SEGVMM="$2" && shift 2 ;;
	--mem) MEM="$2" && shift 2 ;;
	--smp) SMP="$2" && shift 2 ;;
	--no-stock) STOCK=0 && shift ;;
	*) die "unknown option '$1' (see the header of $0)" ;;
	esac
done
[[ $# -eq 1 ]] || die "usage: $0 --out DIR [options] CMDFILE"
CMDFILE="$1"
[[ -n "$OUT" ]] || die "--out DIR is required"
[[ -s "$CMDFILE" ]] || die "command file '$CMDFILE' is missing or empty"
[[ "$MODES" =~ ^[01](,[01])*$ ]] || die "--modes '$MODES': a comma-separated list of 1 (NPT) and 0 (shadow)"
[[ "$TIMEOUT" =~ ^[0-9]+$ && "$CMD_TIMEOUT" =~ ^[0-9]+$ ]] || die "--timeout/--cmd-timeout take whole seconds"
[[ -x "$SEGVMM" ]] || die "segvmm binary '$SEGVMM' not found (cargo build --release)"

command -v qemu-system-x86_64 >/dev/null || missing "qemu-system-x86_64 (apt-get install qemu-system-x86, or ./setup.sh)"
BUSYBOX=/bin/busybox
[[ -x "$BUSYBOX" ]] && ! ldd "$BUSYBOX" >/dev/null 2>&1 ||
	missing "a static busybox (apt-get install busybox-static, or ./setup.sh)"
command -v cpio >/dev/null || missing "cpio"

# The VM's kernel: the stock Debian cloud kernel, with its kvm modules, from the pinned .deb.
PKG="$(sed -n 's/^STOCK_PKG="\(.*\)"$/\1/p' "$ROOT/guest-kernels/build.sh")"
VER="$(sed -n 's/^STOCK_VERSION="\(.*\)"$/\1/p' "$ROOT/guest-kernels/build.sh")"
[[ -n "$PKG" && -n "$VER" ]] || die "cannot read STOCK_PKG/STOCK_VERSION from guest-kernels/build.sh"
CACHE="$ROOT/target/realkvm"
KDIR="$CACHE/$PKG-$VER"
# Its virtio modules go into /gk/stock-virtio.cpio, an initramfs for the stock kernel as
# a segvmm guest (tests/realkvm/stock-virtio-init.sh).
GUEST_MODS="kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/virtio/virtio_mmio.ko kernel/drivers/block/virtio_blk.ko"
if [[ ! -s "$KDIR/vmlinuz" || ! -s "$KDIR/guest/virtio_blk.ko" ]]; then
	mkdir -p "$CACHE"
	deb=""
	for d in "$ROOT/guest-kernels/work/debs" "$CACHE"; do
		f="$d/${PKG}_${VER}_amd64.deb"
		[[ -s "$f" ]] && deb="$f" && break
	done
	if [[ -z "$deb" ]]; then
		log "fetching $PKG=$VER (apt-get download)"
		(cd "$CACHE" && apt-get download -qq "$PKG=$VER" >&2) || missing "the kernel package $PKG=$VER (apt-get download failed)"
		deb="$CACHE/${PKG}_${VER}_amd64.deb"
	fi
	tmp="$(mktemp -d "$CACHE/x.XXXXXX")"
	dpkg-deb -x "$deb" "$tmp" || die "dpkg-deb -x $deb failed"
	mkdir -p "$tmp/out"
	cp "$tmp"/boot/vmlinuz-* "$tmp/out/vmlinuz"
	for m in kernel/virt/lib/irqbypass.ko kernel/arch/x86/kvm/kvm.ko kernel/arch/x86/kvm/kvm-amd.ko; do
		cp "$tmp"/lib/modules/*/"$m" "$tmp/out/" || die "$m is not in $deb"
	done
	mkdir -p "$tmp/out/guest"
	for m in $GUEST_MODS; do
		cp "$tmp"/lib/modules/*/"$m" "$tmp/out/guest/" || die "$m is not in $deb"
	done
	rm -rf "$KDIR" && mv "$tmp/out" "$KDIR" && rm -rf "$tmp"
fi

# The initramfs: busybox, segvmm + its libraries, the modules, guest kernels, /init.
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"
rm -rf "$OUT"/npt* "$OUT/console.log" "$OUT/channel.log" "$OUT/summary.txt"
IR="$(mktemp -d "${TMPDIR:-/tmp}/realkvm-root.XXXXXX")"
trap 'rm -rf "$IR"' EXIT
mkdir -p "$IR"/{bin,sbin,dev,proc,sys,tmp,gk,lib/kvm,etc}
cp "$BUSYBOX" "$IR/bin/busybox"
cp "$SEGVMM" "$IR/bin/segvmm"
ldd "$SEGVMM" | grep -oE '/[^ ]+' | while read -r lib; do
	mkdir -p "$IR$(dirname "$lib")"
	cp -L "$lib" "$IR$lib"
done
cp "$KDIR"/*.ko "$IR/lib/kvm/"
for f in "$ROOT"/guest-kernels/out/*; do
	case "$(basename "$f")" in
	*vmlinux* | *.config | *.info) continue ;;
	stock-kernel) ((STOCK)) || continue ;;
	esac
	cp -L "$f" "$IR/gk/"
done
if ((STOCK)); then
	SV="$(mktemp -d "${TMPDIR:-/tmp}/realkvm-stock.XXXXXX")"
	mkdir -p "$SV"/{bin,dev,proc,sys,lib}
	cp "$BUSYBOX" "$SV/bin/busybox"
	cp "$KDIR"/guest/*.ko "$SV/lib/"
	cp "$HERE/stock-virtio-init.sh" "$SV/init"
	chmod +x "$SV/init" "$SV/bin/busybox"
	(cd "$SV" && find . | cpio --quiet -o -H newc -R 0:0) >"$IR/gk/stock-virtio.cpio"
	rm -rf "$SV"
fi
grep -vE '^[[:space:]]*(#|$)' "$CMDFILE" >"$IR/etc/cmds" || die "no commands in $CMDFILE"
echo "MODES='${MODES//,/ }' CMD_TIMEOUT=$CMD_TIMEOUT" >"$IR/etc/realkvm.conf"
cp "$HERE/init.sh" "$IR/init"
chmod +x "$IR/init" "$IR/bin/busybox"
(cd "$IR" && find . | cpio --quiet -o -H newc -R 0:0) >"$CACHE/initramfs-$$.cpio"
trap 'rm -rf "$IR" "$CACHE/initramfs-$$.cpio"' EXIT

# Boot. COM1 = the console, COM2 = the result channel (framed base64 tar.gz per command).
log "booting kvm_amd VM (modes ${MODES}, $(grep -c . "$IR/etc/cmds") commands each, limit ${TIMEOUT}s)"
t0=$SECONDS
qemu-system-x86_64 -accel tcg -cpu EPYC,+svm,+npt -m "$MEM" -smp "$SMP" \
	-nodefaults -no-user-config -display none -no-reboot \
	-serial "file:$OUT/console.log" -serial "file:$OUT/channel.log" \
	-kernel "$KDIR/vmlinuz" -initrd "$CACHE/initramfs-$$.cpio" \
	-append "console=ttyS0 panic=-1 reboot=k" </dev/null >"$OUT/qemu.log" 2>&1 &
QPID=$!
trap 'kill "$QPID" 2>/dev/null || true; rm -rf "$IR" "$CACHE/initramfs-$$.cpio"' EXIT
status=running
while kill -0 "$QPID" 2>/dev/null; do
	if ((SECONDS - t0 >= TIMEOUT)); then
		status=timeout
		kill "$QPID" 2>/dev/null || true
		break
	fi
	sleep 1
done
wait "$QPID" 2>/dev/null || true
wall=$((SECONDS - t0))

# Unpack every complete frame.
tr -d '\r' <"$OUT/channel.log" | awk -v out="$OUT" '
	/^@@SEGVMM-RESULT BEGIN / { name = $3; buf = ""; inframe = 1; next }
	/^@@SEGVMM-RESULT END/ { if (inframe) { f = out "/.frame." n++; printf "%s", buf > f; close(f) } inframe = 0; next }
	inframe { buf = buf $0 "\n" }'
for f in "$OUT"/.frame.*; do
	[[ -e "$f" ]] || continue
	base64 -d <"$f" | tar -xz -C "$OUT" || log "a result frame did not decode ($f)"
	rm -f "$f"
done
done_marker=0
grep -q '^@@SEGVMM-DONE' <(tr -d '\r' <"$OUT/channel.log") && done_marker=1

{
	echo "wall_s=$wall status=$status done=$done_marker modes=$MODES"
	for d in "$OUT"/npt*/*/; do
		[[ -f "$d/rc" ]] && echo "$(basename "$(dirname "$d")")/$(basename "$d") rc=$(cat "$d/rc") $(cat "$d/cmd")"
	done
} >"$OUT/summary.txt"
cat "$OUT/summary.txt" >&2
tail_console() {
	echo "realkvm: --- last 40 lines of the VM console ($OUT/console.log) ---" >&2
	tail -n 40 "$OUT/console.log" | tr -d '\r' >&2
	[[ -s "$OUT/qemu.log" ]] && { echo "realkvm: --- qemu ---" >&2; tail -n 10 "$OUT/qemu.log" >&2; }
	return 0
}
if [[ "$status" == timeout ]]; then
	tail_console
	echo "realkvm: error: the VM did not finish within ${TIMEOUT}s (killed); results of the commands that finished are in $OUT" >&2
	exit 124
fi
if ((!done_marker)); then
	tail_console
	die "the VM ended before running every command (no completion marker); see $OUT/console.log"
fi
exit 0
