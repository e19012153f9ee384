//! `--disk` (virtio-blk, issue #16) from the command line: a missing, unreadable, locked or
//! malformed disk is refused with one clear line and exit 2 before the guest starts (no
//! KVM needed: the image is opened first); with /dev/kvm, the test guest boots with a disk
//! registered on the MMIO bus.

mod common;

use std::os::unix::io::AsRawFd;

use common::{have_kvm, run};

fn assert_refused(args: &[&str], needle: &str) {
    let err = common::assert_exit_2(args, needle);
    let errors = err.lines().filter(|l| l.starts_with("segvmm: error:"));
    assert_eq!(errors.count(), 1, "{err}");
}

#[test]
fn missing_disk_exits_2() {
    assert_refused(
        &["run", "--guest", "test", "--disk", "/nonexistent/disk.img"],
        "--disk /nonexistent/disk.img: cannot open",
    );
}

#[test]
fn malformed_disk_argument_exits_2() {
    common::assert_exit_2(
        &["run", "--guest", "test", "--disk", "x.img,rw"],
        "unknown option 'rw'",
    );
    common::assert_exit_2(
        &[
            "run",
            "--guest",
            "test",
            "--disk",
            "x.img,id=abcdefghijklmnopqrstu",
        ],
        "must be 1 to 20 bytes",
    );
    assert_refused(
        &["run", "--disk", "x.img"],
        "--disk is not served for the measurement guest",
    );
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    assert_refused(
        &["run", "--guest", "test", "--disk", &format!("{d},ro")],
        "not a regular file",
    );
}

#[test]
fn disk_locked_by_another_process_exits_2() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("disk.img");
    std::fs::write(&img, vec![0u8; 1 << 20]).unwrap();
    let holder = std::fs::File::open(&img).unwrap();
    // SAFETY: flock on a descriptor `holder` owns and keeps open; no memory is passed.
    let r = unsafe { libc::flock(holder.as_raw_fd(), libc::LOCK_SH | libc::LOCK_NB) };
    assert_eq!(r, 0);
    let p = img.to_str().unwrap();
    // A shared lock (another reader) refuses a read-write disk, not a read-only one.
    assert_refused(
        &["run", "--guest", "test", "--disk", p],
        "locked by another process",
    );
    drop(holder);
    let holder = std::fs::File::open(&img).unwrap();
    // SAFETY: as above.
    let r = unsafe { libc::flock(holder.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    assert_eq!(r, 0);
    assert_refused(
        &["run", "--guest", "test", "--disk", &format!("{p},ro")],
        "locked by another process",
    );
}

#[test]
fn test_guest_boots_with_a_disk_registered() {
    if !have_kvm() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("disk.img");
    std::fs::write(&img, vec![0u8; 1 << 20]).unwrap();
    let p = img.to_str().unwrap();
    let (code, _out, err) = run(&[
        "run",
        "--guest",
        "test",
        "--memory",
        "64M",
        "--quiet",
        "--disk",
        p,
        "--disk",
        &format!("{p},ro,id=second"),
    ]);
    // Two handles of one image: the second (shared) lock conflicts with the first
    // (exclusive) one even inside one process, since each open has its own lock.
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("locked by another process"), "{err}");
    let (code, _out, err) = run(&[
        "run", "--guest", "test", "--memory", "64M", "--quiet", "--disk", p,
    ]);
    assert_eq!(code, 0, "{err}");
}

/// The test guest drives the disk through its registers (guest-kernels/testguest, mode
/// 'v'): identification, negotiation, a read of sector 0, the interrupt status, a looping
/// chain (DEVICE_NEEDS_RESET, logged once), a reset, a second read, a write and a flush.
#[test]
fn test_guest_drives_the_disk_registers() {
    if !have_kvm() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("disk.img");
    let mut bytes = vec![0u8; 1 << 20];
    bytes[..11].copy_from_slice(b"SEGVMM-DISK");
    std::fs::write(&img, bytes).unwrap();
    let p = img.to_str().unwrap();
    let args = [
        "run",
        "--guest",
        "test-virtio",
        "--memory",
        "64M",
        "--disk",
        p,
    ];
    let (code, out, err) = run(&args);
    assert_eq!(code, 0, "guest step {}: {out}{err}", code - 20);
    assert!(out.contains("virtio-blk ok"), "{out}");
    let resets = err.lines().filter(|l| l.contains("device needs reset"));
    assert_eq!(resets.count(), 1, "{err}");
    // Sector 0 written to sector 1 and flushed, from the vCPU thread under its seccomp
    // filter (pwrite64, fdatasync).
    let disk = std::fs::read(&img).unwrap();
    assert_eq!(&disk[512..523], b"SEGVMM-DISK");
    // Without a disk the guest finds no device (step 2).
    let (code, _, err) = run(&["run", "--guest", "test-virtio", "--memory", "64M"]);
    assert_eq!(code, 22, "{err}");
}

/// The test guest's malformed-queue cases on the disk (guest-kernels/testguest, mode 'm',
/// issue #16): a data buffer far outside guest RAM and a read past the disk's end
/// (VIRTIO_BLK_S_IOERR, only the status byte written), a looping chain, QueueNum 5 and a
/// notify before DRIVER_OK (DEVICE_NEEDS_RESET), each followed by a reset and a good read
/// that must succeed; one log line per case and the VMM exits normally.
#[test]
fn test_guest_malformed_queue_cases_on_the_disk() {
    if !have_kvm() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("disk.img");
    let mut bytes = vec![0u8; 1 << 20];
    bytes[..11].copy_from_slice(b"SEGVMM-DISK");
    std::fs::write(&img, &bytes).unwrap();
    let p = img.to_str().unwrap();
    let args = [
        "run",
        "--guest",
        "test-malformed-blk",
        "--memory",
        "64M",
        "--disk",
        p,
    ];
    let (code, out, err) = run(&args);
    common::assert_malformed_cases(
        code,
        &out,
        &err,
        "virtio-blk",
        &[
            "data buffer outside guest RAM (sector 0)",
            "request past the end of the disk (sector 2047)",
        ],
    );
    // Only reads were asked for: the image is as it was.
    assert!(std::fs::read(&img).unwrap() == bytes, "the image changed");
    // Another device in the first slot: the guest stops at identification (step 2).
    let (code, _, err) = run(&[
        "run",
        "--guest",
        "test-malformed-net",
        "--memory",
        "64M",
        "--disk",
        p,
    ]);
    assert_eq!(code, 42, "{err}");
}
