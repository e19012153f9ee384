#!/usr/bin/env bash
# Build the segvmm guest kernels and initramfs into guest-kernels/out/.
#
#   guest-kernels/build.sh [--stock] [--small] [--initramfs] [--bench-initramfs]
#                          [--rootfs] [--all] [--pvm-fixup | --no-pvm-fixup] [--force]
#
#   --stock       out/stock-kernel: /boot/vmlinuz from the pinned Debian cloud
#                 kernel package (apt-get download + dpkg-deb -x).
#   --small       out/small-kernel (bzImage), out/small-vmlinux (ELF, PVH
#                 note), out/small-kernel.config, out/small-kernel.info,
#                 out/small-kernel.map (System.map, for --profile-guest): built
#                 from the pinned linux-source-6.1 with small.config.
#   --initramfs   out/initramfs.cpio (uncompressed newc): /init from init/init.c.
#   --bench-initramfs
#                 out/initramfs-bench.cpio (uncompressed newc): /init is the
#                 workload runner linux-bench/ (static no_std Rust, cargo
#                 --offline) for `segvmm bench --linux KERNEL,INITRD`.
#   --rootfs      out/rootfs.ext4: a 64 MiB sparse ext4 image (mke2fs -d, no loop
#                 mount) holding Debian's busybox-static (apt-get download +
#                 dpkg-deb -x) with its applet links, /sbin/init (= /init)
#                 from rootfs/init and /usr/bin/segvmm-rio (rootfs/rio.c,
#                 gcc -static: the block benchmark of benches/virtio-blk.sh),
#                 for `segvmm run --kernel out/small-kernel --disk out/rootfs.ext4
#                 --cmdline "... root=/dev/vda rw"`.
#   --all         all five (also the default with no target flags).
#   --pvm-fixup / --no-pvm-fixup
#                 force the kvm_pvm syscall fixup patch (patches/) on or off
#                 for --small.  Default: on iff /sys/module/kvm_pvm exists.
#   --force       rebuild even if the stamp says the output is up to date.
#
# Only the Debian package archives are contacted (apt-get); nothing else is
# downloaded.  Each target keeps a stamp (out/.<target>.stamp) holding the
# hashes/versions of its inputs and is skipped when that stamp still matches.
# Sources and the kernel build tree live in guest-kernels/work/.
set -euo pipefail

# ---------------------------------------------------------------- pins ----
# Exact Debian bookworm versions. The archive keeps only recent versions: when a
# pin is gone, the newest package of the same series (the *_SERIES regex, versions
# of the pin's upstream major.minor) is used with a warning, and the version used is
# recorded in out/*.info (pinned= beside version=). `--resolve-only` prints what
# would be used and builds nothing (SEGVMM_FAKE_MADISON=FILE replaces
# `apt-cache madison` output, for tests/kernel_pins.rs).
STOCK_PKG="linux-image-6.1.0-47-cloud-amd64"
STOCK_VERSION="6.1.170-3"
STOCK_SERIES='linux-image-6\.1\.0-[0-9]+-cloud-amd64'
SRC_PKG="linux-source-6.1"
SRC_VERSION="6.1.170-3"
SRC_SERIES='linux-source-6\.1'
# The root file system's only program (exact version; no series fallback).
BUSYBOX_PKG="busybox-static"
BUSYBOX_VERSION="1:1.35.0-4+deb12u1+b1"
ROOTFS_SIZE="64M"
STOCK_PINNED="$STOCK_PKG=$STOCK_VERSION"
SRC_PINNED="$SRC_PKG=$SRC_VERSION"
# Build dependencies (Debian package names; versions are whatever bookworm has).
BUILD_DEPS=(gcc make binutils libc6-dev flex bison bc libelf-dev libssl-dev
	xz-utils lz4 cpio patch perl python3)
JOBS="${JOBS:-$(($(nproc) > 2 ? 3 : 2))}"
# ---------------------------------------------------------------------------

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
OUT="$HERE/out"
WORK="$HERE/work"
DEBS="$WORK/debs"
SRC_TREE="$WORK/linux-source-$SRC_VERSION"
SMALL_BUILD="$WORK/build-small"
APPLIED_PATCH="$SRC_TREE/.segvmm-applied.patch"

die() {
	echo "build.sh: error: $*" >&2
	exit 1
}
log() { echo "build.sh: $*"; }

# Any failing command stops the build and names the step and the command.
set -E
CURRENT_STEP="setup"
trap 'echo "build.sh: error: step \"$CURRENT_STEP\" failed at line $LINENO: $BASH_COMMAND" >&2' ERR

# step NAME CMD...: run CMD, print how long it took.
step() {
	local name="$1" t0 t1 outer="$CURRENT_STEP"
	shift
	CURRENT_STEP="$name"
	t0=$(date +%s.%N)
	log "[$name] start"
	"$@"
	CURRENT_STEP="$outer"
	t1=$(date +%s.%N)
	log "[$name] done in $(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.1f", b - a }') s"
}

sha() { sha256sum "$@" | awk '{ print $1 }'; }

stamp_ok() { # stamp_ok NAME CONTENT OUTPUT...
	local name="$1" content="$2" f
	shift 2
	[[ "${FORCE}" == 1 ]] && return 1
	[[ -f "$OUT/.$name.stamp" ]] || return 1
	[[ "$(cat "$OUT/.$name.stamp")" == "$content" ]] || return 1
	for f in "$@"; do [[ -s "$f" ]] || return 1; done
	return 0
}
stamp_write() { printf '%s' "$2" >"$OUT/.$1.stamp"; }

# ------------------------------------------------------------ apt helpers ----
APT_UPDATED=0
apt_update_once() {
	[[ "$APT_UPDATED" == 1 ]] && return 0
	log "running apt-get update"
	apt-get update -qq || die "apt-get update failed"
	APT_UPDATED=1
}

ensure_apt_lists() {
	if ! compgen -G "/var/lib/apt/lists/*_Packages*" >/dev/null; then
		apt_update_once
	fi
}

ensure_deps() {
	local missing=() p
	for p in "$@"; do
		dpkg-query -W -f='${db:Status-Status}' "$p" 2>/dev/null | grep -qx installed ||
			missing+=("$p")
	done
	[[ ${#missing[@]} -eq 0 ]] && return 0
	[[ "$(id -u)" == 0 ]] || die "missing build dependencies (${missing[*]}) and not root to apt-get install them"
	ensure_apt_lists
	log "installing build dependencies: ${missing[*]}"
	if ! DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"; then
		apt_update_once
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" ||
			die "apt-get install ${missing[*]} failed"
	fi
}

# available REGEX -> "PKG VERSION" lines for every package whose name matches REGEX
# (from apt-cache madison, or the file $SEGVMM_FAKE_MADISON in its format).
available() {
	local re="$1"
	if [[ -n "${SEGVMM_FAKE_MADISON:-}" ]]; then
		cat "$SEGVMM_FAKE_MADISON"
	else
		ensure_apt_lists
		local p
		for p in $(apt-cache pkgnames "${re%%\\*}" | grep -E "^${re}\$" || true); do
			apt-cache madison "$p"
		done
	fi | awk -F'|' '{ gsub(/ /, "", $1); gsub(/ /, "", $2); if ($2 != "") print $1, $2 }' |
		grep -E "^${re} " || true
}

# resolve NAME PKG VERSION SERIES_REGEX -> sets ${NAME}_PKG/${NAME}_VERSION: the pin
# when the archive still has it, else the newest of the series (same upstream
# major.minor) with a warning; dies when the series is gone too.
resolve() {
	local name="$1" pkg="$2" ver="$3" re="$4" list mm best
	list="$(available "$re")"
	if grep -qxF "$pkg $ver" <<<"$list"; then
		return 0
	fi
	mm="$(sed -E 's/^([0-9]+\.[0-9]+)\..*/\1/' <<<"$ver")"
	best="$(awk -v mm="$mm." 'index($2, mm) == 1' <<<"$list" |
		sort -k2,2V -k1,1V | tail -n 1)"
	[[ -n "$best" ]] || die "pinned package $pkg=$ver is gone from the Debian archives and no $mm.x package matching '$re' is left; bump the pin at the top of $0"
	echo "build.sh: warning: pinned $pkg=$ver is no longer in the archive; using the newest of the $mm series: ${best% *}=${best#* }" >&2
	printf -v "${name}_PKG" '%s' "${best% *}"
	printf -v "${name}_VERSION" '%s' "${best#* }"
}

# fetch_deb PKG VERSION -> prints the path of the downloaded .deb
fetch_deb() {
	local pkg="$1" ver="$2" deb
	# apt-get download writes an epoch's ':' as %3a in the file name.
	deb="$DEBS/${pkg}_${ver//:/%3a}_$(apt_arch "$pkg" "$ver").deb"
	if [[ -s "$deb" ]] && verify_deb "$pkg" "$ver" "$deb"; then
		echo "$deb"
		return 0
	fi
	ensure_apt_lists
	if ! apt-cache show "$pkg=$ver" >/dev/null 2>&1; then
		apt_update_once
		apt-cache show "$pkg=$ver" >/dev/null 2>&1 ||
			die "pinned package $pkg=$ver is not available from the configured Debian archives any more; bump the pin at the top of $0 (apt-cache policy $pkg)"
	fi
	mkdir -p "$DEBS"
	# (As root apt warns that the download is "unsandboxed": harmless.)
	(cd "$DEBS" && apt-get download -qq "$pkg=$ver" >&2) || die "apt-get download $pkg=$ver failed"
	deb="$DEBS/${pkg}_${ver//:/%3a}_$(apt_arch "$pkg" "$ver").deb"
	[[ -s "$deb" ]] || die "apt-get download $pkg=$ver produced no $deb"
	verify_deb "$pkg" "$ver" "$deb" || die "checksum of $deb does not match the archive's SHA256 for $pkg=$ver"
	echo "$deb"
}

apt_arch() { # the Architecture field (amd64/all) of PKG=VER
	local a
	a="$(apt-cache show "$1=$2" 2>/dev/null | awk '/^Architecture:/ { print $2; exit }')" || true
	[[ -n "$a" ]] || {
		ensure_apt_lists
		a="$(apt-cache show "$1=$2" 2>/dev/null | awk '/^Architecture:/ { print $2; exit }')" || true
	}
	[[ -n "$a" ]] || die "pinned package $1=$2 is not available from the configured Debian archives any more; bump the pin at the top of $0 (apt-cache policy $1)"
	echo "$a"
}

verify_deb() { # verify_deb PKG VER FILE: compare with the archive's SHA256
	local want
	want="$(apt-cache show "$1=$2" 2>/dev/null | awk '/^SHA256:/ { print $2; exit }')"
	[[ -n "$want" && "$(sha "$3")" == "$want" ]]
}

# ----------------------------------------------------------------- stock ----
build_stock() {
	local stamp deb tmp img
	stamp="pkg=$STOCK_PKG=$STOCK_VERSION"
	if stamp_ok stock "$stamp" "$OUT/stock-kernel"; then
		log "stock-kernel up to date ($STOCK_PKG $STOCK_VERSION)"
		return 0
	fi
	resolve STOCK "$STOCK_PKG" "$STOCK_VERSION" "$STOCK_SERIES"
	stamp="pkg=$STOCK_PKG=$STOCK_VERSION"
	if stamp_ok stock "$stamp" "$OUT/stock-kernel"; then
		log "stock-kernel up to date ($STOCK_PKG $STOCK_VERSION, fallback for $STOCK_PINNED)"
		return 0
	fi
	ensure_deps dpkg
	deb="$(fetch_deb "$STOCK_PKG" "$STOCK_VERSION")"
	tmp="$WORK/stock-extract"
	rm -rf "$tmp"
	dpkg-deb -x "$deb" "$tmp" || die "dpkg-deb -x $deb failed"
	img="$(compgen -G "$tmp/boot/vmlinuz-*" | sed -n 1p)" || true
	[[ -n "$img" && -s "$img" ]] || die "no /boot/vmlinuz-* in $deb"
	install -m 0644 "$img" "$OUT/stock-kernel"
	if compgen -G "$tmp/boot/config-*" >/dev/null; then
		install -m 0644 "$(compgen -G "$tmp/boot/config-*" | sed -n 1p)" "$OUT/stock-kernel.config"
	fi
	printf 'pinned=%s\npackage=%s\nversion=%s\nfile=%s\nsha256=%s\n' "$STOCK_PINNED" "$STOCK_PKG" "$STOCK_VERSION" \
		"${img#"$tmp"}" "$(sha "$OUT/stock-kernel")" >"$OUT/stock-kernel.info"
	rm -rf "$tmp"
	stamp_write stock "$stamp"
	log "out/stock-kernel <- $STOCK_PKG $STOCK_VERSION ${img#"$tmp"}"
}

# ------------------------------------------------------------- initramfs ----
# shellcheck disable=SC2054 # the comma in -Wl,... is part of one argument
INIT_CFLAGS=(-O2 -Wall -Wextra -Werror -static -nostdlib -ffreestanding
	-fno-stack-protector -fno-pie -no-pie -fno-asynchronous-unwind-tables
	-fno-builtin -Wl,--build-id=none -s)

build_initramfs() {
	local stamp stage
	ensure_deps gcc libc6-dev binutils cpio
	stamp="init=$(sha "$HERE/init/init.c") cflags=${INIT_CFLAGS[*]} gcc=$(gcc -dumpfullversion) cpio=$(cpio --version | sed -n 1p)"
	if stamp_ok initramfs "$stamp" "$OUT/initramfs.cpio"; then
		log "initramfs.cpio up to date"
		return 0
	fi
	stage="$WORK/initramfs-root"
	rm -rf "$stage"
	mkdir -p "$stage/dev" "$stage/proc"
	gcc "${INIT_CFLAGS[@]}" -o "$stage/init" "$HERE/init/init.c" || die "compiling init/init.c failed"
	mknod -m 600 "$stage/dev/console" c 5 1 || die "mknod dev/console failed (needs root)"
	chmod 0755 "$stage/init" "$stage/dev" "$stage/proc" "$stage"
	# Reproducible: fixed mtimes, owner root, sorted names.
	find "$stage" -exec touch -h -d @0 {} +
	(cd "$stage" && find . -mindepth 1 | LC_ALL=C sort |
		cpio --quiet -o -H newc -R 0:0 --reproducible >"$OUT/initramfs.cpio.tmp") ||
		die "cpio failed"
	mv "$OUT/initramfs.cpio.tmp" "$OUT/initramfs.cpio"
	stamp_write initramfs "$stamp"
	log "out/initramfs.cpio ($(stat -c %s "$OUT/initramfs.cpio") bytes)"
}

# ------------------------------------------------------- bench initramfs ----
BENCH_TARGET="$WORK/linux-bench-target"

build_bench_initramfs() {
	local stamp stage bin cargo="${CARGO:-cargo}"
	ensure_deps cpio binutils
	command -v "$cargo" >/dev/null || die "cargo not found (needed for --bench-initramfs)"
	stamp="src=$(cd "$HERE/.." && find guest-kernels/linux-bench workloads -type f \( -name '*.rs' -o -name '*.toml' -o -name Cargo.lock \) | LC_ALL=C sort | xargs sha256sum | sha -) rustc=$(rustc --version) cpio=$(cpio --version | sed -n 1p)"
	if stamp_ok bench-initramfs "$stamp" "$OUT/initramfs-bench.cpio"; then
		log "initramfs-bench.cpio up to date"
		return 0
	fi
	(cd "$HERE/linux-bench" && "$cargo" build --release --offline --target-dir "$BENCH_TARGET") ||
		die "building linux-bench/ failed"
	bin="$BENCH_TARGET/release/linux-bench"
	stage="$WORK/initramfs-bench-root"
	rm -rf "$stage"
	mkdir -p "$stage/dev" "$stage/proc"
	install -m 0755 "$bin" "$stage/init"
	strip "$stage/init"
	mknod -m 600 "$stage/dev/console" c 5 1 || die "mknod dev/console failed (needs root)"
	chmod 0755 "$stage/dev" "$stage/proc" "$stage"
	# Reproducible: fixed mtimes, owner root, sorted names.
	find "$stage" -exec touch -h -d @0 {} +
	(cd "$stage" && find . -mindepth 1 | LC_ALL=C sort |
		cpio --quiet -o -H newc -R 0:0 --reproducible >"$OUT/initramfs-bench.cpio.tmp") ||
		die "cpio failed"
	mv "$OUT/initramfs-bench.cpio.tmp" "$OUT/initramfs-bench.cpio"
	stamp_write bench-initramfs "$stamp"
	log "out/initramfs-bench.cpio ($(stat -c %s "$OUT/initramfs-bench.cpio") bytes)"
}

# ---------------------------------------------------------------- rootfs ----
# mke2fs options: 4 KiB blocks; inode tables and journal written now, so the guest
# kernel starts no ext4lazyinit thread (ring-0 work, emulated here); a fixed UUID
# and directory hash seed. (Not bit-reproducible: mke2fs 1.47.0 stamps inode
# ctimes with the build time.)
ROOTFS_MKE2FS=(-q -F -t ext4 -b 4096 -N 4096 -L segvmm-root
	-U 5e9a3c00-0000-4000-8000-5e9f3c000016
	-E lazy_itable_init=0,lazy_journal_init=0,nodiscard,root_owner=0:0,hash_seed=5e9a3c00-0000-4000-8000-5e9f3c000017)

# segvmm-rio (rootfs/rio.c), the O_DIRECT block benchmark: static glibc, as busybox.
RIO_CFLAGS=(-static -O2 -Wall -Wextra)

build_rootfs() {
	local stamp deb stage tmp applet
	ensure_deps dpkg e2fsprogs gcc libc6-dev
	stamp="layout=2 pkg=$BUSYBOX_PKG=$BUSYBOX_VERSION init=$(sha "$HERE/rootfs/init") rio=$(sha "$HERE/rootfs/rio.c") rio_cflags=${RIO_CFLAGS[*]} gcc=$(gcc -dumpfullversion) size=$ROOTFS_SIZE mke2fs=${ROOTFS_MKE2FS[*]} e2fsprogs=$(mke2fs -V 2>&1 | sed -n 1p)"
	if stamp_ok rootfs "$stamp" "$OUT/rootfs.ext4"; then
		log "rootfs.ext4 up to date ($BUSYBOX_PKG $BUSYBOX_VERSION)"
		return 0
	fi
	deb="$(fetch_deb "$BUSYBOX_PKG" "$BUSYBOX_VERSION")"
	tmp="$WORK/busybox-extract"
	rm -rf "$tmp"
	dpkg-deb -x "$deb" "$tmp" || die "dpkg-deb -x $deb failed"
	[[ -x "$tmp/bin/busybox" ]] || die "no /bin/busybox in $deb"
	stage="$WORK/rootfs-root"
	rm -rf "$stage"
	mkdir -p "$stage"/{bin,sbin,usr/bin,usr/sbin,dev,proc,sys,tmp,root,etc,mnt}
	install -m 0755 "$tmp/bin/busybox" "$stage/bin/busybox"
	rm -rf "$tmp"
	# One symbolic link per applet, where busybox itself says it belongs
	# (busybox is static: it runs here as well as in the guest).
	while read -r applet; do
		[[ "$applet" == */* && "$applet" != bin/busybox ]] || continue
		[[ -e "$stage/$applet" ]] || ln -s /bin/busybox "$stage/$applet"
	done < <("$stage/bin/busybox" --list-full)
	[[ -L "$stage/bin/sh" && -L "$stage/sbin/poweroff" ]] || die "busybox --list-full gave no bin/sh or sbin/poweroff"
	# The kernel runs /sbin/init from a root disk (/init only from an initramfs): the
	# script replaces busybox's init there, and /init points to it (init=/init works too).
	rm -f "$stage/sbin/init"
	install -m 0755 "$HERE/rootfs/init" "$stage/sbin/init"
	ln -s sbin/init "$stage/init"
	# The block I/O benchmark (benches/virtio-blk.sh); static, like busybox.
	gcc "${RIO_CFLAGS[@]}" -o "$stage/usr/bin/segvmm-rio" "$HERE/rootfs/rio.c" ||
		die "compiling rootfs/rio.c failed"
	printf 'root:x:0:0:root:/root:/bin/sh\n' >"$stage/etc/passwd"
	printf 'root:x:0:\n' >"$stage/etc/group"
	chmod 1777 "$stage/tmp"
	chmod 0700 "$stage/root"
	find "$stage" -exec touch -h -d @0 {} +
	rm -f "$OUT/rootfs.ext4.tmp"
	truncate -s "$ROOTFS_SIZE" "$OUT/rootfs.ext4.tmp"
	mke2fs "${ROOTFS_MKE2FS[@]}" -d "$stage" "$OUT/rootfs.ext4.tmp" "$ROOTFS_SIZE" ||
		die "mke2fs -d $stage failed"
	e2fsck -fn "$OUT/rootfs.ext4.tmp" >"$WORK/rootfs-e2fsck.log" 2>&1 ||
		die "e2fsck -fn of the new rootfs.ext4 is not clean (see $WORK/rootfs-e2fsck.log)"
	mv "$OUT/rootfs.ext4.tmp" "$OUT/rootfs.ext4"
	stamp_write rootfs "$stamp"
	log "out/rootfs.ext4 ($ROOTFS_SIZE, $(du -k "$OUT/rootfs.ext4" | cut -f1) KiB allocated) <- $BUSYBOX_PKG $BUSYBOX_VERSION"
}

# ----------------------------------------------------------------- small ----
want_pvm_fixup() {
	case "$PVM_FIXUP" in
	yes) return 0 ;;
	no) return 1 ;;
	*) [[ -d /sys/module/kvm_pvm ]] ;;
	esac
}

# Patches to apply to the pristine tree (currently only the kvm_pvm fixup).
wanted_patch_text() {
	if want_pvm_fixup; then
		cat "$HERE"/patches/*.patch
	fi
}

prepare_source() {
	local deb tmp
	if [[ ! -f "$SRC_TREE/.segvmm-extracted" ]]; then
		deb="$(fetch_deb "$SRC_PKG" "$SRC_VERSION")"
		tmp="$WORK/src-extract"
		rm -rf "$tmp" "$SRC_TREE"
		dpkg-deb -x "$deb" "$tmp" || die "dpkg-deb -x $deb failed"
		mkdir -p "$SRC_TREE"
		tar -xf "$tmp/usr/src/linux-source-6.1.tar.xz" -C "$SRC_TREE" --strip-components=1 ||
			die "extracting linux-source-6.1.tar.xz failed"
		rm -rf "$tmp"
		: >"$APPLIED_PATCH"
		echo "$SRC_PKG=$SRC_VERSION" >"$SRC_TREE/.segvmm-extracted"
	fi
	# Bring the tree to exactly the wanted patch set (reverse the old one first).
	local want
	want="$(wanted_patch_text)"
	if [[ "$(cat "$APPLIED_PATCH")" != "$want" ]]; then
		if [[ -s "$APPLIED_PATCH" ]]; then
			patch -d "$SRC_TREE" -p1 -R -s --no-backup-if-mismatch <"$APPLIED_PATCH" ||
				die "reverting the previously applied patches failed; delete $SRC_TREE and rerun"
			: >"$APPLIED_PATCH"
		fi
		if [[ -n "$want" ]]; then
			printf '%s\n' "$want" | patch -d "$SRC_TREE" -p1 -s --no-backup-if-mismatch --dry-run >/dev/null ||
				die "patches/*.patch do not apply to $SRC_PKG $SRC_VERSION"
			printf '%s\n' "$want" | patch -d "$SRC_TREE" -p1 -s --no-backup-if-mismatch ||
				die "applying patches/*.patch failed"
			printf '%s' "$want" >"$APPLIED_PATCH"
		fi
	fi
}

# Every "CONFIG_X=v" line of small.config must be in .config verbatim, every
# "# CONFIG_X is not set" must not be set there (a trailing " # required" mark is
# not part of the line).
check_config() {
	local cfg="$1" line sym bad=0
	while IFS= read -r line; do
		case "$line" in
		CONFIG_*=*)
			grep -qxF "$line" "$cfg" || {
				echo "  required $line, got: $(grep -E "^${line%%=*}=|^# ${line%%=*} is not set" "$cfg" || echo '(absent)')" >&2
				bad=1
			}
			;;
		"# CONFIG_"*" is not set")
			sym="${line#\# }"
			sym="${sym%% *}"
			if grep -q "^$sym=" "$cfg"; then
				echo "  required $sym off, got: $(grep "^$sym=" "$cfg")" >&2
				bad=1
			fi
			;;
		esac
	done <"$SMALL_BUILD/small.config.clean"
	[[ "$bad" == 0 ]] || die "kernel config check failed: olddefconfig did not keep the symbols above from small.config"
}

# out/small-kernel.map: the small kernel's System.map, the default symbol map of
# `segvmm run --kernel out/small-kernel --profile-guest FILE`. Kept from the build; for an
# out/ built before it was kept, made from out/small-vmlinux (`nm -n`, what the kernel's
# scripts/mksysmap also reads).
small_map() {
	[[ -f "$OUT/small-kernel.map" && "$OUT/small-kernel.map" -nt "$OUT/small-vmlinux" ]] && return 0
	nm -n "$OUT/small-vmlinux" >"$OUT/small-kernel.map.tmp" || die "nm $OUT/small-vmlinux failed"
	mv "$OUT/small-kernel.map.tmp" "$OUT/small-kernel.map"
	log "out/small-kernel.map <- nm -n out/small-vmlinux"
}

build_small() {
	local stamp fixup=no
	want_pvm_fixup && fixup=yes
	stamp="src=$SRC_PKG=$SRC_VERSION config=$(sha "$HERE/small.config") fixup=$fixup patches=$(wanted_patch_text | sha -) gcc=$(gcc -dumpfullversion)"
	if stamp_ok small "$stamp" "$OUT/small-kernel" "$OUT/small-vmlinux"; then
		small_map
		log "small-kernel up to date (pvm fixup: $fixup)"
		return 0
	fi
	resolve SRC "$SRC_PKG" "$SRC_VERSION" "$SRC_SERIES"
	SRC_TREE="$WORK/linux-source-$SRC_VERSION"
	APPLIED_PATCH="$SRC_TREE/.segvmm-applied.patch"
	stamp="src=$SRC_PKG=$SRC_VERSION config=$(sha "$HERE/small.config") fixup=$fixup patches=$(wanted_patch_text | sha -) gcc=$(gcc -dumpfullversion)"
	if stamp_ok small "$stamp" "$OUT/small-kernel" "$OUT/small-vmlinux"; then
		small_map
		log "small-kernel up to date ($SRC_PKG $SRC_VERSION, fallback for $SRC_PINNED)"
		return 0
	fi
	ensure_deps "${BUILD_DEPS[@]}"
	step "small: source" prepare_source
	mkdir -p "$SMALL_BUILD"
	step "small: config" make_small_config
	# Reproducible: fixed build timestamp (the source tarball's), user, host.
	local ts
	ts="$(date -u -d "@$(stat -c %Y "$SRC_TREE/Makefile")" '+%Y-%m-%d %H:%M:%S UTC')"
	step "small: compile (make -j$JOBS)" nice -n 10 make -s -C "$SRC_TREE" O="$SMALL_BUILD" -j"$JOBS" \
		KBUILD_BUILD_TIMESTAMP="$ts" KBUILD_BUILD_VERSION=1 KBUILD_BUILD_USER=segvmm KBUILD_BUILD_HOST=segvmm \
		bzImage vmlinux
	install -m 0644 "$SMALL_BUILD/arch/x86/boot/bzImage" "$OUT/small-kernel"
	install -m 0644 "$SMALL_BUILD/vmlinux" "$OUT/small-vmlinux"
	install -m 0644 "$SMALL_BUILD/.config" "$OUT/small-kernel.config"
	install -m 0644 "$SMALL_BUILD/System.map" "$OUT/small-kernel.map"
	readelf -n "$OUT/small-vmlinux" | grep -q 'Xen' || die "small-vmlinux has no Xen/PVH ELF note (CONFIG_PVH?)"
	{
		echo "pinned=$SRC_PINNED"
		echo "source=$SRC_PKG=$SRC_VERSION"
		echo "kernelrelease=$(make -s -C "$SRC_TREE" O="$SMALL_BUILD" kernelrelease)"
		echo "pvm_syscall_fixup=$fixup"
		if want_pvm_fixup; then
			echo "patches=$(cd "$HERE" && printf '%s ' patches/*.patch)"
		else
			echo "patches="
		fi
		echo "config_sha256=$(sha "$SMALL_BUILD/.config")"
		echo "bzimage_sha256=$(sha "$OUT/small-kernel")"
		echo "vmlinux_sha256=$(sha "$OUT/small-vmlinux")"
	} >"$OUT/small-kernel.info"
	stamp_write small "$stamp"
	log "out/small-kernel ($(stat -c %s "$OUT/small-kernel") bytes), out/small-vmlinux, pvm fixup: $fixup"
}

make_small_config() {
	make -s -C "$SRC_TREE" O="$SMALL_BUILD" tinyconfig >/dev/null
	# small.config with the trailing " # required" marks taken off (Kconfig and
	# merge_config.sh want bare CONFIG_X=v lines).
	sed -E 's/[[:space:]]+#[[:space:]]*required[[:space:]]*$//' "$HERE/small.config" >"$SMALL_BUILD/small.config.clean"
	"$SRC_TREE/scripts/kconfig/merge_config.sh" -m -O "$SMALL_BUILD" \
		"$SMALL_BUILD/.config" "$SMALL_BUILD/small.config.clean" >"$SMALL_BUILD/merge_config.log" ||
		die "merge_config.sh failed (see $SMALL_BUILD/merge_config.log)"
	make -s -C "$SRC_TREE" O="$SMALL_BUILD" olddefconfig
	check_config "$SMALL_BUILD/.config"
}

# ------------------------------------------------------------------ main ----
DO_STOCK=0 DO_SMALL=0 DO_INITRAMFS=0 DO_BENCH=0 DO_ROOTFS=0 PVM_FIXUP=auto FORCE=0 RESOLVE_ONLY=0
for arg in "$@"; do
	case "$arg" in
	--resolve-only) RESOLVE_ONLY=1 ;;
	--stock) DO_STOCK=1 ;;
	--small) DO_SMALL=1 ;;
	--initramfs) DO_INITRAMFS=1 ;;
	--bench-initramfs) DO_BENCH=1 ;;
	--rootfs) DO_ROOTFS=1 ;;
	--all) DO_STOCK=1 DO_SMALL=1 DO_INITRAMFS=1 DO_BENCH=1 DO_ROOTFS=1 ;;
	--pvm-fixup) PVM_FIXUP=yes ;;
	--no-pvm-fixup) PVM_FIXUP=no ;;
	--force) FORCE=1 ;;
	-h | --help)
		sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'
		exit 0
		;;
	*) die "unknown argument '$arg' (try --help)" ;;
	esac
done
if [[ $((DO_STOCK + DO_SMALL + DO_INITRAMFS + DO_BENCH + DO_ROOTFS)) == 0 ]]; then
	DO_STOCK=1 DO_SMALL=1 DO_INITRAMFS=1 DO_BENCH=1 DO_ROOTFS=1
fi

if [[ "$RESOLVE_ONLY" == 1 ]]; then
	resolve STOCK "$STOCK_PKG" "$STOCK_VERSION" "$STOCK_SERIES"
	resolve SRC "$SRC_PKG" "$SRC_VERSION" "$SRC_SERIES"
	echo "stock $STOCK_PKG $STOCK_VERSION"
	echo "source $SRC_PKG $SRC_VERSION"
	exit 0
fi

mkdir -p "$OUT" "$WORK"
T0=$(date +%s)
if [[ "$DO_STOCK" == 1 ]]; then step "stock kernel" build_stock; fi
if [[ "$DO_INITRAMFS" == 1 ]]; then step "initramfs" build_initramfs; fi
if [[ "$DO_BENCH" == 1 ]]; then step "bench initramfs" build_bench_initramfs; fi
if [[ "$DO_ROOTFS" == 1 ]]; then step "rootfs" build_rootfs; fi
if [[ "$DO_SMALL" == 1 ]]; then step "small kernel" build_small; fi
log "all requested targets done in $(($(date +%s) - T0)) s"
