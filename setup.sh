#!/usr/bin/env bash
# segvmm: set everything up on a fresh Debian 12 machine and boot a guest.
#
#   ./setup.sh            install what is missing, build the guest kernels and initramfs
#                         (guest-kernels/build.sh), build segvmm, then boot the built-in
#                         measurement guest with THP-backed memory.
#   ./setup.sh --no-boot  the same without the final boot (CI uses this).
#
# Everything comes from the package registries (Debian, crates.io); nothing else is
# downloaded.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"

boot=1
[[ "${1:-}" == "--no-boot" ]] && boot=0

need=()
command -v cc >/dev/null || need+=(gcc)
command -v make >/dev/null || need+=(make)
# Real KVM code (kvm_amd with NPT and with shadow paging) in a QEMU TCG VM:
# tests/realkvm/run.sh, tests/realkvm.rs, docs/realkvm.md.
command -v qemu-system-x86_64 >/dev/null || need+=(qemu-system-x86)
dpkg -s busybox-static >/dev/null 2>&1 || need+=(busybox-static)
command -v cpio >/dev/null || need+=(cpio)
# out/rootfs.ext4 (mke2fs -d) and the root-disk test (e2fsck, debugfs).
command -v mke2fs >/dev/null && command -v debugfs >/dev/null || need+=(e2fsprogs)
if ((${#need[@]})); then
	[[ -n "$(ls -A /var/lib/apt/lists 2>/dev/null | grep -v lock)" ]] || apt-get update
	DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${need[@]}"
fi
command -v cargo >/dev/null || { echo "setup.sh: error: cargo (Rust) is required" >&2; exit 1; }

echo "setup.sh: building guest kernels and initramfs (guest-kernels/build.sh --all)"
guest-kernels/build.sh --all

echo "setup.sh: building segvmm"
cargo build --release --workspace --all-targets

if ((boot)); then
	echo "setup.sh: booting the measurement guest (--backing thp)"
	./target/release/segvmm run --backing thp
fi
