//! The allow-lists, one per kind of thread. Traced with `strace -f` over a small-kernel
//! Linux boot (stdin copier), the measurement guest with dirty tracking (collector) and
//! guest-requested ptsnaps (writer), and the test guest served over the API socket; the
//! calls each thread made after its start are listed here, plus the few libstd makes on
//! error and exit paths (futex, munmap, sigaltstack, exit).

use std::fmt;

/// The kinds of threads, each with its own filter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ThreadKind {
    /// A vCPU thread: KVM_RUN and the exits it completes.
    Vcpu,
    /// The main thread's event loop: API socket, stdin, console, timers, teardown.
    Main,
    /// The thread copying a non-pollable stdin into the console.
    Stdin,
    /// The thread writing guest-requested ptsnaps.
    PtsnapWriter,
    /// The dirty-page collector.
    DirtyCollector,
}

impl ThreadKind {
    /// Every kind.
    pub const ALL: [ThreadKind; 5] = [
        ThreadKind::Vcpu,
        ThreadKind::Main,
        ThreadKind::Stdin,
        ThreadKind::PtsnapWriter,
        ThreadKind::DirtyCollector,
    ];

    /// System calls allowed beside [`COMMON`] (ioctl is listed by request in
    /// [`ThreadKind::ioctls`]).
    pub fn syscalls(self) -> &'static [i64] {
        match self {
            ThreadKind::Vcpu => VCPU,
            ThreadKind::Main => MAIN,
            ThreadKind::Stdin => STDIN,
            ThreadKind::PtsnapWriter => WRITER,
            ThreadKind::DirtyCollector => &[],
        }
    }

    /// The ioctl requests allowed (none: ioctl is forbidden).
    pub fn ioctls(self) -> &'static [u64] {
        match self {
            ThreadKind::Vcpu => kvm::VCPU,
            ThreadKind::Main => kvm::MAIN,
            ThreadKind::Stdin | ThreadKind::PtsnapWriter => &[],
            ThreadKind::DirtyCollector => kvm::DIRTY,
        }
    }
}

impl fmt::Display for ThreadKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ThreadKind::Vcpu => "vcpu",
            ThreadKind::Main => "main",
            ThreadKind::Stdin => "stdin",
            ThreadKind::PtsnapWriter => "ptsnap-writer",
            ThreadKind::DirtyCollector => "dirty-log",
        })
    }
}

use libc::*;

/// Every thread: memory, locks, signals, time, its own end, and messages on stderr.
pub const COMMON: &[i64] = &[
    SYS_brk,
    SYS_mmap,
    SYS_munmap,
    SYS_mprotect,
    SYS_madvise,
    SYS_mremap,
    SYS_futex,
    SYS_sched_yield,
    SYS_rt_sigprocmask,
    SYS_rt_sigreturn,
    SYS_sigaltstack,
    SYS_clock_gettime,
    SYS_clock_nanosleep,
    SYS_nanosleep,
    SYS_gettid,
    SYS_getpid,
    SYS_getrandom,
    SYS_write,
    SYS_exit,
    SYS_exit_group,
];

/// A vCPU: its run ioctls, console output, reading KVM's binary stats, waking the loop,
/// and virtio queues served on the notifying vCPU (a QueueNotify that exits: `--ioeventfd
/// off`, or a notify still pending at a status write): virtio-blk's pread64, pwrite64,
/// fdatasync and fallocate (DISCARD, WRITE_ZEROES), a TAP's read (write is common).
const VCPU: &[i64] = &[
    SYS_pread64,
    SYS_read,
    SYS_writev,
    SYS_pwrite64,
    SYS_fdatasync,
    SYS_fallocate,
];

/// The stdin copier: reads fd 0.
const STDIN: &[i64] = &[SYS_read];

/// The ptsnap writer: new files inside the snapshot directory, the memory report from
/// /proc/self.
const WRITER: &[i64] = &[
    SYS_openat,
    SYS_close,
    SYS_read,
    SYS_pread64,
    SYS_writev,
    SYS_pwrite64,
    SYS_lseek,
    SYS_fstat,
    SYS_newfstatat,
    SYS_statx,
    SYS_fcntl,
    SYS_fsync,
    SYS_fdatasync,
    SYS_renameat2,
    SYS_faccessat2,
    SYS_access,
    SYS_unlinkat,
    SYS_unlink,
    SYS_rename,
    SYS_getdents64,
];

/// The main thread once the guest runs: the event loop (epoll, eventfds, the API socket,
/// stdin, a TAP, virtio-vsock's Unix sockets: accept, and connect for guest connections),
/// virtio queues notified through KVM ioeventfds (virtio-blk's pread64, pwrite64,
/// fdatasync and fallocate for discard; a TAP's read; write and the balloon's madvise are
/// common), kicks to vCPUs, a ptsnap writer it may start, and the end of the run
/// (reports, the hotness file and its heat map, the JSON report).
const MAIN: &[i64] = &[
    SYS_openat,
    SYS_close,
    SYS_read,
    SYS_readv,
    SYS_pread64,
    SYS_writev,
    SYS_pwrite64,
    SYS_lseek,
    SYS_fstat,
    SYS_newfstatat,
    SYS_statx,
    SYS_fcntl,
    SYS_fsync,
    SYS_fdatasync,
    SYS_fallocate,
    SYS_ftruncate,
    SYS_renameat2,
    SYS_faccessat2,
    SYS_access,
    SYS_unlinkat,
    SYS_unlink,
    SYS_rename,
    SYS_mkdirat,
    SYS_mincore,
    SYS_getdents64,
    SYS_readlinkat,
    SYS_getcwd,
    SYS_epoll_wait,
    SYS_epoll_pwait,
    SYS_epoll_ctl,
    SYS_poll,
    SYS_ppoll,
    SYS_accept4,
    SYS_socket,
    SYS_connect,
    SYS_recvfrom,
    SYS_sendto,
    SYS_recvmsg,
    SYS_sendmsg,
    SYS_getsockopt,
    SYS_shutdown,
    SYS_geteuid,
    SYS_getuid,
    SYS_tgkill,
    SYS_rt_sigaction,
    SYS_clone3,
    SYS_clone,
    SYS_set_robust_list,
    SYS_rseq,
    SYS_prctl,
    SYS_sched_getaffinity,
    SYS_seccomp,
    SYS_prlimit64,
];

/// ioctl request numbers (`_IOC(dir, KVMIO, nr, size)`), as in kvm-ioctls.
pub mod kvm {
    use kvm_bindings::*;
    use std::mem::size_of;

    const KVMIO: u64 = 0xAE;
    const fn ioc(dir: u64, nr: u64, size: usize) -> u64 {
        (dir << 30) | ((size as u64) << 16) | (KVMIO << 8) | nr
    }
    const fn io(nr: u64) -> u64 {
        ioc(0, nr, 0)
    }
    const fn iow(nr: u64, size: usize) -> u64 {
        ioc(1, nr, size)
    }
    const fn ior(nr: u64, size: usize) -> u64 {
        ioc(2, nr, size)
    }
    const fn iowr(nr: u64, size: usize) -> u64 {
        ioc(3, nr, size)
    }

    /// KVM_RUN.
    pub const fn run() -> u64 {
        io(0x80)
    }

    /// What a vCPU thread asks of its vCPU fd: run, registers and state for exits,
    /// emulation and ptsnaps, events (#BP injection), stats.
    pub const VCPU: &[u64] = &[
        io(0x80),                                 // KVM_RUN
        ior(0x81, size_of::<kvm_regs>()),         // KVM_GET_REGS
        iow(0x82, size_of::<kvm_regs>()),         // KVM_SET_REGS
        ior(0x83, size_of::<kvm_sregs>()),        // KVM_GET_SREGS
        iow(0x84, size_of::<kvm_sregs>()),        // KVM_SET_SREGS
        iowr(0x85, size_of::<kvm_translation>()), // KVM_TRANSLATE
        iow(0x86, size_of::<kvm_interrupt>()),    // KVM_INTERRUPT
        iowr(0x88, size_of::<kvm_msrs>()),        // KVM_GET_MSRS
        iow(0x89, size_of::<kvm_msrs>()),         // KVM_SET_MSRS
        ior(0x8c, size_of::<kvm_fpu>()),          // KVM_GET_FPU
        iow(0x8d, size_of::<kvm_fpu>()),          // KVM_SET_FPU
        ior(0x8e, size_of::<kvm_lapic_state>()),  // KVM_GET_LAPIC
        iow(0x8f, size_of::<kvm_lapic_state>()),  // KVM_SET_LAPIC
        ior(0x98, size_of::<kvm_mp_state>()),     // KVM_GET_MP_STATE
        iow(0x99, size_of::<kvm_mp_state>()),     // KVM_SET_MP_STATE
        io(0x9a),                                 // KVM_NMI
        ior(0x9f, size_of::<kvm_vcpu_events>()),  // KVM_GET_VCPU_EVENTS
        iow(0xa0, size_of::<kvm_vcpu_events>()),  // KVM_SET_VCPU_EVENTS
        ior(0xa1, size_of::<kvm_debugregs>()),    // KVM_GET_DEBUGREGS
        ior(0xa4, size_of::<kvm_xsave>()),        // KVM_GET_XSAVE
        ior(0xcf, size_of::<kvm_xsave>()),        // KVM_GET_XSAVE2
        ior(0xa6, size_of::<kvm_xcrs>()),         // KVM_GET_XCRS
        io(0xa3),                                 // KVM_GET_TSC_KHZ (snapshots)
        io(0xc7),                                 // KVM_RESET_DIRTY_RINGS
        io(0xce),                                 // KVM_GET_STATS_FD
    ];

    /// The dirty collector: the bitmap or the ring's reset.
    pub const DIRTY: &[u64] = &[
        iow(0x42, size_of::<kvm_dirty_log>()), // KVM_GET_DIRTY_LOG
        iowr(0xc0, size_of::<kvm_clear_dirty_log>()), // KVM_CLEAR_DIRTY_LOG
        io(0xc7),                              // KVM_RESET_DIRTY_RINGS
    ];

    /// The main thread: non-blocking sockets, the terminal, and what its final dirty
    /// collection and reports ask of KVM (any vCPU request too: a pause may be served
    /// there).
    pub const MAIN: &[u64] = &[
        libc::FIONBIO,
        libc::FIOCLEX,
        libc::TCGETS,
        libc::TCSETS,
        libc::TCSETSW,
        libc::TIOCGWINSZ,
        iow(0x42, size_of::<kvm_dirty_log>()), // KVM_GET_DIRTY_LOG
        iowr(0xc0, size_of::<kvm_clear_dirty_log>()), // KVM_CLEAR_DIRTY_LOG
        io(0xc7),                              // KVM_RESET_DIRTY_RINGS
        io(0xce),                              // KVM_GET_STATS_FD
        ior(0x81, size_of::<kvm_regs>()),      // KVM_GET_REGS
        ior(0x83, size_of::<kvm_sregs>()),     // KVM_GET_SREGS
        ior(0x9f, size_of::<kvm_vcpu_events>()), // KVM_GET_VCPU_EVENTS
        iowr(0x62, size_of::<kvm_irqchip>()),  // KVM_GET_IRQCHIP (snapshots)
        ior(0x9f, size_of::<kvm_pit_state2>()), // KVM_GET_PIT2 (snapshots)
        ior(0x7c, size_of::<kvm_clock_data>()), // KVM_GET_CLOCK (snapshots)
    ];
}
