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
    // The shared lock can outlive `drop` for a moment: a child another test forks at the
    // same time holds a copy of the descriptor until its exec closes it. Retry, bounded.
    let exclusive = (0..200).any(|_| {
        // SAFETY: as above.
        let r = unsafe { libc::flock(holder.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        r == 0 || {
            std::thread::sleep(std::time::Duration::from_millis(10));
            false
        }
    });
    assert!(exclusive, "no exclusive lock within 2 s");
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

/// A 1 MiB image whose sector 0 starts with "SEGVMM-DISK" (what test-virtio reads).
fn segv_disk(dir: &std::path::Path) -> std::path::PathBuf {
    let img = dir.join("disk.img");
    let mut bytes = vec![0u8; 1 << 20];
    bytes[..11].copy_from_slice(b"SEGVMM-DISK");
    std::fs::write(&img, bytes).unwrap();
    img
}

#[test]
fn bad_ioeventfd_value_exits_2() {
    common::assert_exit_2(
        &["run", "--guest", "test-virtio", "--ioeventfd", "maybe"],
        "--ioeventfd",
    );
}

/// The test guest drives the disk through its registers (guest-kernels/testguest, mode
/// 'v'): identification, negotiation, a read of sector 0, the interrupt status, a looping
/// chain (DEVICE_NEEDS_RESET, logged once), a reset, a second read, a write and a flush.
/// Both ways queue notifications can arrive: KVM ioeventfds (the default; served on the
/// event loop under the main thread's seccomp filter) and exits (`--ioeventfd off`;
/// served on the vCPU under its filter); the report says which was used.
#[test]
fn test_guest_drives_the_disk_registers() {
    if !have_kvm() {
        return;
    }
    for (mode, path, line) in [
        ("on", "ioeventfd", "notifications: ioeventfd"),
        ("off", "exit", "notifications: exit to user space"),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let img = segv_disk(dir.path());
        let report = dir.path().join("report.json");
        let args = [
            "run",
            "--guest",
            "test-virtio",
            "--memory",
            "64M",
            "--ioeventfd",
            mode,
            "--disk",
            img.to_str().unwrap(),
            "--report",
            report.to_str().unwrap(),
        ];
        let (code, out, err) = run(&args);
        assert_eq!(code, 0, "{mode}: guest step {}: {out}{err}", code - 20);
        assert!(out.contains("virtio-blk ok"), "{mode}: {out}");
        assert!(err.contains(line), "{mode}: {err}");
        let resets = err.lines().filter(|l| l.contains("device needs reset"));
        assert_eq!(resets.count(), 1, "{mode}: {err}");
        // Sector 0 written to sector 1 and flushed (pwrite64, fdatasync).
        let disk = std::fs::read(&img).unwrap();
        assert_eq!(&disk[512..523], b"SEGVMM-DISK", "{mode}: sector 1 written");
        let r: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
        assert_eq!(r["virtio_notify"], path, "{mode}");
    }
    // Without a disk the guest finds no device (step 2), and the report has no
    // `virtio_notify`.
    let dir = tempfile::tempdir().unwrap();
    let report = dir.path().join("report.json");
    let (code, _, err) = run(&[
        "run",
        "--guest",
        "test-virtio",
        "--memory",
        "64M",
        "--report",
        report.to_str().unwrap(),
    ]);
    assert_eq!(code, 22, "{err}");
    let r: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
    assert!(r.get("virtio_notify").is_none(), "{r}");
    assert!(!err.contains("queue notifications"), "{err}");
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
