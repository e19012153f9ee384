//! Whole-VM snapshots (issue #15), against the release binary:
//!
//! * the measurement guest paused mid-workload, snapshotted and restored under another
//!   backing (copy) and mapped from the file (map), the two restores side by side,
//!   finishes with the checksum of an uninterrupted run with the same seed;
//! * every bad input of `segvmm restore` (missing directory, truncated state, another
//!   version, a wrong checksum, a short memory file, a vCPU count or CPUID the host cannot
//!   give, a backing that cannot be had) exits 2 with one line naming the problem, and no
//!   guest runs;
//! * snapshot directories are created new: an existing name or a symlink is refused.

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::{api_request, have_kvm, run, segvmm, snapshot_create as create, wait_for_api, Reap};
use segvmm::snapshot::SnapshotState;
use serde_json::Value;

fn request(sock: &Path, line: &str) -> std::io::Result<Value> {
    api_request(sock, line.as_bytes())
}

/// Starts segvmm `args` with an API socket and snapshot directory (stdout piped) and
/// waits for a ping.
fn start(sock: &Path, dir: &Path, args: &[&str]) -> Reap {
    let child = segvmm()
        .args(args)
        .arg("--api-socket")
        .arg(sock)
        .arg("--snapshot-dir")
        .arg(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn segvmm");
    let vm = Reap::new(child);
    wait_for_api(sock, Duration::from_secs(60));
    vm
}

/// `checksum 0x...` from a measurement line.
fn checksum(stdout: &str) -> Option<String> {
    let at = stdout.find("checksum 0x")? + "checksum ".len();
    let hex: String = stdout[at..]
        .chars()
        .take_while(|c| c.is_ascii_hexdigit() || *c == 'x')
        .collect();
    Some(hex)
}

const PROBE: &[&str] = &[
    "run",
    "--footprint",
    "32M",
    "--seed",
    "11",
    "--count",
    "14000000",
    "--backing",
    "thp",
];

#[test]
fn paused_mid_workload_restores_to_the_uninterrupted_checksum_twice_side_by_side() {
    if !have_kvm() {
        return;
    }
    let (code, out, err) = run(PROBE);
    assert_eq!(code, 0, "{err}");
    let want = checksum(&out).expect("a checksum");

    let d = tempfile::tempdir().unwrap();
    let (sock, dir) = (d.path().join("s.sock"), d.path().join("snaps"));
    std::fs::create_dir(&dir).unwrap();
    let mut vm = start(&sock, &dir, PROBE);
    // The guest runs its workload for seconds; pause it one second in.
    std::thread::sleep(Duration::from_secs(1));
    let (code, out, err) = create(&sock, "mid", &["--shutdown"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("guest paused"), "{out}");
    // Shut down mid-workload: no measurement (exit 3: the guest gave no result).
    let (code, stdout) = vm.wait_output();
    assert_eq!(code, 3, "{stdout}");
    assert!(
        checksum(&stdout).is_none(),
        "it was stopped mid-workload: {stdout}"
    );

    let snap = dir.join("mid");
    let spawn = |extra: &[&str]| {
        segvmm()
            .args(["restore", "--from", snap.to_str().unwrap(), "--quiet"])
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    // Two restores of one snapshot at once: another backing (copy) and the file mapped.
    let a = spawn(&["--memory-mode", "copy", "--backing", "4k"]);
    let b = spawn(&["--memory-mode", "map"]);
    for c in [a, b] {
        let o = c.wait_with_output().unwrap();
        let (out, err) = (
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr),
        );
        assert_eq!(o.status.code(), Some(0), "{out}{err}");
        assert_eq!(checksum(&out).as_deref(), Some(want.as_str()), "{out}{err}");
    }
}

/// A snapshot of the waiting test guest in `dir/NAME`.
fn test_guest_snapshot(d: &Path, name: &str) -> PathBuf {
    let (sock, dir) = (d.join("t.sock"), d.join("snaps"));
    std::fs::create_dir_all(&dir).unwrap();
    let mut vm = start(
        &sock,
        &dir,
        &[
            "run",
            "--guest",
            "test-hang",
            "--quiet",
            "--memory",
            "32M",
            "--timeout",
            "60",
        ],
    );
    std::thread::sleep(Duration::from_millis(300));
    let (code, out, err) = create(&sock, name, &[]);
    assert_eq!(code, 0, "{out}{err}");
    // The name is taken now: a second snapshot under it is refused, nothing replaced.
    let (code, _, err) = create(&sock, name, &[]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("exists already"), "{err}");
    // A symlink in the snapshot directory is not followed.
    let victim = d.join("victim");
    std::fs::create_dir(&victim).unwrap();
    std::os::unix::fs::symlink(&victim, dir.join("link")).unwrap();
    let (code, _, err) = create(&sock, "link", &[]);
    assert_eq!(code, 2, "{err}");
    assert_eq!(std::fs::read_dir(&victim).unwrap().count(), 0);
    for bad in ["../x", "a/b", ".hidden"] {
        let (code, _, err) = create(&sock, bad, &[]);
        assert_eq!(code, 2, "{bad}: {err}");
    }
    assert!(request(&sock, r#"{"cmd":"shutdown"}"#).is_ok());
    vm.wait_output();
    dir.join(name)
}

/// `restore` of `from` must fail with exit 2, one line naming `what`, and no guest.
fn refused(from: &Path, extra: &[&str], what: &str) {
    let mut args = vec![
        "restore",
        "--from",
        from.to_str().unwrap(),
        "--timeout",
        "5",
    ];
    args.extend_from_slice(extra);
    let t = Instant::now();
    let (code, out, err) = run(&args);
    assert_eq!(code, 2, "{what}: {out}{err}");
    assert!(err.contains(what), "expected '{what}' in: {err}");
    assert_eq!(err.lines().count(), 1, "one line: {err}");
    assert!(err.starts_with("segvmm: error:"), "{err}");
    assert!(out.is_empty(), "no guest ran: {out}");
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "refused before running"
    );
}

/// A copy of the snapshot `src` at `d/name` with its state rewritten by `f`.
fn variant(src: &Path, d: &Path, name: &str, f: impl FnOnce(&mut Vec<u8>)) -> PathBuf {
    let dst = d.join(name);
    std::fs::create_dir(&dst).unwrap();
    for file in ["state", "memory"] {
        std::fs::copy(src.join(file), dst.join(file)).unwrap();
    }
    let mut state = std::fs::read(dst.join("state")).unwrap();
    f(&mut state);
    std::fs::write(dst.join("state"), state).unwrap();
    dst
}

fn reencode(bytes: &mut Vec<u8>, f: impl FnOnce(&mut SnapshotState)) {
    let mut s = SnapshotState::decode(Path::new("state"), bytes).unwrap();
    f(&mut s);
    *bytes = s.encode().unwrap();
}

#[test]
fn bad_snapshots_are_refused_before_any_guest_runs() {
    if !have_kvm() {
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let good = test_guest_snapshot(d.path(), "t1");
    // The good one restores (and waits until its timeout: the test guest hangs).
    let (code, _, err) = run(&[
        "restore",
        "--from",
        good.to_str().unwrap(),
        "--timeout",
        "1",
        "--quiet",
    ]);
    assert_ne!(code, 2, "{err}");
    assert!(err.contains("did not finish within"), "{err}");

    refused(&d.path().join("nope"), &[], "No such file");
    let v = variant(&good, d.path(), "trunc", |s| s.truncate(s.len() - 10));
    refused(&v, &[], "truncated");
    let v = variant(&good, d.path(), "version", |s| s[8] = 99);
    refused(&v, &[], "version 99");
    let v = variant(&good, d.path(), "sum", |s| {
        let i = s.len() - 3;
        s[i] ^= 0x01;
    });
    refused(&v, &[], "checksum mismatch");
    let v = variant(&good, d.path(), "short", |_| {});
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(v.join("memory"))
        .unwrap();
    f.set_len(1 << 20).unwrap();
    refused(&v, &[], "memory file has 1048576 bytes");
    let v = variant(&good, d.path(), "vcpus", |b| {
        reencode(b, |s| {
            let (one, cpuid) = (s.vcpu.remove(0), s.cpuid[0].clone());
            let text = serde_json::to_string(&one).unwrap();
            s.vcpus = 65;
            s.vcpu = (0..65)
                .map(|_| serde_json::from_str(&text).unwrap())
                .collect();
            s.cpuid = vec![cpuid; 65];
        })
    });
    refused(&v, &[], "the snapshot has 65 vCPUs");
    let v = variant(&good, d.path(), "cpuid", |b| {
        reencode(b, |s| {
            for e in s.cpuid.iter_mut().flatten().filter(|e| e.function == 0) {
                e.ebx = u32::from_le_bytes(*b"Fake");
            }
        })
    });
    refused(&v, &[], "CPUID cannot be given by this host");
    refused(
        &good,
        &["--memory-mode", "map", "--backing", "2m"],
        "--backing 2m is not available",
    );
    let huge_free =
        std::fs::read_to_string("/sys/kernel/mm/hugepages/hugepages-1048576kB/free_hugepages")
            .map_or(0, |s| s.trim().parse::<u64>().unwrap_or(0));
    if huge_free == 0 {
        refused(&good, &["--backing", "1g"], "hugetlb pool too small");
    }
}

/// The small Linux kernel with the /init of guest-kernels/out/initramfs.cpio, started
/// with an API socket on `d/l.sock` and snapshots in `d/snaps`, `cmdline` its command
/// line; `None` (SKIP) without the artifacts.
fn small_kernel(d: &Path, cmdline: &str) -> Option<(Reap, PathBuf, PathBuf)> {
    let (k, i) = (
        common::artifact("small-kernel")?,
        common::artifact("initramfs.cpio")?,
    );
    let (sock, dir) = (d.join("l.sock"), d.join("snaps"));
    std::fs::create_dir(&dir).unwrap();
    let vm = start(
        &sock,
        &dir,
        &[
            "run",
            "--kernel",
            k.to_str().unwrap(),
            "--initrd",
            i.to_str().unwrap(),
            "--memory",
            "256M",
            "--cmdline",
            cmdline,
            "--timeout",
            "300",
        ],
    );
    Some((vm, sock, dir))
}

/// The small Linux kernel, snapshotted in the middle of its boot and shut down, goes on
/// after a restore (the file mapped): it reaches /init, which prints its marker and powers
/// the guest off (exit 0).
#[test]
fn linux_boot_continues_after_restore() {
    if !have_kvm() {
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let Some((mut vm, sock, dir)) = small_kernel(d.path(), "console=ttyS0 reboot=k panic=-1")
    else {
        return;
    };
    std::thread::sleep(Duration::from_secs(4));
    let (code, out, err) = create(&sock, "boot", &["--shutdown"]);
    assert_eq!(code, 0, "{out}{err}");
    let (code, before) = vm.wait_output();
    assert_eq!(code, 0, "shut down over the API");
    assert!(
        !before.contains("SEGVMM_INIT_OK"),
        "snapshot after /init ran"
    );
    let snap = dir.join("boot");
    let (code, out, err) = run(&[
        "restore",
        "--from",
        snap.to_str().unwrap(),
        "--memory-mode",
        "map",
        "--timeout",
        "300",
    ]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("SEGVMM_INIT_OK"), "{out}{err}");
    assert!(err.contains("guest powered off"), "{err}");
}

/// The small kernel's /init in wait mode (`-- wait`), snapshotted while it waits for a
/// console line and shut down, goes on after a restore (the file mapped): the line fed on
/// the restoring VMM's stdin reaches it through the serial port, it prints
/// `SEGVMM_INIT_NEXT <line>` and powers the guest off (exit 0).
#[test]
fn waiting_init_continues_after_restore() {
    if !have_kvm() {
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let cmdline = "console=ttyS0 reboot=k panic=-1 -- wait";
    let Some((mut vm, sock, dir)) = small_kernel(d.path(), cmdline) else {
        return;
    };
    let mut lines = common::Lines::new(vm.child().stdout.take().unwrap());
    assert!(
        lines.wait_for("SEGVMM_INIT_WAIT", Duration::from_secs(240)),
        "/init never waited: {}",
        lines.seen
    );
    let (code, out, err) = create(&sock, "waiting", &["--shutdown"]);
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(vm.wait_output().0, 0, "shut down over the API");
    assert!(!lines.wait_for("SEGVMM_INIT_NEXT", Duration::from_secs(1)));

    let mut restored = Reap::new(
        segvmm()
            .args(["restore", "--from"])
            .arg(dir.join("waiting"))
            .args(["--memory-mode", "map", "--timeout", "120"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let mut stdin = restored.child().stdin.take().unwrap();
    stdin.write_all(b"after restore 42\n").unwrap();
    drop(stdin);
    let c = restored.0.take().unwrap();
    let o = c.wait_with_output().unwrap();
    let (out, err) = (
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr),
    );
    assert_eq!(o.status.code(), Some(0), "{out}{err}");
    assert!(
        out.contains("SEGVMM_INIT_NEXT after restore 42"),
        "{out}{err}"
    );
    assert!(!out.contains("SEGVMM_INIT_WAIT"), "booted again: {out}");
    assert!(err.contains("guest powered off"), "{err}");
}

/// A diff snapshot (pages dirtied since the previous snapshot, from the dirty log) over a
/// full one gives byte for byte the memory of a full snapshot taken at the same moment
/// (the guest paused), and restores (copy and map) to the uninterrupted checksum.
#[test]
fn diff_snapshot_restores_to_the_same_memory_as_a_full_one() {
    if !have_kvm() {
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let (sock, dir) = (d.path().join("d.sock"), d.path().join("snaps"));
    std::fs::create_dir(&dir).unwrap();
    let hot = d.path().join("h.hot");
    let mut args = PROBE.to_vec();
    args.extend_from_slice(&[
        "--track-dirty",
        "100ms",
        "--hotness-out",
        hot.to_str().unwrap(),
    ]);
    let (code, out, err) = run(&args);
    assert_eq!(code, 0, "{err}");
    let want = checksum(&out).expect("a checksum");
    let mut vm = start(&sock, &dir, &args);
    // No earlier snapshot: a diff is refused.
    let (code, _, err) = create(&sock, "early", &["--diff"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("an earlier snapshot"), "{err}");
    std::thread::sleep(Duration::from_millis(800));
    let (code, out, err) = create(&sock, "full", &[]);
    assert_eq!(code, 0, "{out}{err}");
    std::thread::sleep(Duration::from_millis(500));
    let v = request(&sock, r#"{"cmd":"pause"}"#).unwrap();
    assert_eq!(v["ok"], true, "{v}");
    let (code, out, err) = create(&sock, "diff", &["--diff"]);
    assert_eq!(code, 0, "{out}{err}");
    let (code, out, err) = create(&sock, "same", &["--shutdown"]);
    assert_eq!(code, 0, "{out}{err}");
    vm.wait_output();

    let state = |n: &str| {
        let b = std::fs::read(dir.join(n).join("state")).unwrap();
        SnapshotState::decode(Path::new(n), &b).unwrap()
    };
    let diff = state("diff");
    assert_eq!(diff.memory.diff_of.as_deref(), Some("full"));
    assert!(!diff.memory.pages.is_empty());
    let mut mem = std::fs::read(dir.join("full/memory")).unwrap();
    let dm = std::fs::read(dir.join("diff/memory")).unwrap();
    for &p in &diff.memory.pages {
        let r = (p as usize * 4096)..(p as usize + 1) * 4096;
        mem[r.clone()].copy_from_slice(&dm[r]);
    }
    assert!(
        mem == std::fs::read(dir.join("same/memory")).unwrap(),
        "full + diff differs from the full snapshot of the same moment"
    );
    for mode in ["copy", "map"] {
        let (code, out, err) = run(&[
            "restore",
            "--from",
            dir.join("diff").to_str().unwrap(),
            "--memory-mode",
            mode,
            "--quiet",
        ]);
        assert_eq!(code, 0, "{out}{err}");
        assert_eq!(
            checksum(&out).as_deref(),
            Some(want.as_str()),
            "{mode}: {out}"
        );
    }
    // A diff whose full snapshot is gone is refused.
    std::fs::remove_dir_all(dir.join("full")).unwrap();
    refused(&dir.join("diff"), &[], "full");
}

/// A VM with a virtio-blk disk is snapshotted (the disk's path, read-only flag, serial and
/// size, and its transport's state) and restored with the image reopened under the same
/// lock rules; an image that is locked, resized or missing is refused with one line and
/// exit 2 before any vCPU runs.
#[test]
fn virtio_blk_disk_is_saved_and_reopened_on_restore() {
    if !have_kvm() {
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let img = d.path().join("disk.img");
    std::fs::write(&img, vec![0u8; 1 << 20]).unwrap();
    let (sock, dir) = (d.path().join("b.sock"), d.path().join("snaps"));
    std::fs::create_dir(&dir).unwrap();
    let disk = format!("{},id=snapdisk", img.display());
    let mut vm = start(
        &sock,
        &dir,
        &[
            "run",
            "--guest",
            "test-hang",
            "--quiet",
            "--memory",
            "32M",
            "--timeout",
            "60",
            "--disk",
            &disk,
        ],
    );
    std::thread::sleep(Duration::from_millis(300));
    let (code, out, err) = create(&sock, "disk", &["--shutdown"]);
    assert_eq!(code, 0, "{out}{err}");
    vm.wait_output();
    let snap = dir.join("disk");
    let b = std::fs::read(snap.join("state")).unwrap();
    let s = SnapshotState::decode(&snap, &b).unwrap();
    let blk = &s.devices.virtio_blk;
    assert_eq!(blk.len(), 1, "{blk:?}");
    assert_eq!(blk[0].path, img);
    assert_eq!((blk[0].sectors, blk[0].read_only), (2048, false));
    assert_eq!(blk[0].id.as_deref(), Some("snapdisk"));
    assert_eq!(blk[0].transport.device_type, 2);

    // Restored: the image reopened and locked, the guest runs on (until its timeout).
    let (code, _, err) = run(&[
        "restore",
        "--from",
        snap.to_str().unwrap(),
        "--timeout",
        "1",
        "--quiet",
    ]);
    assert_ne!(code, 2, "{err}");
    assert!(err.contains("did not finish within"), "{err}");
    // The restored disk's queue gets ioeventfds too (the builder registers them).
    assert!(err.contains("queue notifications: ioeventfd"), "{err}");

    // Locked by another process (an exclusive flock held here).
    let f = std::fs::File::open(&img).unwrap();
    let fd = std::os::fd::AsRawFd::as_raw_fd(&f);
    // SAFETY: flock on a descriptor `f` owns and keeps open; no memory is passed.
    let locked = unsafe { libc::flock(fd, libc::LOCK_EX) };
    assert_eq!(locked, 0);
    refused(&snap, &[], "locked by another process");
    drop(f);
    // Resized.
    let f = std::fs::OpenOptions::new().write(true).open(&img).unwrap();
    f.set_len(2 << 20).unwrap();
    refused(
        &snap,
        &[],
        "the image has 4096 sectors, the snapshot was taken with 2048",
    );
    f.set_len(1 << 20).unwrap();
    drop(f);
    // Missing.
    std::fs::rename(&img, d.path().join("moved.img")).unwrap();
    refused(&snap, &[], "cannot open");
}
