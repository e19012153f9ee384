//! `/init` of the bench initramfs: runs one workload in a Linux guest's user space and
//! prints its result on the console (the contract of `vmm/src/probe/bench/linux.rs`).
//!
//! Freestanding and libc-free because every guest system call costs milliseconds on the
//! kvm_pvm host (each is emulated ring-0 code), so the happy path makes six: mount /proc,
//! open + read /proc/cmdline (the `segvmm.*` parameters contain a dot, so the kernel keeps
//! them from init's argv and environment), mmap the buffer with MAP_POPULATE (every page
//! faulted in by the kernel in one call, so that only `touch` sees first-touch faults),
//! write the result line, and power off. The workload code is `workloads::kernels`, the
//! same source the measurement guest and the native twin run (see
//! `vmm/src/probe/native.rs`, which this mirrors step for step so the checksums match for
//! the same seed, footprint and count). Timing is the TSC (user-mode `rdtsc` runs
//! natively) converted with `segvmm.tsc_khz=`, KVM's TSC frequency; without it,
//! `clock_gettime(CLOCK_MONOTONIC)` around the timed part. Beside the contract's fields the
//! line carries `init_ns=` (mapping + workload init, like the native twin's) and `mmap_ns=`
//! (the mmap call alone: with MAP_POPULATE, the guest kernel's per-page fault path).
//!
//! Two optional steps run after the workload (its buffer mapped and populated), before the
//! result line, so they never touch the timed part; both exist for page-table captures of
//! this process taken over the VMM's API socket (`tests/linux_ptsnap.rs`):
//! * `segvmm.meminfo=1`: read /proc/sys/vm/stat_refresh, then /proc/meminfo (open + read
//!   each: four more system calls) and print `SEGVMM-MEMINFO MemTotal=<kB> PageTables=<kB>
//!   DirectMap4k=<kB> DirectMap2M=<kB> DirectMap1G=<kB> refreshed=<0|1> data_va=<hex>
//!   data_bytes=<n>` (a field the kernel does not print, such as DirectMap1G on a CPU
//!   without 1 GiB pages, is left out), the guest kernel's own page-table figures to check
//!   a ptsnap against. Reading stat_refresh folds every CPU's pending vmstat deltas into
//!   the global counters; without it `PageTables` may lag the truth by up to the per-CPU
//!   threshold (a few pages) until the kernel's next periodic fold. `refreshed=1` says it
//!   worked;
//! * `segvmm.hold_ms=N`: then stay in ring 3 for N ms, busy-spinning on `rdtsc` (which
//!   runs natively; a system call or fault would cost milliseconds and leave ring 3), so
//!   a ptsnap taken meanwhile finds this process's CR3 loaded and its tables exactly as
//!   they were when /proc/meminfo was read. The VMM may end the run during the hold (API
//!   `shutdown`); otherwise the runner goes on as usual.
#![no_std]
#![no_main]

use core::arch::{asm, global_asm};
use core::fmt::Write;

use workloads::kernels::{self, PageChurn, Workload};

const SYS_READ: usize = 0;
const SYS_WRITE: usize = 1;
const SYS_OPEN: usize = 2;
const SYS_MMAP: usize = 9;
const SYS_MUNMAP: usize = 11;
const SYS_EXIT: usize = 60;
const SYS_MOUNT: usize = 165;
const SYS_REBOOT: usize = 169;
const SYS_IOCTL: usize = 16;
/// `ioctl(fd, TCSBRK, 1)` is `tcdrain(fd)`.
const TCSBRK: usize = 0x5409;
const SYS_CLOCK_GETTIME: usize = 228;

const PROT_READ: usize = 1;
const PROT_WRITE: usize = 2;
const MAP_PRIVATE: usize = 0x02;
const MAP_ANONYMOUS: usize = 0x20;
const MAP_POPULATE: usize = 0x8000;
const CLOCK_MONOTONIC: usize = 1;
const LINUX_REBOOT_MAGIC1: usize = 0xfee1_dead;
const LINUX_REBOOT_MAGIC2: usize = 672_274_793;
const LINUX_REBOOT_CMD_POWER_OFF: usize = 0x4321_fedc;

// The kernel enters with the stack pointer at argc; align it for the Rust ABI and call
// `start`, which never returns.
global_asm!(
    r#"
    .global _start
_start:
    xor ebp, ebp
    and rsp, -16
    call {start}
    ud2
"#,
    start = sym start,
);

/// A raw system call with up to six arguments; returns the kernel's value (negative errno
/// on failure).
///
/// # Safety
/// The arguments must be valid for system call `nr` (pointers to live memory of the sizes
/// the call reads or writes).
unsafe fn syscall6(nr: usize, a: [usize; 6]) -> isize {
    let ret: isize;
    // SAFETY: the caller vouches for the arguments; `syscall` clobbers only rcx and r11.
    unsafe {
        asm!(
            "syscall",
            inlateout("rax") nr as isize => ret,
            in("rdi") a[0], in("rsi") a[1], in("rdx") a[2],
            in("r10") a[3], in("r8") a[4], in("r9") a[5],
            lateout("rcx") _, lateout("r11") _,
            options(nostack),
        );
    }
    ret
}

/// Writes all of `bytes` to the console (fd 1, /dev/console opened by the kernel).
fn write_console(bytes: &[u8]) {
    let mut rest = bytes;
    while !rest.is_empty() {
        // SAFETY: `rest` is live readable memory of the length passed.
        let n = unsafe { syscall6(SYS_WRITE, [1, rest.as_ptr() as usize, rest.len(), 0, 0, 0]) };
        if n <= 0 {
            return;
        }
        rest = &rest[(n as usize).min(rest.len())..];
    }
}

/// Powers the machine off; if that fails, exits, which panics the kernel (and with
/// `panic=-1` reboots it), so the VMM sees the run end either way.
fn power_off() -> ! {
    // SAFETY: ioctl(TCSBRK, 1) (tcdrain) and reboot take no pointers with these arguments;
    // exit takes none. The drain lets the UART send what the tty layer still holds: the
    // power-off prints straight to the console and would otherwise race it.
    unsafe {
        syscall6(SYS_IOCTL, [1, TCSBRK, 1, 0, 0, 0]);
        syscall6(
            SYS_REBOOT,
            [
                LINUX_REBOOT_MAGIC1,
                LINUX_REBOOT_MAGIC2,
                LINUX_REBOOT_CMD_POWER_OFF,
                0,
                0,
                0,
            ],
        );
        syscall6(SYS_EXIT, [1, 0, 0, 0, 0, 0]);
    }
    loop {
        core::hint::spin_loop();
    }
}

/// A line assembled on the stack (no allocator); overlong text is cut, not a failure.
struct Line {
    buf: [u8; 512],
    len: usize,
}

impl Line {
    const fn new() -> Self {
        Line {
            buf: [0; 512],
            len: 0,
        }
    }
    fn bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

impl Write for Line {
    fn write_str(&mut self, s: &str) -> core::fmt::Result {
        let n = s.len().min(self.buf.len() - self.len);
        self.buf[self.len..self.len + n].copy_from_slice(&s.as_bytes()[..n]);
        self.len += n;
        Ok(())
    }
}

/// Prints `SEGVMM-ERROR <why>` and powers off: a bad request never panics.
fn fail(why: core::fmt::Arguments<'_>) -> ! {
    let mut l = Line::new();
    let _ = writeln!(l, "SEGVMM-ERROR {why}");
    write_console(l.bytes());
    power_off()
}

/// The `segvmm.*` parameters of the kernel command line.
struct Params {
    workload: Workload,
    footprint: u64,
    seed: u64,
    count: u64,
    tsc_khz: Option<u64>,
    meminfo: bool,
    hold_ms: u64,
}

fn parse_u64(key: &str, v: &str) -> u64 {
    match v.parse::<u64>() {
        Ok(n) => n,
        Err(_) => fail(format_args!("bad value for segvmm.{key}: '{v}'")),
    }
}

fn parse_params(cmdline: &str) -> Params {
    let (mut workload, mut footprint, mut seed, mut count, mut tsc_khz) =
        (None, None, None, None, None);
    let (mut meminfo, mut hold_ms) = (false, 0);
    for kv in cmdline.split_ascii_whitespace() {
        let Some((k, v)) = kv.strip_prefix("segvmm.").and_then(|s| s.split_once('=')) else {
            continue;
        };
        match k {
            "workload" => match Workload::from_name(v) {
                Some(w) => workload = Some(w),
                None => fail(format_args!("unknown segvmm.workload '{v}'")),
            },
            "footprint" => footprint = Some(parse_u64(k, v)),
            "seed" => seed = Some(parse_u64(k, v)),
            "count" => count = Some(parse_u64(k, v)),
            "tsc_khz" => tsc_khz = Some(parse_u64(k, v)).filter(|&k| k > 0),
            "meminfo" => meminfo = parse_u64(k, v) != 0,
            "hold_ms" => hold_ms = parse_u64(k, v),
            _ => {}
        }
    }
    let Some(workload) = workload else {
        fail(format_args!(
            "no segvmm.workload= on the kernel command line"
        ))
    };
    let Some(footprint) = footprint else {
        fail(format_args!(
            "no segvmm.footprint= on the kernel command line"
        ))
    };
    if footprint == 0 || footprint % 4096 != 0 || footprint > usize::MAX as u64 / 2 {
        fail(format_args!(
            "segvmm.footprint={footprint}: must be a non-zero multiple of 4096"
        ));
    }
    Params {
        workload,
        footprint,
        seed: seed.unwrap_or(0),
        count: count.unwrap_or(0),
        tsc_khz,
        meminfo,
        hold_ms,
    }
}

/// Opens `path` read-only and reads it once into `buf` (the /proc files read here come back
/// whole in one read); the descriptor is left open, as /init never needs many. Returns the
/// byte count, or the failing call and its errno.
fn read_file(path: &core::ffi::CStr, buf: &mut [u8]) -> Result<usize, (&'static str, isize)> {
    // SAFETY: a NUL-terminated path; O_RDONLY.
    let fd = unsafe { syscall6(SYS_OPEN, [path.as_ptr() as usize, 0, 0, 0, 0, 0]) };
    if fd < 0 {
        return Err(("open", -fd));
    }
    // SAFETY: `buf` is live writable memory of the length passed.
    let n = unsafe {
        syscall6(
            SYS_READ,
            [fd as usize, buf.as_mut_ptr() as usize, buf.len(), 0, 0, 0],
        )
    };
    if n < 0 {
        return Err(("read", -n));
    }
    Ok(n as usize)
}

/// Reads the kernel command line through /proc (mounted here: nothing else mounts it).
fn read_cmdline(buf: &mut [u8]) -> &str {
    // SAFETY: the strings are NUL-terminated literals; mount takes no data here.
    let m = unsafe {
        syscall6(
            SYS_MOUNT,
            [
                c"proc".as_ptr() as usize,
                c"/proc".as_ptr() as usize,
                c"proc".as_ptr() as usize,
                0,
                0,
                0,
            ],
        )
    };
    if m < 0 && m != -16 {
        // -EBUSY: already mounted, fine.
        fail(format_args!("mount /proc failed: errno {}", -m));
    }
    let n = match read_file(c"/proc/cmdline", buf) {
        Ok(n) => n,
        Err((call, errno)) => fail(format_args!("{call} /proc/cmdline failed: errno {errno}")),
    };
    match core::str::from_utf8(&buf[..n]) {
        Ok(s) => s,
        Err(_) => fail(format_args!("/proc/cmdline is not UTF-8")),
    }
}

/// The /proc/meminfo fields `SEGVMM-MEMINFO` reports, in this order.
const MEMINFO_FIELDS: [&str; 5] = [
    "MemTotal",
    "PageTables",
    "DirectMap4k",
    "DirectMap2M",
    "DirectMap1G",
];

/// Reads /proc/meminfo (mounted by `read_cmdline`) and prints the `SEGVMM-MEMINFO` line
/// for the buffer at `data_va` of `data_bytes`. Four system calls plus the console write.
fn report_meminfo(data_va: u64, data_bytes: u64) {
    // Zeroed before the read so that no page of it faults inside the kernel's copy: the
    // figures must describe the tables as they stay afterwards (all of /proc/meminfo is
    // about 1.5 KiB and comes back in one read).
    let mut buf = [0u8; 4096];
    // The read itself does the refresh (and returns no bytes).
    let refreshed = read_file(c"/proc/sys/vm/stat_refresh", &mut buf).is_ok();
    let n = match read_file(c"/proc/meminfo", &mut buf) {
        Ok(n) => n,
        Err((call, errno)) => fail(format_args!("{call} /proc/meminfo failed: errno {errno}")),
    };
    let text = core::str::from_utf8(&buf[..n]).unwrap_or("");
    let mut l = Line::new();
    let _ = write!(l, "SEGVMM-MEMINFO");
    for field in MEMINFO_FIELDS {
        // Lines look like `PageTables:         1234 kB`.
        let kb = text.lines().find_map(|line| {
            let (k, v) = line.split_once(':')?;
            (k == field).then(|| v.trim().trim_end_matches("kB").trim())
        });
        if let Some(kb) = kb {
            let _ = write!(l, " {field}={kb}");
        }
    }
    let _ = writeln!(
        l,
        " refreshed={} data_va={data_va:#x} data_bytes={data_bytes}",
        refreshed as u8
    );
    write_console(l.bytes());
}

/// Stays in ring 3 for `ms` milliseconds: `rdtsc` only when the TSC frequency is known,
/// else a clock system call every 2^28 TSC ticks (~0.1 s) to see how long it has been.
fn hold(ms: u64, tsc_khz: Option<u64>) {
    match tsc_khz {
        Some(khz) => {
            let end = tsc().wrapping_add(ms.saturating_mul(khz));
            while (end.wrapping_sub(tsc()) as i64) > 0 {
                core::hint::spin_loop();
            }
        }
        None => {
            let start = monotonic_ns();
            while monotonic_ns().wrapping_sub(start) < ms.saturating_mul(1_000_000) {
                let t = tsc();
                while tsc().wrapping_sub(t) < 1 << 28 {
                    core::hint::spin_loop();
                }
            }
        }
    }
}

/// An anonymous read-write mapping of `bytes`; `populate` faults every page in inside the
/// one mmap call (the guest has no THP, so these are 4 KiB pages).
fn map(bytes: usize, populate: bool) -> Option<*mut u64> {
    let flags = MAP_PRIVATE | MAP_ANONYMOUS | if populate { MAP_POPULATE } else { 0 };
    // SAFETY: a fresh anonymous mapping; no existing memory is affected.
    let p = unsafe {
        syscall6(
            SYS_MMAP,
            [0, bytes, PROT_READ | PROT_WRITE, flags, usize::MAX, 0],
        )
    };
    // Errors are -4095..-1.
    (!(-4095..0).contains(&p)).then_some(p as *mut u64)
}

/// The TSC, ordered after earlier instructions (as the native twin reads it).
fn tsc() -> u64 {
    // SAFETY: lfence and rdtsc have no memory effects and run in user mode.
    unsafe {
        core::arch::x86_64::_mm_lfence();
        core::arch::x86_64::_rdtsc()
    }
}

/// CLOCK_MONOTONIC in ns (a system call: used only without `segvmm.tsc_khz`).
fn monotonic_ns() -> u64 {
    let mut ts = [0i64; 2];
    // SAFETY: `ts` is a live, writable `struct timespec`.
    let r = unsafe {
        syscall6(
            SYS_CLOCK_GETTIME,
            [CLOCK_MONOTONIC, ts.as_mut_ptr() as usize, 0, 0, 0, 0],
        )
    };
    if r < 0 {
        fail(format_args!("clock_gettime failed: errno {}", -r));
    }
    (ts[0] as u64)
        .wrapping_mul(1_000_000_000)
        .wrapping_add(ts[1] as u64)
}

/// The timer of the run: TSC ticks when the frequency is known, else the monotonic clock.
#[derive(Clone, Copy)]
struct Clock(Option<u64>);

impl Clock {
    fn now(self) -> u64 {
        match self.0 {
            Some(_) => tsc(),
            None => monotonic_ns(),
        }
    }
    fn ns(self, from: u64, to: u64) -> f64 {
        let d = to.wrapping_sub(from) as f64;
        match self.0 {
            Some(khz) => d * 1e6 / khz as f64,
            None => d,
        }
    }
}

/// ptchurn in the guest: mmap, touch (a guest page fault), munmap of one 4 KiB page per
/// cycle, as the native twin does on the host.
struct LinuxChurn {
    slots: usize,
    mapped: *mut u64,
}

impl PageChurn for LinuxChurn {
    fn slots(&self) -> usize {
        self.slots
    }
    fn map(&mut self, _slot: usize) -> bool {
        match map(4096, false) {
            Some(p) => {
                self.mapped = p;
                true
            }
            None => false,
        }
    }
    fn touch(&mut self, _slot: usize, value: u64) -> u64 {
        // SAFETY: `mapped` is the page just mapped read-write by `map`.
        unsafe {
            core::ptr::write_volatile(self.mapped, value);
            core::ptr::read_volatile(self.mapped)
        }
    }
    fn unmap(&mut self, _slot: usize) {
        // SAFETY: unmapping the page `map` created, exactly once.
        unsafe { syscall6(SYS_MUNMAP, [self.mapped as usize, 4096, 0, 0, 0, 0]) };
        self.mapped = core::ptr::null_mut();
    }
}

extern "C" fn start() -> ! {
    let mut cmd = [0u8; 4096];
    let p = parse_params(read_cmdline(&mut cmd));
    let clock = Clock(p.tsc_khz);
    let (ops, checksum, t0, t1, data_va);
    // Set-up cost, as the native twin's `init_ns`: mapping (with MAP_POPULATE: the guest
    // kernel's fault path once per 4 KiB page) plus the workload's init.
    let begin = clock.now();
    let mut mapped = begin;
    if p.workload == Workload::PtChurn {
        let mut churn = LinuxChurn {
            slots: (p.footprint / 4096).max(1) as usize,
            mapped: core::ptr::null_mut(),
        };
        t0 = clock.now();
        let (done, sum) = kernels::ptchurn_run(&mut churn, p.count);
        t1 = clock.now();
        (ops, checksum, data_va) = (done, sum, 0);
    } else {
        let bytes = p.footprint as usize;
        let Some(base) = map(bytes, p.workload != Workload::Touch) else {
            fail(format_args!("mmap of {bytes} bytes failed"))
        };
        mapped = clock.now();
        // SAFETY: `base` is a fresh private read-write mapping of `bytes` bytes, used only
        // through this slice until power-off.
        let words = unsafe { core::slice::from_raw_parts_mut(base, bytes / 8) };
        match p.workload {
            Workload::Chase => {
                if kernels::chase_elems(words.len()) == 0 {
                    fail(format_args!("footprint too small for chase"));
                }
                kernels::chase_init(words, p.seed);
                t0 = clock.now();
                checksum = kernels::chase_run(words, p.count);
                t1 = clock.now();
                ops = p.count;
            }
            Workload::Gups => {
                kernels::gups_init(words);
                t0 = clock.now();
                checksum = kernels::gups_run(words, p.seed, p.count);
                t1 = clock.now();
                ops = p.count;
            }
            Workload::Stream => {
                let n = kernels::stream_elems(words.len()) as u64;
                if n == 0 {
                    fail(format_args!("footprint too small for stream"));
                }
                kernels::stream_init(words);
                let passes = p.count.div_ceil(n).max(1);
                t0 = clock.now();
                ops = kernels::stream_run(words, passes);
                t1 = clock.now();
                checksum = kernels::stream_checksum(words);
            }
            _ => {
                let words = kernels::touch_prefix(words, p.count);
                t0 = clock.now();
                ops = kernels::touch_run(words);
                t1 = clock.now();
                checksum = kernels::touch_checksum(words);
            }
        }
        data_va = base as u64;
    }
    if p.meminfo {
        let bytes = if data_va == 0 { 0 } else { p.footprint };
        report_meminfo(data_va, bytes);
    }
    if p.hold_ms > 0 {
        hold(p.hold_ms, p.tsc_khz);
    }
    let (init_ns, map_ns) = (clock.ns(begin, t0), clock.ns(begin, mapped));
    let elapsed = clock.ns(t0, t1);
    let ns_per_op = if ops == 0 { 0.0 } else { elapsed / ops as f64 };
    let mut l = Line::new();
    let _ = writeln!(
        l,
        "SEGVMM-RESULT workload={} ops={ops} ns_per_op={ns_per_op:.4} checksum={checksum:#x} data_va={data_va:#x} init_ns={init_ns:.0} mmap_ns={map_ns:.0}",
        p.workload.name()
    );
    write_console(l.bytes());
    power_off()
}

/// A panic (a bounds check the workload should never fail) is reported, then power-off.
#[panic_handler]
fn panic(_: &core::panic::PanicInfo) -> ! {
    fail(format_args!("panic in the workload runner"))
}

// memcpy, memmove, memset, memcmp and bcmp come from `workloads` (feature `rt`).
