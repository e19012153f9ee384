//! Integration tests of the API socket (issue #13, "API socket" defects), against the
//! release binary with the bare test guest (`--guest test-hang`, which waits):
//!
//! * a ptsnap to an absolute path outside `--snapshot-dir` or to `../x` is refused, and
//!   nothing is written there;
//! * a symlink inside the snapshot directory is not followed and an existing file is not
//!   truncated;
//! * the socket is created 0600;
//! * a regular file at the socket path is not deleted (exit 2), a live VM's socket is not
//!   taken over by a second VM (exit 2), a stale socket is replaced;
//! * several clients at once; an idle client does not block `segvmm ptsnap --shutdown`;
//! * a line over the limit is answered with an error and the VMM's RSS stays small;
//! * paths with spaces and newlines are data, never commands;
//! * the measurement guest serves `--api-socket` too.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use common::{api_request as request, have_kvm, run, segvmm};
use serde_json::Value;

/// A running VMM with an API socket; killed when dropped.
struct Vm {
    child: Option<Child>,
    sock: PathBuf,
}

impl Drop for Vm {
    fn drop(&mut self) {
        if let Some(c) = &mut self.child {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Vm {
    fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    /// Waits for the VMM to exit; returns its exit code.
    fn wait(&mut self, limit: Duration) -> Option<i32> {
        let t = Instant::now();
        let c = self.child.as_mut().unwrap();
        while t.elapsed() < limit {
            if let Some(s) = c.try_wait().unwrap() {
                self.child = None;
                return s.code();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }

    fn ptsnap(&self, out: &Path) -> (i32, String, String) {
        run(&[
            "ptsnap",
            "--api-socket",
            self.sock.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ])
    }
}

/// Starts the waiting test guest serving `sock` with `dir` as its snapshot directory
/// (`extra` appended) and waits until it answers a ping.
fn start(sock: &Path, dir: Option<&Path>, extra: &[&str]) -> Vm {
    let mut cmd = segvmm();
    cmd.args([
        "run",
        "--guest",
        "test-hang",
        "--quiet",
        "--memory",
        "32M",
        "--timeout",
        "60",
        "--api-socket",
    ])
    .arg(sock);
    if let Some(d) = dir {
        cmd.arg("--snapshot-dir").arg(d);
    }
    let child = cmd
        .args(extra)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn segvmm run");
    let vm = Vm {
        child: Some(child),
        sock: sock.into(),
    };
    common::wait_for_api(sock, Duration::from_secs(15));
    vm
}

fn read_answer(s: &mut UnixStream) -> std::io::Result<Value> {
    let mut a = String::new();
    BufReader::new(s).read_line(&mut a)?;
    serde_json::from_str(a.trim_end()).map_err(std::io::Error::other)
}

/// A ptsnap answer, retried while the test guest is still entering long mode (it has no
/// page tables to capture yet).
fn ptsnap_ready(vm: &Vm, dir: &Path) {
    let probe = dir.join("ready.ptsnap");
    for _ in 0..60 {
        if vm.ptsnap(&probe).0 == 0 {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("the guest never became capturable");
}

fn dir_names(d: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(d)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

#[test]
fn ptsnap_outside_the_snapshot_dir_is_refused() {
    if !have_kvm() {
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let snaps = d.path().join("snaps");
    let elsewhere = d.path().join("elsewhere");
    std::fs::create_dir_all(&snaps).unwrap();
    std::fs::create_dir_all(&elsewhere).unwrap();
    let vm = start(&d.path().join("api.sock"), Some(&snaps), &[]);
    ptsnap_ready(&vm, &snaps);
    // The client refuses a path outside the directory (exit 2) ...
    for out in [elsewhere.join("x.ptsnap"), snaps.join("../x.ptsnap")] {
        let (code, stdout, stderr) = vm.ptsnap(&out);
        assert_eq!(code, 2, "{out:?}: stdout {stdout} stderr {stderr}");
        assert!(stderr.contains("snapshot directory"), "{stderr}");
    }
    // ... and so does the VMM, whatever a client sends.
    for name in [
        "../x.ptsnap",
        "/etc/segvmm-test.ptsnap",
        elsewhere.join("y").to_str().unwrap(),
        "sub/x",
        "..",
        ".hidden",
        "",
        "/proc/self/mem",
    ] {
        let line = serde_json::json!({"cmd": "ptsnap", "file": name}).to_string();
        let a = request(&vm.sock, line.as_bytes()).unwrap();
        assert_eq!(a["ok"], false, "{name}: {a}");
        assert!(
            a["error"].as_str().unwrap().contains("plain file name"),
            "{a}"
        );
    }
    assert!(dir_names(&elsewhere).is_empty());
    assert!(!d.path().join("x.ptsnap").exists());
    assert!(!Path::new("/etc/segvmm-test.ptsnap").exists());
    assert_eq!(dir_names(&snaps), ["ready.ptsnap"]);
}

#[test]
fn links_are_not_followed_and_files_not_truncated() {
    if !have_kvm() {
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let snaps = d.path().join("snaps");
    std::fs::create_dir_all(&snaps).unwrap();
    let target = d.path().join("precious");
    std::fs::write(&target, b"keep me").unwrap();
    std::os::unix::fs::symlink(&target, snaps.join("link.ptsnap")).unwrap();
    std::fs::write(snaps.join("old.ptsnap"), b"old contents").unwrap();
    let vm = start(&d.path().join("api.sock"), Some(&snaps), &[]);
    ptsnap_ready(&vm, &snaps);
    for name in ["link.ptsnap", "old.ptsnap", "ready.ptsnap"] {
        let (code, _, stderr) = vm.ptsnap(&snaps.join(name));
        assert_eq!(code, 2, "{name}: {stderr}");
        assert!(stderr.contains("exists already"), "{stderr}");
    }
    assert_eq!(std::fs::read(&target).unwrap(), b"keep me");
    assert!(std::fs::symlink_metadata(snaps.join("link.ptsnap"))
        .unwrap()
        .file_type()
        .is_symlink());
    assert_eq!(
        std::fs::read(snaps.join("old.ptsnap")).unwrap(),
        b"old contents"
    );
    // No temporary is left behind.
    assert_eq!(
        dir_names(&snaps),
        ["link.ptsnap", "old.ptsnap", "ready.ptsnap"]
    );
}

#[test]
fn socket_is_0600_and_removed_at_exit() {
    if !have_kvm() {
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let sock = d.path().join("api.sock");
    let mut vm = start(&sock, None, &[]);
    let mode = std::fs::symlink_metadata(&sock)
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "socket mode {mode:o}");
    let (code, _, stderr) = run(&[
        "ptsnap",
        "--api-socket",
        sock.to_str().unwrap(),
        "--shutdown",
    ]);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(vm.wait(Duration::from_secs(10)), Some(0));
    assert!(!sock.exists(), "the socket was left behind");
}

#[test]
fn a_file_at_the_socket_path_is_kept_and_a_live_socket_not_taken_over() {
    if !have_kvm() {
        return;
    }
    let d = tempfile::tempdir().unwrap();
    // A regular file: refused, kept.
    let file = d.path().join("not-a-socket");
    std::fs::write(&file, b"data").unwrap();
    let (code, _, stderr) = run(&[
        "run",
        "--guest",
        "test",
        "--quiet",
        "--api-socket",
        file.to_str().unwrap(),
    ]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("not a socket"), "{stderr}");
    assert_eq!(std::fs::read(&file).unwrap(), b"data");
    // A live VM's socket: the second VM is refused, the first keeps answering.
    let sock = d.path().join("api.sock");
    let vm = start(&sock, None, &[]);
    let (code, _, stderr) = run(&[
        "run",
        "--guest",
        "test",
        "--quiet",
        "--api-socket",
        sock.to_str().unwrap(),
    ]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("another VMM is serving it"), "{stderr}");
    let a = request(&sock, br#"{"cmd":"ping"}"#).unwrap();
    assert_eq!(a["ok"], true, "{a}");
    drop(vm);
}

#[test]
fn a_stale_socket_is_replaced() {
    if !have_kvm() {
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let sock = d.path().join("api.sock");
    drop(std::os::unix::net::UnixListener::bind(&sock).unwrap());
    assert!(sock.exists(), "a dropped listener leaves its socket file");
    let mut vm = start(&sock, None, &[]);
    let a = request(&sock, br#"{"cmd":"shutdown"}"#).unwrap();
    assert_eq!(a["ok"], true, "{a}");
    assert_eq!(vm.wait(Duration::from_secs(10)), Some(0));
}

#[test]
fn many_clients_and_an_idle_one_does_not_block_shutdown() {
    if !have_kvm() {
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let sock = d.path().join("api.sock");
    let mut vm = start(&sock, None, &[]);
    // Idle clients: one silent, one with half a line.
    let _silent = UnixStream::connect(&sock).unwrap();
    let mut half = UnixStream::connect(&sock).unwrap();
    half.write_all(br#"{"cmd":"pi"#).unwrap();
    // Eight clients connected at once, each answered.
    let mut clients: Vec<UnixStream> = (0..8)
        .map(|_| UnixStream::connect(&sock).unwrap())
        .collect();
    for c in &mut clients {
        c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        c.write_all(b"{\"cmd\":\"ping\"}\n").unwrap();
    }
    for c in &mut clients {
        let a = read_answer(c).unwrap();
        assert_eq!(a["ok"], true, "{a}");
        assert_eq!(a["vcpus"], 1, "{a}");
    }
    let t = Instant::now();
    let (code, stdout, stderr) = run(&[
        "ptsnap",
        "--api-socket",
        sock.to_str().unwrap(),
        "--shutdown",
    ]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("shut down"), "{stdout}");
    assert_eq!(vm.wait(Duration::from_secs(10)), Some(0));
    assert!(t.elapsed() < Duration::from_secs(10));
}

fn rss_kib(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

#[test]
fn an_overlong_line_is_refused_and_memory_stays_bounded() {
    if !have_kvm() {
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let sock = d.path().join("api.sock");
    let vm = start(&sock, None, &[]);
    let before = rss_kib(vm.pid());
    // 256 MiB without a newline, in 1 MiB writes, from four clients at once.
    let writers: Vec<_> = (0..4)
        .map(|_| {
            let sock = sock.clone();
            std::thread::spawn(move || {
                let mut s = UnixStream::connect(&sock).unwrap();
                s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
                let chunk = vec![b'x'; 1 << 20];
                let mut sent = 0usize;
                for _ in 0..64 {
                    match s.write(&chunk) {
                        Ok(n) => sent += n,
                        Err(_) => break,
                    }
                }
                let mut answer = String::new();
                let _ = BufReader::new(&mut s).read_line(&mut answer);
                let mut rest = Vec::new();
                let _ = s.read_to_end(&mut rest);
                (sent, answer)
            })
        })
        .collect();
    for w in writers {
        let (sent, answer) = w.join().unwrap();
        let a: Value = serde_json::from_str(answer.trim_end())
            .unwrap_or_else(|e| panic!("answer {answer:?}: {e}"));
        assert_eq!(a["ok"], false, "{a}");
        assert!(a["error"].as_str().unwrap().contains("longer than"), "{a}");
        assert!(sent < 64 << 20, "the VMM took {sent} bytes of one line");
    }
    let after = rss_kib(vm.pid());
    assert!(
        after < before + 8 * 1024,
        "VMM RSS grew from {before} KiB to {after} KiB"
    );
    // And it still serves.
    let a = request(&sock, br#"{"cmd":"ping"}"#).unwrap();
    assert_eq!(a["ok"], true, "{a}");
}

#[test]
fn spaces_and_newlines_in_names_are_data() {
    if !have_kvm() {
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let snaps = d.path().join("my snaps");
    std::fs::create_dir_all(&snaps).unwrap();
    let mut vm = start(&d.path().join("api.sock"), Some(&snaps), &[]);
    ptsnap_ready(&vm, &snaps);
    let spaced = snaps.join("a b c.ptsnap");
    let (code, stdout, stderr) = vm.ptsnap(&spaced);
    assert_eq!(code, 0, "stdout {stdout} stderr {stderr}");
    assert!(std::fs::metadata(&spaced).unwrap().len() > 0);
    // A name with a newline followed by a command: refused as a name, the VM runs on.
    let (code, _, stderr) = vm.ptsnap(&snaps.join("x\nshutdown"));
    assert_eq!(code, 2, "{stderr}");
    let line = serde_json::json!({"cmd": "ptsnap", "file": "x\n{\"cmd\":\"shutdown\"}"});
    let a = request(&vm.sock, line.to_string().as_bytes()).unwrap();
    assert_eq!(a["ok"], false, "{a}");
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(vm.wait(Duration::from_millis(10)), None, "the VM ended");
    let a = request(&vm.sock, br#"{"cmd":"ping"}"#).unwrap();
    assert_eq!(a["ok"], true, "{a}");
    assert_eq!(dir_names(&snaps), ["a b c.ptsnap", "ready.ptsnap"]);
}

#[test]
fn the_measurement_guest_serves_the_api() {
    if !have_kvm() {
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let sock = d.path().join("api.sock");
    let child = segvmm()
        .args([
            "run",
            "--workload",
            "chase",
            "--footprint",
            "64M",
            "--count",
            "4000000000",
            "--timeout",
            "60",
            "--api-socket",
        ])
        .arg(&sock)
        .arg("--snapshot-dir")
        .arg(d.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn segvmm run");
    let mut vm = Vm {
        child: Some(child),
        sock: sock.clone(),
    };
    let t = Instant::now();
    let mut pong = None;
    while t.elapsed() < Duration::from_secs(20) && pong.is_none() {
        pong = request(&sock, br#"{"cmd":"ping"}"#).ok();
        std::thread::sleep(Duration::from_millis(50));
    }
    let pong = pong.expect("the measurement guest never served its API socket");
    assert_eq!(pong["ok"], true, "{pong}");
    let out = d.path().join("probe.ptsnap");
    let (code, stdout, stderr) = vm.ptsnap(&out);
    assert_eq!(code, 0, "stdout {stdout} stderr {stderr}");
    assert!(std::fs::metadata(&out).unwrap().len() > 0);
    let (code, _, stderr) = run(&[
        "ptsnap",
        "--api-socket",
        sock.to_str().unwrap(),
        "--shutdown",
    ]);
    assert_eq!(code, 0, "{stderr}");
    let code = vm.wait(Duration::from_secs(20));
    assert!(
        code.is_some(),
        "the measurement guest did not end on shutdown"
    );
}
