//! Seccomp filters, one per kind of thread (as Firecracker and Cloud Hypervisor do), built
//! with `seccompiler` and installed by each thread on itself before the guest runs:
//! vCPU threads, the main thread's event loop (API socket, stdin, console), the stdin
//! copier, the ptsnap writer and the dirty-page collector. Each list was derived by
//! tracing the threads (`strace -f`) through the tests' runs (Linux boot, measurement
//! guest with dirty tracking and ptsnaps, API clients). `ioctl` is restricted to the
//! request numbers each thread uses.
//!
//! The level (`--seccomp kill|log|off`, default kill) is process-wide: set once by the CLI
//! before a VM is built ([`set_level`]); library users (tests, benches) get `kill` too.

pub mod lists;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU8, Ordering};

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};

pub use lists::ThreadKind;

/// What a filtered thread's forbidden system call gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SeccompLevel {
    /// The process is killed (SIGSYS).
    #[default]
    Kill,
    /// The call is allowed and logged by the kernel (audit log / dmesg): for deriving lists.
    Log,
    /// No filters.
    Off,
}

impl segment_mmu::named::Named for SeccompLevel {
    const ALL: &'static [Self] = &[Self::Kill, Self::Log, Self::Off];
    fn name(self) -> &'static str {
        match self {
            Self::Kill => "kill",
            Self::Log => "log",
            Self::Off => "off",
        }
    }
    fn help(self) -> &'static str {
        match self {
            Self::Kill => "a forbidden system call kills the process (SIGSYS)",
            Self::Log => "forbidden calls are allowed and logged by the kernel",
            Self::Off => "no filters",
        }
    }
}

/// Errors of building or installing a filter.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// PR_SET_NO_NEW_PRIVS failed.
    #[error("setting no_new_privs: {0}")]
    NoNewPrivs(#[source] std::io::Error),
    /// seccompiler refused the filter.
    #[error("seccomp filter for the {kind} thread: {source}")]
    Build {
        /// The thread kind.
        kind: ThreadKind,
        /// Why.
        #[source]
        source: seccompiler::BackendError,
    },
    /// The kernel refused it.
    #[error("seccomp filter for the {kind} thread: cannot install it: {source}")]
    Install {
        /// The thread kind.
        kind: ThreadKind,
        /// Why.
        #[source]
        source: seccompiler::Error,
    },
}

static LEVEL: AtomicU8 = AtomicU8::new(0);

/// Sets the process-wide level used by every thread installed from now on.
pub fn set_level(level: SeccompLevel) {
    let v = match level {
        SeccompLevel::Kill => 0,
        SeccompLevel::Log => 1,
        SeccompLevel::Off => 2,
    };
    LEVEL.store(v, Ordering::SeqCst);
}

/// The process-wide level.
pub fn level() -> SeccompLevel {
    match LEVEL.load(Ordering::SeqCst) {
        0 => SeccompLevel::Kill,
        1 => SeccompLevel::Log,
        _ => SeccompLevel::Off,
    }
}

#[cfg(target_arch = "x86_64")]
const ARCH: TargetArch = TargetArch::x86_64;
#[cfg(target_arch = "aarch64")]
const ARCH: TargetArch = TargetArch::aarch64;

/// The BPF program for `kind`, forbidden calls getting `on_forbidden`.
pub fn program(kind: ThreadKind, on_forbidden: SeccompAction) -> Result<BpfProgram, Error> {
    let build = |source| Error::Build { kind, source };
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();
    for &nr in lists::COMMON.iter().chain(kind.syscalls()) {
        rules.insert(nr, Vec::new());
    }
    let ioctls = kind.ioctls();
    if !ioctls.is_empty() {
        let mut r = Vec::with_capacity(ioctls.len());
        for &req in ioctls {
            let c = SeccompCondition::new(1, SeccompCmpArgLen::Dword, SeccompCmpOp::Eq, req)
                .map_err(build)?;
            r.push(SeccompRule::new(vec![c]).map_err(build)?);
        }
        rules.insert(libc::SYS_ioctl, r);
    }
    let filter =
        SeccompFilter::new(rules, on_forbidden, SeccompAction::Allow, ARCH).map_err(build)?;
    BpfProgram::try_from(filter).map_err(build)
}

/// Installs the filter of `kind` on the calling thread at the process-wide level (nothing
/// when it is `off`). Sets no_new_privs, which seccomp needs without CAP_SYS_ADMIN.
pub fn install(kind: ThreadKind) -> Result<(), Error> {
    // Every confined thread also gets no_new_privs, whatever the level: a thread started
    // before `--jail` (the dirty collector) would otherwise lack it.
    // SAFETY: prctl with integer arguments only; it changes only this thread's flags.
    let r = unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) };
    if r != 0 {
        return Err(Error::NoNewPrivs(std::io::Error::last_os_error()));
    }
    let action = match level() {
        SeccompLevel::Kill => SeccompAction::KillProcess,
        SeccompLevel::Log => SeccompAction::Log,
        SeccompLevel::Off => return Ok(()),
    };
    install_with(kind, action)
}

/// Installs the filter of `kind` on the calling thread with `on_forbidden` (tests use
/// `Errno`).
pub fn install_with(kind: ThreadKind, on_forbidden: SeccompAction) -> Result<(), Error> {
    let prog = program(kind, on_forbidden)?;
    seccompiler::apply_filter(&prog).map_err(|source| Error::Install { kind, source })
}

/// Installs the filter of `kind`, or says why not on stderr: for threads that have no
/// error path (the stdin copier, the ptsnap writer). A thread that cannot be confined
/// still runs: the level asked for is reported, not silently dropped.
pub fn install_or_warn(kind: ThreadKind) {
    if let Err(e) = install(kind) {
        eprintln!("segvmm: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn errno_in_thread(
        kind: ThreadKind,
        call: impl FnOnce() -> i64 + Send + 'static,
    ) -> (i64, i32) {
        std::thread::spawn(move || {
            install_with(kind, SeccompAction::Errno(libc::EPERM as u32)).unwrap();
            let r = call();
            (
                r,
                std::io::Error::last_os_error().raw_os_error().unwrap_or(0),
            )
        })
        .join()
        .unwrap()
    }

    #[test]
    fn every_filter_builds() {
        for k in ThreadKind::ALL {
            program(k, SeccompAction::KillProcess).unwrap();
        }
    }

    #[test]
    fn a_call_outside_the_list_is_refused() {
        // socket(2) is in no worker's list.
        for k in [
            ThreadKind::Vcpu,
            ThreadKind::Stdin,
            ThreadKind::DirtyCollector,
            ThreadKind::PtsnapWriter,
        ] {
            // SAFETY: socket with constant arguments; a returned fd is closed.
            let (r, errno) = errno_in_thread(k, || unsafe {
                libc::syscall(libc::SYS_socket, libc::AF_UNIX, libc::SOCK_STREAM, 0)
            });
            assert_eq!((r, errno), (-1, libc::EPERM), "{k}");
        }
        // An ioctl request outside the vCPU's list (TCGETS on fd 0), and one inside it
        // (KVM_RUN on a bad fd: EBADF from the kernel, not EPERM from the filter).
        // SAFETY: ioctl on fd 0 with a null argument fails without touching memory.
        let (r, errno) = errno_in_thread(ThreadKind::Vcpu, || unsafe {
            libc::syscall(libc::SYS_ioctl, 0, libc::TCGETS, 0)
        });
        assert_eq!((r, errno), (-1, libc::EPERM));
        // SAFETY: KVM_RUN on an fd that is not open fails with EBADF.
        let (r, errno) = errno_in_thread(ThreadKind::Vcpu, || unsafe {
            libc::syscall(libc::SYS_ioctl, 999_999, lists::kvm::run(), 0)
        });
        assert_eq!((r, errno), (-1, libc::EBADF));
        // The main thread may accept on its socket; a vCPU may not.
        // SAFETY: accept4 on a bad fd with null address arguments.
        let (r, errno) = errno_in_thread(ThreadKind::Vcpu, || unsafe {
            libc::syscall(libc::SYS_accept4, 999_999, 0, 0, 0)
        });
        assert_eq!((r, errno), (-1, libc::EPERM));
        // SAFETY: as above.
        let (r, errno) = errno_in_thread(ThreadKind::Main, || unsafe {
            libc::syscall(libc::SYS_accept4, 999_999, 0, 0, 0)
        });
        assert_eq!((r, errno), (-1, libc::EBADF));
    }

    #[test]
    fn the_threads_that_serve_virtio_queues_may_do_disk_io() {
        // A notify that exits is served on the vCPU, one through an ioeventfd on the main
        // thread's event loop: both may read, write, sync and punch an image (EBADF from
        // the kernel on a bad fd, not EPERM from the filter).
        let calls = [
            (libc::SYS_pread64, "pread64"),
            (libc::SYS_pwrite64, "pwrite64"),
            (libc::SYS_fdatasync, "fdatasync"),
            (libc::SYS_fallocate, "fallocate"),
        ];
        for k in [ThreadKind::Vcpu, ThreadKind::Main] {
            for &(nr, name) in &calls {
                // SAFETY: on an fd that is not open each call fails with EBADF before any
                // buffer (null, zero length) is touched.
                let call = move || unsafe { libc::syscall(nr, 999_999, 0, 0, 1) };
                let (r, errno) = errno_in_thread(k, call);
                assert_eq!((r, errno), (-1, libc::EBADF), "{k}: {name}");
            }
        }
    }
}
