#!/usr/bin/env bash
# Exercise the kvm_pvm syscall fixup (patches/0001) on a normal CPU, under
# QEMU/TCG: build a test initramfs whose /init makes every system call the
# way kvm_pvm botches SYSCALL (RCX = return address, R11 = RFLAGS, then a
# user-mode jump to entry_SYSCALL_64, which faults with ip == entry_SYSCALL_64
# exactly as on kvm_pvm), boot out/small-kernel with it and expect the marker.
#
#   guest-kernels/test-pvm-fixup.sh [--expect-fail]
#
# --expect-fail: for a kernel built with --no-pvm-fixup; succeeds iff /init
# does NOT reach the marker (it gets SIGSEGV and the kernel panics).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
die() {
	echo "test-pvm-fixup.sh: error: $*" >&2
	exit 1
}
EXPECT=ok
[[ "${1:-}" == "--expect-fail" ]] && EXPECT=fail

VMLINUX="$HERE/out/small-vmlinux"
KERNEL="$HERE/out/small-kernel"
[[ -s "$VMLINUX" && -s "$KERNEL" ]] || die "build the small kernel first (build.sh --small)"
ADDR="$(nm "$VMLINUX" | awk '$3 == "entry_SYSCALL_64" { print "0x" $1 }')"
[[ -n "$ADDR" ]] || die "no entry_SYSCALL_64 symbol in $VMLINUX"

STAGE="$HERE/work/pvmtest-root"
CPIO="$HERE/work/initramfs-pvmtest.cpio"
rm -rf "$STAGE"
mkdir -p "$STAGE/dev" "$STAGE/proc"
gcc -O2 -Wall -Wextra -Werror -static -nostdlib -ffreestanding -fno-stack-protector \
	-fno-pie -no-pie -fno-asynchronous-unwind-tables -fno-builtin -mno-red-zone \
	-DFAKE_SYSCALL_ENTRY="$ADDR" -o "$STAGE/init" "$HERE/init/init.c" ||
	die "compiling the test /init failed"
mknod -m 600 "$STAGE/dev/console" c 5 1
(cd "$STAGE" && find . -mindepth 1 | LC_ALL=C sort | cpio --quiet -o -H newc -R 0:0 >"$CPIO")

echo "entry_SYSCALL_64 = $ADDR; fixup recorded in small-kernel.info: $(grep pvm_syscall_fixup "$HERE/out/small-kernel.info" || echo unknown)"
rc=0
QEMU_LOG="$HERE/out/qemu-pvmtest.log" TIMEOUT="${TIMEOUT:-60}" \
	"$HERE/qemu-boot-test.sh" "$KERNEL" "$CPIO" || rc=$?
if [[ "$EXPECT" == ok ]]; then
	[[ "$rc" == 0 ]] || die "fake-SYSCALL /init did not reach the marker: fixup missing or broken"
	echo "PVM FIXUP TEST PASSED: all /init system calls went through the #PF fixup"
else
	[[ "$rc" != 0 ]] || die "marker reached although the kernel should lack the fixup"
	echo "PVM FIXUP NEGATIVE TEST PASSED: without the fixup the fake SYSCALL kills /init"
fi
