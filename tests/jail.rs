//! Privilege dropping (issue #13 item 3): `segvmm run --jail DIR --uid N --gid N` builds
//! the VM as root, then runs the guest chrooted into DIR as N:N with no capabilities and
//! no_new_privs, still serving its API socket and writing ptsnaps into the snapshot
//! directory it opened before the chroot.

mod common;

use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::{artifact, have_kvm, is_root, ptsnap_when_ready, run, segvmm, shutdown_over_api};

fn status_field(pid: u32, tid: Option<&str>, key: &str) -> String {
    let p = match tid {
        Some(t) => format!("/proc/{pid}/task/{t}/status"),
        None => format!("/proc/{pid}/status"),
    };
    let s = std::fs::read_to_string(p).unwrap();
    s.lines()
        .find_map(|l| l.strip_prefix(key))
        .map(|v| v.split_whitespace().collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|| panic!("no {key} in status"))
}

#[test]
fn a_jailed_vmm_runs_as_nobody_without_capabilities() {
    if !have_kvm() || !is_root() {
        eprintln!("SKIP: needs /dev/kvm and root");
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let jail = d.path().join("jail");
    let snaps = d.path().join("snaps");
    std::fs::create_dir_all(&jail).unwrap();
    std::fs::create_dir_all(&snaps).unwrap();
    std::os::unix::fs::chown(&snaps, Some(65534), Some(65534)).unwrap();
    // The socket's directory belongs to the jailed user, so the VMM can remove the socket
    // at exit from inside the jail.
    let run_dir = d.path().join("run");
    std::fs::create_dir_all(&run_dir).unwrap();
    std::os::unix::fs::chown(&run_dir, Some(65534), Some(65534)).unwrap();
    let sock = run_dir.join("api.sock");
    let child = segvmm()
        .args([
            "run",
            "--guest",
            "test-hang",
            "--quiet",
            "--memory",
            "32M",
            "--timeout",
            "30",
            "--uid",
            "65534",
            "--gid",
            "65534",
            "--jail",
        ])
        .arg(&jail)
        .arg("--api-socket")
        .arg(&sock)
        .arg("--snapshot-dir")
        .arg(&snaps)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let t = Instant::now();
    while UnixStream::connect(&sock).is_err() && t.elapsed() < Duration::from_secs(15) {
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(status_field(pid, None, "Uid:"), "65534 65534 65534 65534");
    assert_eq!(status_field(pid, None, "Gid:"), "65534 65534 65534 65534");
    assert_eq!(status_field(pid, None, "Groups:"), "");
    assert_eq!(status_field(pid, None, "CapEff:"), "0000000000000000");
    assert_eq!(status_field(pid, None, "CapPrm:"), "0000000000000000");
    assert_eq!(status_field(pid, None, "CapBnd:"), "0000000000000000");
    assert_eq!(status_field(pid, None, "NoNewPrivs:"), "1");
    // The root is the jail.
    let root = std::fs::read_link(format!("/proc/{pid}/root")).unwrap();
    assert_eq!(root, jail.canonicalize().unwrap());
    // Every thread (the vCPU included) is jailed too.
    for t in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let tid = t.unwrap().file_name().to_string_lossy().into_owned();
        assert_eq!(
            status_field(pid, Some(&tid), "Uid:"),
            "65534 65534 65534 65534"
        );
        assert_eq!(status_field(pid, Some(&tid), "CapEff:"), "0000000000000000");
        assert_eq!(
            status_field(pid, Some(&tid), "NoNewPrivs:"),
            "1",
            "thread {tid}"
        );
    }
    // It still serves: a ptsnap into the directory opened before the chroot.
    let out = snaps.join("jailed.ptsnap");
    let last = ptsnap_when_ready(&sock, &out);
    assert_eq!(last.0, 0, "{last:?}");
    let m = std::fs::metadata(&out).unwrap();
    assert!(m.len() > 0);
    use std::os::unix::fs::MetadataExt;
    assert_eq!(m.uid(), 65534, "the ptsnap was written as the jailed user");
    let (st, err) = shutdown_over_api(&sock, child);
    assert_eq!(st.code(), Some(0), "{err}");
    assert!(err.contains("shut down over the API socket"), "{err}");
    assert!(!sock.exists(), "the jailed VMM removed its socket at exit");
}

#[test]
fn jail_needs_uid_and_gid_and_a_directory() {
    let (code, _, stderr) = run(&["run", "--guest", "test", "--jail", "/nonexistent"]);
    assert_eq!(code, 2, "{stderr}");
    if !have_kvm() {
        return;
    }
    let (code, _, stderr) = run(&[
        "run",
        "--guest",
        "test",
        "--quiet",
        "--jail",
        "/nonexistent-segvmm-jail",
        "--uid",
        "65534",
        "--gid",
        "65534",
    ]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("chroot"), "{stderr}");
    assert!(!Path::new("/nonexistent-segvmm-jail").exists());
}

#[test]
fn a_jailed_vmm_boots_linux_and_writes_its_report() {
    if !have_kvm() || !is_root() {
        eprintln!("SKIP: needs /dev/kvm and root");
        return;
    }
    let (Some(k), Some(i)) = (artifact("small-kernel"), artifact("initramfs.cpio")) else {
        return;
    };
    let d = tempfile::tempdir().unwrap();
    let jail = d.path().join("jail");
    std::fs::create_dir_all(&jail).unwrap();
    let report = d.path().join("r.json");
    let (code, _, stderr) = run(&[
        "run",
        "--kernel",
        k.to_str().unwrap(),
        "--initrd",
        i.to_str().unwrap(),
        "--memory",
        "256M",
        "--timeout",
        "600",
        "--quiet",
        "--jail",
        jail.to_str().unwrap(),
        "--uid",
        "65534",
        "--gid",
        "65534",
        "--report",
        report.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stderr.contains("SEGVMM_INIT_OK"), "{stderr}");
    // The report lies outside the jail: opened before the chroot, written at the end.
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
    assert_eq!(v["exit_reason"]["kind"], "power_off", "{v}");
    assert_eq!(
        std::fs::read_dir(&jail).unwrap().count(),
        0,
        "nothing written in the jail"
    );
}
