//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The segvmm binary cargo built for these tests.
pub fn segvmm() -> Command {
    Command::new(env!("CARGO_BIN_EXE_segvmm"))
}

/// Whether /dev/kvm can be opened; prints why not.
pub fn have_kvm() -> bool {
    match std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
    {
        Ok(_) => true,
        Err(e) => {
            eprintln!("SKIP: /dev/kvm is not usable here ({e}); KVM tests need it");
            false
        }
    }
}

/// Runs segvmm with `args`; returns (exit code, stdout, stderr).
pub fn run(args: &[&str]) -> (i32, String, String) {
    let Output {
        status,
        stdout,
        stderr,
    } = segvmm().args(args).output().expect("spawn segvmm");
    (
        status.code().unwrap_or(-1),
        String::from_utf8_lossy(&stdout).into_owned(),
        String::from_utf8_lossy(&stderr).into_owned(),
    )
}

/// The repository root.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Whether we run as root (hugetlb pools, pagemap frame numbers).
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// A built guest-kernel artifact (`guest-kernels/out/NAME`), or `None` with a SKIP line
/// when it is missing; under CI (CI=true) a missing artifact is a failure, since CI builds
/// them with `./setup.sh`.
pub fn artifact(name: &str) -> Option<PathBuf> {
    let p = root().join("guest-kernels/out").join(name);
    if p.exists() {
        return Some(p);
    }
    let why = format!(
        "{} is missing: run guest-kernels/build.sh (or ./setup.sh)",
        p.display()
    );
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("{why}");
    }
    eprintln!("SKIP: {why}");
    None
}

/// `segvmm ptsnap --api-socket SOCK --out OUT`, retried for up to 4 s while the guest may
/// still be setting up paging; the last outcome.
pub fn ptsnap_when_ready(sock: &Path, out: &Path) -> (i32, String, String) {
    let mut last = (1, String::new(), String::new());
    for _ in 0..40 {
        last = run(&[
            "ptsnap",
            "--api-socket",
            sock.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ]);
        if last.0 == 0 {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    last
}

/// Ends a `segvmm run` child over its API socket (`segvmm ptsnap --shutdown`); the child's
/// exit status and stderr.
pub fn shutdown_over_api(
    sock: &Path,
    mut child: std::process::Child,
) -> (std::process::ExitStatus, String) {
    let (code, _, stderr) = run(&[
        "ptsnap",
        "--api-socket",
        sock.to_str().unwrap(),
        "--shutdown",
    ]);
    assert_eq!(code, 0, "{stderr}");
    let st = child.wait().unwrap();
    let mut err = String::new();
    use std::io::Read;
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    (st, err)
}

/// A child process (a running VMM) killed and reaped when dropped, so that a failing
/// assertion does not leave a VMM behind.
pub struct Reap(pub Option<std::process::Child>);

impl Drop for Reap {
    fn drop(&mut self) {
        if let Some(c) = &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Reap {
    pub fn new(c: std::process::Child) -> Self {
        Reap(Some(c))
    }

    pub fn child(&mut self) -> &mut std::process::Child {
        self.0.as_mut().expect("the child was waited for already")
    }

    /// Waits for the child; its exit code and stdout (when piped).
    pub fn wait_output(&mut self) -> (i32, String) {
        let c = self.0.take().expect("the child was waited for already");
        let out = c.wait_with_output().expect("wait for segvmm");
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    }
}

/// Sends one raw line over the API socket (a newline is appended) and reads one answer.
pub fn api_request(sock: &Path, line: &[u8]) -> std::io::Result<serde_json::Value> {
    use std::io::{BufRead, Write};
    let mut s = std::os::unix::net::UnixStream::connect(sock)?;
    s.set_read_timeout(Some(std::time::Duration::from_secs(60)))?;
    s.write_all(line)?;
    s.write_all(b"\n")?;
    let mut a = String::new();
    std::io::BufReader::new(s).read_line(&mut a)?;
    serde_json::from_str(a.trim_end()).map_err(std::io::Error::other)
}

/// Waits up to `limit` until the VMM serving `sock` answers a ping; panics otherwise.
pub fn wait_for_api(sock: &Path, limit: std::time::Duration) {
    let t = std::time::Instant::now();
    while t.elapsed() < limit {
        if api_request(sock, br#"{"cmd":"ping"}"#).is_ok_and(|v| v["ok"] == true) {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    panic!("the VMM never answered a ping on {}", sock.display());
}

/// `segvmm snapshot create --api-socket SOCK --out NAME EXTRA...`.
pub fn snapshot_create(sock: &Path, name: &str, extra: &[&str]) -> (i32, String, String) {
    let mut args = vec![
        "snapshot",
        "create",
        "--api-socket",
        sock.to_str().unwrap(),
        "--out",
        name,
    ];
    args.extend_from_slice(extra);
    run(&args)
}

/// The lines a child writes to a pipe, read by a thread of their own so that a test can
/// wait for a marker while the child runs.
pub struct Lines {
    rx: std::sync::mpsc::Receiver<String>,
    pub seen: String,
}

impl Lines {
    pub fn new(r: impl std::io::Read + Send + 'static) -> Self {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            use std::io::BufRead;
            for l in std::io::BufReader::new(r).lines() {
                let Ok(l) = l else { break };
                if tx.send(l).is_err() {
                    break;
                }
            }
        });
        Lines {
            rx,
            seen: String::new(),
        }
    }

    /// Waits up to `limit` for a line containing `needle`; false at the deadline or when
    /// the pipe closed without it.
    pub fn wait_for(&mut self, needle: &str, limit: std::time::Duration) -> bool {
        let end = std::time::Instant::now() + limit;
        loop {
            let left = end.saturating_duration_since(std::time::Instant::now());
            match self.rx.recv_timeout(left) {
                Ok(l) => {
                    self.seen.push_str(&l);
                    self.seen.push('\n');
                    if l.contains(needle) {
                        return true;
                    }
                }
                Err(_) => return false,
            }
        }
    }
}

/// Runs segvmm and asserts it was refused: exit 2, `needle` in its stderr, no panic.
/// Returns stderr for further checks.
pub fn assert_exit_2(args: &[&str], needle: &str) -> String {
    let (code, _out, err) = run(args);
    assert_eq!(code, 2, "{args:?}: {err}");
    assert!(
        err.contains(needle),
        "{args:?}: expected '{needle}' in {err}"
    );
    assert!(!err.contains("panicked"), "{err}");
    err
}

/// Checks a run of the test guest's malformed-queue mode ('m', `--guest
/// test-malformed-*`) on `device` ("virtio-blk", ...): exit 0 (else the failed step, 40 +
/// n), the guest's "ok" line, and one log line per case from that device: the three
/// DEVICE_NEEDS_RESET cases (a looping chain, a queue size that is not a power of two, a
/// notify before DRIVER_OK) and one line for each of `answered`, the cases the device
/// answers (an I/O error or a dropped packet) without needing a reset.
pub fn assert_malformed_cases(code: i32, out: &str, err: &str, device: &str, answered: &[&str]) {
    assert_eq!(code, 0, "guest step {}: {out}{err}", code - 40);
    assert!(out.contains("malformed-queue ok"), "{out}");
    assert!(!err.contains("panicked"), "{err}");
    let mine: Vec<&str> = err
        .lines()
        .filter(|l| l.starts_with(&format!("segvmm: {device}")))
        .collect();
    let resets: Vec<&str> = mine
        .iter()
        .copied()
        .filter(|l| l.ends_with("; device needs reset"))
        .collect();
    assert_eq!(resets.len(), 3, "{err}");
    for why in ["loops", "is not a power of two", "before DRIVER_OK"] {
        let n = resets.iter().filter(|l| l.contains(why)).count();
        assert_eq!(n, 1, "one needs-reset line saying '{why}' in {err}");
    }
    for what in answered {
        let n = mine.iter().filter(|l| l.contains(what)).count();
        assert_eq!(n, 1, "one line saying '{what}' in {err}");
    }
    assert_eq!(mine.len(), 3 + answered.len(), "{err}");
    assert!(err.contains("guest exited with status 0"), "{err}");
}
