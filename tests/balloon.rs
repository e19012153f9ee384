//! `--balloon` (virtio-balloon, issue #16): malformed options and impossible set-ups are
//! refused with exit 2 and one line; with /dev/kvm, the test guest inflates the balloon
//! through the device's registers (pages come back zero, host RSS drops, a PFN outside
//! guest RAM sets DEVICE_NEEDS_RESET and releases nothing), and the API sets the target
//! and reads the balloon's report.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::{have_kvm, run, segvmm};
use serde_json::Value;

#[test]
fn malformed_or_impossible_balloons_exit_2() {
    let t = ["run", "--guest", "test", "--memory", "64M", "--balloon"];
    let with = |opt: &'static str| {
        let mut a = t.to_vec();
        a.push(opt);
        a
    };
    common::assert_exit_2(&with("size=lots"), "--balloon: size 'lots'");
    common::assert_exit_2(&with("colour=red"), "unknown option 'colour'");
    common::assert_exit_2(&with("reporting=maybe"), "must be on or off");
    common::assert_exit_2(
        &["run", "--balloon"],
        "not served for the measurement guest",
    );
    if have_kvm() {
        let mut a = t.to_vec();
        a.extend(["--backing", "2m"]);
        let (code, _out, err) = run(&a);
        assert_eq!(code, 2, "{err}");
        // Either the hugetlb pool is empty or the balloon refuses the backing; with pages
        // in the pool it must be the balloon.
        assert!(
            err.contains("cannot give back the balloon's 4 KiB pages") || err.contains("huge"),
            "{err}"
        );
        assert_eq!(
            err.lines()
                .filter(|l| l.starts_with("segvmm: error:"))
                .count(),
            1
        );
    }
}

/// The test guest (mode 'b') inflates 128 MiB of a 256 MiB guest: the pages read back zero
/// in the guest, the report counts them and host RSS of guest RAM drops by as much.
#[test]
fn test_guest_inflates_the_balloon_and_host_rss_drops() {
    if !have_kvm() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let report = dir.path().join("r.json");
    let args = [
        "run",
        "--guest",
        "test-balloon",
        "--memory",
        "256M",
        "--backing",
        "4k",
        "--balloon",
        "size=128M,stats=off",
        "--report",
        report.to_str().unwrap(),
    ];
    let (code, out, err) = run(&args);
    assert_eq!(code, 0, "guest step {}: {out}{err}", code - 30);
    assert!(out.contains("virtio-balloon ok"), "{out}");
    let resets = err.lines().filter(|l| l.contains("device needs reset"));
    assert_eq!(resets.count(), 1, "{err}");
    let r: Value = serde_json::from_slice(&std::fs::read(&report).unwrap()).unwrap();
    let b = &r["balloon"];
    assert_eq!(b["inflated_pages"], 32768, "{b}");
    assert_eq!(b["returned_bytes"], 128u64 << 20, "{b}");
    assert_eq!(b["actual_bytes"], 128u64 << 20, "{b}");
    assert_eq!(b["bad_requests"], 1, "{b}");
    assert_eq!(b["release_errors"], 0, "{b}");
    let rss = r["memory"]["rss_bytes"].as_u64().unwrap();
    // 256 MiB prefaulted, 128 MiB given back; the guest re-reads two of those pages.
    assert!(
        rss <= (128 << 20) + (1 << 20),
        "guest RAM still resident: {rss}"
    );
    let before = b["contiguity_before"]["resident_bytes"].as_u64().unwrap();
    let after = b["contiguity_after"]["resident_bytes"].as_u64().unwrap();
    assert_eq!(before - after, (128 << 20) - 2 * 4096, "{b}");
}

fn request(sock: &Path, line: &str) -> Value {
    let mut s = UnixStream::connect(sock).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s.write_all(line.as_bytes()).unwrap();
    s.write_all(b"\n").unwrap();
    let mut a = String::new();
    BufReader::new(s).read_line(&mut a).unwrap();
    serde_json::from_str(a.trim_end()).unwrap()
}

fn wait_for_ping(sock: &Path) {
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(15) {
        if UnixStream::connect(sock).is_ok() && request(sock, r#"{"cmd":"ping"}"#)["ok"] == true {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("the VMM never answered a ping on {}", sock.display());
}

/// The API sets the target (refusing more than guest RAM) and reads the report; a VM
/// without a balloon says so.
#[test]
fn the_api_sets_the_balloon_target_and_reads_its_report() {
    if !have_kvm() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("api.sock");
    let mut child = segvmm()
        .args(["run", "--guest", "test-hang", "--quiet", "--memory", "64M"])
        .args(["--timeout", "60", "--balloon", "size=8M", "--api-socket"])
        .arg(&sock)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_for_ping(&sock);
    let s = request(&sock, r#"{"cmd":"balloon-stats"}"#);
    assert_eq!(s["ok"], true, "{s}");
    assert_eq!(s["target_bytes"], 8u64 << 20, "{s}");
    let a = request(&sock, r#"{"cmd":"balloon","size_mib":32}"#);
    assert_eq!(a["ok"], true, "{a}");
    let s = request(&sock, r#"{"cmd":"balloon-stats"}"#);
    assert_eq!(s["target_bytes"], 32u64 << 20, "{s}");
    let e = request(&sock, r#"{"cmd":"balloon","size_mib":65}"#);
    assert_eq!(e["ok"], false, "{e}");
    assert!(
        e["error"].as_str().unwrap().contains("more than guest RAM"),
        "{e}"
    );
    let e = request(&sock, r#"{"cmd":"balloon","size_mib":-1}"#);
    assert_eq!(e["ok"], false, "{e}");
    assert_eq!(request(&sock, r#"{"cmd":"shutdown"}"#)["ok"], true);
    assert_eq!(child.wait().unwrap().code(), Some(0));

    let sock = dir.path().join("plain.sock");
    let mut child = segvmm()
        .args(["run", "--guest", "test-hang", "--quiet", "--memory", "32M"])
        .args(["--timeout", "60", "--api-socket"])
        .arg(&sock)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_for_ping(&sock);
    let e = request(&sock, r#"{"cmd":"balloon","size_mib":1}"#);
    assert!(e["error"].as_str().unwrap().contains("no balloon"), "{e}");
    request(&sock, r#"{"cmd":"shutdown"}"#);
    assert_eq!(child.wait().unwrap().code(), Some(0));
}

/// The small kernel, if it was built with virtio-balloon, and the root file system.
fn linux_artifacts() -> Option<(std::path::PathBuf, std::path::PathBuf)> {
    let (k, fs) = (
        common::artifact("small-kernel")?,
        common::artifact("rootfs.ext4")?,
    );
    let config = std::fs::read_to_string(k.with_file_name("small-kernel.config")).ok()?;
    if !config.contains("CONFIG_VIRTIO_BALLOON=y") {
        eprintln!("SKIP: the small kernel has no CONFIG_VIRTIO_BALLOON=y: rebuild it");
        return None;
    }
    Some((k, fs))
}

fn vm_rss_mib(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let l = s.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    l.split_whitespace().nth(1).unwrap().parse::<u64>().unwrap() >> 10
}

/// Waits until the guest console printed `needle` (lines collected by a reader thread).
fn wait_console(lines: &std::sync::Mutex<Vec<String>>, needle: &str, limit: Duration) -> bool {
    let t = Instant::now();
    while t.elapsed() < limit {
        if lines.lock().unwrap().iter().any(|l| l.contains(needle)) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    false
}

/// Linux (the small kernel on rootfs.ext4, 256 MiB prefaulted, reporting off so that only
/// the balloon gives memory back): the API sets a 64 MiB balloon, the driver inflates it
/// (`actual` reaches the target), the VMM's RSS drops by about as much, the shell still
/// answers, the guest's statistics arrive, and deflating brings `actual` back to 0.
#[test]
fn linux_inflates_the_balloon_and_keeps_running() {
    let Some((kernel, fs)) = linux_artifacts().filter(|_| have_kvm()) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let disk = dir.path().join("root.img");
    std::fs::copy(&fs, &disk).unwrap();
    let sock = dir.path().join("api.sock");
    let mut child = segvmm()
        .args([
            "run",
            "--kernel",
            kernel.to_str().unwrap(),
            "--memory",
            "256M",
        ])
        .args(["--prefault", "on", "--timeout", "900", "--disk"])
        .arg(&disk)
        .args(["--balloon", "stats=1s,reporting=off", "--api-socket"])
        .arg(&sock)
        .args([
            "--cmdline",
            "console=ttyS0 reboot=k panic=-1 percpu_alloc=page root=/dev/vda rw",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let lines = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let out = child.stdout.take().unwrap();
    let l2 = lines.clone();
    std::thread::spawn(move || {
        for l in BufReader::new(out).lines().map_while(Result::ok) {
            l2.lock().unwrap().push(l);
        }
    });
    let mut stdin = child.stdin.take().unwrap();
    let mut shell = false;
    let t = Instant::now();
    while !shell && t.elapsed() < Duration::from_secs(600) {
        // Split so that the echoed command line does not match.
        let _ = stdin.write_all(b"echo SHELL\"\"READY\n");
        shell = wait_console(&lines, "SHELLREADY", Duration::from_secs(10));
    }
    assert!(shell, "no shell: {:?}", lines.lock().unwrap());
    let pid = child.id();
    let before = vm_rss_mib(pid);
    assert_eq!(
        request(&sock, r#"{"cmd":"balloon","size_mib":64}"#)["ok"],
        true
    );
    let t = Instant::now();
    let mut s = Value::Null;
    while t.elapsed() < Duration::from_secs(300) {
        s = request(&sock, r#"{"cmd":"balloon-stats"}"#);
        if s["actual_bytes"] == 64u64 << 20 {
            break;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    assert_eq!(s["actual_bytes"], 64u64 << 20, "{s}");
    assert_eq!(s["inflated_pages"], 16384, "{s}");
    let after = vm_rss_mib(pid);
    assert!(before >= after + 48, "RSS {before} -> {after} MiB");
    let _ = stdin.write_all(b"echo ST\"\"ILL ALIVE\n");
    assert!(wait_console(
        &lines,
        "STILL ALIVE",
        Duration::from_secs(120)
    ));
    assert!(
        s["stats"]["values"]["total_memory"].as_u64().unwrap() > 0,
        "{s}"
    );
    assert_eq!(
        request(&sock, r#"{"cmd":"balloon","size_mib":0}"#)["ok"],
        true
    );
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(300) {
        s = request(&sock, r#"{"cmd":"balloon-stats"}"#);
        if s["actual_bytes"] == 0 {
            break;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    assert_eq!(s["deflated_pages"], 16384, "{s}");
    let _ = stdin.write_all(b"poweroff -f\n");
    assert_eq!(child.wait().unwrap().code(), Some(0));
}
