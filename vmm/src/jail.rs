//! Privilege dropping (`--jail DIR --uid N --gid N`), Firecracker's jailer done in
//! process: once the VM is built (/dev/kvm and the VM's fds open, guest RAM mapped, files
//! opened, the API socket bound, the snapshot directory held as an fd), the VMM chroots
//! into DIR, drops every capability from its bounding set, changes to the given group and
//! user (supplementary groups cleared), clears its capability sets and sets
//! no_new_privs. The guest then runs with no privilege the kernel would grant the VMM
//! beyond the fds it already holds.
//!
//! Threads started before the jail (the dirty collector) take the new uid/gid (glibc
//! applies setuid/setgid to every thread, and the kernel clears their capabilities with
//! the change from uid 0); the vCPU threads, started after, inherit everything.

use std::ffi::CString;
use std::path::{Path, PathBuf};

/// Where and as whom to run.
#[derive(Debug, Clone)]
pub struct JailConfig {
    /// The new root directory.
    pub dir: PathBuf,
    /// The user to become.
    pub uid: u32,
    /// The group to become (the only group).
    pub gid: u32,
}

/// Errors of entering the jail.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A step failed.
    #[error("--jail {dir}: {step}: {source}")]
    Step {
        /// The jail directory.
        dir: PathBuf,
        /// What was being done.
        step: &'static str,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The directory's path cannot be passed to the kernel.
    #[error("--jail {0}: the path contains a NUL byte")]
    BadPath(PathBuf),
}

fn check(dir: &Path, step: &'static str, r: libc::c_int) -> Result<(), Error> {
    if r < 0 {
        return Err(Error::Step {
            dir: dir.into(),
            step,
            source: std::io::Error::last_os_error(),
        });
    }
    Ok(())
}

/// Drops every capability from the bounding set (needs CAP_SETPCAP, so before setuid).
fn drop_bounding_set(dir: &Path) -> Result<(), Error> {
    for cap in 0..64 {
        // SAFETY: prctl with integer arguments only.
        let r = unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap, 0, 0, 0) };
        if r < 0 {
            if std::io::Error::last_os_error().raw_os_error() == Some(libc::EINVAL) {
                break; // past the last capability this kernel knows
            }
            check(dir, "dropping the capability bounding set", r)?;
        }
    }
    // SAFETY: prctl with integer arguments only.
    let r = unsafe {
        libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL,
            0,
            0,
            0,
        )
    };
    check(dir, "clearing ambient capabilities", r)
}

/// Sets the calling thread's effective, permitted and inheritable capabilities to none.
fn clear_capabilities(dir: &Path) -> Result<(), Error> {
    #[repr(C)]
    struct Header {
        version: u32,
        pid: i32,
    }
    #[repr(C)]
    #[derive(Clone, Copy)]
    struct Data {
        effective: u32,
        permitted: u32,
        inheritable: u32,
    }
    const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;
    let mut hdr = Header {
        version: LINUX_CAPABILITY_VERSION_3,
        pid: 0,
    };
    let data = [Data {
        effective: 0,
        permitted: 0,
        inheritable: 0,
    }; 2];
    // SAFETY: capset reads a v3 header and two data words of the given layout.
    let r = unsafe { libc::syscall(libc::SYS_capset, &mut hdr, data.as_ptr()) };
    check(dir, "clearing capabilities (capset)", r as libc::c_int)
}

/// Enters the jail as the module says. Call once, after everything the VM needs from
/// the host's file system is open.
pub fn enter(cfg: &JailConfig) -> Result<(), Error> {
    let dir = cfg.dir.as_path();
    let c =
        CString::new(dir.as_os_str().as_encoded_bytes()).map_err(|_| Error::BadPath(dir.into()))?;
    // SAFETY: a NUL-terminated path.
    check(dir, "chroot", unsafe { libc::chroot(c.as_ptr()) })?;
    // SAFETY: a NUL-terminated literal.
    check(dir, "chdir /", unsafe { libc::chdir(c"/".as_ptr()) })?;
    drop_bounding_set(dir)?;
    // SAFETY: setgroups with an empty list.
    check(dir, "setgroups", unsafe {
        libc::setgroups(0, std::ptr::null())
    })?;
    // SAFETY: setgid/setuid with integer arguments (glibc applies them to every thread).
    check(dir, "setgid", unsafe { libc::setgid(cfg.gid) })?;
    // SAFETY: as above.
    check(dir, "setuid", unsafe { libc::setuid(cfg.uid) })?;
    clear_capabilities(dir)?;
    // SAFETY: prctl with integer arguments only.
    let r = unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) };
    check(dir, "setting no_new_privs", r)
}
