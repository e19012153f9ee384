#!/usr/bin/env bash
# Side-by-side Linux boot benchmark (issue #3 §9c): boot each guest kernel
# (stock, small) with the same initramfs, memory and kernel command line under
#
#   segvmm     segvmm run --report (milestones from the VMM's console watcher)
#   qemu-kvm   qemu-system-x86_64 -accel kvm   (QEMU's default CPU model)
#   qemu-kvm-host  the same with -cpu host (opt-in; on kvm_pvm QEMU aborts at
#              start: KVM refuses MSR 0x10a, IA32_ARCH_CAPABILITIES)
#   qemu-tcg   qemu-system-x86_64 -accel tcg -cpu max   (no KVM at all)
#
# and report, per kernel x environment: did it reach "Run /init", did /init
# print the marker "SEGVMM_INIT_OK", wall time from launch to each, and how the
# run ended (power-off/halt, segvmm exit reason, the KVM internal error QEMU
# printed with RIP/symbol/instruction, timeout).
#
#   benches/linux-boot.sh [RESULTS_DIR] [--kernels stock,small]
#         [--envs segvmm,qemu-kvm,qemu-tcg] [--memory 256M] [--repeat N]
#         [--cmdline "console=ttyS0 reboot=k panic=-1"] [--segvmm PATH]
#
#   RESULTS_DIR   default results/linux-boot/ (gitignored): results.json,
#                 results.md, and per run <kernel>-<env>[-<i>].{log,err,json}.
#   Env: TIMEOUT_SEGVMM_STOCK (s, default 1200), TIMEOUT_SEGVMM_SMALL (300),
#        TIMEOUT_QEMU_TCG (120), TIMEOUT_QEMU_KVM (600: on kvm_pvm the
#        bzImage decompressor alone runs minutes), NICE (nice level, 5).
#   A QEMU run that times out gets its registers read through the monitor
#   ("info registers"), so the table says where the guest was.
#
# Command line: segvmm appends its kvm_pvm workarounds (noxsave clearcpuid=...
# etc.) to --cmdline; the QEMU runs get the same effective command line (read
# back from segvmm's report when segvmm ran first, else the same list built
# here) so that all three boot the same kernel the same way.  Times are wall
# clock from starting the process (QEMU: polling its serial log every 20 ms;
# segvmm: its report's milestone times, measured from its start).
#
# Kernels/initramfs come from guest-kernels/out/ (guest-kernels/build.sh).
# segvmm: --segvmm PATH, else target/release/segvmm (built with
# `cargo build --release -p segvmm` when missing).  qemu-system-x86 is
# installed with apt-get when missing.  Runs go one at a time.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
GK="$ROOT/guest-kernels/out"
RES="$ROOT/results/linux-boot"
KERNELS="stock,small"
ENVS="segvmm,qemu-kvm,qemu-tcg"
MEMORY="256M"
REPEAT=1
CMDLINE="console=ttyS0 reboot=k panic=-1"
SEGVMM=""
NICE="${NICE:-5}"
TIMEOUT_SEGVMM_STOCK="${TIMEOUT_SEGVMM_STOCK:-1200}"
TIMEOUT_SEGVMM_SMALL="${TIMEOUT_SEGVMM_SMALL:-300}"
TIMEOUT_QEMU_TCG="${TIMEOUT_QEMU_TCG:-120}"
TIMEOUT_QEMU_KVM="${TIMEOUT_QEMU_KVM:-600}"
# What segvmm appends on kvm_pvm (vmm: kernel command line workarounds).
# Only used when no segvmm report says which command line segvmm used.
PVM_EXTRA="noxsave clearcpuid=cx16,popcnt,smap,ssse3,xsave,avx cryptomgr.notests no_timer_check nosoftlockup sysctl.kernel.hung_task_timeout_secs=0"

die() {
	echo "linux-boot.sh: error: $*" >&2
	exit 1
}
log() { echo "linux-boot.sh: $*" >&2; }

while [[ $# -gt 0 ]]; do
	case "$1" in
	--kernels) KERNELS="$2"; shift 2 ;;
	--envs) ENVS="$2"; shift 2 ;;
	--memory) MEMORY="$2"; shift 2 ;;
	--repeat) REPEAT="$2"; shift 2 ;;
	--cmdline) CMDLINE="$2"; shift 2 ;;
	--segvmm) SEGVMM="$2"; shift 2 ;;
	-h | --help)
		sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'
		exit 0
		;;
	-*) die "unknown option '$1' (try --help)" ;;
	*) RES="$1"; shift ;;
	esac
done
[[ "$REPEAT" =~ ^[1-9][0-9]*$ ]] || die "--repeat wants a positive integer"
IFS=, read -r -a KLIST <<<"$KERNELS"
IFS=, read -r -a ELIST <<<"$ENVS"
for k in "${KLIST[@]}"; do
	case "$k" in stock | small) ;; *) die "unknown kernel '$k' (stock, small)" ;; esac
	[[ -s "$GK/$k-kernel" ]] || die "$GK/$k-kernel missing: run guest-kernels/build.sh"
done
for e in "${ELIST[@]}"; do
	case "$e" in segvmm | qemu-kvm | qemu-kvm-host | qemu-tcg) ;; *) die "unknown environment '$e' (segvmm, qemu-kvm, qemu-kvm-host, qemu-tcg)" ;; esac
done
INITRD="$GK/initramfs.cpio"
[[ -s "$INITRD" ]] || die "$INITRD missing: run guest-kernels/build.sh --initramfs"
command -v python3 >/dev/null || die "python3 is needed for the JSON/table output"

# ---------------------------------------------------------------- tools ----
if [[ " ${ELIST[*]} " == *" qemu-"* ]] && ! command -v qemu-system-x86_64 >/dev/null; then
	[[ "$(id -u)" == 0 ]] || die "qemu-system-x86_64 missing and not root to apt-get install qemu-system-x86"
	log "installing qemu-system-x86"
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends qemu-system-x86 ||
		{ apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends qemu-system-x86; } ||
		die "apt-get install qemu-system-x86 failed"
fi
if [[ " ${ELIST[*]} " == *" segvmm "* ]]; then
	if [[ -z "$SEGVMM" ]]; then
		SEGVMM="$ROOT/target/release/segvmm"
		[[ -x "$SEGVMM" ]] || (cd "$ROOT" && cargo build --release -p segvmm) || die "building segvmm failed"
	fi
	[[ -x "$SEGVMM" ]] || die "segvmm binary '$SEGVMM' not found"
	# A private copy: the shared target/ may be rebuilt while we run.
	cp "$SEGVMM" "${TMPDIR:-/tmp}/linux-boot-segvmm.$$"
	SEGVMM="${TMPDIR:-/tmp}/linux-boot-segvmm.$$"
fi
QPID=""
cleanup() {
	if [[ -n "$QPID" ]]; then kill "$QPID" 2>/dev/null || true; fi
	if [[ "$SEGVMM" == */linux-boot-segvmm.$$ ]]; then rm -f "$SEGVMM"; fi
}
trap cleanup EXIT

mkdir -p "$RES"
EFFECTIVE_CMDLINE="$CMDLINE"
EFFECTIVE_FROM_SEGVMM=0
[[ -d /sys/module/kvm_pvm ]] && EFFECTIVE_CMDLINE="$CMDLINE $PVM_EXTRA"

# Each run writes $RES/<id>.kv: key=value lines (one line per value).
kv() { printf '%s=%s\n' "$1" "$(printf '%s' "$2" | tr '\n\r' '  ')" >>"$KV"; }
now() { echo "$EPOCHREALTIME"; }
since() { awk -v a="$1" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.2f", b - a }'; }

# --------------------------------------------------------------- segvmm ----
run_segvmm() { # KERNEL ID
	local k="$1" id="$2" to rc=0 t0
	to="$TIMEOUT_SEGVMM_SMALL"
	[[ "$k" == stock ]] && to="$TIMEOUT_SEGVMM_STOCK"
	kv timeout_s "$to"
	t0=$(now)
	# segvmm's own --timeout stops the guest; the outer timeout is a backstop.
	nice -n "$NICE" timeout --kill-after=30 $((to + 120)) "$SEGVMM" run --kernel "$GK/$k-kernel" \
		--initrd "$INITRD" --memory "$MEMORY" --cmdline "$CMDLINE" --timeout "$to" \
		--report "$RES/$id.json" >"$RES/$id.log" 2>"$RES/$id.err" </dev/null || rc=$?
	kv wall_s "$(since "$t0")"
	kv exit_code "$rc"
	if [[ ! -s "$RES/$id.json" ]]; then
		kv end "segvmm exit $rc without a report: $(tail -n 2 "$RES/$id.err")"
		return 0
	fi
	python3 - "$RES/$id.json" >>"$KV" <<'EOF'
import json, sys
r = json.load(open(sys.argv[1]))
ms = {}
for m in r.get("milestones", []):
    ms.setdefault(m["what"], m["at_ms"] / 1000.0)
def first(prefix):
    return next((v for k, v in ms.items() if k.startswith(prefix)), None)
out = {
    "linux_s": first("Linux version"),
    "init_s": first("Run /init"),
    "marker_s": first("SEGVMM_INIT_OK"),
    "exit_kind": r.get("exit_reason", {}).get("kind"),
    "end": r.get("exit_message") or r.get("exit_reason", {}).get("kind"),
    "effective_cmdline": r.get("cmdline"),
    "insn_emulated": r.get("kvm_stats", {}).get("vcpu_total", {}).get("insn_emulation"),
    "mmu_pte_write": r.get("kvm_stats", {}).get("vm", {}).get("mmu_pte_write"),
    "kvm_module": r.get("host", {}).get("kvm_module"),
}
for k, v in out.items():
    if v is not None:
        print("%s=%s" % (k, ("%.2f" % v) if isinstance(v, float) else str(v).replace("\n", " ")))
EOF
	local ec
	ec="$(sed -n 's/^effective_cmdline=//p' "$KV" | tail -n1)"
	if [[ -n "$ec" ]]; then
		EFFECTIVE_CMDLINE="$ec"
		EFFECTIVE_FROM_SEGVMM=1
	fi
	grep -q 'SEGVMM_INIT_OK' "$RES/$id.log" && kv marker_line "$(grep -o 'SEGVMM_INIT_OK.*' "$RES/$id.log" | head -n1)"
	return 0
}

# ----------------------------------------------------------------- qemu ----
# Symbolize a guest RIP for the small kernel (System.map from the build tree or
# nm of small-vmlinux).
symbolize() { # KERNEL RIP
	local k="$1" rip="$2" map
	[[ "$k" == small ]] || return 0
	map="$ROOT/guest-kernels/work/build-small/System.map"
	if [[ ! -s "$map" && -s "$GK/small-vmlinux" ]]; then
		map="$(mktemp)"
		nm -n "$GK/small-vmlinux" >"$map" 2>/dev/null || return 0
	fi
	[[ -s "$map" ]] || return 0
	# 64-bit addresses do not fit awk's doubles: compare the 16-digit hex
	# strings, subtract only the low 32 bits.
	rip="$(printf '%016x' "0x$rip" 2>/dev/null)" || return 0
	awk -v rip="$rip" 'function h(s,  i, v) { v = 0; for (i = 1; i <= length(s); i++) v = v * 16 + index("0123456789abcdef", substr(s, i, 1)) - 1; return v }
		$2 ~ /^[tTwW]$/ && length($1) == 16 { a = tolower($1); if (a <= rip && a >= best) { best = a; name = $3 } }
		END { if (name != "") printf "%s+0x%x", name, h(substr(rip, 9)) - h(substr(best, 9)) }' "$map"
}

# Decode the instruction at RIP from QEMU's "Code=... <xx> ..." dump.
decode_code() { # CODE_LINE
	local hex bin
	hex="$(sed -n 's/.*<\([0-9a-f][0-9a-f]\)>\(.*\)/\1\2/p' <<<"$1" | tr -d ' ')"
	[[ -n "$hex" ]] || return 0
	command -v objdump >/dev/null || return 0
	bin="$(mktemp)"
	printf '%s' "$hex" | xxd -r -p >"$bin" 2>/dev/null || { rm -f "$bin"; return 0; }
	objdump -D -b binary -m i386:x86-64 "$bin" 2>/dev/null | awk '/^ +0:/ { sub(/^ +0:\t[0-9a-f ]+\t/, ""); print; exit }'
	rm -f "$bin"
}

qemu_registers() { # MONITOR_SOCKET: "info registers" through the HMP monitor
	python3 - "$1" <<'EOF' 2>/dev/null || true
import re, socket, sys, time
s = socket.socket(socket.AF_UNIX)
s.connect(sys.argv[1])
s.settimeout(1.0)
def rd():
    b = b""
    try:
        while True:
            d = s.recv(65536)
            if not d:
                break
            b += d
    except socket.timeout:
        pass
    return b.decode(errors="replace")
rd()
s.sendall(b"info registers\n")
time.sleep(1.0)
out = re.sub(r"\x1b\[[0-9;]*[A-Za-z]", "", rd())
print("\n".join(l for l in out.splitlines() if "=" in l))
EOF
}

run_qemu() { # KERNEL ID ACCEL
	local k="$1" id="$2" accel="$3" to t0 end="" init_s="" marker_s="" linux_s="" rc=0
	local log="$RES/$id.log" err="$RES/$id.err"
	local mon="$RES/$id.mon" cpu_args=()
	case "$accel" in
	kvm) to="$TIMEOUT_QEMU_KVM" ;;
	kvm-host) to="$TIMEOUT_QEMU_KVM" accel=kvm cpu_args=(-cpu host) ;;
	*) to="$TIMEOUT_QEMU_TCG" cpu_args=(-cpu max) ;;
	esac
	kv timeout_s "$to"
	# No segvmm run in this invocation: take the command line from an earlier
	# segvmm report in the same results directory, if there is one.
	if [[ "$EFFECTIVE_FROM_SEGVMM" == 0 && -s "$RES/$k-segvmm.json" ]]; then
		local ec
		ec="$(python3 -c 'import json, sys; print(json.load(open(sys.argv[1])).get("cmdline") or "")' "$RES/$k-segvmm.json" 2>/dev/null)" || true
		[[ -n "$ec" ]] && EFFECTIVE_CMDLINE="$ec"
	fi
	kv effective_cmdline "$EFFECTIVE_CMDLINE"
	rm -f "$log" "$err" "$mon"
	: >"$log"
	t0=$(now)
	# -no-reboot: a reboot (panic=-1, reboot=k) ends QEMU instead of looping.
	nice -n "$NICE" qemu-system-x86_64 -accel "$accel" "${cpu_args[@]}" -m "$MEMORY" -smp 1 \
		-nodefaults -no-user-config -display none -serial "file:$log" -no-reboot \
		-monitor "unix:$mon,server,nowait" \
		-kernel "$GK/$k-kernel" -initrd "$INITRD" -append "$EFFECTIVE_CMDLINE" \
		</dev/null >"$err" 2>&1 &
	QPID=$!
	while :; do
		[[ -z "$linux_s" ]] && grep -q 'Linux version' "$log" && linux_s="$(since "$t0")"
		[[ -z "$init_s" ]] && grep -q 'Run /init' "$log" && init_s="$(since "$t0")"
		[[ -z "$marker_s" ]] && grep -q 'SEGVMM_INIT_OK' "$log" && marker_s="$(since "$t0")"
		if grep -qE 'reboot: Power down|System halted|Kernel panic' "$log"; then
			sleep 0.3
			end="guest: $(grep -oE 'reboot: Power down|System halted|Kernel panic[^\r]*' "$log" | head -n1)"
			break
		fi
		if grep -q 'KVM internal error' "$err"; then
			sleep 0.3 # let QEMU finish the register dump
			end="KVM internal error"
			break
		fi
		if ! kill -0 "$QPID" 2>/dev/null; then
			{ wait "$QPID"; } 2>/dev/null || rc=$?
			QPID=""
			end="qemu exited ($rc)"
			[[ -s "$err" ]] && end="$end: $(grep -v '^\s*$' "$err" | head -n 3 | tr '\n' ' ')"
			break
		fi
		if awk -v e="$(since "$t0")" -v t="$to" 'BEGIN { exit !(e > t) }'; then
			end="timeout after $to s"
			local regs trip sym
			regs="$(qemu_registers "$mon")"
			if [[ -n "$regs" ]]; then
				printf '%s\n' "$regs" >"$RES/$id.regs"
				trip="$(grep -m1 -o 'RIP=[0-9a-f]*' <<<"$regs" | cut -d= -f2)" || true
				sym="$(symbolize "$k" "${trip:-0}")"
				[[ -n "$trip" ]] && end="$end, guest at RIP $trip${sym:+ ($sym)}"
			fi
			break
		fi
		sleep 0.02
	done
	kv wall_s "$(since "$t0")"
	if [[ -n "$QPID" ]]; then
		kill "$QPID" 2>/dev/null || true
		{ wait "$QPID"; } 2>/dev/null || true
		QPID=""
	fi
	rm -f "$mon"
	# A marker the poll missed (QEMU exited right after it).
	[[ -z "$marker_s" ]] && grep -q 'SEGVMM_INIT_OK' "$log" && marker_s="$(awk -F= '/^wall_s=/ { v = $2 } END { print v }' "$KV")"
	[[ -z "$init_s" ]] && grep -q 'Run /init' "$log" && init_s="$(awk -F= '/^wall_s=/ { v = $2 } END { print v }' "$KV")"
	[[ -n "$linux_s" ]] && kv linux_s "$linux_s"
	[[ -n "$init_s" ]] && kv init_s "$init_s"
	[[ -n "$marker_s" ]] && kv marker_s "$marker_s"
	grep -q 'SEGVMM_INIT_OK' "$log" && kv marker_line "$(grep -o 'SEGVMM_INIT_OK[^\r]*' "$log" | head -n1)"
	if [[ "$end" == "KVM internal error" ]]; then
		local sub rip code sym insn
		sub="$(grep -m1 -o 'Suberror: [0-9]*' "$err")" || true
		sub="${sub:-?}, $(grep -m1 -E '^[a-z][a-z ]*(failure|error)$' "$err" || echo '?')"
		rip="$(grep -m1 -o 'RIP=[0-9a-f]*' "$err" | cut -d= -f2)" || true
		code="$(grep -m1 '^Code=' "$err")" || true
		sym="$(symbolize "$k" "${rip:-0}")"
		insn="$(decode_code "$code")"
		kv kvm_error "$sub"
		kv rip "${rip:-?}"
		[[ -n "$sym" ]] && kv rip_symbol "$sym"
		[[ -n "$insn" ]] && kv insn "$insn"
		[[ -n "$code" ]] && kv code "$code"
		end="KVM internal error ($sub) at RIP ${rip:-?}${sym:+ ($sym)}${insn:+: $insn}"
		[[ -n "$linux_s" ]] || end="$end; no console output before it"
	fi
	kv end "$end"
	return 0
}

# ----------------------------------------------------------------- main ----
log "results in $RES; kernels: ${KLIST[*]}; environments: ${ELIST[*]}; memory $MEMORY; repeat $REPEAT"
# Runs of earlier invocations into the same directory stay in the table
# (e.g. --kernels stock --envs segvmm later); a combination run again replaces
# its old result.
for k in "${KLIST[@]}"; do
	for e in "${ELIST[@]}"; do
		for ((i = 1; i <= REPEAT; i++)); do
			id="$k-$e"
			[[ "$REPEAT" -gt 1 ]] && id="$id-$i"
			KV="$RES/$id.kv"
			[[ "$i" == 1 ]] && rm -f "$RES/$k-$e".kv "$RES/$k-$e"-*.kv
			: >"$KV"
			kv kernel "$k"
			kv env "$e"
			kv run "$i"
			kv kernel_sha256 "$(sha256sum "$GK/$k-kernel" | awk '{ print $1 }')"
			kv memory "$MEMORY"
			log "[$id] booting ..."
			case "$e" in
			segvmm) run_segvmm "$k" "$id" ;;
			qemu-kvm) run_qemu "$k" "$id" kvm ;;
			qemu-kvm-host) run_qemu "$k" "$id" kvm-host ;;
			qemu-tcg) run_qemu "$k" "$id" tcg ;;
			esac
			log "[$id] $(grep -E '^(init_s|marker_s|end)=' "$KV" | tr '\n' ' ')"
		done
	done
done

# ------------------------------------------------------------- summary ----
python3 - "$RES" "$(uname -r)" "$(cat /sys/module/kvm_pvm/version 2>/dev/null || { [[ -d /sys/module/kvm_pvm ]] && echo kvm_pvm; } || echo "${KVM_MODULE:-kvm}")" "$(nproc)" <<'EOF'
import glob, json, os, sys
res, kernel_rel, kvm_mod, ncpu = sys.argv[1:5]
runs = []
for f in sorted(glob.glob(os.path.join(res, "*.kv"))):
    d = {}
    for line in open(f):
        line = line.rstrip("\n")
        if "=" in line:
            k, v = line.split("=", 1)
            d[k] = v
    for k in ("wall_s", "linux_s", "init_s", "marker_s"):
        if k in d:
            d[k] = float(d[k])
    d["reached_init"] = "init_s" in d
    d["reached_marker"] = "marker_s" in d
    d["id"] = os.path.basename(f)[:-3]
    runs.append(d)
order = {"segvmm": 0, "qemu-kvm": 1, "qemu-kvm-host": 2, "qemu-tcg": 3}
runs.sort(key=lambda d: (d.get("kernel") != "stock", order.get(d.get("env"), 9), int(d.get("run", 1))))
meta = {"host_kernel": kernel_rel, "kvm": kvm_mod, "cpus": int(ncpu),
        "loadavg": open("/proc/loadavg").read().split()[:3]}
json.dump({"meta": meta, "runs": runs}, open(os.path.join(res, "results.json"), "w"), indent=1)
def t(d, k):
    return "%.1f s" % d[k] if k in d else "-"
hdr = "| kernel | environment | init? | marker? | to \"Linux version\" | to \"Run /init\" | to marker | how it ended |"
lines = [hdr, "|" + "---|" * 8]
for d in runs:
    end = d.get("end", "?").replace("|", "/")
    if d.get("env") == "segvmm" and "exit_code" in d:
        end = "exit %s (%s): %s" % (d["exit_code"], d.get("exit_kind", "?"), end)
    if len(end) > 200:
        end = end[:197] + "..."
    lines.append("| %s | %s | %s | %s | %s | %s | %s | %s |" % (
        d.get("kernel"), d.get("env"), "yes" if d["reached_init"] else "no",
        "yes" if d["reached_marker"] else "no", t(d, "linux_s"), t(d, "init_s"), t(d, "marker_s"), end))
md = "\n".join(lines)
with open(os.path.join(res, "results.md"), "w") as f:
    f.write("Host: %s, %s, %s CPUs, load %s\n\n" % (kernel_rel, kvm_mod, ncpu, " ".join(meta["loadavg"])))
    f.write(md + "\n")
print(md)
EOF
log "wrote $RES/results.json and $RES/results.md"
